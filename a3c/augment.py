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

The same modes name the symmetries of test-time averaging (``symmetric_mean``; ``--tta`` of
``tools/eval_ckpt.py`` and ``tools/rescore.py``): a map is predicted on each transformed input,
transformed back, and the maps averaged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

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
