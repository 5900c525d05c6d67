"""A worker process: pull parameters, sample a batch, run one reference update, push the gradient.

This is Algorithm 1's thread loop. The gradient goes into the worker's slot of the shared
``grads`` tensor; over the pipe travels only ``("grad", rank, version, n_images, stats)``, and the
worker waits for the server's ``"ok"`` (slot consumed) or ``"stop"`` before reusing the slot.

Fault injection for tests (environment variables, read once):
``PIXELDRL_FAULT_RAISE=1`` raises on every worker's first update; ``PIXELDRL_FAULT_NAN_EVERY=k``
writes NaN into every k-th pushed gradient.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from a3c.batch import prepare_batch
from a3c.config import config_from_dict
from a3c.model import build_model
from a3c.params import bind_to_flat, grads_into, numel
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


def work(logger, rank: int, cfg_dict: dict, store_path: str, image_channels: int, shared: SharedState,
         conn, device_str: str, seed: int) -> None:
    cfg = config_from_dict(cfg_dict)
    device = torch.device(device_str)
    torch.manual_seed(seed)
    store = SliceStore(store_path)
    model = build_model(cfg.model, image_channels, cfg.env.state).to(device)
    local = torch.empty(numel(model), device=device)
    bind_to_flat(model, local)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    fault_raise = os.environ.get("PIXELDRL_FAULT_RAISE") == "1"
    nan_every = int(os.environ.get("PIXELDRL_FAULT_NAN_EVERY", "0") or 0)
    logger.info("worker %d on %s, seed %d, split %s", rank, device, seed, cfg.data.train_split)
    pushed = 0
    while True:
        version = shared.read_theta(local)
        images, masks, _ = store.sample(cfg.data.train_split, cfg.train.batch_size, rng)
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        model.zero_grad(set_to_none=True)
        stats = reference_update(model, x, g, cfg, gen)
        if fault_raise:
            raise RuntimeError(f"injected fault in worker {rank}")
        slot = shared.grads[rank]
        grads_into(model, slot)
        pushed += 1
        if nan_every and pushed % nan_every == 0:
            slot[0] = float("nan")
        if slot.is_cuda:  # the server reads the slot from another process: the copy must be done
            torch.cuda.synchronize(device)
        conn.send(("grad", rank, version, stats.n_images, stats.as_dict()))
        if conn.recv() == "stop":
            logger.info("worker %d stopping after %d updates; %s", rank, pushed, peak_memory(device))
            return
