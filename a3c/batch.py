"""Store arrays to network tensors: [B, C, H, W] float images and [B, 1, H, W] float masks."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def prepare_batch(images: np.ndarray, masks: np.ndarray, device: torch.device | str,
                  size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """images float32 [B, C, H, W], masks uint8 [B, H, W] -> (x [B, C, S, S], gt [B, 1, S, S]) on device.

    ``size`` > 0 resizes to S x S (bilinear images, nearest masks); 0 keeps H x W.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device, non_blocking=True)
    g = torch.from_numpy(np.ascontiguousarray(masks)).to(device, non_blocking=True).unsqueeze(1).float()
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        g = F.interpolate(g, size=(size, size), mode="nearest")
    return x, g
