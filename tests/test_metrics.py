"""Tests of a3c.metrics: hand-worked cases, MONAI cross-checks, an independent Boundary-IoU
reference with cv2.erode semantics, and the empty-mask conventions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from a3c.metrics import (
    EPS,
    METRIC_KEYS,
    TABLE_HEADER,
    aggregate_metrics,
    batch_metrics,
    boundary_band_width,
    boundary_iou,
    format_table_row,
    hausdorff_distance,
    mask_to_boundary,
    overlap_metrics,
    segmentation_metrics,
    surface_edges,
)

# ----------------------------------------------------------------------------- helpers


def _rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _random_mask(rng: np.random.Generator, shape) -> np.ndarray:
    """Union of 1-3 random blobs: ellipses, rectangles, tiny specks; some touch the border."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(0, 4)
        if kind == 0:  # ellipse, centre possibly near / beyond the border
            cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
            ry, rx = rng.uniform(1.0, 0.6 * h), rng.uniform(1.0, 0.6 * w)
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        elif kind == 1:  # rectangle
            r0, c0 = rng.integers(0, h), rng.integers(0, w)
            m[r0 : r0 + rng.integers(1, h), c0 : c0 + rng.integers(1, w)] = True
        elif kind == 2:  # tiny speck of 1-3 pixels
            r0, c0 = rng.integers(0, h), rng.integers(0, w)
            m[r0 : r0 + rng.integers(1, 3), c0 : c0 + rng.integers(1, 3)] = True
        else:  # ragged blob: thresholded smooth noise
            noise = rng.standard_normal((h // 4 + 2, w // 4 + 2))
            up = np.kron(noise, np.ones((4, 4)))[:h, :w]
            m |= up > rng.uniform(0.8, 1.6)
    if not m.any():
        m[rng.integers(0, h), rng.integers(0, w)] = True
    return m


def _random_pair(rng, shape):
    gt = _random_mask(rng, shape)
    mode = rng.integers(0, 3)
    if mode == 0:  # independent prediction
        pred = _random_mask(rng, shape)
    elif mode == 1:  # shifted ground truth
        pred = np.roll(gt, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    else:  # ground truth with flipped pixels
        pred = gt ^ (rng.random(shape) < 0.03)
    if not pred.any():
        pred[0, 0] = True
    return pred, gt


SHAPES = [(32, 32), (37, 53), (64, 64), (20, 90), (75, 75)]


def _random_cases(n=120, seed=1234):
    rng = np.random.default_rng(seed)
    return [_random_pair(rng, SHAPES[i % len(SHAPES)]) for i in range(n)]


CASES = _random_cases()


def _monai_hd95(pred, gt, spacing=None):
    from monai.metrics import compute_hausdorff_distance

    p = torch.as_tensor(pred, dtype=torch.float32)[None, None]
    g = torch.as_tensor(gt, dtype=torch.float32)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation notices, not ours
        return float(
            compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0, 0]
        )


def _reference_boundary(mask: np.ndarray, dilation_ratio=0.02) -> np.ndarray:
    """Boundary-IoU-API mask_to_boundary, written out with cv2.erode semantics.

    cv2.erode's default border is the maximum value (outside pixels never erode anything);
    the explicit zero pad of 1 pixel is what makes the image border count as background.
    Each iteration is an explicit 3x3 minimum over the 9 neighbours.
    """
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * math.sqrt(h**2 + w**2))))
    cur = np.pad(mask.astype(np.uint8), 1, constant_values=0)
    for _ in range(d):
        q = np.pad(cur, 1, constant_values=1)  # cv2 default: border = +inf for erosion
        nxt = np.ones_like(cur)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nxt = np.minimum(nxt, q[1 + dy : 1 + dy + cur.shape[0], 1 + dx : 1 + dx + cur.shape[1]])
        cur = nxt
    eroded = cur[1 : h + 1, 1 : w + 1]
    return (mask.astype(np.uint8) - eroded).astype(bool)


def _reference_biou(pred, gt):
    bp, bg = _reference_boundary(pred), _reference_boundary(gt)
    union = (bp | bg).sum()
    return 1.0 if union == 0 else (bp & bg).sum() / union


def _brute_hd(pred, gt, spacing=(1.0, 1.0), q=95):
    """All-pairs distances between surface pixels (surface = 4-neighbourhood test, zero border)."""
    def edges(m):
        out = np.zeros_like(m)
        h, w = m.shape
        for r, c in zip(*np.nonzero(m)):
            nb = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
            out[r, c] = any(not (0 <= y < h and 0 <= x < w) or not m[y, x] for y, x in nb)
        return out

    cp = np.argwhere(edges(pred)) * np.asarray(spacing)
    cg = np.argwhere(edges(gt)) * np.asarray(spacing)
    dist = np.sqrt(((cp[:, None, :] - cg[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(dist.min(1), q), np.percentile(dist.min(0), q))


# ----------------------------------------------------------------------------- hand-worked


def test_overlap_hand_example():
    gt = _rect((4, 4), 0, 2, 0, 2)  # 4 px
    pred = _rect((4, 4), 0, 2, 1, 3)  # 4 px, TP = 2, FP = 2, FN = 2
    m = overlap_metrics(pred, gt)
    assert m["dice"] == pytest.approx((4 + EPS) / (8 + EPS), abs=1e-12)
    assert m["ppv"] == pytest.approx((2 + EPS) / (4 + EPS), abs=1e-12)
    assert m["sen"] == pytest.approx((2 + EPS) / (4 + EPS), abs=1e-12)
    assert m["iou"] == pytest.approx((2 + EPS) / (6 + EPS), abs=1e-12)

    pred2 = _rect((4, 4), 0, 4, 0, 2)  # 8 px covering gt: TP = 4, FP = 4, FN = 0
    m2 = overlap_metrics(pred2, gt)
    assert m2["dice"] == pytest.approx((8 + EPS) / (12 + EPS), abs=1e-12)
    assert m2["ppv"] == pytest.approx((4 + EPS) / (8 + EPS), abs=1e-12)
    assert m2["sen"] == pytest.approx(1.0, abs=1e-12)
    assert m2["iou"] == pytest.approx((4 + EPS) / (8 + EPS), abs=1e-12)


def test_band_width():
    assert boundary_band_width(10, 10) == 1  # 0.28 -> round 0 -> clamp 1
    assert boundary_band_width(60, 60) == 2  # 1.697 -> 2
    assert boundary_band_width(256, 256) == 7  # 7.24
    assert boundary_band_width(320, 320) == 9  # 9.05


def test_boundary_hand_examples():
    # 10x10 image, d = 1: a 6x6 square's boundary is its 20-pixel outer ring.
    gt = _rect((10, 10), 2, 8, 2, 8)
    pred = _rect((10, 10), 2, 8, 3, 9)
    bg = mask_to_boundary(gt)
    assert bg.sum() == 20 and not bg[3:7, 3:7].any()
    # rings share rows 2 and 7 over columns 3..7 -> 10 pixels; union 20 + 20 - 10 = 30
    assert boundary_iou(pred, gt) == pytest.approx(10 / 30, abs=1e-12)

    # 60x60 image, d = 2: a strip touching top, left and right borders (rows 0..9).
    # Survivors of the erosion: rows 2..7 and columns 2..57 -> 6 * 56 = 336; band = 600 - 336.
    strip = _rect((60, 60), 0, 10, 0, 60)
    b = mask_to_boundary(strip)
    assert b.sum() == 264
    assert not b[2:8, 2:58].any() and b[0:2].all() and b[8:10].all() and b[:, :2][:10].all()


def test_hd95_hand_examples():
    gt = np.zeros((8, 8), bool)
    pred = np.zeros((8, 8), bool)
    gt[0, 0] = True
    pred[3, 4] = True
    assert hausdorff_distance(pred, gt) == pytest.approx(5.0, abs=1e-12)
    # anisotropic spacing (sy, sx) = (2, 1): sqrt((3*2)^2 + (4*1)^2)
    assert hausdorff_distance(pred, gt, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(52), abs=1e-12)

    # pred = two pixels, distances P->G = [0, 10] -> linear 95th percentile = 9.5; G->P = [0]
    gt = np.zeros((5, 12), bool)
    pred = np.zeros((5, 12), bool)
    gt[0, 0] = True
    pred[0, 0] = pred[0, 10] = True
    assert hausdorff_distance(pred, gt) == pytest.approx(9.5, abs=1e-12)
    assert hausdorff_distance(gt, pred) == pytest.approx(9.5, abs=1e-12)  # symmetric
    assert hausdorff_distance(pred, gt, percentile=100) == pytest.approx(10.0, abs=1e-12)

    # a filled 3x3 square: the centre is not a surface pixel
    sq = _rect((7, 7), 2, 5, 2, 5)
    e = surface_edges(sq)
    assert e.sum() == 8 and not e[3, 3]


def test_identical_masks_are_perfect():
    m = _rect((32, 32), 5, 20, 3, 30)
    r = segmentation_metrics(m, m)
    for k in ("dice", "ppv", "sen", "iou", "biou"):
        assert r[k] == pytest.approx(1.0, abs=1e-12)
    assert r["hd95"] == 0.0


# ----------------------------------------------------------------------------- cross-checks


def test_dice_and_overlap_vs_monai_and_formula():
    from monai.metrics import DiceMetric

    dm = DiceMetric(include_background=True, reduction="none")
    preds = []
    max_dev = 0.0
    for pred, gt in CASES:
        r = overlap_metrics(pred, gt)
        tp, n_p, n_t = int((pred & gt).sum()), int(pred.sum()), int(gt.sum())
        # exact paper formulas from independently computed counts
        assert r["dice"] == pytest.approx((2 * tp + EPS) / (n_t + n_p + EPS), abs=1e-12)
        assert r["ppv"] == pytest.approx((tp + EPS) / (n_p + EPS), abs=1e-12)
        assert r["sen"] == pytest.approx((tp + EPS) / (n_t + EPS), abs=1e-12)
        assert r["iou"] == pytest.approx((tp + EPS) / (n_t + n_p - tp + EPS), abs=1e-12)
        # MONAI has no epsilon: D = 2TP / S with S = T + P >= 1 here. Put the epsilon back into
        # MONAI's value, (D * S + EPS) / (S + EPS), and compare; the raw gap is at most EPS / S.
        d = float(dm(torch.as_tensor(pred)[None, None].float(), torch.as_tensor(gt)[None, None].float())[0, 0])
        s = n_t + n_p
        assert abs(r["dice"] - (d * s + EPS) / (s + EPS)) < 1e-6
        assert abs(r["dice"] - d) <= EPS / s + 1e-6
        max_dev = max(max_dev, abs(r["dice"] - (d * s + EPS) / (s + EPS)))
        preds.append(r)
    assert len(preds) >= 100


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_hd95_vs_monai(spacing):
    devs = []
    for pred, gt in CASES:
        ours = hausdorff_distance(pred, gt, spacing=spacing)
        ref = _monai_hd95(pred, gt, spacing=spacing)
        devs.append(abs(ours - ref))
    assert max(devs) < 1e-3, max(devs)


def test_hd95_vs_bruteforce():
    for pred, gt in CASES[:25]:
        assert hausdorff_distance(pred, gt, spacing=(1.5, 0.5)) == pytest.approx(
            _brute_hd(pred, gt, spacing=(1.5, 0.5)), abs=1e-9
        )


def test_biou_vs_reference():
    for pred, gt in CASES:
        np.testing.assert_array_equal(mask_to_boundary(gt), _reference_boundary(gt))
        assert abs(boundary_iou(pred, gt) - _reference_biou(pred, gt)) < 1e-6


def test_biou_reference_on_large_image_with_band_width_7():
    rng = np.random.default_rng(7)
    for _ in range(3):
        m = _random_mask(rng, (256, 256))
        np.testing.assert_array_equal(mask_to_boundary(m), _reference_boundary(m))


def test_surface_edges_match_scipy_cross_erosion():
    from scipy import ndimage as ndi

    cross = ndi.generate_binary_structure(2, 1)
    for pred, _ in CASES[:30]:
        np.testing.assert_array_equal(surface_edges(pred), pred ^ ndi.binary_erosion(pred, cross, border_value=0))


# ----------------------------------------------------------------------------- edge cases


def _check_finite(r):
    assert set(r) == set(METRIC_KEYS)
    for v in r.values():
        assert isinstance(v, float) and math.isfinite(v)


def test_edge_cases_documented_values():
    shape = (37, 53)
    empty = np.zeros(shape, bool)
    blob = _rect(shape, 10, 20, 10, 30)  # 200 px
    full = np.ones(shape, bool)
    single = np.zeros(shape, bool)
    single[36, 52] = True
    diag = math.hypot(37, 53)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = segmentation_metrics(empty, empty)
        _check_finite(r)
        assert r == {"dice": 1.0, "ppv": 1.0, "sen": 1.0, "iou": 1.0, "biou": 1.0, "hd95": 0.0}

        r = segmentation_metrics(empty, blob)  # empty prediction
        _check_finite(r)
        assert r["dice"] == pytest.approx(EPS / (200 + EPS)) and r["iou"] == pytest.approx(EPS / (200 + EPS))
        assert r["sen"] == pytest.approx(EPS / (200 + EPS))
        assert r["ppv"] == 1.0  # no false positives: EPS / EPS
        assert r["biou"] == 0.0 and r["hd95"] == pytest.approx(diag)

        r = segmentation_metrics(blob, empty)  # empty ground truth
        _check_finite(r)
        assert r["dice"] < 1e-6 and r["ppv"] < 1e-6 and r["sen"] == 1.0
        assert r["biou"] == 0.0 and r["hd95"] == pytest.approx(diag)
        assert segmentation_metrics(blob, empty, spacing=(2.0, 0.5))["hd95"] == pytest.approx(
            math.hypot(37 * 2.0, 53 * 0.5)
        )

        r = segmentation_metrics(full, full)
        _check_finite(r)
        assert r["dice"] == 1.0 and r["biou"] == 1.0 and r["hd95"] == 0.0

        r = segmentation_metrics(full, blob)
        _check_finite(r)
        assert r["sen"] == pytest.approx(1.0) and r["ppv"] == pytest.approx((200 + EPS) / (37 * 53 + EPS))

        r = segmentation_metrics(single, single)
        _check_finite(r)
        assert r["dice"] == 1.0 and r["biou"] == 1.0 and r["hd95"] == 0.0

        r = segmentation_metrics(single, blob)
        _check_finite(r)
        assert r["biou"] == 0.0 and r["hd95"] > 0

        r = segmentation_metrics(empty, single)
        _check_finite(r)


def test_inputs_torch_and_int():
    pred, gt = CASES[3]
    ref = segmentation_metrics(pred, gt)
    t = segmentation_metrics(torch.as_tensor(pred, dtype=torch.float32).requires_grad_(), torch.as_tensor(gt))
    i = segmentation_metrics(pred.astype(np.uint8), gt.astype(np.int64))
    assert t == ref and i == ref
    with pytest.raises(ValueError):
        segmentation_metrics(pred, gt[:-1])
    with pytest.raises(ValueError):
        segmentation_metrics(pred[None], gt[None])


def test_batch_metrics():
    preds = np.stack([CASES[i][0] for i in (0, 5, 10)])  # all (32, 32)
    gts = np.stack([CASES[i][1] for i in (0, 5, 10)])
    rows = batch_metrics(preds, gts)
    assert rows == [segmentation_metrics(p, g) for p, g in zip(preds, gts)]
    shared = batch_metrics(preds, gts, spacings=(0.5, 2.0))
    assert shared[1] == segmentation_metrics(preds[1], gts[1], spacing=(0.5, 2.0))
    per = batch_metrics(preds, gts, spacings=[(1, 1), (0.5, 2.0), (3, 3)])
    assert per[2] == segmentation_metrics(preds[2], gts[2], spacing=3.0)


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_metrics_hand_example():
    rows = [{"dice": 0.5, "hd95": 2.0}, {"dice": 1.0, "hd95": 4.0}, {"dice": 0.0, "hd95": 6.0}]
    agg = aggregate_metrics(rows)
    assert agg["dice"]["mean"] == pytest.approx(0.5)
    assert agg["dice"]["std"] == pytest.approx(math.sqrt(1 / 6))  # population std
    assert agg["hd95"]["mean"] == pytest.approx(4.0)
    assert agg["hd95"]["std"] == pytest.approx(math.sqrt(8 / 3))
    assert agg["dice"]["n"] == 3
    assert aggregate_metrics([]) == {}


def test_format_table_row():
    rows = [segmentation_metrics(p, g) for p, g in CASES[:4]]
    agg = aggregate_metrics(rows)
    line = format_table_row(agg)
    assert len(line.split()) == len(TABLE_HEADER.split()) == 6
    assert line.split()[0] == f"{agg['dice']['mean']:.4f}"
    assert "±" in format_table_row(agg, with_std=True)


def test_improves_ties_go_to_the_later_checkpoint():
    from a3c.metrics import EPS, improves

    assert improves(0.61, 0.60) and not improves(0.59, 0.60)
    assert improves(0.60, 0.60)  # an equal score: the later checkpoint
    # an empty mask on a 175-pixel object scores EPS / (175 + EPS) = 5.7e-7: a tie with 0.0
    assert improves(0.0, EPS / (175 + EPS)) and improves(0.0, -1.0)
    assert not improves(0.0, 2 * EPS)
