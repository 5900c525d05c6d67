"""Episodes of the per-pixel agents and the reference Algorithm-1 update.

``reference_update`` is the one gradient computation of the project: the trainer's workers call
it, and the tests call it single-process to show learning and to check the trainer.
Two memory modes (``train.rollout``) give the same gradient:

* ``full``    keeps the autograd graph of all t_max forward passes, then one backward.
* ``onestep`` rolls out without a graph, computes the returns, then re-runs each step's forward
  with a graph and backwards it at once; the reward kernel w gets its gradient from a last,
  cheap backward through the returns. Peak memory is one step's, for one extra forward per step.

``auto`` is resolved by each training process on its first batch (``a3c.memory.resolve_rollout``);
a config that reaches ``reference_update`` still on ``auto`` runs ``onestep``, the mode that fits.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from a3c.augment import symmetric_mean
from a3c.config import Config, EnvConfig
from a3c.env import PixelEnv
from a3c.losses import PixelWeights, Target, class_weights, combine, discounted_returns, step_losses
from a3c.model import PixelDRLNet

Tensor = torch.Tensor


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(model: PixelDRLNet, state: Tensor, amp: bool = False) -> tuple[Tensor, Tensor]:
    """state [B, C, H, W] -> (logits [B, 2, H, W], value [B, 1, H, W]), both float32."""
    with autocast_for(state.device, amp):
        logits, value = model(state)
    return logits.float(), value.float()


def sample_actions(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample a ~ softmax(logits) per pixel: logits [B, A, H, W] -> actions [B, H, W] int64 in [0, A).

    One uniform number per pixel drives the draw (inverse CDF), so ``generator`` fixes it.
    """
    if logits.shape[1] == 2:
        p_keep = torch.sigmoid(logits[:, 1] - logits[:, 0])
        u = torch.rand(p_keep.shape, generator=generator, device=logits.device, dtype=p_keep.dtype)
        return (u < p_keep).long()
    cdf = torch.softmax(logits.float(), dim=1).cumsum(dim=1)
    u = torch.rand(cdf[:, :1].shape, generator=generator, device=logits.device, dtype=cdf.dtype)
    return (cdf < u).sum(dim=1).clamp(max=logits.shape[1] - 1)


def greedy_actions(logits: Tensor, keep_threshold: float = 0.5) -> Tensor:
    """argmax action per pixel: [B, A, H, W] -> [B, H, W] int64 (with two actions, ties keep the pixel).

    With two actions and ``keep_threshold`` p, a pixel is kept where p(keep) >= p, i.e. where the
    keep-minus-zero logit is at least log(p / (1 - p)); 0.5 is the argmax. Other thresholds are
    refused for more than two actions (the refinement's deltas have no "keep")."""
    if logits.shape[1] == 2:
        return (logits[:, 1] - logits[:, 0] >= math.log(keep_threshold / (1.0 - keep_threshold))).long()
    if keep_threshold != 0.5:
        raise ValueError(f"a keep threshold needs two actions, the policy has {logits.shape[1]}")
    return logits.argmax(dim=1)


def policy_logits(model: PixelDRLNet, state: Tensor, amp: bool = False, tta: str = "none") -> Tensor:
    """The policy's logits [B, A, H, W] for state [B, C, H, W]; with ``tta`` (flip, d4: ``a3c.augment``)
    the log of the action probabilities averaged over the symmetries of the state."""
    if tta == "none":
        return forward(model, state, amp)[0]
    probs = symmetric_mean(lambda s: torch.softmax(forward(model, s, amp)[0], dim=1), state, tta)
    return probs.clamp_min(1e-12).log()


@dataclass(frozen=True)
class ActionRule:
    """How inference turns the policy into actions: a pixel is kept where p(keep) >= ``keep_threshold``
    (``greedy_actions``; 0.5 = the argmax), p averaged over the symmetries of ``tta`` (``policy_logits``)."""

    keep_threshold: float = 0.5
    tta: str = "none"


@torch.no_grad()
def greedy_episode(model: PixelDRLNet, images: Tensor, env_cfg: EnvConfig, t_max: int | None = None,
                   amp: bool = False, rule: ActionRule = ActionRule()) -> list[Tensor]:
    """Inference: from m(0) = ones, greedy actions for t_max steps.

    images [B, C, H, W] -> list of t_max masks m(1..t_max), each [B, H, W] bool; the last is the
    segmentation. No threshold is involved: the mask is the action map (for ``env.kind``
    refine, the masks are p(t) > 0.5), unless ``rule.keep_threshold`` asks "keep" to reach that
    probability (``greedy_actions``; an analysis of calibration, not what training optimises).
    ``rule.tta`` (flip, d4) takes each step's action from the probabilities averaged over the
    symmetries of the state (``policy_logits``): one episode, one shared mask.
    """
    env = PixelEnv(env_cfg, images)
    state = env.reset()
    masks = []
    for _ in range(t_max or env_cfg.t_max):
        logits = policy_logits(model, state, amp, rule.tta)
        state, _ = env.step(greedy_actions(logits, rule.keep_threshold))
        masks.append(env.mask[:, 0] > 0.5)
    return masks


@dataclass
class UpdateStats:
    """Means over the episode's steps (losses are per-step pixel means)."""

    policy_loss: float
    value_loss: float
    entropy: float
    reward: float
    n_images: int
    t_max: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _bootstrap(model: PixelDRLNet, state: Tensor, cfg: Config) -> Tensor:
    b, _, h, w = state.shape
    if cfg.loss.bootstrap == "zero":
        return state.new_zeros(b, 1, h, w)
    with torch.no_grad():
        return forward(model, state, cfg.train.amp)[1]


def _reward_conv(model: PixelDRLNet, cfg: Config):
    return model.reward_conv if cfg.loss.learn_reward_conv else None


def reference_update(model: PixelDRLNet, images: Tensor, gt: Tensor, cfg: Config,
                     generator: torch.Generator | None = None) -> UpdateStats:
    """One Algorithm-1 gradient: roll out t_max sampled steps on a batch, backward the PA3C loss.

    images [B, C, H, W] float, gt [B, 1, H, W] float 0/1, on the model's device. Gradients are
    accumulated into the parameters' ``.grad`` (the caller zeroes them). ``generator`` drives
    the action sampling (seeded for reproducible updates).
    """
    env = PixelEnv(cfg.env, images, gt)
    state = env.reset()
    t_max, amp = cfg.env.t_max, cfg.train.amp
    vc, ec, cc, dc = cfg.loss.value_coef, cfg.loss.entropy_coef, cfg.loss.ce_coef, cfg.loss.dice_coef
    states, actions, rewards, values, logits_kept, befores = [], [], [], [], [], []
    full = cfg.train.rollout == "full"
    mask_kind = cfg.env.kind == "mask"
    multiply = mask_kind and cfg.env.mask_update == "multiply"
    # pixels whose action still matters: under multiply, those not yet zeroed (m_i(t) = 1)
    track_live = cfg.loss.live_only and multiply
    supervised = (cc > 0 or dc > 0) and mask_kind
    right = (gt[:, 0] > 0.5).long() if supervised else None  # ground truth as actions: keep object
    keep_before = track_live or (supervised and multiply)  # the mask each step starts from
    with contextlib.nullcontext() if full else torch.no_grad():
        for _ in range(t_max):
            logits, value = forward(model, state, amp)
            a = sample_actions(logits.detach(), generator)
            befores.append(env.mask.detach().clone() if keep_before else None)
            states.append(state)
            actions.append(a)
            values.append(value)
            logits_kept.append(logits)
            state, r = env.step(a)
            rewards.append(r)
    returns = discounted_returns(rewards, _bootstrap(model, state, cfg), cfg.loss.gamma, _reward_conv(model, cfg))
    weight = class_weights(gt, cfg.loss.class_balance, cfg.loss.class_weight_cap) if cfg.loss.class_balance else None
    pixels = [PixelWeights(weight, before if track_live else None) for before in befores]
    targets = [Target(right, before) if supervised else None for before in befores]

    sums = {k: images.new_zeros(()) for k in ("policy", "value", "entropy")}
    if full:
        total = 0.0
        for t in range(t_max):
            terms = step_losses(logits_kept[t], actions[t], values[t], returns[t], pixels[t], targets[t])
            total = total + combine(terms, vc, ec, cc, dc)
            for k in sums:
                sums[k] += terms[k].detach()
        total.backward()
    else:
        kept_values = []
        for t in range(t_max):
            logits, value = forward(model, states[t], amp)
            terms = step_losses(logits, actions[t], value, returns[t].detach(), pixels[t], targets[t])
            combine(terms, vc, ec, cc, dc).backward()
            kept_values.append(value.detach())
            for k in sums:
                sums[k] += terms[k].detach()
        if returns[0].requires_grad:  # w of eq. 8 learns through the value term only
            w_loss = sum(((1.0 if weight is None else weight) * (ret - v) ** 2).mean()
                         for ret, v in zip(returns, kept_values))
            (vc * w_loss).backward()
    mean_reward = torch.stack([r.mean() for r in rewards]).mean()
    totals = torch.stack([sums["policy"] / t_max, sums["value"] / t_max, sums["entropy"] / t_max, mean_reward])
    policy, value, entropy, reward = totals.tolist()  # the update's one host-device synchronisation
    return UpdateStats(policy_loss=policy, value_loss=value, entropy=entropy, reward=reward,
                       n_images=int(images.shape[0]), t_max=t_max)
