"""A worker process: pull parameters, sample a batch, run one reference update, push the gradient.

This is Algorithm 1's thread loop. The model's ``.grad`` tensors are views of the worker's slot of
the shared ``grads`` tensor, so the backward accumulates the gradient there with no copy. Over
the pipe travels only ``("grad", rank, version, n_images, stats)``, and the worker waits for the
server's ``"ok"`` (slot consumed) or ``"stop"`` before it zeroes and reuses the slot.

Fault injection for tests (environment variables, read once):
``PIXELDRL_FAULT_RAISE=1`` raises on every worker's first update; ``PIXELDRL_FAULT_NAN_EVERY=k``
writes NaN into every k-th pushed gradient.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from a3c.batch import prepare_batch
from a3c.config import config_from_dict
from a3c.model import build_model, tune_for_device
from a3c.params import bind_grads, bind_to_flat, numel
from a3c.rollout import reference_update
from datasets.store import SliceStore
from workers.shared import SharedState


def peak_memory(device: torch.device) -> str:
    """``peak_rss_mib=N`` (this process) and, on CUDA, ``peak_cuda_mib=N`` (allocated tensors)."""
    import resource

    out = f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}"
    if device.type == "cuda":
        out += f" peak_cuda_mib={torch.cuda.max_memory_allocated(device) / 2**20:.1f}"
    return out


def work(logger, rank: int, cfg_dict: dict, store_path: str, image_channels: int, conn, device_str: str,
         seed: int) -> None:
    cfg = config_from_dict(cfg_dict)
    device = torch.device(device_str)
    kind, shared = conn.recv()  # the server's first message: its shared tensors
    assert kind == "shared" and isinstance(shared, SharedState), kind
    torch.manual_seed(seed)
    store = SliceStore(store_path)
    model = tune_for_device(build_model(cfg.model, image_channels, cfg.env.state).to(device), device, cfg.train)
    local = torch.empty(numel(model), device=device)
    bind_to_flat(model, local)
    slot = shared.grads[rank]  # backward accumulates straight into this worker's shared slot
    bind_grads(model, slot)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    fault_raise = os.environ.get("PIXELDRL_FAULT_RAISE") == "1"
    nan_every = int(os.environ.get("PIXELDRL_FAULT_NAN_EVERY", "0") or 0)
    logger.info("worker %d on %s, seed %d, split %s", rank, device, seed, cfg.data.train_split)
    pushed = 0
    started = time.monotonic()
    while True:
        version = shared.read_theta(local)
        images, masks, _ = store.sample(cfg.data.train_split, cfg.train.batch_size, rng)
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        slot.zero_()  # the server has consumed it: it answered our last push
        stats = reference_update(model, x, g, cfg, gen)
        if fault_raise:
            raise RuntimeError(f"injected fault in worker {rank}")
        pushed += 1
        if pushed == 1:  # the warm-up (CUDA context, kernels, autotuning) shows in the logs
            logger.info("worker %d: first gradient %.1f s after start", rank, time.monotonic() - started)
        if nan_every and pushed % nan_every == 0:
            slot[0] = float("nan")
        if slot.is_cuda:  # the server reads the slot from another process: the copy must be done
            torch.cuda.synchronize(device)
        conn.send(("grad", rank, version, stats.n_images, stats.as_dict()))
        if conn.recv() == "stop":
            logger.info("worker %d stopping after %d updates; %s", rank, pushed, peak_memory(device))
            return
