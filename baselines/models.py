"""Supervised 2D segmentation baselines built from MONAI's maintained implementations.

``build_baseline(name, in_channels, size_hint=None, width=1.0)`` returns an ``nn.Module`` that
maps images ``[B, C, H, W]`` (any H, W >= 1) to one channel of logits ``[B, 1, H, W]``.

==================  =======================================  ==========================================
name                MONAI network                            channels at width 1
==================  =======================================  ==========================================
``unet``            ``monai.networks.nets.UNet`` (residual   (32, 64, 128, 256, 512), strides
                    units, instance norm, PReLU)             (2, 2, 2, 2), ``num_res_units=2``
``attention_unet``  ``monai.networks.nets.AttentionUnet``    (32, 64, 128, 256, 512), strides
                    (attention gates, batch norm, ReLU)      (2, 2, 2, 2)
``unet_plus_plus``  ``monai.networks.nets.BasicUNetPlusPlus`` features (32, 64, 128, 256, 512, 32);
                    (nested dense skips; last output used)   ``deep_supervision=False``
``basic_unet``      ``monai.networks.nets.BasicUNet`` (two   MONAI's default features
                    convs per level, instance norm)          (32, 32, 64, 128, 256, 32)
``segresnet``       ``monai.networks.nets.SegResNet``        ``init_filters=32`` (a multiple of 8:
                    (residual encoder, group norm)           8 groups), blocks (1, 2, 2, 4) down
==================  =======================================  ==========================================

The three U-Net variants of the paper's Table 2 share the encoder widths 32..512, so that at
width 1 they differ only in their decoders. The paper's originals start at 64 channels
(``width=2`` here: about 26M, 32M and 36M parameters against the paper's 31M, 32M and 47M).
Swin-UNETR is not offered: MONAI's implementation needs the ``einops`` package, which this
project does not install.

``width`` multiplies every channel count (``round(c * width)``, at least 1; SegResNet's
``init_filters`` is rounded to a multiple of 8, at least 8). Named widths: ``full`` 1,
``half`` 0.5, ``small`` 0.25, ``tiny`` 0.125.

Sizes: every network halves the image 4 times (SegResNet 3 times), so the wrapper pads the input
with zeros (symmetrically, the odd pixel at the bottom/right) to a multiple of 16 (SegResNet: 8)
that is at least twice that multiple (32; SegResNet 16), so the coarsest feature map is at least
2 x 2 (instance norm needs more than one spatial element), and crops the logits back to H x W.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from a3c.params import numel

__all__ = ["BASELINES", "WIDTHS", "BaselineNet", "build_baseline", "parse_width"]

WIDTHS = {"full": 1.0, "half": 0.5, "small": 0.25, "tiny": 0.125}


def parse_width(width: float | int | str) -> float:
    """1.0, 0.25, "0.25", "small" -> a positive float; ValueError otherwise."""
    if isinstance(width, str):
        key = width.strip().lower()
        if key in WIDTHS:
            return WIDTHS[key]
        try:
            value = float(key)
        except ValueError:
            value = float("nan")
    else:
        value = float(width)
    if not (value > 0 and value <= 64):  # also rejects nan
        raise ValueError(f"width must be a number in (0, 64] or one of {', '.join(WIDTHS)}, got {width!r}")
    return value


def _scale(channels, width: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(c * width))) for c in channels)


def _unet(in_channels: int, width: float) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=1,
                channels=_scale((32, 64, 128, 256, 512), width), strides=(2, 2, 2, 2), num_res_units=2)


def _attention_unet(in_channels: int, width: float) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    # The attention gates use channels // 2 intermediate features: keep at least 2 channels.
    channels = tuple(max(2, c) for c in _scale((32, 64, 128, 256, 512), width))
    return AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=1,
                         channels=channels, strides=(2, 2, 2, 2))


def _unet_plus_plus(in_channels: int, width: float) -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    return BasicUNetPlusPlus(spatial_dims=2, in_channels=in_channels, out_channels=1,
                             features=_scale((32, 64, 128, 256, 512, 32), width), deep_supervision=False)


def _basic_unet(in_channels: int, width: float) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1,
                     features=_scale((32, 32, 64, 128, 256, 32), width))


def _segresnet(in_channels: int, width: float) -> nn.Module:
    from monai.networks.nets import SegResNet

    init = max(8, 8 * int(round(32 * width / 8)))
    return SegResNet(spatial_dims=2, in_channels=in_channels, out_channels=1, init_filters=init)


# name -> (builder, downsampling factor of the coarsest level)
BASELINES: dict[str, tuple[Callable[[int, float], nn.Module], int]] = {
    "unet": (_unet, 16),
    "attention_unet": (_attention_unet, 16),
    "unet_plus_plus": (_unet_plus_plus, 16),
    "basic_unet": (_basic_unet, 16),
    "segresnet": (_segresnet, 8),
}


class BaselineNet(nn.Module):
    """A MONAI network behind zero padding to a size it accepts and cropping back.

    ``forward(x [B, C, H, W]) -> logits [B, 1, H, W]``. Networks that return a list (U-Net++)
    give their last output. State-dict keys are the MONAI network's, prefixed ``net.``.
    """

    def __init__(self, name: str, net: nn.Module, in_channels: int, width: float, multiple: int,
                 size_hint: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.in_channels = int(in_channels)
        self.width = float(width)
        self.multiple = int(multiple)
        self.size_hint = size_hint

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size the MONAI network sees for an H x W input."""
        m = self.multiple

        def up(n: int) -> int:
            return max(2 * m, -(-n // m) * m)

        return up(h), up(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: expected images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph, pw = self.padded_size(h, w)
        top, left = (ph - h) // 2, (pw - w) // 2
        if (ph, pw) != (h, w):
            x = F.pad(x, (left, pw - w - left, top, ph - h - top))
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return out[:, :, top:top + h, left:left + w]


def build_baseline(name: str, in_channels: int, size_hint: int | tuple[int, int] | None = None,
                   width: float | str = 1.0) -> BaselineNet:
    """The baseline ``name`` (see ``BASELINES``) for ``in_channels``-channel images.

    ``size_hint`` (an int or (H, W)) is the input size the model will be trained at. None of the
    current networks needs it (padding handles every size); it is validated and kept as
    ``model.size_hint``. ``width`` is a channel multiplier or a name of ``WIDTHS``.
    Raises ValueError for an unknown name, channels < 1, a bad width or size hint.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    w = parse_width(width)
    hint = None
    if size_hint is not None:
        hint = (int(size_hint), int(size_hint)) if isinstance(size_hint, int) else tuple(int(s) for s in size_hint)
        if len(hint) != 2 or min(hint) < 1:
            raise ValueError(f"size_hint must be a positive int or (H, W), got {size_hint!r}")
    builder, multiple = BASELINES[name]
    return BaselineNet(name, builder(int(in_channels), w), int(in_channels), w, multiple, hint)


def main(argv: list[str] | None = None) -> int:
    """``python -m baselines.models [--in-channels C] [--width W]``: parameter counts as a table."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m baselines.models",
                                 description="Parameter counts of the supervised baselines.")
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--width", default="1")
    args = ap.parse_args(argv)
    for name in BASELINES:
        n = numel(build_baseline(name, args.in_channels, width=args.width))
        print(f"{name:<16}{n:>12,d}  ({n / 1e6:.2f}M)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
