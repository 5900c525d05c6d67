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
steps. The feature net receives both terms' gradients (eq. 16) because both heads sit on it.
``w`` learns through the value term, since the advantage is detached in the policy term.
"""
from __future__ import annotations

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


def entropy_map(logits: Tensor) -> Tensor:
    """logits [B, A, H, W] -> per-pixel entropy of softmax [B, 1, H, W] (finite for any finite logits)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1, keepdim=True)


def step_losses(logits: Tensor, actions: Tensor, value: Tensor, ret: Tensor) -> dict[str, Tensor]:
    """One step's pixel-mean terms.

    logits [B, 2, H, W], actions [B, H, W] int64, value [B, 1, H, W], ret [B, 1, H, W].
    Returns scalars ``policy``, ``value``, ``entropy`` and the detached ``advantage`` mean.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    logp_a = logp.gather(1, actions.unsqueeze(1))
    adv = ret - value.float()
    return {
        "policy": -(logp_a * adv.detach()).mean(),
        "value": (adv ** 2).mean(),
        "entropy": -(logp.exp() * logp).sum(dim=1).mean(),
        "advantage": adv.detach().mean(),
    }


def combine(terms: dict[str, Tensor], value_coef: float, entropy_coef: float) -> Tensor:
    """policy + value_coef * value - entropy_coef * entropy (a scalar to backward)."""
    return terms["policy"] + value_coef * terms["value"] - entropy_coef * terms["entropy"]
