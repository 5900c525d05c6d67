"""workers.param_server in one process: ParamServer driven with hand-made gradients, and Turns.

The server's theta [P] is a plain tensor here (``make_theta``), as under Ray; the local
transport's shared memory and pipes are covered by the trainer's end-to-end tests.
"""
from __future__ import annotations

import logging

import pytest
import torch

from a3c.checkpoint import load_checkpoint
from a3c.config import load_config
from a3c.evaluate import model_from_checkpoint
from workers import param_server
from workers.param_server import MAX_REJECTED_IN_A_ROW, ParamServer, Turns
from workers.run import RunSpec

SMOKE = "configs/smoke.yaml"
STATS = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "reward": 0.0}
PRE = {"normalisation": "none", "converter": "test", "image_shape": [1, 32, 32]}


def make_server(tmp_path, *overrides: str, resume: dict | None = None) -> ParamServer:
    """A server for 1-channel 32x32 images and 16 training slices, smoke config plus ``overrides``."""
    cfg = load_config(SMOKE, list(overrides))
    spec = RunSpec(cfg=cfg.to_dict(), store_path="unused.h5", image_shape=(1, 32, 32), n_train=16, preprocess=PRE,
                   run_dir=str(tmp_path), device="cpu", workers=2)
    return ParamServer(logging.getLogger("test-server"), spec, resume, lambda n: torch.zeros(n))


def latest(tmp_path) -> dict:
    return load_checkpoint(tmp_path / "checkpoints" / "latest.pt")


def ones(server: ParamServer) -> torch.Tensor:
    return torch.ones(server.theta.numel())


def test_budget_stop_answers_stop_and_writes_the_final_checkpoint(tmp_path):
    server = make_server(tmp_path, "train.max_updates=3")
    assert server.push(0, ones(server), 0, 2, STATS) and server.push(1, ones(server), 1, 2, STATS)
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()  # the timer has not fired yet
    assert not server.push(0, ones(server), 2, 2, STATS)  # the third update spends the budget
    assert server.status()["done"] == 1.0 and server.status()["workers_ready"] == 2.0
    ckpt = latest(tmp_path)
    assert ckpt["counters"]["updates"] == 3 and ckpt["counters"]["images"] == 6
    assert ckpt["image_size"] == [32, 32] and ckpt["preprocess"] == PRE
    theta = server.theta.clone()
    assert not server.push(1, ones(server), 3, 2, STATS)  # later pushes change nothing
    assert server.updates == 3 and torch.equal(server.theta, theta)
    server.close()


def test_epoch_budget(tmp_path):
    server = make_server(tmp_path, "train.max_updates=0", "train.epochs=0.25")  # 4 of 16 slices
    assert server.push(0, ones(server), 0, 2, STATS)
    assert not server.push(0, ones(server), 1, 2, STATS)
    assert latest(tmp_path)["counters"]["epoch"] == 0.25
    server.close()


def test_non_finite_gradients_are_rejected_and_change_nothing(tmp_path):
    server = make_server(tmp_path)
    theta = server.theta.clone()
    for bad in (float("nan"), float("inf"), -float("inf")):
        grad = ones(server)
        grad[5] = bad
        assert server.push(0, grad, 0, 2, STATS)  # the worker goes on
    assert torch.equal(server.theta, theta)
    assert server.status()["rejected"] == 3.0 and server.updates == 0 and server.rejected_in_a_row == 3
    assert server.push(0, ones(server), 0, 2, STATS) and server.rejected_in_a_row == 0
    assert not torch.equal(server.theta, theta)
    server.close()


def test_server_stops_after_100_non_finite_gradients_in_a_row(tmp_path):
    server = make_server(tmp_path)
    n = server.theta.numel()
    nan = torch.full((n,), float("nan"))
    for _ in range(MAX_REJECTED_IN_A_ROW - 1):
        assert server.push(0, nan, 0, 2, STATS)
    assert server.push(0, torch.zeros(n), 0, 2, STATS)  # one applied gradient starts the count again
    for _ in range(MAX_REJECTED_IN_A_ROW - 1):
        assert server.push(0, nan, 1, 2, STATS)
    assert not server.status()["diverged"]
    assert not server.push(0, nan, 1, 2, STATS)
    assert server.status()["diverged"] == 1.0 and server.status()["done"] == 1.0
    assert latest(tmp_path)["counters"]["updates"] == 1  # theta is finite: the final checkpoint
    server.close()


def test_staleness_is_counted_and_logged(tmp_path, caplog):
    server = make_server(tmp_path)
    for version in (0, 0, 1, 0):  # computed on the parameters of that many updates ago: 0, 1, 1, 3
        assert server.push(0, ones(server), version, 2, STATS)
    assert server.staleness_counts == {0: 1, 1: 2, 3: 1}
    assert server.log.n == 4 and server.log.sums["staleness"] == 5
    with caplog.at_level(logging.INFO, logger="test-server"):
        server.close()
    assert "staleness of the applied gradients (updates: count): 0: 1, 1: 2, 3: 1" in caplog.text


def test_stop_request_checkpoints_once_and_the_checkpoint_rebuilds_the_model(tmp_path):
    server = make_server(tmp_path)
    assert server.push(0, ones(server), 0, 2, STATS)
    server.stop("stop requested")
    path = tmp_path / "checkpoints" / "latest.pt"
    first = path.read_bytes()
    server.stop("stop requested")  # a second request writes nothing
    assert path.read_bytes() == first
    assert not server.push(0, ones(server), 1, 2, STATS)
    model, _, ckpt = model_from_checkpoint(latest(tmp_path))
    assert ckpt["counters"]["updates"] == 1
    for name, value in server.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    server.close()


def test_timer_checkpoint(tmp_path, monkeypatch):
    server = make_server(tmp_path, "train.checkpoint_interval_s=0.01")
    server.last_ckpt -= 1.0
    server.tick()
    assert latest(tmp_path)["counters"]["updates"] == 0
    monkeypatch.setattr(param_server, "LOG_INTERVAL_S", 0.0)
    assert server.push(0, ones(server), 0, 2, STATS)
    server.tick()  # flushes the log: the rate is measured
    assert server.rate > 0 and server.status()["img_steps_per_s"] == server.rate
    server.close()


def test_server_keeps_the_last_finite_checkpoint(tmp_path):
    server = make_server(tmp_path)
    path = tmp_path / "checkpoints" / "latest.pt"
    server.checkpoint("first")
    before = path.read_bytes()
    server.theta[0] = float("nan")
    server.checkpoint("second")
    assert path.read_bytes() == before
    server.close()


def test_resume_restores_parameters_and_counters(tmp_path):
    first = make_server(tmp_path / "a", "train.max_updates=2")
    first.push(0, ones(first), 0, 2, STATS)
    assert not first.push(0, ones(first), 1, 2, STATS)
    first.close()
    ckpt = latest(tmp_path / "a")
    more = make_server(tmp_path / "b", "train.max_updates=4", resume=ckpt)
    assert more.updates == 2 and not more.stopping and torch.equal(more.theta, first.theta)
    assert more.push(0, ones(more), 2, 2, STATS)
    spent = make_server(tmp_path / "c", "train.max_updates=2", resume=ckpt)
    assert spent.stopping and latest(tmp_path / "c")["counters"]["updates"] == 2  # written at once
    assert not spent.push(0, ones(spent), 2, 2, STATS)
    more.close()
    spent.close()


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_turns_keep_at_most_limit_computing(limit):
    t = Turns(limit, range(4))
    granted = []
    for r in range(4):
        t.pushed(r)
        granted += t.grants()
        assert len(t.computing) <= max(limit, 3 - r)  # the first pushes only free turns
    assert len(t.computing) == limit and granted == list(range(limit)) and len(t.waiting) == 4 - limit


def test_turns_hold_answers_back_until_a_turn_is_free():
    t = Turns(2, [0, 1, 2, 3])         # all four start computing at once
    for r in (0, 1, 2):
        t.pushed(r)
    assert t.grants() == [0]           # 3 still computes, so one turn is free
    t.pushed(3)
    assert t.grants() == [1]           # then 1 (first come, first served)
    t.gone(0)                          # a worker that died frees its turn
    assert t.grants() == [2] and t.computing == {1, 2}
    t.pushed(1)
    t.started(0)                       # a restarted worker computes at once
    assert t.grants() == [] and t.drain() == [3, 1] and t.grants() == []
    free = Turns(0, [0, 1])
    free.pushed(0)
    free.pushed(1)
    assert free.grants() == [0, 1]     # no limit: every push answered at once
