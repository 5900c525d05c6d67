"""Random geometric augmentation of training batches, the same for PixelDRL-MG and the baselines.

The paper names no augmentation; this is an option (``data.augment`` for PixelDRL-MG,
``--augment`` for ``baselines.train``), off by default. Modes:

* ``none``: the batch unchanged.
* ``flip``: each slice mirrored left-right with probability 1/2 (axial brain slices are
  roughly symmetric, so a mirrored slice is a plausible slice).
* ``d4``: each slice put through one of the 8 symmetries of the square (4 rotations by 90
  degrees, each with or without a mirror), chosen uniformly.

Image and mask of a slice get the same transform, so the labels stay aligned. Square slices are
assumed for the rotations (the store's slices are).

Continuous jitter (``Jitter``: ``data.jitter_rotate``, ``data.jitter_scale``, ``data.jitter_gamma``;
the baselines' ``--jitter-*``), each off at 0 and applied after the symmetry: a rotation by a
uniform angle in [-r, r] degrees and a zoom by a uniform factor in [1 - s, 1 + s] about the slice's
centre (bilinear image, nearest mask, zeros outside; ``affine_warp``), and per channel a gamma
curve between the slice-channel's minimum and maximum, exponent log-uniform in [1/(1 + g), 1 + g]
(``gamma_curve``; the minimum and maximum stay where they are, so a zero background stays zero).

The same modes name the symmetries of test-time averaging (``symmetric_mean``; ``--tta`` of
``tools/eval_ckpt.py`` and ``tools/rescore.py``): a map is predicted on each transformed input,
transformed back, and the maps averaged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_MODES = ("none", "flip", "d4")


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` in 0..7 of the square on the last two axes: rotate by ``k % 4`` quarter
    turns, then mirror left-right when ``k >= 4``. [..., H, W] -> [..., W, H] or [..., H, W]."""
    out = np.rot90(a, k % 4, axes=(-2, -1))
    return out[..., ::-1] if k >= 4 else out


def draw_transforms(mode: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """The symmetry index (0..7, 0 = identity) of each of ``n`` slices under ``mode``: [n] int."""
    if mode == "none":
        return np.zeros(n, dtype=np.int64)
    if mode == "flip":
        return rng.integers(0, 2, size=n) * 4  # 4 = mirror without rotation
    if mode == "d4":
        return rng.integers(0, 8, size=n)
    raise ValueError(f"unknown augmentation {mode!r}; known: {', '.join(AUGMENT_MODES)}")


def augment_batch(images: np.ndarray, masks: np.ndarray, mode: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """images [B, C, H, W], masks [B, H, W] -> the same shapes, each slice transformed alike.

    ``mode`` ``none`` returns the inputs themselves and draws nothing from ``rng``.
    """
    if mode == "none":
        return images, masks
    ks = draw_transforms(mode, images.shape[0], rng)
    out_i = np.stack([np.ascontiguousarray(dihedral(im, int(k))) for im, k in zip(images, ks)])
    out_m = np.stack([np.ascontiguousarray(dihedral(m, int(k))) for m, k in zip(masks, ks)])
    return out_i, out_m


@dataclass(frozen=True)
class Jitter:
    """Ranges of the continuous jitter; 0 turns a transform off (module docstring)."""

    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    scale: float = 0.0   # zoom uniform in [1 - scale, 1 + scale]
    gamma: float = 0.0   # exponent log-uniform in [1 / (1 + gamma), 1 + gamma]

    def problem(self, names: tuple[str, str, str] = ("rotate", "scale", "gamma")) -> str | None:
        """What is wrong with the ranges (one line naming the field by ``names``), or None."""
        if not 0 <= self.rotate <= 180:
            return f"{names[0]} must be in [0, 180] degrees, got {self.rotate:g}"
        if not 0 <= self.scale < 1:
            return f"{names[1]} must be in [0, 1), got {self.scale:g}"
        if not 0 <= self.gamma <= 10:
            return f"{names[2]} must be in [0, 10], got {self.gamma:g}"
        return None

    @property
    def spatial(self) -> bool:
        return self.rotate > 0 or self.scale > 0


def affine_warp(images: np.ndarray, masks: np.ndarray, angles_deg: np.ndarray,
                zooms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate slice b's content by ``angles_deg[b]`` (counter-clockwise as displayed, row 0 at the
    top) and magnify it by ``zooms[b]`` about the centre: images [B, C, H, W] (bilinear), masks
    [B, H, W] (nearest), zeros where the source lies outside; same shapes and dtypes back."""
    b, _, h, w = images.shape
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    z = np.asarray(zooms, dtype=np.float64)
    cos, sin = np.cos(a) / z, np.sin(a) / z
    # output pixel p (in pixels from the centre, x right, y down) samples the input at R(-a) p / z;
    # affine_grid works in coordinates normalised by the half-sides, hence the aspect factors
    theta = np.zeros((b, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(torch.from_numpy(theta).float(), [b, 1, h, w], align_corners=False)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).unsqueeze(1)
    out_i = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out_i.numpy().astype(images.dtype, copy=False), out_m[:, 0].numpy().astype(masks.dtype)


def gamma_curve(images: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """images [B, C, H, W], gammas [B, C] -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma, with
    lo, hi the slice-channel's minimum and maximum (a constant channel is returned as it is)."""
    x = np.asarray(images, dtype=np.float32)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    unit = np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)
    return (lo + span * unit ** np.asarray(gammas, dtype=np.float32)[:, :, None, None]).astype(images.dtype,
                                                                                                copy=False)


def jitter_batch(images: np.ndarray, masks: np.ndarray, jitter: Jitter,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """images [B, C, H, W], masks [B, H, W] -> the same shapes, each slice jittered by its own draw.

    With every range 0 it returns the inputs themselves and draws nothing from ``rng``.
    """
    b = images.shape[0]
    if jitter.spatial:
        angles = rng.uniform(-jitter.rotate, jitter.rotate, size=b)
        zooms = rng.uniform(1.0 - jitter.scale, 1.0 + jitter.scale, size=b)
        images, masks = affine_warp(images, masks, angles, zooms)
    if jitter.gamma > 0:
        span = np.log1p(jitter.gamma)
        images = gamma_curve(images, np.exp(rng.uniform(-span, span, size=images.shape[:2])))
    return images, masks


def symmetries(mode: str) -> tuple[int, ...]:
    """The symmetry indices a mode ranges over: none (0,), flip (0, 4), d4 (0..7)."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation {mode!r}; known: {', '.join(AUGMENT_MODES)}")
    return {"none": (0,), "flip": (0, 4), "d4": tuple(range(8))}[mode]


def dihedral_tensor(x: torch.Tensor, k: int) -> torch.Tensor:
    """``dihedral`` on a tensor's last two axes (the same symmetry ``k``)."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def undo_dihedral_tensor(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of ``dihedral_tensor(., k)``: mirror back first, then rotate back."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def symmetric_mean(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Test-time averaging: the mean over the mode's symmetries g of g^-1(predict(g(x))).

    x [B, C, H, W]; ``predict`` maps [B, C, H', W'] to a map [B, K, H', W'] (probabilities, say);
    returns [B, K, H, W]. Mode ``none`` is ``predict(x)`` itself.
    """
    ks = symmetries(mode)
    return sum(undo_dihedral_tensor(predict(dihedral_tensor(x, k)), k) for k in ks) / len(ks)
