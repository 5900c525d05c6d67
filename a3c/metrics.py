"""Segmentation metrics of PixelDRL-MG (paper, section "Evaluation"; docs/METRICS.md).

All functions are pure, numpy/scipy based, and take 2D masks of shape [H, W] as anything
``np.asarray`` accepts (numpy arrays, lists, torch CPU tensors; a tensor that requires grad is
detached first). Any nonzero value is foreground. ``spacing`` is ``None`` (pixel units), a
positive scalar (isotropic) or ``(sy, sx)`` = (row spacing, column spacing), e.g. in mm; it only
affects HD95. Every metric is returned as a Python float.

Definitions, with TP/FP/FN pixel counts, T = |gt|, P = |pred| and EPS = 1e-4 (as in the paper):

* DICE = (2 TP + EPS) / (T + P + EPS)
* PPV  = (TP + EPS) / (TP + FP + EPS)
* SEN  = (TP + EPS) / (TP + FN + EPS)
* IoU  = (TP + EPS) / (T + P - TP + EPS)
* BIoU: Boundary IoU (Cheng et al., CVPR 2021), computed like ``mask_to_boundary`` of the
  reference bowenc0221/boundary-iou-api: band width d = max(1, round(0.02 * sqrt(H^2 + W^2)));
  the mask is zero-padded by 1 pixel, eroded d times by a 3x3 square, the padding cropped,
  and boundary = mask AND NOT eroded (the band of the mask within Chebyshev distance d of the
  background or of the image border). BIoU = |Gd & Pd| / |Gd | Pd|.
* HD95 = max(q95(d(P->G)), q95(d(G->P))): the larger of the two directed 95th percentiles of
  surface distances (MONAI ``compute_hausdorff_distance(percentile=95, include_background=True)``
  semantics; note medpy's ``hd95`` pools both directions before the percentile instead).
  Surface = mask XOR its binary erosion by the 4-connected cross with zero border (so pixels on
  the image border are surface pixels); d(P->G) = Euclidean distance from each surface pixel of
  P to the nearest surface pixel of G, coordinates scaled by ``spacing``; q95 = linear
  interpolation percentile (``np.percentile`` default == ``torch.quantile`` default).

Empty-mask conventions (always finite, no warnings, no exceptions):

* both empty: DICE = PPV = SEN = IoU = 1 (the epsilon formulas give EPS/EPS), BIoU = 1,
  HD95 = 0. A correct "nothing here" prediction is a perfect prediction.
* exactly one empty: the epsilon formulas are kept as they are, so DICE = IoU ~ 0
  (EPS / (n + EPS)), and the ratio whose denominator is empty becomes 1: PPV = 1 for an empty
  prediction (no false positives), SEN = 1 for an empty ground truth (no missed pixels).
  BIoU = 0 (one boundary empty, the other not). HD95 = the image diagonal in spacing units,
  sqrt((H*sy)^2 + (W*sx)^2), which exceeds any achievable surface distance in the image: a
  finite worst-case penalty. (MONAI returns inf here, and nan when both are empty, with a
  warning; those values would poison means, hence the finite choice.)

The paper removes slices without foreground from its datasets, so the empty-gt cases only
matter for other data; empty predictions do occur early in training.

``aggregate_metrics`` reports per-key mean and population standard deviation (ddof=0) over
per-image rows, i.e. image-level averaging as in the paper's Table 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# scipy is imported where it is used: every spawned training process imports this module, and
# scipy.ndimage and scipy.spatial cost about 0.4 s of start-up there.

__all__ = [
    "EPS",
    "METRIC_KEYS",
    "TABLE_HEADER",
    "overlap_metrics",
    "boundary_band_width",
    "mask_to_boundary",
    "boundary_iou",
    "surface_edges",
    "hausdorff_distance",
    "segmentation_metrics",
    "batch_metrics",
    "aggregate_metrics",
    "format_table_row",
]

EPS = 1e-4
METRIC_KEYS = ("dice", "ppv", "sen", "iou", "biou", "hd95")
TABLE_HEADER = "DICE PPV SEN IoU BIoU HD95"

_SQUARE = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- input handling
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_mask(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D mask [H, W], got shape {a.shape}")
    return a.astype(bool, copy=False) if a.dtype == bool else a != 0


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _spacing(spacing: Any) -> np.ndarray:
    """None | scalar | (sy, sx) -> float64 array [2] of positive spacings."""
    if spacing is None:
        return np.ones(2)
    s = np.asarray(_to_numpy(spacing), dtype=np.float64).reshape(-1)
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.size != 2 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be None, a positive scalar or (sy, sx), got {spacing!r}")
    return s


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask [H, W] as a pair of slices."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


# --------------------------------------------------------------------------- overlap metrics
def overlap_metrics(pred: Any, gt: Any, eps: float = EPS) -> dict[str, float]:
    """DICE, PPV, SEN, IoU of masks pred, gt [H, W] with the paper's epsilon smoothing."""
    p, g = _pair(pred, gt)
    tp = float(np.count_nonzero(p & g))
    n_p = float(np.count_nonzero(p))
    n_t = float(np.count_nonzero(g))
    fp, fn = n_p - tp, n_t - tp
    return {
        "dice": (2.0 * tp + eps) / (n_t + n_p + eps),
        "ppv": (tp + eps) / (tp + fp + eps),
        "sen": (tp + eps) / (tp + fn + eps),
        "iou": (tp + eps) / (n_t + n_p - tp + eps),
    }


# --------------------------------------------------------------------------- boundary IoU
def boundary_band_width(h: int, w: int, dilation_ratio: float = 0.02) -> int:
    """d = max(1, round(dilation_ratio * sqrt(h^2 + w^2))) (Python round, as the reference)."""
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def mask_to_boundary(mask: Any, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary band of a mask [H, W] -> bool [H, W] (boundary-iou-api semantics).

    Equivalent to: pad with one zero pixel, erode ``d`` times by a 3x3 square, crop, subtract.
    The erosion runs only on the mask's bounding box padded by one zero pixel: a pixel inside the
    box is eroded away iff some zero lies within Chebyshev distance d, and the zero ring around
    the box is always at least as close as any zero beyond it, so the result is identical.
    """
    m = _as_mask(mask, "mask")
    h, w = m.shape
    out = np.zeros((h, w), dtype=bool)
    if not m.any():
        return out
    d = boundary_band_width(h, w, dilation_ratio)
    box = _bbox(m)
    crop = m[box]
    from scipy import ndimage as ndi

    eroded = ndi.binary_erosion(np.pad(crop, 1), structure=_SQUARE, iterations=d, border_value=0)
    out[box] = crop & ~eroded[1:-1, 1:-1]
    return out


def boundary_iou(pred: Any, gt: Any, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of masks pred, gt [H, W]; 1.0 when both are empty, 0.0 when one is."""
    p, g = _pair(pred, gt)
    bp = mask_to_boundary(p, dilation_ratio)
    bg = mask_to_boundary(g, dilation_ratio)
    union = np.count_nonzero(bp | bg)
    if union == 0:  # both masks empty (a non-empty mask always has a non-empty boundary)
        return 1.0
    return float(np.count_nonzero(bp & bg)) / float(union)


# --------------------------------------------------------------------------- Hausdorff distance
def surface_edges(mask: Any) -> np.ndarray:
    """Surface pixels of a mask [H, W] -> bool [H, W]: mask XOR erosion(mask, cross, border 0)."""
    m = _as_mask(mask, "mask")
    # Cross erosion with zero border via shifted views of the zero-padded mask (same result as
    # ndi.binary_erosion(m, generate_binary_structure(2, 1), border_value=0), ~20x faster).
    q = np.pad(m, 1)
    interior = q[:-2, 1:-1] & q[2:, 1:-1] & q[1:-1, :-2] & q[1:-1, 2:]
    return m & ~interior


def _image_diagonal(shape: tuple[int, int], sp: np.ndarray) -> float:
    return float(math.hypot(shape[0] * sp[0], shape[1] * sp[1]))


def hausdorff_distance(pred: Any, gt: Any, spacing: Any = None, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance of masks pred, gt [H, W].

    max(percentile of d(P->G), percentile of d(G->P)) over surface pixels, in spacing units
    (pixels if spacing is None). percentile=100 gives the classic Hausdorff distance.
    Both empty -> 0.0; exactly one empty -> image diagonal sqrt((H*sy)^2 + (W*sx)^2).
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if not (has_p and has_g):
        return _image_diagonal(p.shape, sp)
    # Crop to the union's bounding box: everything outside is background in both masks, and
    # erosion with a zero border treats the box edge exactly like the background beyond it.
    box = _bbox(p | g)
    ep, eg = surface_edges(p[box]), surface_edges(g[box])
    shared = np.count_nonzero(ep & eg)  # surface pixels common to both are at distance 0
    from scipy.spatial import cKDTree

    cp, cg = np.argwhere(ep) * sp, np.argwhere(eg) * sp
    zeros = np.zeros(shared)
    d_pg = np.concatenate([zeros, cKDTree(cg, leafsize=32).query(np.argwhere(ep & ~eg) * sp, k=1)[0]])
    d_gp = np.concatenate([zeros, cKDTree(cp, leafsize=32).query(np.argwhere(eg & ~ep) * sp, k=1)[0]])
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


# --------------------------------------------------------------------------- all metrics
def segmentation_metrics(pred: Any, gt: Any, spacing: Any = None) -> dict[str, float]:
    """All six metrics of one slice: masks pred, gt [H, W] -> {dice, ppv, sen, iou, biou, hd95}."""
    p, g = _pair(pred, gt)
    out = overlap_metrics(p, g)
    out["biou"] = boundary_iou(p, g)
    out["hd95"] = hausdorff_distance(p, g, spacing=spacing, percentile=95.0)
    return out


def batch_metrics(preds: Any, gts: Any, spacings: Any = None) -> list[dict[str, float]]:
    """Per-image metrics of preds, gts [B, H, W] -> list of B dicts.

    spacings: None, one spacing shared by all images (scalar or (sy, sx)), or [B, 2] per image.
    """
    p, g = _to_numpy(preds), _to_numpy(gts)
    if p.ndim != 3 or p.shape != g.shape:
        raise ValueError(f"preds and gts must both be [B, H, W], got {p.shape} and {g.shape}")
    b = p.shape[0]
    if spacings is None:
        per_image: list[Any] = [None] * b
    else:
        s = np.asarray(_to_numpy(spacings), dtype=np.float64)
        if s.ndim == 2:
            if s.shape[0] != b:
                raise ValueError(f"per-image spacings must be [B, 2] with B={b}, got {s.shape}")
            per_image = list(s)
        else:
            per_image = [s] * b
    return [segmentation_metrics(p[i], g[i], spacing=per_image[i]) for i in range(b)]


def improves(score: float, best: float, tol: float = EPS) -> bool:
    """Whether a checkpoint's validation ``score`` takes the place of the ``best`` so far.

    Scores closer than ``tol`` (the Dice smoothing constant: an empty mask scores up to that much
    on a slice with an object) are a tie, and a tie goes to the later, longer-trained checkpoint.
    Without this, a validation split that no checkpoint segments keeps the first checkpoint.
    """
    return score >= best - tol


def aggregate_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and population std (ddof=0) per key over per-image rows.

    Returns {key: {"mean": float, "std": float, "n": int}} with the keys of the first row (every
    row must have them); an empty input gives {}.
    """
    rows = list(rows)
    if not rows:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        v = np.asarray([float(r[key]) for r in rows], dtype=np.float64)
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(v.size)}
    return out


def format_table_row(
    agg: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] = METRIC_KEYS,
    digits: int = 4,
    with_std: bool = False,
) -> str:
    """Table-2-style row from ``aggregate_metrics`` output, columns as ``TABLE_HEADER``.

    E.g. "0.8346 0.8678 0.8469 0.7510 0.4081 4.0487" (with_std: "0.8346±0.0712 ...").
    """
    cells = []
    for k in keys:
        cell = f"{agg[k]['mean']:.{digits}f}"
        if with_std:
            cell += f"±{agg[k]['std']:.{digits}f}"
        cells.append(cell)
    return " ".join(cells)
