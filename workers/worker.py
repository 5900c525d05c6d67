"""A worker: pull parameters, sample a batch, run one reference update, push the gradient.

This is Algorithm 1's thread loop, written once against ``workers.link.Link`` and run by both
transports: ``work`` is the local process target (``PipeLink``), ``workers.ray_backend`` runs
``run_worker`` inside a Ray actor. The model's ``.grad`` tensors are views of ``link.grad``, so
the backward accumulates the gradient there with no copy; the worker zeroes it only after the
server has answered the previous push.

Fault injection for tests (environment variables, read once):
``PIXELDRL_FAULT_RAISE=1`` raises on every worker's first update; ``PIXELDRL_FAULT_NAN_EVERY=k``
writes NaN into every k-th pushed gradient.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from a3c.augment import augment_batch, jitter_batch
from a3c.batch import prepare_batch
from a3c.config import config_from_dict
from a3c.memory import resolve_rollout
from a3c.model import build_model, tune_for_training
from a3c.params import bind_grads, bind_to_flat, numel
from a3c.rollout import reference_update
from datasets.store import SliceStore
from workers.link import Link, LinkClosed, PipeLink
from workers.run import RunSpec
from workers.shared import SharedState


def peak_memory(device: torch.device) -> str:
    """``peak_rss_mib=N`` (this process) and, on CUDA, ``peak_cuda_mib=N`` (allocated tensors)."""
    import resource

    out = f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}"
    if device.type == "cuda":
        out += f" peak_cuda_mib={torch.cuda.max_memory_allocated(device) / 2**20:.1f}"
    return out


def run_worker(logger, spec: RunSpec, rank: int, seed: int, make_link, sharers: int = 1) -> int:
    """Worker ``rank`` of the run ``spec`` trains until the server says stop; ``make_link(n_params,
    device) -> Link``. Returns updates pushed.

    It trains with ``spec.worker_cfg`` on ``spec.device``, its random streams seeded with ``seed``.
    ``train.rollout: auto`` is resolved on the first batch (``a3c.memory``), for ``sharers``
    processes computing at once on this device's memory; the choice goes to the log and, with
    the first push, to the server."""
    cfg = config_from_dict(spec.worker_cfg)
    device = torch.device(spec.device)
    torch.manual_seed(seed)
    store = SliceStore(spec.store_path)
    model = tune_for_training(build_model(cfg.model, spec.image_channels, cfg.env).to(device), device, cfg.train)
    link: Link = make_link(numel(model), device)
    local = torch.empty(numel(model), device=device)
    bind_to_flat(model, local)
    bind_grads(model, link.grad)  # backward accumulates straight into the link's buffer
    rng = np.random.default_rng(seed)
    jitter = cfg.data.jitter()
    gen = torch.Generator(device=device).manual_seed(seed)
    fault_raise = os.environ.get("PIXELDRL_FAULT_RAISE") == "1"
    nan_every = int(os.environ.get("PIXELDRL_FAULT_NAN_EVERY", "0") or 0)
    logger.info("worker %d on %s, seed %d, split %s", rank, device, seed, cfg.data.train_split)
    pushed = 0
    started = time.monotonic()
    while True:
        version = link.pull(local)
        images, masks, _ = store.sample(cfg.data.train_split, cfg.train.batch_size, rng)
        images, masks = jitter_batch(*augment_batch(images, masks, cfg.data.augment, rng), jitter, rng)
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        if cfg.train.rollout == "auto":
            cfg.train.rollout, why = resolve_rollout(model, x, g, cfg, sharers, link.free_bytes())
            logger.info("worker %d: train.rollout auto -> %s (%s)", rank, cfg.train.rollout, why)
        link.grad.zero_()  # the server has consumed it: it answered our last push
        stats = reference_update(model, x, g, cfg, gen)
        if fault_raise:
            raise RuntimeError(f"injected fault in worker {rank}")
        pushed += 1
        info = stats.as_dict()
        if pushed == 1:  # the warm-up (CUDA context, kernels, autotuning) shows in the logs
            logger.info("worker %d: first gradient %.1f s after start", rank, time.monotonic() - started)
            info["rollout"] = cfg.train.rollout
        if nan_every and pushed % nan_every == 0:
            link.grad[0] = float("nan")
        if not link.push(version, stats.n_images, info):
            logger.info("worker %d stopping after %d updates; %s", rank, pushed, peak_memory(device))
            return pushed


def work(logger, spec: RunSpec, rank: int, seed: int, conn, sharers: int = 1) -> None:
    """The local transport's worker process: the server's shared state arrives first on ``conn``,
    waited for only once the model is built (the worker starts beside the server, not after it).
    A closed pipe (the server died) ends it quietly."""

    def make_link(n_params: int, device: torch.device) -> PipeLink:
        try:
            kind, shared = conn.recv()
        except (EOFError, OSError) as exc:
            raise LinkClosed(f"worker {rank}: the server's pipe closed before it sent its state") from exc
        assert kind == "shared" and isinstance(shared, SharedState), kind
        if shared.theta.numel() != n_params:
            raise RuntimeError(f"the server's theta has {shared.theta.numel()} parameters, "
                               f"worker {rank}'s model {n_params}")
        return PipeLink(shared, rank, conn)

    try:
        run_worker(logger, spec, rank, seed, make_link, sharers)
    except LinkClosed as exc:  # the server died: the supervisor reports it, a traceback here would only add noise
        logger.warning("%s; exiting", exc)
