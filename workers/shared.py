"""The tensors the parameter server shares with the workers, allocated once per run.

``theta`` [P] master parameters and ``grads`` [slots, P] one gradient slot per worker rank live on
the training device (CUDA memory shared by IPC, or shared CPU memory). ``seq`` [1] int64 is a
seqlock for ``theta``: the server makes it odd while it writes and even after, so a worker's copy
is consistent when ``seq`` is even and unchanged around it; no lock a dead worker could hold.
``status`` [len(STATUS)] float64 (CPU) carries counters for the launcher's progress bar.

How they travel: the launcher allocates ``seq`` and ``status`` (CPU shared memory) and passes them
to the server, the monitor and nobody else; the server allocates ``theta`` and ``grads`` and sends
the whole state to each worker over that worker's pipe, so a worker opens the CUDA tensors
straight from the process that allocated them (PyTorch cannot pass on a CUDA tensor received
from another process).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

STATUS = ("updates", "images", "epoch", "lr", "rejected", "done", "val_dice", "val_updates", "img_steps_per_s",
          "workers_ready", "diverged", "free_mib")
# free_mib: the training device's free memory in MiB, read by the server just before it sends the state to the
# workers (before any worker's first update), so that every worker's train.rollout auto budgets the same; 0 = unknown


def status_index(name: str) -> int:
    return STATUS.index(name)


@dataclass
class SharedState:
    theta: torch.Tensor | None
    grads: torch.Tensor | None
    seq: torch.Tensor
    status: torch.Tensor

    @classmethod
    def allocate(cls, n_params: int, slots: int, device: torch.device, counters: "SharedState") -> "SharedState":
        """``theta`` and ``grads`` on ``device`` beside ``counters``' ``seq`` and ``status`` (made by the launcher)."""
        theta = torch.zeros(n_params, dtype=torch.float32, device=device)
        grads = torch.zeros(slots, n_params, dtype=torch.float32, device=device)
        if device.type == "cpu":
            theta.share_memory_()
            grads.share_memory_()
        return cls(theta, grads, counters.seq, counters.status)

    @classmethod
    def counters_only(cls) -> "SharedState":
        """``seq`` and ``status`` alone, in CPU shared memory: made by the launcher, which hands them to
        the local server (and so can start the monitor before the server is up) or, where the server
        is remote (Ray), keeps them as its copy."""
        seq = torch.zeros(1, dtype=torch.int64).share_memory_()
        return cls(None, None, seq, torch.zeros(len(STATUS), dtype=torch.float64).share_memory_())

    def get(self, name: str) -> float:
        return float(self.status[status_index(name)])

    def set(self, name: str, value: float) -> None:
        self.status[status_index(name)] = value

    def begin_write(self) -> None:
        self.seq += 1

    def end_write(self) -> None:
        if self.theta.is_cuda:
            torch.cuda.synchronize(self.theta.device)
        self.seq += 1

    def read_theta(self, out: torch.Tensor) -> int:
        """Copy a consistent ``theta`` into ``out`` [P]; returns the parameter version (updates)."""
        while True:
            before = int(self.seq[0])
            if before % 2:
                time.sleep(0.0005)
                continue
            out.copy_(self.theta)
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
            if int(self.seq[0]) == before:
                return before // 2
