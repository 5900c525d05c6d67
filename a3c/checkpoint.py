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

import zipfile
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


def load_failure(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed on ``path``, in words: empty, truncated or not a checkpoint archive,
    a corrupt archive member, or objects the safe load refuses (raw unpickler messages such as
    ``101`` or ``pop from empty list`` say nothing to a user)."""
    try:
        size = path.stat().st_size
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    if size == 0:
        return "empty file"
    if not is_zip:
        return f"truncated, or not written by torch.save: {size} bytes without a zip archive directory"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as err:  # noqa: BLE001 - zipfile raises many kinds on a damaged archive
        return f"corrupt zip archive ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    if bad is not None:
        return f"corrupt: archive member {bad} fails its checksum"
    if "Weights only load failed" in str(exc):
        return "it holds objects a safe load refuses to build"
    first = " ".join(str(exc).split()).split(". This is an internal miniz error")[0][:160]
    return f"corrupt checkpoint data: {type(exc).__name__}{': ' + first if first else ''}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; raise CheckpointError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_failure(path, exc)})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing or obj.get("format") != FORMAT:
        what = f"missing {', '.join(missing)}" if missing else f"format {obj.get('format')!r}"
        raise CheckpointError(f"{path}: not a PixelDRL-MG checkpoint of format {FORMAT} ({what})")
    return obj
