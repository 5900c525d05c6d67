"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors:
``format``, ``config`` (``Config.to_dict()``), ``image_channels``, ``image_size`` [H, W] (as
trained), ``params`` (count), ``model`` (state dict), ``optimizer`` (Adam state dict),
``counters`` (``updates``, ``images``, ``epoch``, ``rejected``, ``lr``), ``rng`` (the server's
torch RNG state), ``preprocess`` (the training store's ``normalisation``, ``converter``, channel
attributes and ``image_shape`` [C, H, W]: how new images must be prepared) and ``created``
(Unix time).
"""
from __future__ import annotations

from pathlib import Path

import torch

from a3c.fileio import write_atomic

FORMAT = 1
REQUIRED_KEYS = ("format", "config", "image_channels", "params", "model", "counters")


class CheckpointError(RuntimeError):
    """A missing, unreadable or incompatible checkpoint; one-line message naming the file."""


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write ``obj`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; raise CheckpointError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        text = str(exc).strip()
        if "Weights only load failed" in text:
            why = "it holds objects a safe load refuses to build"
        else:
            why = text.splitlines()[0][:200] if text else exc.__class__.__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({why})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing or obj.get("format") != FORMAT:
        what = f"missing {', '.join(missing)}" if missing else f"format {obj.get('format')!r}"
        raise CheckpointError(f"{path}: not a PixelDRL-MG checkpoint of format {FORMAT} ({what})")
    return obj
