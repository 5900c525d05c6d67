"""a3c.model: the network's shapes, parameter count and gradients, eager and compiled."""
import pytest
import torch

from a3c.config import load_config
from a3c.losses import step_losses
from a3c.model import build_model
from a3c.params import numel
from a3c.rollout import reference_update
from tests.conftest import smoke_cfg


def test_gradients_reach_features_from_policy_and_value():
    torch.manual_seed(0)
    cfg = smoke_cfg()
    model = build_model(cfg.model, 1)
    x = torch.randn(2, 1, 16, 16)
    logits, value = model(x)
    acts = torch.randint(0, 2, (2, 16, 16))
    terms = step_losses(logits, acts, value, torch.randn(2, 1, 16, 16))
    first = model.features.blocks[0][0].weight
    for name in ("policy", "value"):
        model.zero_grad()
        terms[name].backward(retain_graph=True)
        assert first.grad is not None and first.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels,size", [(1, (32, 32)), (3, (32, 32)), (1, (181, 217)), (3, (45, 37))])
@pytest.mark.parametrize("sam,dilation", [(True, True), (False, False), (True, False), (False, True)])
def test_network_shapes(channels, size, sam, dilation):
    cfg = smoke_cfg(model__sam=sam, model__dilation=dilation)
    model = build_model(cfg.model, channels)
    with torch.no_grad():
        logits, value = model(torch.randn(2, channels, *size))
    assert logits.shape == (2, 2, *size)
    assert value.shape == (2, 1, *size)


def test_paper_configuration_parameter_count_near_paper():
    cfg = load_config("configs/paper.yaml")
    n = numel(build_model(cfg.model, 3))
    assert abs(n - 7.14e6) / 7.14e6 < 0.10, n
    ablated = load_config("configs/paper.yaml", ["model.sam=false"])
    assert numel(build_model(ablated.model, 3)) < n


# PyTorch's own inductor code calls torch.jit.script_method while it compiles; nothing of ours does
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_model_gives_the_eager_gradients_after_a_parameter_update():
    """train.compile: a worker's compiled net, bound to a flat vector that the server's new
    parameters are copied into, computes the same gradients as the eager net (no stale weights)."""
    from a3c.model import tune_for_training
    from a3c.params import bind_grads, bind_to_flat, flatten, numel

    cfg = smoke_cfg(train__rollout="full", env__t_max=2)  # one graph to compile (and its backward)
    cfg.train.compile = True
    torch.manual_seed(3)
    eager = build_model(cfg.model, 1, cfg.env)
    compiled = tune_for_training(build_model(cfg.model, 1, cfg.env), "cpu", cfg.train)
    x = torch.rand(2, 1, 16, 16)
    gt = (torch.rand(2, 1, 16, 16) > 0.6).float()
    nets = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        flat, grad = torch.zeros(numel(model)), torch.zeros(numel(model))
        bind_to_flat(model, flat)
        bind_grads(model, grad)
        nets[name] = (model, flat, grad)
    start = flatten(eager)
    for version in range(2):  # the second round runs on new parameters, as after a pull
        theta = start + 0.05 * version * torch.randn(start.shape, generator=torch.Generator().manual_seed(version))
        for model, flat, grad in nets.values():
            flat.copy_(theta)
            grad.zero_()
            reference_update(model, x, gt, cfg, torch.Generator().manual_seed(11))
        torch.testing.assert_close(nets["compiled"][2], nets["eager"][2], rtol=1e-4, atol=1e-6)
    assert nets["compiled"][2].abs().sum() > 0
