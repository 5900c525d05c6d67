"""``train.rollout: auto``: keep the whole rollout's graph (``full``) where it fits, else ``onestep``.

The rule, measured per training process on its first batch:

* ``step_graph_bytes`` runs one forward of the network with autograd on the batch's first state
  and adds up the storages the forward saves for the backward (each once, the parameters' own
  excluded; on CUDA at least the memory the forward leaves allocated). That is S, the memory one
  step's graph holds.
* ``full`` keeps ``t_max`` such graphs at once where ``onestep`` keeps one, so it needs
  ``(t_max - 1) * S`` more per process. ``choose_rollout`` picks ``full`` when that, times the
  processes that share that memory (the workers on one GPU, or on one machine's RAM, also those
  waiting for their turn: allocators keep a process's peak), fits in 60% of the free memory
  (``FREE_SHARE``): ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of ``/proc/meminfo``
  (and the cgroup's room, where smaller) on the CPU. The trainer's workers take the free memory
  the server read before any worker's first update, so that they all budget alike; free memory
  that cannot be read gives ``onestep``.

Both modes give the same gradient (``a3c.rollout``); only memory and speed differ.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import torch

FREE_SHARE = 0.6  # full may take at most this share of the free memory, for all the processes sharing it
MIB = 2**20


def step_graph_bytes(model: torch.nn.Module, state: torch.Tensor, amp: bool = False) -> int:
    """Bytes one step's autograd graph holds: one eager forward of ``state`` [B, C, H, W] with
    autograd (bf16 autocast on CUDA with ``amp``), the storages it saves for the backward counted
    once each, the parameters' excluded; on CUDA at least what the forward leaves allocated."""
    from a3c.rollout import autocast_for

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, weakref.ref] = {}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and (key not in seen or seen[key]() is None):  # a freed storage's address may recur
            seen[key] = weakref.ref(t)
            total += storage.nbytes()
        return t

    cuda = state.is_cuda
    before = torch.cuda.memory_allocated(state.device) if cuda else 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(state.device, amp):
        out = model.forward(state)  # eager, also where the model is compiled: the hooks see every saved tensor
    held = torch.cuda.memory_allocated(state.device) - before if cuda else 0
    del out
    return max(total, held)


def parse_meminfo(text: str) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes; None where absent."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def cgroup_room(limit_text: str, current_text: str) -> int | None:
    """Bytes a cgroup v2 may still take (``memory.max`` less ``memory.current``); None without a limit."""
    limit, current = limit_text.strip(), current_text.strip()
    if not limit.isdigit() or not current.isdigit():
        return None
    return max(0, int(limit) - int(current))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def free_ram(proc: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes of RAM this process may still use: ``MemAvailable``, or the cgroup's room where smaller."""
    text = _read(proc)
    room = [parse_meminfo(text) if text is not None else None]
    limit, current = _read(cgroup / "memory.max"), _read(cgroup / "memory.current")
    if limit is not None and current is not None:
        room.append(cgroup_room(limit, current))
    known = [r for r in room if r is not None]
    return min(known) if known else None


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: the GPU's (``torch.cuda.mem_get_info``) or the machine's RAM (``free_ram``)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return free_ram() if device.type == "cpu" else None


def choose_rollout(step_bytes: int, t_max: int, sharers: int, free_bytes: int | None,
                   share: float = FREE_SHARE) -> tuple[str, str]:
    """``("full" | "onestep", why)``: full when the ``t_max - 1`` step graphs it keeps beyond onestep's
    one, for each of ``sharers`` processes, fit in ``share`` of ``free_bytes``."""
    sharers = max(1, sharers)
    extra = max(0, t_max - 1) * step_bytes * sharers
    need = (f"{t_max - 1} more step graph(s) of {step_bytes / MIB:.1f} MiB x {sharers} process(es) = "
            f"{extra / MIB:.0f} MiB")
    if free_bytes is None:
        return "onestep", f"{need}; free memory unknown"
    room = f"{share:.0%} of the {free_bytes / MIB:.0f} MiB free"
    if extra <= share * free_bytes:
        return "full", f"{need} fit in {room}"
    return "onestep", f"{need} exceed {room}"


def resolve_rollout(model: torch.nn.Module, images: torch.Tensor, gt: torch.Tensor, cfg, sharers: int = 1,
                    free_bytes: int | None = None) -> tuple[str, str]:
    """``cfg.train.rollout`` for this process: onestep/full as set, auto measured on this batch
    (``images`` [B, C, H, W], ``gt`` [B, 1, H, W]) and ``choose_rollout``; returns (mode, why).
    ``free_bytes``: the free memory, read from the model's device when None."""
    if cfg.train.rollout != "auto":
        return cfg.train.rollout, "set in the config"
    from a3c.env import PixelEnv

    state = PixelEnv(cfg.env, images, gt).reset()
    step = step_graph_bytes(model, state, cfg.train.amp)
    free = free_bytes if free_bytes is not None else free_memory(images.device)
    return choose_rollout(step, cfg.env.t_max, sharers, free)
