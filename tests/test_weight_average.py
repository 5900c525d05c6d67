"""optim.ema_decay: the moving average of the parameters, kept by the learner, carried by
checkpoints and used by evaluation."""
from __future__ import annotations

import pytest
import torch

from a3c.checkpoint import TrainedOn, load_checkpoint, pixeldrl_checkpoint, save_checkpoint
from a3c.config import ConfigError, load_config
from a3c.evaluate import model_from_checkpoint
from a3c.learner import Learner, ema_decay_at
from a3c.model import build_model
from a3c.params import flat_from_state_dict, flatten, numel, state_dict_from_flat

SMOKE = "configs/smoke.yaml"
PRE = {"normalisation": "none", "converter": "test", "image_shape": [1, 16, 16]}


@pytest.mark.parametrize("decay, updates, expected", [
    (0.999, 1, 2 / 11),    # warm-up: (1 + 1) / (10 + 1)
    (0.999, 8, 0.5),       # (1 + 8) / (10 + 8)
    (0.9, 80, 0.9),        # 81 / 90 = 0.9 exactly: the cap and the warm-up meet
    (0.9, 1000, 0.9),
    (0.1, 1, 0.1),         # a decay below the warm-up's value is used from the first step
])
def test_decay_warms_up_then_holds(decay, updates, expected):
    assert ema_decay_at(decay, updates) == pytest.approx(expected)


def _learner(*overrides):
    cfg = load_config(SMOKE, ["optim.lr=0.01", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, 1)
    return Learner(model, torch.zeros(numel(model)), cfg.optim, 10), model


def test_average_follows_theta_by_hand():
    """Adam's first step with g = 1 moves every parameter by -lr; with decay 0.9 the average after
    it is 2/11 of the start plus 9/11 of the new parameters, i.e. start - 0.01 * 9/11."""
    learner, model = _learner("optim.ema_decay=0.9")
    start = flatten(model).clone()
    assert learner.apply(torch.ones(numel(model)), 2)
    assert torch.allclose(learner.ema, start - 0.01 * 9 / 11, atol=1e-6)
    thetas = [start, flatten(model).clone()]
    for _ in range(4):
        assert learner.apply(torch.randn(numel(model)), 2)
        thetas.append(flatten(model).clone())
    ema = thetas[0].clone()
    for n, theta in enumerate(thetas[1:], start=1):
        d = ema_decay_at(0.9, n)
        ema = d * ema + (1 - d) * theta
    assert torch.allclose(learner.ema, ema, atol=1e-6)
    assert not torch.allclose(learner.ema, flatten(model), atol=1e-6)


def test_a_rejected_gradient_leaves_the_average_alone():
    learner, model = _learner("optim.ema_decay=0.9")
    before = learner.ema.clone()
    bad = torch.zeros(numel(model))
    bad[0] = float("nan")
    assert not learner.apply(bad, 2)
    assert torch.equal(learner.ema, before)


def test_off_by_default_and_then_absent_from_checkpoints():
    learner, model = _learner()
    assert learner.ema is None and learner.ema_state_dict() is None
    learner.apply(torch.ones(numel(model)), 2)
    ckpt = pixeldrl_checkpoint(model, {}, TrainedOn(1, [16, 16], PRE), learner.optimizer.state_dict(),
                               learner.counters(), learner.ema_state_dict())
    assert "ema_model" not in ckpt


def test_flat_and_state_dict_round_trip():
    _, model = _learner()
    flat = torch.arange(numel(model), dtype=torch.float32)
    state = state_dict_from_flat(model, flat)
    assert list(state) == list(model.state_dict())
    assert torch.equal(flat_from_state_dict(model, state), flat)
    with pytest.raises(ValueError, match="elements"):
        state_dict_from_flat(model, flat[:-1])
    with pytest.raises(KeyError, match="lacks"):
        flat_from_state_dict(model, {})


def test_checkpoint_carries_the_average_resume_restores_it_and_evaluation_uses_it(tmp_path):
    learner, model = _learner("optim.ema_decay=0.9")
    cfg = load_config(SMOKE, ["optim.lr=0.01", "optim.ema_decay=0.9"])
    for _ in range(3):
        learner.apply(torch.randn(numel(model)), 2)
    path = tmp_path / "latest.pt"
    save_checkpoint(pixeldrl_checkpoint(model, cfg.to_dict(), TrainedOn(1, [16, 16], PRE),
                                        learner.optimizer.state_dict(), learner.counters(),
                                        learner.ema_state_dict()), path)
    ckpt = load_checkpoint(path)
    assert list(ckpt)[-1] == "ema_model"

    rebuilt, _, _ = model_from_checkpoint(ckpt)
    assert torch.allclose(flatten(rebuilt), learner.ema)
    assert not torch.allclose(flatten(rebuilt), flatten(model))

    resumed, resumed_model = _learner("optim.ema_decay=0.9")
    resumed.load(ckpt)
    assert torch.equal(resumed.ema, learner.ema) and torch.equal(flatten(resumed_model), flatten(model))
    del ckpt["ema_model"]  # a checkpoint of a run without the average: it starts at the parameters
    resumed.load(ckpt)
    assert torch.equal(resumed.ema, flatten(resumed_model))


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_decay_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_config(SMOKE, [f"optim.ema_decay={value}"])
