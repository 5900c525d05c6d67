"""a3c.losses: returns (eq. 8) and the loss terms worked by hand; class weights."""
import math

import pytest
import torch

from a3c.losses import PixelWeights, class_weights, discounted_returns, entropy_map, step_losses
from a3c.model import RewardConv
from tests.conftest import t2

R0 = t2([[1, 0], [-1, 0]])
R1 = t2([[0, 1], [0, 0]])


def test_returns_by_hand_zero_bootstrap():
    rets = discounted_returns([R0, R1], torch.zeros(1, 1, 2, 2), gamma=0.5)
    assert torch.equal(rets[1], R1)
    assert torch.allclose(rets[0], t2([[1, 0.5], [-1, 0]]))


def test_returns_by_hand_value_bootstrap_and_advantage():
    rets = discounted_returns([R0, R1], torch.full((1, 1, 2, 2), 2.0), gamma=0.5)
    assert torch.allclose(rets[1], t2([[1, 2], [1, 1]]))
    assert torch.allclose(rets[0], t2([[1.5, 1], [-0.5, 0.5]]))
    terms = step_losses(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                        torch.full((1, 1, 2, 2), 0.5), rets[0])
    # A = R - V = [[1, .5], [-1, 0]]; log pi = -ln 2 everywhere
    assert terms["advantage"].item() == pytest.approx(0.125)
    assert terms["policy"].item() == pytest.approx(math.log(2) * 0.125, rel=1e-6)
    assert terms["value"].item() == pytest.approx((1 + 0.25 + 1 + 0) / 4)
    assert terms["entropy"].item() == pytest.approx(math.log(2), rel=1e-6)


def test_returns_with_a_neighbour_kernel_by_hand():
    conv = RewardConv(3)
    with torch.no_grad():
        conv.weight[0, 0, 1, 2] = 0.5  # out[i, j] = x[i, j] + 0.5 * x[i, j + 1]
    rets = discounted_returns([R0, R1], torch.zeros(1, 1, 2, 2), gamma=0.5, reward_conv=conv)
    assert torch.allclose(rets[0], t2([[1.25, 0.5], [-1, 0]]))


def test_identity_kernel_equals_plain_discounted_sum():
    g = torch.Generator().manual_seed(0)
    rewards = [torch.randn(2, 1, 9, 11, generator=g) for _ in range(5)]
    boot = torch.randn(2, 1, 9, 11, generator=g)
    with_conv = discounted_returns(rewards, boot, 0.95, RewardConv(33))
    for t in range(5):
        plain = sum(0.95 ** (k - t) * rewards[k] for k in range(t, 5)) + 0.95 ** (5 - t) * boot
        assert torch.allclose(with_conv[t], plain, atol=1e-5)


def test_kernel_gets_gradient_through_value_loss_only():
    conv = RewardConv(3)
    rewards = [torch.randn(1, 1, 6, 6) for _ in range(3)]
    rets = discounted_returns(rewards, torch.zeros(1, 1, 6, 6), 0.9, conv)
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    acts = torch.randint(0, 2, (1, 6, 6))
    value = torch.randn(1, 1, 6, 6, requires_grad=True)
    terms = step_losses(logits, acts, value, rets[0])
    terms["policy"].backward(retain_graph=True)
    assert conv.weight.grad is None or conv.weight.grad.abs().sum() == 0
    terms["value"].backward()
    assert conv.weight.grad.abs().sum() > 0


def test_loss_finite_with_extreme_logits():
    logits = torch.tensor([1e4, -1e4]).view(1, 2, 1, 1).repeat(2, 1, 4, 4).requires_grad_()
    acts = torch.zeros(2, 4, 4, dtype=torch.long)  # the action with probability ~0
    terms = step_losses(logits, acts, torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    total = terms["policy"] + terms["value"] - 0.01 * terms["entropy"]
    total.backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(logits.grad).all()
    ent = entropy_map(torch.log_softmax(logits.detach().float(), dim=1))
    assert torch.isfinite(ent).all() and torch.equal(ent.mean(), terms["entropy"].detach())


def test_class_weights_balance_each_image():
    gt = torch.zeros(2, 1, 4, 4)
    gt[0, 0, 0, :1] = 1  # 1 of 16 pixels
    gt[1, 0, :2] = 1     # 8 of 16
    w = class_weights(gt, 1.0)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))
    # image 0: object and background each carry half the total weight
    assert torch.allclose((w[0] * gt[0]).sum(), (w[0] * (1 - gt[0])).sum())
    assert torch.allclose(w[1], torch.ones(1, 4, 4))
    assert torch.equal(class_weights(gt, 0.0), torch.ones_like(gt))


def test_weighted_policy_term_removes_the_majority_bias():
    """With beta = 1 the expected push on a shared keep/zero bias cancels between the classes."""
    gt = torch.zeros(1, 1, 10, 10)
    gt[..., :1, :5] = 1  # 5% object
    logits = torch.zeros(1, 2, 10, 10, requires_grad=True)
    grads = {}
    for beta in (0.0, 1.0):
        logits.grad = None
        w = class_weights(gt, beta)
        # expected gradient: both actions, each with probability 1/2, rewards of eq. 12 from m = 1
        total = 0.0
        for a in (0, 1):
            acts = torch.full((1, 10, 10), a, dtype=torch.long)
            r = (1 - gt) ** 2 - (acts.unsqueeze(1).float() - gt) ** 2
            total = total + 0.5 * step_losses(logits, acts, torch.zeros_like(gt), r, PixelWeights(w))["policy"]
        total.backward()
        grads[beta] = (logits.grad[:, 1] - logits.grad[:, 0]).sum().item()
    assert grads[0.0] > 1e-3          # plain mean: net push towards "zero" on a shared bias
    assert abs(grads[1.0]) < 1e-6     # balanced: no net push
