"""Checkpoints: the format, built and read here only; written atomically, loaded with ``weights_only=True``.

A PixelDRL-MG checkpoint (``pixeldrl_checkpoint``) is a dict of plain types and tensors:
``format``, ``config`` (``Config.to_dict()``), ``image_channels``, ``image_size`` [H, W] (as
trained), ``params`` (count), ``model`` (state dict), ``optimizer`` (Adam state dict),
``counters`` (``updates``, ``images``, ``epoch``, ``rejected``, ``lr``), ``rng`` (the server's
torch RNG state), ``preprocess`` (the training store's ``normalisation``, ``converter``, channel
attributes and ``image_shape`` [C, H, W]: how new images must be prepared) and ``created``
(Unix time); with ``optim.ema_decay`` > 0 also ``ema_model`` (the moving average of the parameters,
a state dict like ``model``), which evaluation loads instead of ``model``.

A baseline checkpoint (``baseline_checkpoint``, ``baselines.train``'s ``best.pt``) has the same
``format``, ``image_channels``, ``image_size``, ``params``, ``model``, ``counters`` (no
``rejected``), ``preprocess`` and ``created``, no ``optimizer`` or ``rng``, and adds ``kind``
(``"baseline"``), ``baseline`` (the network's spec: ``name``, ``width``, ``in_channels``,
``size_hint``) and ``val_dice``; its ``config`` is ``{"baseline": spec}``, a section the config
loader rejects, so that PixelDRL-MG's tools refuse the file with one line.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from a3c.fileio import write_atomic
from a3c.params import numel

FORMAT = 1
REQUIRED_KEYS = ("format", "config", "image_channels", "params", "model", "counters")


class CheckpointError(RuntimeError):
    """A missing, unreadable or incompatible checkpoint; one-line message naming the file."""


@dataclass(frozen=True)
class TrainedOn:
    """What a network was trained on: ``channels`` of the images, ``size`` [H, W] at the network's
    input, ``preprocess`` (the training store's attributes that say how to prepare new images)."""

    channels: int
    size: list[int]
    preprocess: dict


def _weights(model: nn.Module) -> dict:
    """The state dict as CPU copies: a parameter that is a view of a flat vector saves its own data only."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def pixeldrl_checkpoint(model: nn.Module, config: dict, data: TrainedOn, optimizer: dict, counters: dict,
                        ema: dict | None = None) -> dict:
    """A PixelDRL-MG checkpoint of ``model`` (built from ``config``, ``Config.to_dict()``), with the
    optimiser's state dict, the learner's counters, the current torch RNG state and, when given, the
    parameters' moving average ``ema`` (a state dict of ``model``)."""
    extra = {} if ema is None else {"ema_model": ema}
    return {"format": FORMAT, "config": config, "image_channels": int(data.channels),
            "image_size": list(data.size), "params": numel(model), "model": _weights(model),
            "optimizer": optimizer, "counters": counters, "rng": torch.get_rng_state(),
            "preprocess": data.preprocess, "created": time.time(), **extra}


def baseline_checkpoint(model: nn.Module, spec: dict, data: TrainedOn, counters: dict,
                        val_dice: float | None) -> dict:
    """A supervised baseline's checkpoint; ``spec`` rebuilds the network (``baselines.models``),
    ``val_dice`` is its validation Dice (None: not validated)."""
    return {"format": FORMAT, "kind": "baseline", "baseline": spec, "config": {"baseline": spec},
            "image_channels": int(data.channels), "image_size": list(data.size), "params": numel(model),
            "model": _weights(model), "counters": counters, "val_dice": val_dice,
            "preprocess": data.preprocess, "created": time.time()}


def baseline_spec(ckpt: dict) -> dict:
    """The network spec of a baseline checkpoint; CheckpointError for any other checkpoint."""
    spec = ckpt.get("baseline")
    if ckpt.get("kind") != "baseline" or not isinstance(spec, dict):
        raise CheckpointError("not a baseline checkpoint (a PixelDRL-MG one? use tools/eval_ckpt.py)")
    return spec


def check_params(ckpt: dict, model: nn.Module, built_by: str) -> None:
    """CheckpointError unless ``model`` (rebuilt from ``built_by``: "config", "spec") has the
    checkpoint's recorded parameter count."""
    if numel(model) != int(ckpt["params"]):
        raise CheckpointError(f"checkpoint says {ckpt['params']} parameters, its {built_by} builds {numel(model)}")


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
