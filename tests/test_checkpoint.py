"""a3c.checkpoint: the two checkpoint kinds built by their builders, saved, loaded and rebuilt."""
from __future__ import annotations

import pytest
import torch

from a3c.checkpoint import (
    CheckpointError,
    TrainedOn,
    baseline_checkpoint,
    baseline_spec,
    check_params,
    load_checkpoint,
    pixeldrl_checkpoint,
    save_checkpoint,
)
from a3c.config import load_config
from a3c.evaluate import model_from_checkpoint
from a3c.model import build_model
from a3c.params import numel

# The on-disk keys, in the order the trainers wrote them before the builders existed.
PIXELDRL_KEYS = ["format", "config", "image_channels", "image_size", "params", "model", "optimizer", "counters",
                 "rng", "preprocess", "created"]
BASELINE_KEYS = ["format", "kind", "baseline", "config", "image_channels", "image_size", "params", "model",
                 "counters", "val_dice", "preprocess", "created"]
PRE = {"normalisation": "none", "converter": "test", "image_shape": [1, 16, 16]}


def _pixeldrl(tmp_path):
    cfg = load_config("configs/smoke.yaml")
    model = build_model(cfg.model, 1, cfg.env)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    counters = {"updates": 3, "images": 12, "epoch": 0.5, "rejected": 0, "lr": 1e-3}
    ckpt = pixeldrl_checkpoint(model, cfg.to_dict(), TrainedOn(1, [16, 16], PRE), opt.state_dict(), counters)
    path = tmp_path / "latest.pt"
    save_checkpoint(ckpt, path)
    return model, path


def test_pixeldrl_checkpoint_keys_and_rebuild(tmp_path):
    model, path = _pixeldrl(tmp_path)
    ckpt = load_checkpoint(path)
    assert list(ckpt) == PIXELDRL_KEYS
    assert ckpt["params"] == numel(model) and ckpt["image_size"] == [16, 16] and ckpt["preprocess"] == PRE
    rebuilt, cfg, _ = model_from_checkpoint(ckpt)
    for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="not a baseline checkpoint"):
        baseline_spec(ckpt)


def test_weights_are_copies_of_views(tmp_path):
    """A parameter bound to a flat vector [P] saves only its own elements, not the whole vector."""
    model = torch.nn.Linear(3, 2)
    flat = torch.zeros(numel(model) + 1000)
    model.weight.data = flat[:6].view(2, 3)
    model.bias.data = flat[6:8]
    ckpt = baseline_checkpoint(model, {"name": "x"}, TrainedOn(1, [4, 4], PRE), {"updates": 1}, None)
    assert all(v.untyped_storage().nbytes() == v.numel() * 4 for v in ckpt["model"].values())


def test_baseline_checkpoint_keys_and_checks(tmp_path):
    model = torch.nn.Conv2d(1, 1, 3)
    spec = {"name": "conv", "width": 1.0, "in_channels": 1, "size_hint": None}
    ckpt = baseline_checkpoint(model, spec, TrainedOn(1, [8, 8], PRE), {"updates": 2}, 0.5)
    save_checkpoint(ckpt, tmp_path / "best.pt")
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert list(ckpt) == BASELINE_KEYS
    assert baseline_spec(ckpt) == spec and ckpt["config"] == {"baseline": spec} and ckpt["val_dice"] == 0.5
    check_params(ckpt, model, "spec")
    with pytest.raises(CheckpointError, match="checkpoint says 10 parameters, its spec builds 3"):
        check_params(ckpt, torch.nn.Linear(2, 1), "spec")
