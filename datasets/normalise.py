"""The name of a store's normalisation: formatted by the writer, parsed back by inference.

A store's ``normalisation`` attribute is ``percentile_<lo>_<hi>_nonzero_per_case_channel_to_0_1``
(per case and channel: clip to the ``lo``-th and ``hi``-th percentiles of the nonzero voxels,
scale to [0, 1]; ``datasets.writer.normalise_case``) or ``none`` (raw values kept). Standard
library only, so that importing it is cheap.
"""
from __future__ import annotations

import re
from typing import Sequence

DEFAULT_PERCENTILES = (0.5, 99.5)
NO_NORMALISATION = "none"
NAME_PATTERN = "percentile_<low>_<high>_nonzero_per_case_channel_to_0_1"
_NAME_RE = re.compile(r"percentile_(?P<lo>[0-9.eE+-]+)_(?P<hi>[0-9.eE+-]+)_nonzero_per_case_channel_to_0_1")


def normalisation_name(percentiles: Sequence[float] | None = DEFAULT_PERCENTILES) -> str:
    """The ``normalisation`` attribute for clip percentiles (lo, hi); None -> ``none``."""
    if percentiles is None:
        return NO_NORMALISATION
    lo, hi = percentiles
    return f"percentile_{lo:g}_{hi:g}_nonzero_per_case_channel_to_0_1"


def parse_normalisation(name: str) -> tuple[float, float] | None:
    """A ``normalisation`` attribute -> its clip percentiles (lo, hi); ``none`` -> None.
    ValueError (one line) for any other name."""
    if name == NO_NORMALISATION:
        return None
    m = _NAME_RE.fullmatch(str(name))
    if m:
        try:
            lo, hi = float(m.group("lo")), float(m.group("hi"))
        except ValueError:
            lo, hi = -1.0, -1.0
        if 0 <= lo < hi <= 100:
            return lo, hi
    raise ValueError(f"unknown normalisation {name!r} (this tool knows {NAME_PATTERN} and {NO_NORMALISATION})")


DEFAULT_NORMALISATION = normalisation_name()
