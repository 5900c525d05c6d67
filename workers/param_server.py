"""The parameter server: the only place the optimiser runs.

``ParamServer`` is the server's logic, the same for every transport: it owns the network bound
to the master vector ``theta`` [P], applies each pushed gradient in arrival order through
``a3c.learner.Learner`` (non-finite gradients rejected and counted), logs training scalars to
TensorBoard, and writes ``checkpoints/latest.pt`` atomically on a timer, at the end and on a
stop request. ``serve`` is the local (``torch.multiprocessing``) transport around it: shared
tensors (``workers.shared``) and one pipe per worker; the Ray transport is in
``workers.ray_backend``.

``serve`` writes the counters the supervisor made, sends the whole state to each worker over its
pipe, then waits on every worker's pipe and answers each push with ``"ok"`` (or ``"stop"`` once the
budget is spent), holding an answer back while ``train.active_workers`` others compute
(``Turns``). Control messages from the supervisor: ``("add_worker", rank, conn)``, ``("stop",)``,
``("exit",)``.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from a3c.checkpoint import TrainedOn, pixeldrl_checkpoint, save_checkpoint
from a3c.learner import Learner
from a3c.memory import free_memory
from a3c.model import build_model
from a3c.params import numel
from workers.run import RunSpec
from workers.shared import SharedState

LOG_INTERVAL_S = 2.0
MAX_REJECTED_IN_A_ROW = 100  # this many non-finite gradients in a row stop the run: it has diverged


class TrainLog:
    """Running means of worker stats between TensorBoard writes."""

    def __init__(self, writer: SummaryWriter, t_max: int):
        self.writer, self.t_max = writer, t_max
        self.reset(time.monotonic(), 0)

    def reset(self, now: float, images: int) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0, self.images0 = now, images

    def add(self, stats: dict, staleness: int) -> None:
        for k in ("policy_loss", "value_loss", "entropy", "reward"):
            self.sums[k] = self.sums.get(k, 0.0) + float(stats[k])
        self.sums["staleness"] = self.sums.get("staleness", 0.0) + staleness
        self.n += 1

    def flush(self, counters: dict, now: float) -> float:
        """Write means at step ``updates``; returns image-steps per second over the interval."""
        rate = (counters["images"] - self.images0) * self.t_max / max(1e-9, now - self.t0)
        step = counters["updates"]
        if self.n:
            m = {k: v / self.n for k, v in self.sums.items()}
            for k in ("policy_loss", "value_loss", "entropy"):
                self.writer.add_scalar(f"losses/{k}", m[k], step)
            self.writer.add_scalar("charts/mean_reward", m["reward"], step)
            self.writer.add_scalar("charts/staleness", m["staleness"], step)
        self.writer.add_scalar("charts/learning_rate", counters["lr"], step)
        self.writer.add_scalar("charts/img_steps_per_s", rate, step)
        self.writer.add_scalar("charts/rejected_grads", counters["rejected"], step)
        self.writer.add_scalar("charts/epoch", counters["epoch"], step)
        self.writer.flush()
        self.reset(now, counters["images"])
        return rate


def budget_spent(cfg, counters: dict) -> bool:
    t = cfg.train
    return ((t.max_updates > 0 and counters["updates"] >= t.max_updates)
            or (t.epochs > 0 and counters["epoch"] >= t.epochs))


class ParamServer:
    """Algorithm 1's shared side: theta, Adam, the LR schedule, checkpoints and training scalars.

    ``spec`` describes the run (the server's network and its device, ``spec.device``); ``resume``
    is the checkpoint to continue from, or None. ``make_theta(P)`` allocates the master vector [P]
    (shared memory for the local transport, a plain tensor for Ray); ``before_write`` and
    ``after_write`` bracket every write of it (the local transport's seqlock). ``push`` applies one
    gradient and says whether the worker goes on; ``tick`` runs the log and checkpoint timers;
    ``status`` is what the supervisor shows.
    """

    def __init__(self, logger, spec: RunSpec, resume: dict | None, make_theta, before_write=None, after_write=None):
        self.logger, self.cfg = logger, spec.config()
        self.trained_on = TrainedOn(spec.image_channels, spec.image_size, spec.preprocess)
        self.run = Path(spec.run_dir)
        self.before_write, self.after_write = before_write, after_write
        torch.manual_seed(self.cfg.train.seed)
        self.model = build_model(self.cfg.model, spec.image_channels, self.cfg.env).to(spec.device)
        self.theta = make_theta(numel(self.model))
        self.learner = Learner(self.model, self.theta, self.cfg.optim, spec.n_train)
        if resume is not None:
            self.learner.load(resume)
            torch.set_rng_state(resume["rng"])
            logger.info("resumed at update %d, epoch %.3f", self.learner.updates, self.learner.epoch)
        self.writer = SummaryWriter(str(self.run / "tb"))
        self.writer.add_text("config", "```\n" + self.cfg.to_yaml() + "\n```", self.learner.updates)
        self.log = TrainLog(self.writer, self.cfg.env.t_max)
        self.last_ckpt = self.last_log = time.monotonic()
        self.rate = 0.0
        self.pushed_ranks: set[int] = set()  # workers heard from at least once: the rest are still warming up
        self.staleness_counts: dict[int, int] = {}  # staleness -> applied gradients, logged at the end
        self.rejected_in_a_row = 0
        self.diverged = False
        self.stopping = budget_spent(self.cfg, self.learner.counters())
        if self.stopping:
            self.checkpoint("budget already spent")

    @property
    def updates(self) -> int:
        return self.learner.updates

    def status(self) -> dict:
        """``updates, images, epoch, lr, rejected`` (counters), ``done`` (0/1), ``img_steps_per_s``,
        ``workers_ready`` (how many worker ranks have pushed a gradient in this server's life),
        ``diverged`` (0/1: stopped after ``MAX_REJECTED_IN_A_ROW`` non-finite gradients in a row)."""
        return {**self.learner.counters(), "done": float(self.stopping), "img_steps_per_s": self.rate,
                "workers_ready": float(len(self.pushed_ranks)), "diverged": float(self.diverged)}

    def checkpoint(self, reason: str) -> None:
        """Write ``checkpoints/latest.pt``; skipped (with a warning) when theta is not finite, so that
        a diverged run keeps its last finite checkpoint."""
        if not bool(torch.isfinite(self.theta).all()):
            self.logger.warning("checkpoint (%s) skipped at update %d: the parameters are not finite",
                                reason, self.learner.updates)
            return
        obj = pixeldrl_checkpoint(self.model, self.cfg.to_dict(), self.trained_on,
                                  self.learner.optimizer.state_dict(), self.learner.counters(),
                                  self.learner.ema_state_dict())
        save_checkpoint(obj, self.run / "checkpoints" / "latest.pt")
        self.logger.info("checkpoint (%s) at update %d", reason, self.learner.updates)

    def push(self, rank: int, grad: torch.Tensor, version: int, n_images: int, stats: dict) -> bool:
        """Apply ``grad`` [P], computed by worker ``rank`` on parameters of ``version``; False: stop."""
        if rank not in self.pushed_ranks:
            self.pushed_ranks.add(rank)
            self.logger.info("first gradient from worker %d (%d workers heard from)%s", rank, len(self.pushed_ranks),
                             f"; its train.rollout: {stats['rollout']}" if "rollout" in stats else "")
        if not self.stopping:
            learner = self.learner
            staleness = learner.updates - version
            if learner.apply(grad, n_images, self.before_write, self.after_write, staleness):
                self.rejected_in_a_row = 0
                self.log.add(stats, staleness)
                self.staleness_counts[staleness] = self.staleness_counts.get(staleness, 0) + 1
                if learner.updates in (1, 10, 100):
                    self.logger.info("update %d applied", learner.updates)
            else:
                self.reject(rank)
            if budget_spent(self.cfg, learner.counters()):
                self.stop("budget spent")
        return not self.stopping

    def reject(self, rank: int) -> None:
        """Count a non-finite gradient from ``rank``; stop once ``MAX_REJECTED_IN_A_ROW`` came in a row."""
        self.rejected_in_a_row += 1
        self.logger.warning("rejected a non-finite gradient from worker %d (%d so far, %d in a row)", rank,
                            self.learner.rejected, self.rejected_in_a_row)
        if self.rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            self.logger.error("%d non-finite gradients in a row: training has diverged; stopping",
                              self.rejected_in_a_row)
            self.diverged = True
            self.stop("diverged")

    def stop(self, reason: str) -> None:
        """No more updates: a final checkpoint; every later push is answered with stop."""
        if not self.stopping:
            self.stopping = True
            self.checkpoint(reason)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_log >= LOG_INTERVAL_S:
            self.rate = self.log.flush(self.learner.counters(), now)
            self.last_log = now
        if not self.stopping and now - self.last_ckpt >= self.cfg.train.checkpoint_interval_s:
            self.checkpoint("timer")
            self.last_ckpt = now

    def close(self) -> None:
        self.logger.info("staleness of the applied gradients (updates: count): %s",
                         ", ".join(f"{k}: {v}" for k, v in sorted(self.staleness_counts.items())) or "none")
        self.log.flush(self.learner.counters(), time.monotonic())
        self.writer.close()


class Turns:
    """Which workers may compute: at most ``limit`` at once (0 = no limit), the others wait for the
    answer to their last push until a turn is free, first come first served.

    With more CPU workers than cores the extra processes add no throughput, only staleness: with
    N workers time-sharing the cores each gradient is about N - 1 updates old. Holding the
    answers back keeps the staleness at about ``limit`` - 1 whatever N is. Workers start
    computing as soon as they are up (their first gradients may be staler); a worker that
    disconnects frees its turn, and a restarted one computes at once.
    """

    def __init__(self, limit: int, ranks):
        self.limit = limit
        self.computing: set[int] = set(ranks)
        self.waiting: deque[int] = deque()

    def started(self, rank: int) -> None:
        self.computing.add(rank)

    def gone(self, rank: int) -> None:
        self.computing.discard(rank)
        if rank in self.waiting:
            self.waiting.remove(rank)

    def pushed(self, rank: int) -> None:
        """``rank`` pushed a gradient and goes on: it waits for a turn."""
        self.computing.discard(rank)
        self.waiting.append(rank)

    def grants(self) -> list[int]:
        """The waiting ranks that may compute now (each to be answered "ok"), in arrival order."""
        out = []
        while self.waiting and (self.limit <= 0 or len(self.computing) < self.limit):
            rank = self.waiting.popleft()
            self.computing.add(rank)
            out.append(rank)
        return out

    def drain(self) -> list[int]:
        """Every waiting rank (each to be answered "stop")."""
        out = list(self.waiting)
        self.waiting.clear()
        return out


@dataclass
class ServerEnds:
    """The local server's connections, made by the supervisor: ``workers`` (rank -> the server's end
    of that worker's pipe), ``ctrl`` (its end of the control pipe), ``ready`` (a queue it puts
    ``"ready"`` on once the workers have been sent the state) and ``counters`` (the supervisor's
    ``seq`` and ``status``)."""

    workers: dict
    ctrl: Connection
    ready: Any
    counters: SharedState


def serve(logger, spec: RunSpec, resume: dict | None, ends: ServerEnds) -> None:
    """The local transport: shared tensors, a pipe per worker, a control pipe from the supervisor;
    at most ``spec.active`` workers compute at once (``Turns``; 0 = all)."""
    conns, ctrl = ends.workers, ends.ctrl
    device = torch.device(spec.device)
    holder: dict[str, SharedState] = {}

    def make_theta(n_params: int) -> torch.Tensor:
        holder["shared"] = SharedState.allocate(n_params, spec.workers, device, ends.counters)
        return holder["shared"].theta

    server = ParamServer(logger, spec, resume, make_theta, before_write=lambda: holder["shared"].begin_write(),
                         after_write=lambda: holder["shared"].end_write())
    shared = holder["shared"]
    shared.seq.zero_()

    def publish() -> None:
        for k, v in server.status().items():
            shared.set(k, v)

    publish()
    shared.set("free_mib", (free_memory(device) or 0) / 2**20)  # before any worker's first update: train.rollout auto
    for conn in conns.values():
        conn.send(("shared", shared))
    ends.ready.put("ready")
    active = spec.active
    turns = Turns(active, conns)
    if active:
        logger.info("at most %d of %d workers compute at once", active, len(conns))

    def answer(rank: int, reply: str) -> None:
        try:
            conns[rank].send(reply)
        except (BrokenPipeError, OSError, KeyError):
            conns.pop(rank, None)
            turns.gone(rank)

    def answer_waiting() -> None:
        for r in (turns.drain() if server.stopping else turns.grants()):
            answer(r, "stop" if server.stopping else "ok")

    while True:
        ready = wait(list(conns.values()) + [ctrl], timeout=0.5)
        for conn in ready:
            if conn is ctrl:
                try:
                    msg = ctrl.recv()
                except EOFError:
                    msg = ("exit",)
                if msg[0] == "add_worker":
                    conns[msg[1]] = msg[2]
                    turns.started(msg[1])
                    msg[2].send(("shared", shared))
                elif msg[0] == "stop":
                    server.stop("stop requested")
                    publish()
                    answer_waiting()
                elif msg[0] == "exit":
                    server.close()
                    return
                continue
            rank = next(r for r, c in conns.items() if c is conn)
            try:
                _, _, version, n_images, stats = conn.recv()
            except (EOFError, OSError):
                del conns[rank]
                turns.gone(rank)
                answer_waiting()
                logger.info("worker %d disconnected", rank)
                continue
            go_on = server.push(rank, shared.grads[rank], version, n_images, stats)
            publish()
            if go_on:
                turns.pushed(rank)
            else:
                turns.gone(rank)
                answer(rank, "stop")
            answer_waiting()
        server.tick()
        shared.set("img_steps_per_s", server.rate)
