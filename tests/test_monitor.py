"""The monitor's collapse check: the kept and object shares per slice, and the warning it logs."""
import logging
import threading

import numpy as np
import pytest
import torch

from a3c.checkpoint import FORMAT, save_checkpoint
from a3c.config import load_config
from a3c.evaluate import mask_shares, policy_collapse, score_batch
from a3c.model import build_model
from a3c.params import numel
from workers.monitor import watch
from workers.run import RunSpec
from workers.shared import SharedState

SMOKE = "configs/smoke.yaml"


def collapse(kept, obj):
    return policy_collapse(*mask_shares([{"kept": k, "object": o} for k, o in zip(kept, obj)]))


def test_score_batch_reports_the_kept_and_object_shares():
    pred = np.zeros((2, 4, 4), bool)
    pred[0, :2] = True            # 8 of 16 pixels kept
    gt = np.zeros((2, 4, 4), bool)
    gt[0, 0, :2] = True           # 2 of 16
    gt[1, :, 0] = True            # 4 of 16; nothing kept
    out = score_batch(pred, gt, np.array([5, 6]), (4, 4), None, dice_only=True)
    assert [(r["kept"], r["object"]) for r in out] == [(0.5, 0.125), (0.0, 0.25)]


def test_policy_collapse_hand_worked_cases():
    assert collapse([1.0, 0.97], [0.02, 0.04]).startswith("keeps every pixel (98.5% kept")
    assert collapse([0.0, 0.001], [0.05, 0.05]).startswith("zeroes every pixel")
    assert collapse([0.04, 0.06], [0.05, 0.05]) is None  # about right
    assert collapse([0.97, 0.97], [0.02, 0.02]) is None  # 97% kept: below the 98% mark
    assert collapse([0.003], [0.1]) is None  # 3% of the objects' share: 2% is the mark
    assert collapse([0.001], [0.1]) is not None  # 1%
    assert collapse([0.0], [0.0]) is None  # no object, nothing kept: right
    assert collapse([1.0], [0.99]) is None  # the object fills the slice
    assert policy_collapse(*mask_shares([])) is None  # no slice


def collapsed_checkpoint(path, updates: int) -> None:
    """A checkpoint whose policy head outputs equal logits everywhere: greedy actions keep every pixel."""
    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, cfg.env)
    last = [m for m in model.policy.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "image_channels": 1, "params": numel(model),
                     "model": model.state_dict(), "counters": {"updates": updates, "epoch": 0.5}}, path)


def test_monitor_warns_when_the_policy_keeps_every_pixel(tiny_store, tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    collapsed_checkpoint(tmp_path / "checkpoints" / "latest.pt", updates=7)
    cfg = load_config(SMOKE, ["eval.poll_s=0.05"])
    finish, stop = threading.Event(), threading.Event()
    finish.set()  # one look at the newest checkpoint, then return
    logger = logging.getLogger("test-monitor")
    spec = RunSpec(cfg=cfg.to_dict(), store_path=str(tiny_store), image_shape=(1, 32, 32), n_train=16, preprocess={},
                   run_dir=str(tmp_path), device="cpu", workers=1)
    with caplog.at_level(logging.INFO, logger="test-monitor"):
        watch(logger, spec, SharedState.counters_only(), finish, stop)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("update 7: the policy keeps every pixel "
                                                         "(100.0% kept"), warnings

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kept = []
    for ev in (tmp_path / "tb").glob("events.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        kept += [e.value for e in acc.Scalars("val/kept_fraction")]
    assert kept == [pytest.approx(1.0)]


def test_best_pt_goes_to_the_later_of_two_equal_checkpoints(tiny_store, tmp_path):
    import json

    (tmp_path / "checkpoints").mkdir()
    cfg = load_config(SMOKE, ["eval.poll_s=0.05"])
    spec = RunSpec(cfg=cfg.to_dict(), store_path=str(tiny_store), image_shape=(1, 32, 32), n_train=16, preprocess={},
                   run_dir=str(tmp_path), device="cpu", workers=1)
    best = tmp_path / "checkpoints" / "best.json"
    for updates in (7, 9):  # the same parameters twice: the same validation Dice
        collapsed_checkpoint(tmp_path / "checkpoints" / "latest.pt", updates=updates)
        finish = threading.Event()
        finish.set()
        watch(logging.getLogger("test-monitor"), spec, SharedState.counters_only(), finish, threading.Event())
        assert json.loads(best.read_text())["updates"] == updates
