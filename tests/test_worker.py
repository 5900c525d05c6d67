"""workers.worker's loop in one process, against a fake link whose server is a ``Learner``.

The link is the worker's only contact with the server (``workers.link.Link``): ``pull`` copies
theta [P] and returns its version, ``push`` hands over ``grad`` [P] and says whether to go on.
"""
from __future__ import annotations

import logging

import pytest
import torch

from a3c.config import load_config
from a3c.learner import Learner, train_single_process
from a3c.model import build_model
from a3c.params import numel
from datasets.store import SliceStore
from workers.link import LinkClosed
from workers.run import RunSpec
from workers.worker import run_worker

SMOKE = "configs/smoke.yaml"


class FakeLink:
    """A link to an in-process server: each push is applied by ``learner`` at once; stop after ``updates``."""

    def __init__(self, learner: Learner, updates: int):
        self.learner, self.updates = learner, updates
        self.grad = torch.zeros_like(learner.theta)
        self.pushes: list[tuple[int, int, dict]] = []

    def pull(self, out: torch.Tensor) -> int:
        out.copy_(self.learner.theta)
        return self.learner.updates

    def push(self, version: int, n_images: int, stats: dict) -> bool:
        assert torch.isfinite(self.grad).all() and self.grad.abs().sum() > 0
        self.pushes.append((version, n_images, stats))
        self.learner.apply(self.grad, n_images, staleness=self.learner.updates - version)
        return len(self.pushes) < self.updates

    def free_bytes(self) -> None:
        return None


def worker_spec(cfg, store) -> RunSpec:
    """The run as a worker sees it: ``cfg`` on the CPU, one worker, the store at ``store``."""
    return RunSpec(cfg=cfg.to_dict(), store_path=str(store), image_shape=(1, 32, 32), n_train=16, preprocess={},
                   run_dir="unused", device="cpu", workers=1)


def server_learner(cfg, n_train: int) -> Learner:
    """The server's side: the network built from ``train.seed``, theta [P] bound to it."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, 1, cfg.env)
    return Learner(model, torch.zeros(numel(model)), cfg.optim, n_train)


def test_worker_of_rank_0_trains_as_the_single_process_reference(tiny_store):
    """k updates through the worker loop and the link give the parameters of k reference updates."""
    cfg = load_config(SMOKE, ["train.rollout=onestep"])
    store = SliceStore(tiny_store)
    n_train = len(store.indices("train"))
    learner = server_learner(cfg, n_train)
    initial = learner.theta.clone()
    made = []

    def make_link(n_params: int, device: torch.device) -> FakeLink:
        assert n_params == learner.theta.numel() and device == torch.device("cpu")
        made.append(FakeLink(learner, 3))
        return made[0]

    pushed = run_worker(logging.getLogger("test-worker"), worker_spec(cfg, tiny_store), 0, cfg.train.seed, make_link)
    link = made[0]
    assert pushed == 3 and [v for v, _, _ in link.pushes] == [0, 1, 2]  # pulled fresh each time: staleness 0
    assert all(n == cfg.train.batch_size for _, n, _ in link.pushes)
    assert {"policy_loss", "value_loss", "entropy", "reward"} <= set(link.pushes[0][2])

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, 1, cfg.env)
    ref = train_single_process(model, cfg, lambda rng: store.sample("train", cfg.train.batch_size, rng), n_train, 3)
    assert not torch.allclose(learner.theta, initial)
    assert torch.allclose(learner.theta, ref.theta, rtol=1e-5, atol=1e-6)
    assert learner.images == ref.images
    store.close()


def test_worker_ends_when_the_link_closes(tiny_store):
    cfg = load_config(SMOKE, ["train.rollout=onestep"])
    learner = server_learner(cfg, 16)

    class ClosingLink(FakeLink):
        def push(self, version, n_images, stats):
            raise LinkClosed("worker 0: the server's pipe closed (EOFError)")

    with pytest.raises(LinkClosed):
        run_worker(logging.getLogger("test-worker"), worker_spec(cfg, tiny_store), 0, 0,
                   lambda n, d: ClosingLink(learner, 1))
