"""The parameter-server process: the only process that runs the optimiser.

It builds the network, allocates the shared tensors (``workers.shared``), hands the counters to
the launcher and the whole state to each worker over its pipe, then serves: it waits on every
worker's pipe, applies each pushed gradient in arrival order through ``a3c.learner.Learner``
(non-finite gradients rejected and counted), answers
``"ok"`` (or ``"stop"`` once the budget is spent), logs training scalars to TensorBoard, and
writes ``checkpoints/latest.pt`` atomically on a timer, at the end and on a stop request.
Control messages from the launcher: ``("add_worker", rank, conn)``, ``("stop",)``, ``("exit",)``.
"""
from __future__ import annotations

import time
from multiprocessing.connection import wait
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from a3c.checkpoint import FORMAT, save_checkpoint
from a3c.config import config_from_dict
from a3c.learner import Learner
from a3c.model import build_model, count_params
from a3c.params import numel
from workers.shared import SharedState

LOG_INTERVAL_S = 2.0


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
    return (t.max_updates > 0 and counters["updates"] >= t.max_updates) or (t.epochs > 0 and counters["epoch"] >= t.epochs)


def serve(logger, cfg_dict: dict, image_channels: int, image_size: list, n_train: int, run_dir: str,
          device_str: str, slots: int, conns: dict, ctrl, init_q, resume: dict | None, preprocess: dict) -> None:
    cfg = config_from_dict(cfg_dict)
    device = torch.device(device_str)
    run = Path(run_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, image_channels, cfg.env.state).to(device)
    shared = SharedState.allocate(numel(model), slots, device)
    learner = Learner(model, shared.theta, cfg.optim, n_train)
    if resume is not None:
        learner.load(resume)
        torch.set_rng_state(resume["rng"])
        logger.info("resumed at update %d, epoch %.3f", learner.updates, learner.epoch)
    shared.seq.zero_()

    def publish() -> None:
        c = learner.counters()
        for k in ("updates", "images", "epoch", "lr", "rejected"):
            shared.set(k, c[k])

    def checkpoint(reason: str) -> None:
        obj = {"format": FORMAT, "config": cfg.to_dict(), "image_channels": image_channels,
               "image_size": list(image_size), "params": count_params(model),
               "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "optimizer": learner.optimizer.state_dict(), "counters": learner.counters(),
               "rng": torch.get_rng_state(), "preprocess": preprocess, "created": time.time()}
        save_checkpoint(obj, run / "checkpoints" / "latest.pt")
        logger.info("checkpoint (%s) at update %d", reason, learner.updates)

    publish()
    init_q.put(("ready", shared.for_observers()))
    for conn in conns.values():
        conn.send(("shared", shared))
    writer = SummaryWriter(str(run / "tb"))
    writer.add_text("config", "```\n" + cfg.to_yaml() + "\n```", learner.updates)
    log = TrainLog(writer, cfg.env.t_max)
    last_ckpt = last_log = time.monotonic()
    stopping = budget_spent(cfg, learner.counters())
    if stopping:
        checkpoint("budget already spent")
        shared.set("done", 1)
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
                    msg[2].send(("shared", shared))
                elif msg[0] == "stop" and not stopping:
                    stopping = True
                    checkpoint("stop requested")
                    shared.set("done", 1)
                elif msg[0] == "exit":
                    log.flush(learner.counters(), time.monotonic())
                    writer.close()
                    return
                continue
            rank = next(r for r, c in conns.items() if c is conn)
            try:
                _, _, version, n_images, stats = conn.recv()
            except (EOFError, OSError):
                del conns[rank]
                logger.info("worker %d disconnected", rank)
                continue
            if not stopping:
                staleness = learner.updates - version
                applied = learner.apply(shared.grads[rank], n_images, shared.begin_write, shared.end_write)
                if applied:
                    log.add(stats, staleness)
                    if learner.updates in (1, 10, 100):
                        logger.info("update %d applied", learner.updates)
                else:
                    logger.warning("rejected a non-finite gradient from worker %d (%d so far)", rank, learner.rejected)
                publish()
                if budget_spent(cfg, learner.counters()):
                    stopping = True
                    checkpoint("budget spent")
                    shared.set("done", 1)
            try:
                conn.send("stop" if stopping else "ok")
            except (BrokenPipeError, OSError):
                del conns[rank]
        now = time.monotonic()
        if now - last_log >= LOG_INTERVAL_S:
            shared.set("img_steps_per_s", log.flush(learner.counters(), now))
            last_log = now
        if not stopping and now - last_ckpt >= cfg.train.checkpoint_interval_s:
            checkpoint("timer")
            last_ckpt = now
