"""The PixelDRL-MG network (paper Fig. 1): VGG16/2 features, self-attention (eq. 1), dilated heads.

Reading of the paper used here (it leaves the wiring open):

* Feature extractor: VGG16 conv1_1 .. conv4_3 (the "first 23 layers") at half width
  (``width`` = 32 gives 32, 64, 128, 256 channels), 3x3 convolutions with ReLU, 2x2 max pooling
  after blocks 1-3. With ``dilation`` on, blocks 3 and 4 use dilation 2 (wider context at no
  extra parameters); off, every dilation is 1.
* ``f_att`` of eq. 1 is the extractor's output, conv4_3 (1/8 resolution). SAM attends it; the
  attended map is upsampled and concatenated with the three source layers conv1_2 (full
  resolution), conv2_2 (1/2) and conv3_3 (1/4), each brought to full resolution bilinearly.
  This is the paper's "three source layers ... concatenated ... after the self-attention
  module", and it uses every one of the 23 layers.
* Policy and value nets: separate stacks of 3x3 convolutions with the dilations
  ``head_dilations`` (PixelRL's 1,2,3,4,3,2,1), ReLU, then a 1x1 convolution to 2 logits or 1
  value. Full resolution throughout, so every pixel is an agent.
* The reward-map kernel ``w`` of eq. 8 is a module of the network (``reward_conv``) so that it
  is shared, optimised and checkpointed with the other parameters.
* ``norm`` (not in the paper, off by default): a GroupNorm after every hidden 3x3 conv of the
  extractor and the heads, before its ReLU.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from a3c.config import ConfigError, EnvConfig, ModelConfig, TrainConfig, cudnn_benchmark_on, load_config
from a3c.env import n_actions
from a3c.params import numel

VGG_BLOCKS = (2, 2, 3, 3)  # convolutions per block, conv1_x .. conv4_x


def conv3x3(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)


NORM_GROUPS = 4  # model.norm=group: channels per group = C / gcd(C, 4)


def norm_layer(kind: str, channels: int) -> list[nn.Module]:
    """The normalisation after a hidden 3x3 conv (before its ReLU), as a list of 0 or 1 modules.

    ``none``: the paper's network (VGG16 has none). ``group``: GroupNorm with gcd(C, 4) groups.
    ``instance``: GroupNorm with C groups, i.e. instance norm with a learned scale and shift, as the
    U-Net baseline's. Both normalise each slice on its own (no running statistics), so workers,
    evaluation and the shared parameter vector need nothing beyond the affine parameters.
    """
    if kind == "none":
        return []
    groups = channels if kind == "instance" else math.gcd(channels, NORM_GROUPS)
    return [nn.GroupNorm(groups, channels)]


def conv_block(cin: int, cout: int, dilation: int, norm: str) -> list[nn.Module]:
    """3x3 conv, the normalisation of ``norm``, ReLU: [B, cin, H, W] -> [B, cout, H, W]."""
    return [conv3x3(cin, cout, dilation), *norm_layer(norm, cout), nn.ReLU(inplace=True)]


class VGGFeatures(nn.Module):
    """VGG16 conv1_1..conv4_3 at ``width`` base channels.

    forward: x [B, Cin, H, W] -> (conv1_2 [B, w, H, W], conv2_2 [B, 2w, H/2, W/2],
    conv3_3 [B, 4w, H/4, W/4], conv4_3 [B, 8w, H/8, W/8]) (sizes rounded down by each pooling).
    """

    def __init__(self, in_channels: int, width: int, dilation: bool, norm: str = "none"):
        super().__init__()
        dil = (1, 1, 2, 2) if dilation else (1, 1, 1, 1)
        blocks = []
        cin = in_channels
        for i, n in enumerate(VGG_BLOCKS):
            cout = width * 2**i
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += conv_block(cin, cout, dil[i], norm)
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = [width * 2**i for i in range(len(VGG_BLOCKS))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            outs.append(x)
        return outs


class SelfAttention(nn.Module):
    """SAM of eq. 1: ``M = softmax(W * f + f)``, ``out = f * (N * M)``.

    ``W`` is a 1x1 convolution (C -> C). The softmax runs over the N = h*w spatial positions of
    each channel separately, so every position's weight depends on the whole image (the global
    information the paper adds). ``M`` multiplies ``f`` elementwise, scaled by N so that a
    uniform attention map leaves ``f`` unchanged. The 1x1 convolution starts at zero, so at
    initialisation ``M = softmax(f)``.

    forward: f [B, C, h, w] -> [B, C, h, w].
    """

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        logits = (self.proj(f) + f).flatten(2).float()
        m = torch.softmax(logits, dim=-1).view(b, c, h, w).to(f.dtype)
        return f * (m * (h * w))


def make_head(cin: int, channels: int, dilations: list[int], out: int, norm: str = "none") -> nn.Sequential:
    """Stack of dilated 3x3 conv (+ norm) + ReLU, then 1x1 conv: [B, cin, H, W] -> [B, out, H, W]."""
    layers: list[nn.Module] = []
    for d in dilations:
        layers += conv_block(cin, channels, d, norm)
        cin = channels
    layers.append(nn.Conv2d(cin, out, 1))
    return nn.Sequential(*layers)


class RewardConv(nn.Module):
    """Learned reward-map kernel ``w`` of eq. 8, identity-initialised: [B, 1, H, W] -> [B, 1, H, W]."""

    def __init__(self, kernel: int):
        super().__init__()
        weight = torch.zeros(1, 1, kernel, kernel)
        weight[0, 0, kernel // 2, kernel // 2] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[-1]
        return F.conv2d(x, self.weight.to(x.dtype), padding=k // 2)


class PixelDRLNet(nn.Module):
    """forward: state [B, in_channels, H, W] -> (policy logits [B, A, H, W], value [B, 1, H, W]); A = 2 actions
    for PixelDRL-MG (zero, keep), more for the refinement baseline."""

    def __init__(self, cfg: ModelConfig, in_channels: int, actions: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.features = VGGFeatures(in_channels, cfg.width, cfg.dilation, cfg.norm)
        deep = self.features.out_channels[-1]
        self.sam = SelfAttention(deep) if cfg.sam else nn.Identity()
        cat = sum(self.features.out_channels)
        dilations = list(cfg.head_dilations) if cfg.dilation else [1] * len(cfg.head_dilations)
        self.policy = make_head(cat, cfg.head_channels, dilations, actions, cfg.norm)
        self.value = make_head(cat, cfg.head_channels, dilations, 1, cfg.norm)
        self.reward_conv = RewardConv(cfg.reward_kernel)
        if cfg.init == "kaiming":
            kaiming_init(self)

    def shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, H, W] -> concatenated full-resolution features [B, 15 * width, H, W]."""
        size = x.shape[-2:]
        s1, s2, s3, deep = self.features(x)
        parts = [s1] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                        for t in (s2, s3, self.sam(deep))]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.shared_features(x)
        return self.policy(feats), self.value(feats)


def kaiming_init(net: PixelDRLNet) -> None:
    """torchvision VGG's initialisation: every 3x3 conv Kaiming-normal (fan_out, ReLU) with zero bias.

    Each head's last 1x1 conv gets N(0, 0.01) weights and a zero bias, so the policy starts near
    uniform and the value near zero. SAM's projection stays zero (SAM starts as softmax(f)) and w
    the identity. With PyTorch's default (uniform, fan_in with a = sqrt(5)) and no normalisation,
    every layer's output of this network is dominated by its bias: the first logits hardly depend
    on the image.
    """
    for head in (net.policy, net.value):
        last = head[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
    lasts = {id(net.policy[-1]), id(net.value[-1])}
    sam_proj = getattr(net.sam, "proj", None)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in lasts and m is not sam_proj:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last),) + args[1:]


def use_channels_last(model: nn.Module) -> nn.Module:
    """Make every convolution's input channels-last (NHWC) with a forward pre-hook; idempotent.

    The parameters keep their NCHW layout, so they stay views of the flat shared vector; the
    outputs are numerically the same. Hooking each convolution (not only the input) matters for
    one-channel images, whose NCHW and NHWC layouts coincide, so the first block would stay NCHW.
    """
    if not getattr(model, "_channels_last", False):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(_to_channels_last)
        model._channels_last = True
    return model


def tune_for_device(model: nn.Module, device: torch.device | str, train: TrainConfig | None = None) -> nn.Module:
    """The fast path: NHWC activations (``train.channels_last``: cuDNN's layout for bf16 on CUDA,
    oneDNN's faster one on CPU) and, on CUDA, cuDNN autotuning (``train.cudnn_benchmark``: true, or
    auto in a worker the launcher resolved to true under its MPS daemon; auto is off elsewhere).
    Returns the model."""
    train = train or TrainConfig()
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark_on(train.cudnn_benchmark)
    if train.channels_last:
        use_channels_last(model)
    return model


def tune_for_training(model: nn.Module, device: torch.device | str, train: TrainConfig | None = None) -> nn.Module:
    """``tune_for_device``, then, where ``train.compile``, ``torch.compile`` of the forward.

    For processes that run many updates at one batch shape (workers, the single-process loops);
    evaluation, with its changing batches and one model per checkpoint, stays eager. The
    parameters stay graph inputs, so copying new values into the flat vector they view needs no
    recompilation (a test checks the gradients against the eager model's).
    """
    train = train or TrainConfig()
    tune_for_device(model, device, train)
    if train.compile and not getattr(model, "_compiled", False):
        model.compile()
        model._compiled = True
    return model


def state_channels(image_channels: int, state: str) -> int:
    """Network input channels for a state reading: masked keeps C, stacked adds the mask."""
    return image_channels + (1 if state == "stacked" else 0)


def build_model(cfg: ModelConfig, image_channels: int, env: EnvConfig | str = "masked") -> PixelDRLNet:
    """The network for stores of ``image_channels`` channels and the agents of ``env`` (an
    ``EnvConfig``, or only its ``state`` for PixelDRL-MG's agents)."""
    env = env if isinstance(env, EnvConfig) else EnvConfig(state=env)
    image = image_channels - 1 if env.kind == "refine" else image_channels  # less the coarse map
    return PixelDRLNet(cfg, state_channels(image, env.state), n_actions(env))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m a3c.model", description="Print the network's parameter count as JSON.")
    ap.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    ap.add_argument("--in-channels", type=int, default=None, help="image channels (default: model.in_channels, else 1)")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    channels = args.in_channels or cfg.model.in_channels or 1
    model = build_model(cfg.model, channels, cfg.env)
    parts = {name: numel(getattr(model, name)) for name in ("features", "sam", "policy", "value", "reward_conv")}
    print(json.dumps({"params": numel(model), "in_channels": model.in_channels, "parts": parts,
                      "sam": cfg.model.sam, "dilation": cfg.model.dilation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
