"""The worker's end of its link to the parameter server: one small interface, two transports.

A link has ``grad`` [P], the buffer the worker's backward accumulates into; ``pull(out [P]) ->
version`` copies the latest parameters into ``out`` and returns their version (the server's
update count); ``push(version, n_images, stats) -> bool`` hands ``grad`` to the server with the
version it was computed on and the worker's stats, waits until the server has consumed it, and
returns False when the server says stop; ``free_bytes()`` is the device's free memory the server
read before the workers' first updates, or None (``train.rollout: auto``). ``PipeLink`` is the
local transport (shared memory and a pipe); ``workers.ray_backend.RayLink`` is the Ray one.
"""
from __future__ import annotations

from typing import Protocol

import torch

from workers.shared import SharedState


class LinkClosed(ConnectionError):
    """The server's end of the link is gone (the server died): the worker ends quietly, and the
    launcher, which watches the server, says why."""


class Link(Protocol):
    grad: torch.Tensor

    def pull(self, out: torch.Tensor) -> int: ...

    def push(self, version: int, n_images: int, stats: dict) -> bool: ...

    def free_bytes(self) -> int | None: ...


class PipeLink:
    """Worker ``rank``'s link over ``torch.multiprocessing``: its slot of ``shared.grads``, a pipe."""

    def __init__(self, shared: SharedState, rank: int, conn):
        self.shared, self.rank, self.conn = shared, rank, conn
        self.grad = shared.grads[rank]

    def pull(self, out: torch.Tensor) -> int:
        return self.shared.read_theta(out)

    def free_bytes(self) -> int | None:
        mib = self.shared.get("free_mib")
        return int(mib * 2**20) if mib > 0 else None

    def push(self, version: int, n_images: int, stats: dict) -> bool:
        if self.grad.is_cuda:  # the server reads the slot from another process: the writes must be done
            torch.cuda.synchronize(self.grad.device)
        try:
            self.conn.send(("grad", self.rank, version, n_images, stats))
            return self.conn.recv() != "stop"
        except (EOFError, OSError) as exc:
            raise LinkClosed(f"worker {self.rank}: the server's pipe closed ({exc.__class__.__name__})") from None
