"""a3c.rollout: action sampling, the one-step and full reference updates, greedy episodes."""
import math

import pytest
import torch

from a3c.model import build_model
from a3c.rollout import greedy_actions, greedy_episode, reference_update, sample_actions
from tests.conftest import smoke_cfg


def test_sample_actions_follow_policy():
    logits = torch.zeros(1, 2, 100, 100)
    logits[:, 1] = math.log(3.0)  # p(keep) = 0.75
    a = sample_actions(logits, torch.Generator().manual_seed(0))
    assert a.dtype == torch.long and set(a.unique().tolist()) == {0, 1}
    assert abs(a.float().mean().item() - 0.75) < 0.02


@pytest.mark.parametrize("threshold, kept", [
    (0.5, [0, 1, 1, 1, 1]),    # keep-minus-zero logit >= 0: the argmax, ties kept
    (0.7, [0, 0, 0, 1, 1]),    # >= log(0.7 / 0.3) = 0.847
    (0.2, [1, 1, 1, 1, 1]),    # >= log(0.2 / 0.8) = -1.386
    (0.9, [0, 0, 0, 0, 0]),    # >= log(9) = 2.197
])
def test_greedy_keep_threshold_by_hand(threshold, kept):
    diff = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0])
    logits = torch.stack([torch.zeros(5), diff]).view(1, 2, 1, 5)
    assert greedy_actions(logits, threshold).view(-1).tolist() == kept


def test_keep_threshold_needs_two_actions():
    logits = torch.randn(1, 3, 4, 4)
    assert torch.equal(greedy_actions(logits), logits.argmax(dim=1))
    with pytest.raises(ValueError, match="two actions"):
        greedy_actions(logits, 0.7)


@pytest.mark.parametrize("state,update,extra", [
    ("masked", "replace", {}),
    ("stacked", "multiply", {}),
    # the options for real patients: live-pixel masking, cross-entropy, capped class weights
    ("masked", "multiply", {"loss__live_only": True, "loss__ce_coef": 1.0, "loss__class_weight_cap": 5.0}),
    ("masked", "replace", {"loss__live_only": True, "loss__ce_coef": 1.0, "loss__class_weight_cap": 5.0}),
    ("masked", "multiply", {"loss__dice_coef": 1.0}),
])
def test_onestep_and_full_rollouts_give_equal_gradients(state, update, extra):
    cfg = smoke_cfg(env__state=state, env__mask_update=update, loss__bootstrap="value", **extra)
    torch.manual_seed(1)
    model = build_model(cfg.model, 2, state)
    x = torch.randn(2, 2, 24, 20)
    gt = (torch.rand(2, 1, 24, 20) > 0.6).float()
    grads = {}
    for mode in ("full", "onestep"):
        cfg.train.rollout = mode
        model.zero_grad()
        reference_update(model, x, gt, cfg, torch.Generator().manual_seed(7))
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    for g_full, g_one in zip(grads["full"], grads["onestep"]):
        assert torch.allclose(g_full, g_one, rtol=1e-4, atol=1e-7)
    assert model.reward_conv.weight.grad.abs().sum() > 0


def test_greedy_episode_returns_t_max_masks():
    cfg = smoke_cfg()
    model = build_model(cfg.model, 1)
    masks = greedy_episode(model, torch.randn(3, 1, 16, 16), cfg.env, t_max=4)
    assert len(masks) == 4 and masks[-1].shape == (3, 16, 16) and masks[-1].dtype == torch.bool
