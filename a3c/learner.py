"""The optimiser side of PA3C: Adam on the shared parameters, the paper's step LR, gradient checks.

Adam is ``a3c.adam.FlatAdam``, one update of the whole flat vector ``theta``.

``Learner`` is what the parameter server runs for every pushed gradient; it is a plain object so
that tests can drive it in one process. The LR is a pure function of the epoch (training slices
seen / training-set size): ``lr * lr_decay ** floor(epoch / lr_step_epochs)`` (paper: 1e-3, x0.9
every 25 epochs). It is the same schedule as ``torch.optim.lr_scheduler.StepLR`` stepped once per
epoch, but it needs no scheduler object and resumes exactly from the stored image counter.

With ``optim.ema_decay`` > 0 the learner also keeps ``ema`` [P], an exponential moving average of
``theta`` after each applied step, warmed up as ``ema_decay_at`` says; checkpoints carry it as
``ema_model`` and evaluation uses it (training goes on from ``theta``).
"""
from __future__ import annotations

import math

import torch

from a3c.adam import FlatAdam
from a3c.config import OptimConfig
from a3c.model import PixelDRLNet, tune_for_training
from a3c.params import bind_grads, bind_to_flat, flat_from_state_dict, state_dict_from_flat


def lr_at(cfg: OptimConfig, epoch: float) -> float:
    """Learning rate after ``epoch`` epochs of training slices."""
    return cfg.lr * cfg.lr_decay ** math.floor(epoch / cfg.lr_step_epochs + 1e-9)


def ema_decay_at(decay: float, updates: int) -> float:
    """The moving average's decay after ``updates`` applied steps (this one included):
    ``min(decay, (1 + updates) / (10 + updates))``, so that the first steps are not drowned by the
    initial parameters (0.18 after one step, 0.5 after 8, ``decay`` from then on once it is below)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class Learner:
    """Owns the model bound to ``theta`` [P], the Adam state and the counters.

    ``apply(grad [P], n_images, staleness=k)`` rejects non-finite gradients (counted in
    ``rejected``), clips the global norm when ``grad_clip`` > 0, sets the LR for the current epoch
    (divided by the gradient's staleness with ``staleness_lr``) and steps Adam.
    """

    def __init__(self, model: PixelDRLNet, theta: torch.Tensor, cfg: OptimConfig, n_train: int):
        self.model, self.cfg, self.n_train = model, cfg, max(1, n_train)
        bind_to_flat(model, theta)
        self.theta = theta
        self.grad = torch.zeros_like(theta)
        bind_grads(model, self.grad)
        self.optimizer = FlatAdam(theta, [p.shape for p in model.parameters()], lr=cfg.lr, eps=cfg.adam_eps)
        self.ema = theta.detach().clone() if cfg.ema_decay > 0 else None
        self.updates = 0
        self.images = 0
        self.rejected = 0

    @property
    def epoch(self) -> float:
        return self.images / self.n_train

    @property
    def lr(self) -> float:
        return lr_at(self.cfg, self.epoch)

    def step_lr(self, staleness: int) -> float:
        """The LR of one step: the schedule's, divided by ``max(1, staleness)`` when
        ``staleness_lr`` is on (a gradient computed ``staleness`` updates ago)."""
        return self.lr / max(1, staleness) if self.cfg.staleness_lr else self.lr

    def apply(self, grad: torch.Tensor, n_images: int, before_write=None, after_write=None, staleness: int = 0) -> bool:
        """One Adam step with ``grad`` [P], computed on the parameters of ``staleness`` updates ago;
        returns False (and changes nothing) if it is not finite."""
        if not bool(torch.isfinite(grad).all()):
            self.rejected += 1
            return False
        self.grad.copy_(grad)
        bind_grads(self.model, self.grad)  # in case a caller reset .grad
        if self.cfg.grad_clip > 0:
            norm = torch.linalg.vector_norm(self.grad)
            self.grad.mul_(torch.clamp(self.cfg.grad_clip / (norm + 1e-6), max=1.0))
        if before_write:
            before_write()
        self.optimizer.step(self.grad, self.step_lr(staleness))
        if after_write:
            after_write()
        self.updates += 1
        self.images += n_images
        if self.ema is not None:
            self.ema.lerp_(self.theta, 1.0 - ema_decay_at(self.cfg.ema_decay, self.updates))
        return True

    def counters(self) -> dict:
        return {"updates": self.updates, "images": self.images, "epoch": self.epoch,
                "rejected": self.rejected, "lr": self.lr}

    def ema_state_dict(self) -> dict | None:
        """The moving average as a state dict of the model (CPU copies), or None when it is off."""
        return None if self.ema is None else state_dict_from_flat(self.model, self.ema)

    def load(self, ckpt: dict) -> None:
        """Restore parameters, Adam state, counters and the moving average from a checkpoint dict (a
        checkpoint without ``ema_model`` starts the average at its parameters)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        c = ckpt["counters"]
        self.updates, self.images, self.rejected = int(c["updates"]), int(c["images"]), int(c["rejected"])
        if self.ema is not None:
            ema = ckpt.get("ema_model")
            self.ema.copy_(self.theta if ema is None else flat_from_state_dict(self.model, ema).to(self.ema))


def train_single_process(model: PixelDRLNet, cfg, sample, n_train: int, updates: int,
                         device: torch.device | str = "cpu") -> Learner:
    """Algorithm 1 in one process: ``updates`` reference updates applied by a ``Learner``.

    ``sample(rng) -> (images [B, C, H, W] float32, masks [B, H, W] uint8)`` draws a batch with
    the numpy generator seeded ``train.seed``; actions are sampled with a torch generator seeded
    the same. This is what one worker of rank 0 does, with no other worker beside it, so the
    trainer's parameters after k updates must equal these (a test checks). ``train.rollout: auto``
    is resolved on the first batch, as a worker does (``a3c.memory``). Returns the learner (its
    model holds the parameters).
    """
    from dataclasses import replace

    import numpy as np

    from a3c.batch import prepare_batch
    from a3c.memory import resolve_rollout
    from a3c.params import numel
    from a3c.rollout import reference_update

    tune_for_training(model.to(device), device, cfg.train)
    learner = Learner(model, torch.zeros(numel(model), device=device), cfg.optim, n_train)
    rng = np.random.default_rng(cfg.train.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    grad = learner.grad  # the model's .grad are views of it, as a worker's are of its slot
    for _ in range(updates):
        images, masks = sample(rng)[:2]
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        if cfg.train.rollout == "auto":  # resolved in a copy: the caller's config stays as given
            cfg = replace(cfg, train=replace(cfg.train, rollout=resolve_rollout(model, x, g, cfg)[0]))
        grad.zero_()
        reference_update(model, x, g, cfg, gen)
        learner.apply(grad, len(images))
    return learner
