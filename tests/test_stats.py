"""a3c.stats: exact Wilcoxon signed-rank and bootstrap intervals, by hand and against SciPy when present."""
from __future__ import annotations

import pytest

from a3c.stats import average_ranks, bootstrap_ci, wilcoxon_signed_rank


def test_average_ranks_share_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_wilcoxon_by_hand():
    # all four positive: W+ = 10, the largest of 16 equally likely sums -> p = 2/16
    r = wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.4])
    assert r["w_plus"] == 10 and r["p"] == pytest.approx(0.125) and r["method"] == "exact"
    # ranks 1..5, the rank-2 difference negative: W+ = 13; sums >= 13 are the complements of
    # the subsets summing to <= 2 ({}, {1}, {2}): 3 of 32 -> p = 6/32
    r = wilcoxon_signed_rank([1.0, -2.0, 3.0, 4.0, 5.0])
    assert r["w_plus"] == 13 and r["p"] == pytest.approx(6 / 32)
    # zero differences are dropped; none left -> p = 1
    assert wilcoxon_signed_rank([0.0, 0.0])["p"] == 1.0
    assert wilcoxon_signed_rank([0.0, 1.0, 2.0])["n"] == 2
    # symmetric: p never exceeds 1
    assert wilcoxon_signed_rank([1.0, -1.0])["p"] == 1.0


def test_wilcoxon_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    diffs = [0.12, -0.05, 0.31, 0.08, -0.02, 0.22, 0.17, 0.04]
    ours = wilcoxon_signed_rank(diffs)["p"]
    theirs = stats.wilcoxon(diffs, method="exact").pvalue
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_wilcoxon_normal_approximation_for_many_pairs():
    diffs = [float(i) if i % 3 else -float(i) for i in range(1, 31)]
    r = wilcoxon_signed_rank(diffs)
    assert r["method"] == "normal" and 0.0 < r["p"] < 1.0
    stats = pytest.importorskip("scipy.stats")
    assert r["p"] == pytest.approx(stats.wilcoxon(diffs, method="approx", correction=False).pvalue, rel=1e-6)


def test_bootstrap_ci():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    lo, hi = bootstrap_ci([0.0, 1.0, 0.2, 0.8, 0.5])
    assert 0.0 < lo < 0.5 < hi < 1.0
    assert bootstrap_ci([0.0, 1.0, 0.2], seed=1) == bootstrap_ci([0.0, 1.0, 0.2], seed=1)
