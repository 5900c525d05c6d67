"""The loss and initialisation options for real patients: live-pixel terms, cross-entropy, soft Dice,
capped class weights, Kaiming init; hand-worked numbers where the maths is new."""
from __future__ import annotations

import math

import pytest
import torch

from a3c.config import ConfigError, load_config
from a3c.losses import PixelWeights, Target, class_weights, combine, expected_mask, soft_dice_loss, step_losses
from a3c.model import build_model
from a3c.params import numel
from a3c.rollout import reference_update

SMOKE = "configs/smoke.yaml"


def test_step_losses_live_mask_and_cross_entropy_by_hand():
    # two pixels; p(keep) = 0.75 on both (logits 0, ln 3); pixel 0 live, pixel 1 already zeroed
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]]]])  # [1, 2, 1, 2]
    actions = torch.tensor([[[1, 0]]])
    value = torch.zeros(1, 1, 1, 2)
    ret = torch.tensor([[[[2.0, 4.0]]]])
    live = torch.tensor([[[[1.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])  # pixel 0 is background: the right action is "zero"
    t = step_losses(logits, actions, value, ret, PixelWeights(live=live), target=Target(target))
    lp_keep, lp_zero = math.log(0.75), math.log(0.25)
    # policy: only pixel 0 counts, -(log 0.75 * 2) / 2 pixels
    assert t["policy"].item() == pytest.approx(-(lp_keep * 2.0) / 2)
    # value: every pixel, ((2 - 0)^2 + (4 - 0)^2) / 2
    assert t["value"].item() == pytest.approx(10.0)
    h = -(0.75 * lp_keep + 0.25 * lp_zero)
    assert t["entropy"].item() == pytest.approx(h / 2)
    # cross-entropy: pixel 0 only, target "zero": -log 0.25 / 2
    assert t["ce"].item() == pytest.approx(-lp_zero / 2)
    total = combine(t, 0.5, 0.01, 2.0)
    assert total.item() == pytest.approx(t["policy"].item() + 5.0 - 0.01 * h / 2 - lp_zero)
    # without live and target: the plain terms of eqs. 13-15, ce 0
    plain = step_losses(logits, actions, value, ret)
    assert plain["policy"].item() == pytest.approx(-(lp_keep * 2.0 + lp_zero * 4.0) / 2)
    assert plain["ce"].item() == 0.0 and combine(plain, 0.5, 0.01).item() == pytest.approx(
        combine(plain, 0.5, 0.01, 3.0).item())


def test_cross_entropy_gradient_does_not_vanish_for_a_confidently_wrong_pixel():
    """An object pixel zeroed with p(keep) = 0.01: the CE gradient on the keep-minus-zero logit is
    -(1 - p) = -0.99 per pixel, while the policy gradient's expectation scales with p."""
    d = torch.tensor(math.log(0.01 / 0.99), requires_grad=True)
    logits = torch.stack([torch.zeros(()), d]).view(1, 2, 1, 1)
    t = step_losses(logits, torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1),
                    torch.zeros(1, 1, 1, 1), target=Target(torch.ones(1, 1, 1, dtype=torch.long)))
    t["ce"].backward()
    assert d.grad.item() == pytest.approx(-0.99, rel=1e-5)


def test_soft_dice_loss_by_hand():
    prob = torch.tensor([[[[0.5, 1.0, 0.0, 0.25]]], [[[0.0, 0.0, 0.0, 0.0]]]])  # [2, 1, 1, 4]
    gt = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]], [[[0.0, 0.0, 0.0, 0.0]]]])
    # image 0: 1 - 2 * 1.5 / (1.75 + 2) = 0.2; image 1: empty truth, empty mask, loss 0
    assert soft_dice_loss(prob, gt).item() == pytest.approx(0.1, abs=1e-5)
    assert soft_dice_loss(gt, gt).item() == pytest.approx(0.0, abs=1e-6)
    # an empty truth with a non-empty mask: loss close to 1
    assert soft_dice_loss(torch.full((1, 1, 1, 4), 0.5), torch.zeros(1, 1, 1, 4)).item() > 0.99


def test_expected_mask_and_the_dice_term_of_a_step():
    # p(keep) = 0.75 on two pixels; under multiply pixel 1 was zeroed before the step
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]]]], requires_grad=True)
    before = torch.tensor([[[[1.0, 0.0]]]])
    logp = torch.log_softmax(logits, dim=1)
    assert expected_mask(logp).flatten().tolist() == pytest.approx([0.75, 0.75])
    assert expected_mask(logp, before).flatten().tolist() == pytest.approx([0.75, 0.0])
    target = torch.tensor([[[1, 1]]])  # both pixels are object
    t = step_losses(logits, torch.ones(1, 1, 2, dtype=torch.long), torch.zeros(1, 1, 1, 2),
                    torch.zeros(1, 1, 1, 2), target=Target(target, before))
    # 1 - 2 * 0.75 / (0.75 + 2)
    assert t["dice"].item() == pytest.approx(1 - 1.5 / 2.75, rel=1e-5)
    assert combine(t, 0.5, 0.0, 0.0, 2.0).item() == pytest.approx(t["policy"].item() + 2 * t["dice"].item())
    t["dice"].backward()
    g = logits.grad[0, 1, 0]  # keep logits: the live object pixel is pushed to keep, the dead one not at all
    assert g[0].item() < 0 and g[1].item() == 0.0
    assert step_losses(logits, torch.ones(1, 1, 2, dtype=torch.long), torch.zeros(1, 1, 1, 2),
                       torch.zeros(1, 1, 1, 2))["dice"].item() == 0.0  # no target, no term


def test_dice_coef_enters_the_update():
    grads = [update_gradient(load_config(SMOKE, ["loss.ce_coef=0", "env.t_max=2", f"loss.dice_coef={dc}"]), 1)
             for dc in (0.0, 1.0)]
    assert not torch.allclose(grads[0], grads[1])


def test_class_weight_cap():
    gt = torch.zeros(1, 1, 10, 10)
    gt[..., 0, 0] = 1  # 1 of 100 pixels: weight 50 before the cap, background 50/99
    w = class_weights(gt, 1.0)
    assert w[0, 0, 0, 0].item() == pytest.approx(50.0)
    capped = class_weights(gt, 1.0, cap=20.0)
    assert capped[0, 0, 0, 0].item() == pytest.approx(20.0)
    assert capped[0, 0, 5, 5].item() == pytest.approx(50.0 / 99)
    assert torch.equal(class_weights(gt, 1.0, cap=100.0), w)


def test_kaiming_init():
    cfg = load_config(SMOKE, ["model.init=kaiming"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 1)
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias.abs().sum() == 0 for c in convs)
    first = convs[0]
    fan_out = first.out_channels * 9
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.35)
    for head in (net.policy, net.value):
        assert head[-1].bias.abs().sum() == 0 and head[-1].weight.std().item() < 0.02
    assert net.sam.proj.weight.abs().sum() == 0
    k = net.reward_conv.weight.shape[-1]
    assert net.reward_conv.weight[0, 0, k // 2, k // 2] == 1 and net.reward_conv.weight.abs().sum() == 1


def test_kaiming_init_makes_the_policy_read_its_input():
    """The keep-minus-zero logit's spread across the pixels of one image, relative to its spread over
    the features: PyTorch's default init leaves it almost constant (bias-dominated)."""
    spreads = {}
    for init in ("torch", "kaiming"):
        cfg = load_config(SMOKE, [f"model.init={init}"])
        torch.manual_seed(0)
        net = build_model(cfg.model, 1)
        x = torch.rand(1, 1, 32, 32)
        with torch.no_grad():
            feats = net.shared_features(x)
            d = (lambda z: z[:, 1] - z[:, 0])(net.policy(feats))
        spreads[init] = (d.std() / (d.abs().mean() + 1e-12)).item()
    assert spreads["kaiming"] > 10 * spreads["torch"]


def update_gradient(cfg, channels: int) -> torch.Tensor:
    """The flat gradient of one reference update from fixed weights, images and actions."""
    torch.manual_seed(1)
    model = build_model(cfg.model, channels, cfg.env)
    x = torch.rand(2, channels, 16, 16)
    gt = (torch.rand(2, 1, 16, 16) > 0.7).float()
    reference_update(model, x, gt, cfg, torch.Generator().manual_seed(3))
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_live_only_changes_the_gradient_only_under_multiply():
    out = {}
    for update in ("multiply", "replace"):
        for live in (False, True):
            cfg = load_config(SMOKE, ["loss.ce_coef=0", "env.t_max=3", f"env.mask_update={update}",
                                      f"loss.live_only={str(live).lower()}"])
            out[update, live] = update_gradient(cfg, 1)
    assert not torch.allclose(out["multiply", False], out["multiply", True])
    assert torch.equal(out["replace", False], out["replace", True])


@pytest.mark.parametrize("override,words", [
    ("loss.ce_coef=-1", "non-negative"),
    ("loss.dice_coef=-0.5", "non-negative"),
    ("loss.class_weight_cap=0.5", "at least 1"),
    ("model.init=xavier", "torch, kaiming"),
    ("model.norm=batch", "none, group, instance"),
])
def test_bad_option_values(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(SMOKE, [override])


def test_refine_agents_ignore_the_supervised_terms():
    grads = [update_gradient(load_config(SMOKE, ["env.kind=refine", "env.state=stacked", "env.deltas=[0.5, -0.5]",
                                                 f"loss.ce_coef={ce}", f"loss.dice_coef={ce}"]), 2)
             for ce in (0.0, 5.0)]  # image + coarse map
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("norm,groups", [("group", [4, 4, 4, 4]), ("instance", [8, 16, 32, 64])])
def test_norm_layers_follow_every_hidden_conv(norm, groups):
    """width 8: the extractor's blocks have 8, 16, 32, 64 channels; gcd(C, 4) = 4 groups, or one per channel."""
    cfg = load_config(SMOKE, ["model.width=8", "model.head_channels=12", f"model.norm={norm}"])
    net = build_model(cfg.model, 1)
    plain = build_model(load_config(SMOKE, ["model.width=8", "model.head_channels=12"]).model, 1)
    for block, g in zip(net.features.blocks, groups):
        kinds = [type(m).__name__ for m in block]
        assert kinds == ["Conv2d", "GroupNorm", "ReLU"] * (len(kinds) // 3)
        assert all(m.num_groups == g for m in block if isinstance(m, torch.nn.GroupNorm))
    for head in (net.policy, net.value):
        norms = [m for m in head if isinstance(m, torch.nn.GroupNorm)]
        assert len(norms) == len(cfg.model.head_dilations)
        assert all(m.num_groups == (12 if norm == "instance" else 4) for m in norms)
        assert isinstance(head[-1], torch.nn.Conv2d) and isinstance(head[-2], torch.nn.ReLU)
    extra = sum(2 * m.num_channels for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    assert numel(net) == numel(plain) + extra


def test_group_norm_makes_each_hidden_map_zero_mean_per_group():
    """A conv's normalised output at initialisation (scale 1, shift 0): each group of each slice has
    mean 0 and variance 1. With zero conv biases (kaiming) the first GroupNorm cancels the image's
    scale, so the whole network gives the same logits for x and x / 50; without it, SAM's softmax
    does not."""
    cfg = load_config(SMOKE, ["model.width=8", "model.norm=group", "model.init=kaiming"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 1)
    block = net.features.blocks[0]
    x = 50.0 * torch.rand(2, 1, 16, 16) + 3.0
    with torch.no_grad():
        y = block[1](block[0](x)).view(2, 4, -1)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3)
    for norm, same in (("group", True), ("none", False)):
        torch.manual_seed(0)
        net = build_model(load_config(SMOKE, ["model.width=8", f"model.norm={norm}", "model.init=kaiming"]).model, 1)
        with torch.no_grad():
            a, b = net(x)[0], net(x / 50.0)[0]
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5) == same
