"""PA3C returns and loss terms (eqs. 8, 13-16) as pure functions over tensors.

Returns with the learned reward-map convolution (eq. 8, PixelRL's form for n steps): going
backwards over the episode,

    R(T) = bootstrap (zeros, or V(s(T)) detached),   R(t) = r(t) + conv_w(gamma * R(t+1)),

with ``w`` identity-initialised, so that at the start R(t) is the plain discounted sum (eq. 2).
Per step, as pixel means over [B, 1, H, W]:

    A(t)   = R(t) - V(s(t))                      (eq. 14; detached in the policy term)
    policy = -mean(log pi(a(t) | s(t)) * A(t))   (eq. 15)
    value  =  mean((R(t) - V(s(t)))^2)           (eq. 13)
    entropy=  mean(H(pi(. | s(t))))

and ``loss(t) = policy + value_coef * value - entropy_coef * entropy``; the update sums the
steps. Optionally (``loss.class_balance`` = beta > 0) the policy and value means are weighted
per pixel by its class's share of the image to the power -beta (``class_weights``): the paper
is silent here, and with small objects the plain pixel mean drives the policy to "zero
everything" (REINFORCE's push on the rare class vanishes once its action is rarely sampled).
Four further departures from the paper, each a config option (docs/METHOD.md):
``loss.live_only`` drops the policy and entropy terms of pixels already zeroed under ``multiply``
(their actions change nothing), ``loss.class_weight_cap`` bounds the class weights,
``loss.ce_coef`` adds a cross-entropy term toward the ground truth, whose gradient does not
vanish for a confidently wrong pixel as the policy gradient's does, and ``loss.dice_coef`` adds a
soft-Dice term on the mask the step is expected to leave (``expected_mask``).
The feature net receives both terms' gradients (eq. 16) because both heads sit on it.
``w`` learns through the value term, since the advantage is detached in the policy term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def discounted_returns(rewards: list[Tensor], bootstrap: Tensor, gamma: float,
                       reward_conv: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """rewards: t_max tensors [B, 1, H, W]; bootstrap [B, 1, H, W] -> returns R(0..t_max-1), same shapes.

    ``reward_conv`` is w of eq. 8 (None = identity, the plain discounted return of eq. 2).
    """
    ret = bootstrap
    out: list[Tensor] = []
    for r in reversed(rewards):
        ret = gamma * ret
        if reward_conv is not None:
            ret = reward_conv(ret)
        ret = r + ret
        out.append(ret)
    out.reverse()
    return out


def entropy_map(logp: Tensor) -> Tensor:
    """Log-probabilities [B, A, H, W] (``log_softmax`` over A) -> per-pixel entropy [B, 1, H, W]
    (finite for the log_softmax of any finite logits)."""
    return -(logp.exp() * logp).sum(dim=1, keepdim=True)


def class_weights(gt: Tensor, beta: float, cap: float = 0.0) -> Tensor:
    """Per-pixel weights from the ground truth: gt [B, 1, H, W] 0/1 -> [B, 1, H, W], mean 1 per image.

    A pixel of class c weighs ``f_c ** -beta``, f_c being c's share of the image, rescaled so
    that each image's weights average 1: beta = 0 gives the plain pixel mean of eqs. 13-15,
    beta = 1 lets object and background count equally. ``cap`` > 0 then clamps every weight at
    ``cap`` (after the rescaling, so the mean may drop below 1).
    """
    if beta == 0:
        return torch.ones_like(gt)
    n = gt[0].numel()
    frac_fg = gt.flatten(1).mean(dim=1).clamp(1.0 / n, 1.0 - 1.0 / n).view(-1, 1, 1, 1)
    w = torch.where(gt > 0.5, frac_fg ** -beta, (1.0 - frac_fg) ** -beta)
    w = w / w.mean(dim=(1, 2, 3), keepdim=True)
    return w.clamp(max=cap) if cap > 0 else w


def expected_mask(logp: Tensor, mask_before: Tensor | None = None) -> Tensor:
    """The mask a step leaves, in expectation over its actions: log-probabilities [B, 2, H, W]
    (``log_softmax`` of the zero and keep logits) -> p(keep) [B, 1, H, W], times ``mask_before``
    [B, 1, H, W] under ``mask_update: multiply`` (a zeroed pixel stays zero); None = ``replace``."""
    keep = logp[:, 1:2].exp()
    return keep if mask_before is None else keep * mask_before


def soft_dice_loss(prob: Tensor, gt: Tensor, smooth: float = 1e-5) -> Tensor:
    """prob [B, 1, H, W] in [0, 1], gt [B, 1, H, W] 0/1 -> scalar: the mean over images of
    1 - (2 sum(prob * gt) + smooth) / (sum(prob) + sum(gt) + smooth) (per image, like MONAI's
    ``DiceLoss`` that the U-Net baseline trains with; an empty ground truth asks for an empty mask)."""
    inter = (prob * gt).flatten(1).sum(dim=1)
    total = prob.flatten(1).sum(dim=1) + gt.flatten(1).sum(dim=1)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


@dataclass(frozen=True)
class PixelWeights:
    """How much each pixel counts in a step's means; None = every pixel 1.

    ``weight`` [B, 1, H, W]: the class weights (``class_weights``) of the policy, value and
    cross-entropy terms. ``live`` [B, 1, H, W] 0/1: the pixels whose action still matters, which
    alone enter the policy, entropy and cross-entropy terms (the sums still divide by every pixel).
    """

    weight: Tensor | None = None
    live: Tensor | None = None


@dataclass(frozen=True)
class Target:
    """The ground truth of a step's supervised terms.

    ``actions`` [B, H, W] int64: the right action of every pixel (keep object, zero background).
    ``mask_before`` [B, 1, H, W] 0/1: the mask the step starts from under ``multiply`` (None under
    ``replace``), for ``expected_mask``.
    """

    actions: Tensor
    mask_before: Tensor | None = None


def step_losses(logits: Tensor, actions: Tensor, value: Tensor, ret: Tensor,
                pixels: PixelWeights = PixelWeights(), target: Target | None = None) -> dict[str, Tensor]:
    """One step's pixel-mean terms, weighted per pixel by ``pixels``.

    logits [B, 2, H, W], actions [B, H, W] int64, value [B, 1, H, W], ret [B, 1, H, W].
    ``target`` adds ``ce``: the class-weighted mean of -log pi(target.actions | s), and ``dice``:
    ``soft_dice_loss`` of the step's ``expected_mask(logp, target.mask_before)`` against it.
    Returns scalars ``policy``, ``value``, ``entropy``, ``ce``, ``dice`` (both 0 without a target)
    and the detached ``advantage`` mean.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    logp_a = logp.gather(1, actions.unsqueeze(1))
    adv = ret - value.float()
    weight, live = pixels.weight, pixels.live
    w = 1.0 if weight is None else weight
    lw = w if live is None else w * live
    ent = entropy_map(logp)
    zero = logp.new_zeros(())
    ce, dice = zero, zero
    if target is not None:
        gt = target.actions.unsqueeze(1)
        ce = -(lw * logp.gather(1, gt)).mean()
        dice = soft_dice_loss(expected_mask(logp, target.mask_before), gt.float())
    return {
        "policy": -(lw * logp_a * adv.detach()).mean(),
        "value": (w * adv ** 2).mean(),
        "entropy": (ent if live is None else ent * live).mean(),
        "ce": ce,
        "dice": dice,
        "advantage": adv.detach().mean(),
    }


def combine(terms: dict[str, Tensor], value_coef: float, entropy_coef: float, ce_coef: float = 0.0,
            dice_coef: float = 0.0) -> Tensor:
    """policy + value_coef * value - entropy_coef * entropy + ce_coef * ce + dice_coef * dice
    (a scalar to backward)."""
    total = terms["policy"] + value_coef * terms["value"] - entropy_coef * terms["entropy"]
    if ce_coef:
        total = total + ce_coef * terms["ce"]
    return total + dice_coef * terms["dice"] if dice_coef else total
