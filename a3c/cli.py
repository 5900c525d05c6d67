"""Helpers shared by the command-line programs (launch, tools, baselines): one-line errors, int
and float argument types, the device."""
from __future__ import annotations

import argparse
import math


class UsageError(Exception):
    """Bad input to a command as a whole (checkpoint, store, device): one line, exit 2."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return v
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def open_unit_float(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (a probability threshold)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return v


def resolve_device(name: str):
    """auto|cpu|cuda -> torch.device; UsageError when CUDA is asked for and absent."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(name)
