"""a3c.adam: the flat Adam against hand-worked numbers and against torch.optim.Adam."""
import math

import pytest
import torch
import torch.nn as nn

from a3c.adam import AdamHyper, FlatAdam, adam_step
from a3c.params import bind_to_flat, numel


def test_first_step_by_hand():
    # t = 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2, so theta moves by lr * g / (|g| + eps).
    theta = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([4.0, -0.5, 0.0])
    m, v = torch.zeros(3), torch.zeros(3)
    adam_step(theta, g, m, v, 1, AdamHyper(lr=0.1, eps=1e-8))
    assert m.tolist() == pytest.approx([0.4, -0.05, 0.0])
    assert v.tolist() == pytest.approx([0.016, 0.00025, 0.0])
    assert theta.tolist() == pytest.approx([1.0 - 0.1 * 4 / (4 + 1e-8), -2.0 + 0.1 * 0.5 / (0.5 + 1e-8), 0.5])


def test_second_step_by_hand():
    # g1 = 1, g2 = 3, lr 0.01: m = 0.9*0.1 + 0.1*3 = 0.39, v = 0.999*0.001 + 0.001*9 = 0.009999;
    # m_hat = 0.39 / 0.19, v_hat = 0.009999 / (1 - 0.999^2).
    theta, m, v = (torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                   torch.zeros(1, dtype=torch.float64))
    adam_step(theta, torch.ones(1, dtype=torch.float64), m, v, 1, AdamHyper(lr=0.01))
    after1 = float(theta)
    adam_step(theta, torch.full((1,), 3.0, dtype=torch.float64), m, v, 2, AdamHyper(lr=0.01))
    m_hat, v_hat = 0.39 / (1 - 0.9 ** 2), 0.009999 / (1 - 0.999 ** 2)
    assert float(m) == pytest.approx(0.39) and float(v) == pytest.approx(0.009999)
    assert float(theta) == pytest.approx(after1 - 0.01 * m_hat / (math.sqrt(v_hat) + 1e-8), rel=1e-12)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 1, 1))


def test_equals_torch_adam_step_for_step_with_changing_lr():
    ref, flat_net = _net(), _net()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=1e-6)
    theta = torch.zeros(numel(flat_net))
    bind_to_flat(flat_net, theta)
    adam = FlatAdam(theta, [p.shape for p in flat_net.parameters()], lr=1e-3, eps=1e-6)
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 8):
        lr = 1e-3 * 0.9 ** (t // 3)
        grads = [torch.randn(p.shape, generator=gen) * 10 ** (t % 3 - 1) for p in ref.parameters()]
        for p, g in zip(ref.parameters(), grads):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        adam.step(torch.cat([g.reshape(-1) for g in grads]), lr)
        for a, b in zip(ref.parameters(), flat_net.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the state dicts are interchangeable: torch's loads into FlatAdam and FlatAdam's into torch
    sd = opt.state_dict()
    other = FlatAdam(torch.zeros_like(theta), adam.shapes, lr=1e-3, eps=1e-6)
    other.load_state_dict(sd)
    assert other.steps == 7
    torch.testing.assert_close(other.exp_avg, adam.exp_avg, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(other.exp_avg_sq, adam.exp_avg_sq, rtol=1e-6, atol=1e-12)
    back = torch.optim.Adam(_net().parameters(), lr=1e-3)
    back.load_state_dict(adam.state_dict())
    assert float(back.state_dict()["state"][0]["step"]) == 7


def test_load_refuses_state_for_another_model():
    theta = torch.zeros(numel(_net()))
    adam = FlatAdam(theta, [p.shape for p in _net().parameters()], lr=1e-3)
    adam.step(torch.ones_like(theta))
    wrong = nn.Sequential(nn.Conv2d(2, 3, 3))
    other = FlatAdam(torch.zeros(numel(wrong)), [p.shape for p in wrong.parameters()], lr=1e-3)
    with pytest.raises(ValueError, match="4 parameters, the model has 2"):
        other.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="add up to"):
        FlatAdam(torch.zeros(5), [torch.Size([2, 2])], lr=1e-3)
