"""Paired comparisons of two methods over the same patients, as pure functions on lists of floats.

* ``wilcoxon_signed_rank(diffs)``: the exact two-sided p-value of the Wilcoxon signed-rank test,
  by enumerating every sign assignment of the ranks (zero differences dropped, tied absolute
  differences given their average rank), so it is exact with ties too; over 20 non-zero pairs it
  uses the normal approximation with the tie correction.
* ``bootstrap_ci(values)``: percentile bootstrap confidence interval of the mean (seeded).
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of ``values``, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_signed_rank(diffs: list[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired differences ``diffs`` (method A - method B).

    Returns ``{"n": non-zero pairs, "w_plus": sum of the ranks of the positive differences,
    "p": two-sided p-value, "method": "exact" or "normal"}``; p is 1.0 when no difference is non-zero.
    """
    d = [float(x) for x in diffs if x != 0 and not math.isnan(x)]
    n = len(d)
    if n == 0:
        return {"n": 0, "w_plus": 0.0, "p": 1.0, "method": "exact"}
    ranks = average_ranks([abs(x) for x in d])
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    total = sum(ranks)
    if n <= 20:
        sums = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=n)])
        lo = float(np.mean(sums <= w_plus + 1e-9))
        hi = float(np.mean(sums >= w_plus - 1e-9))
        return {"n": n, "w_plus": w_plus, "p": min(1.0, 2 * min(lo, hi)), "method": "exact"}
    mean = total / 2
    var = sum(r * r for r in ranks) / 4  # with average ranks this carries the tie correction
    z = (w_plus - mean) / math.sqrt(var)
    p = math.erfc(abs(z) / math.sqrt(2))
    return {"n": n, "w_plus": w_plus, "p": min(1.0, p), "method": "normal"}


def bootstrap_ci(values: list[float], level: float = 0.95, resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))
