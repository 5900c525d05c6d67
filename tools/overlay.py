"""The overlay picture the inference tools write: a slice in grey, a mask in red, a contour in green."""
from __future__ import annotations

import numpy as np


def overlay_picture(image: np.ndarray, mask: np.ndarray, contour: np.ndarray | None = None) -> np.ndarray:
    """[C, H, W] image and [H, W] mask -> uint8 [H, W, 3]: the first channel in grey (min-max
    scaled), the mask filled in red at 50 %, and the edge pixels of ``contour`` [H, W] (e.g. the
    ground truth; ``a3c.metrics.surface_edges``) in green on top."""
    img = image[0].astype(np.float64)
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    rgb = np.repeat(img[..., None], 3, axis=2)
    m = mask.astype(bool)
    rgb[m] = 0.5 * rgb[m] + 0.5 * np.array([1.0, 0.0, 0.0])
    if contour is not None:
        from a3c.metrics import surface_edges

        rgb[surface_edges(contour.astype(bool))] = (0.0, 1.0, 0.0)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
