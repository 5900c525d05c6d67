"""Per-pixel agents on a batch of images: state, mask update and reward (eq. 12).

Every pixel i is an agent with a binary mask value m_i. Actions: 0 = "set to zero"
(background), 1 = "do nothing" (keep, object). ``m(0)`` is all ones.

Mask update (``env.mask_update``):
  * ``multiply`` : m(t+1) = m(t) * a(t). "Do nothing" leaves the pixel as it is, so a zeroed
    pixel stays zero: the paper's words read literally, and the default. Every step's action
    then decides the final mask, so every step gets full credit in the returns.
  * ``replace``  : m(t+1) = a(t). Later steps can add pixels back (ablation). With eq. 12's
    rewards the returns telescope and a step before the last is credited only (1 - gamma) of
    its effect; measured on the synthetic set it learns far slower (docs/RESULTS.md).
State given to the network (``env.state``):
  * ``masked``   : X(t) = I * m(t), the paper's input (Fig. 1).
  * ``stacked``  : channels [I, m(t)], which keeps the intensity of zeroed pixels.
Reward, eq. 12 per pixel: r_i(t) = (m_i(t) - G_i)^2 - (m_i(t+1) - G_i)^2, i.e. +1 where the
pixel became right, -1 where it became wrong, 0 otherwise.

``env.kind = "refine"`` is the PixelRL baseline of the paper's Fig. 5 instead: the store's last
image channel is a coarse probability map p(0) (a U-Net's, ``baselines.coarse``), the other
channels are the image I; action k adds ``env.deltas[k]`` to a pixel's p (clipped to [0, 1]);
the reward is the same squared-error decrease with p in place of m, and the segmentation is
p(t_max) > 0.5. The state reads (I, p) as above.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from a3c.config import EnvConfig

BACKGROUND, KEEP = 0, 1


def initial_mask(images: torch.Tensor) -> torch.Tensor:
    """images [B, C, H, W] -> m(0) = ones [B, 1, H, W] (images' dtype)."""
    b, _, h, w = images.shape
    return images.new_ones(b, 1, h, w)


def update_mask(mask: torch.Tensor, actions: torch.Tensor, mode: str) -> torch.Tensor:
    """mask [B, 1, H, W], actions [B, H, W] (0/1) -> m(t+1) [B, 1, H, W]."""
    a = actions.unsqueeze(1).to(mask.dtype)
    if mode == "replace":
        return a
    if mode == "multiply":
        return mask * a
    raise ValueError(f"unknown mask update {mode!r}")


def refine_update(prob: torch.Tensor, actions: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """prob [B, 1, H, W] in [0, 1], actions [B, H, W] indices into deltas [A] -> clip(p + delta, 0, 1)."""
    return (prob + deltas.to(prob.dtype)[actions].unsqueeze(1)).clamp(0.0, 1.0)


def n_actions(cfg: EnvConfig) -> int:
    """2 (zero, keep) for PixelDRL-MG's agents; one per delta for the refinement."""
    return len(cfg.deltas) if cfg.kind == "refine" else 2


def observe(images: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """images [B, C, H, W], mask [B, 1, H, W] -> state [B, C, H, W] (masked) or [B, C+1, H, W] (stacked)."""
    if mode == "masked":
        return images * mask
    if mode == "stacked":
        return torch.cat([images, mask], dim=1)
    raise ValueError(f"unknown state {mode!r}")


def pixel_reward(mask_before: torch.Tensor, mask_after: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Eq. 12 per pixel: (m(t) - G)^2 - (m(t+1) - G)^2; all [B, 1, H, W] -> [B, 1, H, W]."""
    return (mask_before - gt) ** 2 - (mask_after - gt) ** 2


@dataclass
class PixelEnv:
    """A batch of episodes. ``gt`` may be None at inference (rewards are then not computed).

    images [B, C, H, W] float, gt [B, 1, H, W] float 0/1.
    """

    cfg: EnvConfig
    images: torch.Tensor
    gt: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.refine = self.cfg.kind == "refine"
        if self.refine:
            if self.images.shape[1] < 2:
                raise ValueError("env.kind refine needs images with a coarse-map channel last (baselines.coarse)")
            self.coarse = self.images[:, -1:].clamp(0.0, 1.0)
            self.images = self.images[:, :-1]
            self.deltas = torch.tensor(self.cfg.deltas, dtype=self.images.dtype, device=self.images.device)
        self.reset()

    def reset(self) -> torch.Tensor:
        """Back to m(0) (ones, or the coarse map p(0) for ``refine``); returns the state s(0)."""
        self.mask = self.coarse.clone() if self.refine else initial_mask(self.images)
        self.t = 0
        return self.state()

    def state(self) -> torch.Tensor:
        return observe(self.images, self.mask, self.cfg.state)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """actions [B, H, W] -> (s(t+1), reward [B, 1, H, W] or None without gt)."""
        if self.refine:
            new_mask = refine_update(self.mask, actions, self.deltas)
        else:
            new_mask = update_mask(self.mask, actions, self.cfg.mask_update)
        reward = pixel_reward(self.mask, new_mask, self.gt) if self.gt is not None else None
        self.mask = new_mask
        self.t += 1
        return self.state(), reward
