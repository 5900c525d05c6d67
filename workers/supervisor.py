"""What both backends' supervisors share: watching a run, replacing dead workers, the progress bar.

A supervisor starts, watches and stops the children of one run described by a ``RunSpec``::

    supervisor --> param server (theta, Adam, LR schedule, checkpoints, training scalars)
               --> worker 0..N-1 (pull theta, roll out t_max steps, push the gradient)
               --> monitor (evaluates checkpoints on the validation split, keeps best.pt)

``Supervisor`` holds the policy: the progress loop (``train``), restart counting (a dead worker
is replaced, up to ``train.max_worker_restarts`` in all; a dead server or monitor ends the run
with ``RunError``), the workers' seeds, the monitor (a local process for both backends) and the
order of a stop. A backend supplies the mechanics, an explicit small interface:

* ``start()``: start the server, the workers and the monitor (``start_monitor``);
* ``ended_workers()``: ``(rank, why, error)`` for each worker that ended before the server said
  stop, and ``restart_worker(rank)``: a new one in its place;
* ``request_stop()``: ask the server for a final checkpoint (tolerating a dead server);
* ``end_training(evaluate_last)``: end the workers and the server (the monitor ends after);
* ``kill_all()``: kill whatever is still alive.

and may override two hooks, which do nothing here: ``refresh()`` (bring the counters up to date:
a remote server's) and ``check_server()`` (RunError when a server process has died).
``workers.local_backend.LocalSupervisor`` and ``workers.ray_backend.RaySupervisor`` are the two.
"""
from __future__ import annotations

import math
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import torch.multiprocessing as mp

from workers.common import run_child, signals_blocked
from workers.monitor import watch
from workers.param_server import MAX_REJECTED_IN_A_ROW
from workers.run import RunSpec
from workers.shared import SharedState

STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 4.0


class RunError(RuntimeError):
    """A run that cannot go on; the message is printed as one line."""


def progress_postfix(status, workers: int) -> dict:
    """The progress bar's fields from the shared counters (``status.get(name)``): epoch, rate, the
    last validation Dice once measured, and ``warm-up`` (``k/N workers``) until every worker has
    pushed a gradient: the first gradient waits for each worker's start-up, minutes for a large
    network on a CPU, and an unmeasured time for many CUDA workers on one GPU."""
    post = {"epoch": f"{status.get('epoch'):.2f}", "img-steps/s": f"{status.get('img_steps_per_s'):.1f}"}
    ready = int(status.get("workers_ready"))
    if ready < workers:
        post["warm-up"] = f"{ready}/{workers} workers"
    if status.get("val_updates") > 0:
        post["val_dice"] = f"{status.get('val_dice'):.4f}"
    return post


class Supervisor(ABC):
    """Starts, watches and stops the children of the run ``spec``; ``resume`` is the checkpoint the
    server resumes from (None: a new run); ``progress``: draw the progress bar."""

    def __init__(self, spec: RunSpec, resume: dict | None, progress: bool = True):
        self.spec, self.resume, self.progress = spec, resume, progress
        self.cfg = spec.config()
        self.run = Path(spec.run_dir)
        self.log_dir = spec.log_dir
        # every worker shares the device's memory (train.rollout auto), also while it waits for its turn: the
        # allocators (CUDA's cache, glibc's heap) keep a process's peak memory after its update
        self.sharers = spec.workers
        self.ctx = mp.get_context("spawn")
        self.starts: dict[int, int] = {}
        self.restarts = 0
        self.server = self.monitor = None
        self.started = False  # True once the server, the workers and the monitor all run
        self.shared = SharedState.counters_only()  # the progress counters: the local server writes them itself

    # --- what a backend supplies --------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Start the server, the workers and the monitor (``start_monitor``); ``started`` once all run."""

    @abstractmethod
    def ended_workers(self) -> list[tuple[int, str, str]]:
        """``(rank, why, last error)`` of each worker that ended before the server said stop."""

    @abstractmethod
    def restart_worker(self, rank: int) -> None:
        """A new worker for ``rank`` in place of the one that ended (its seed: ``next_seed``)."""

    @abstractmethod
    def request_stop(self) -> None:
        """Ask the server for a final checkpoint and wait a few seconds at most; nothing if it is gone."""

    @abstractmethod
    def end_training(self, evaluate_last: bool) -> None:
        """End the workers (a grace period at the end of a budget, ``evaluate_last``) and the server."""

    @abstractmethod
    def kill_all(self) -> None:
        """Kill every child still alive, the monitor included (the last step of every run)."""

    def refresh(self) -> None:
        """Bring ``self.shared``'s counters up to date: nothing to do where the server writes them itself."""

    def check_server(self) -> None:
        """RunError when the server has died; here nothing: a remote server is checked by ``refresh``."""

    # --- shared by both ------------------------------------------------------------------------------

    def spawn(self, name: str, fn, threads: int, *args) -> mp.Process:
        """A child process on this machine running ``fn(logger, *args)`` (``workers.common.run_child``)."""
        p = self.ctx.Process(target=run_child, args=(name, fn, self.log_dir, threads, *args), name=name, daemon=False)
        with signals_blocked():  # a Ctrl-C while the child imports torch must not raise there
            p.start()
        return p

    def start_monitor(self) -> None:
        """The monitor process, on this machine: it reads the checkpoints the server writes to the run folder."""
        self.finish, self.stop_monitor = self.ctx.Event(), self.ctx.Event()
        self.monitor = self.spawn("monitor", watch, max(1, self.cfg.train.threads_per_worker), self.spec,
                                  self.shared, self.finish, self.stop_monitor)

    def next_seed(self, rank: int) -> int:
        """The seed of worker ``rank``'s next start: distinct per rank, per restart and per resume."""
        gen = self.starts.get(rank, 0)
        self.starts[rank] = gen + 1
        return self.spec.worker_seed(rank, gen)

    def last_error(self, name: str) -> str:
        err = Path(self.log_dir) / f"{name}.err"
        return err.read_text().strip() if err.exists() else f"no error recorded, see {self.log_dir}/{name}.log"

    def check_children(self) -> None:
        """Replace workers that ended before the server said stop; raise RunError when the run cannot go on."""
        self.check_server()
        self.check_monitor()
        if self.shared.get("done"):
            return
        for rank, why, error in self.ended_workers():
            self.count_restart(rank, why, error)
            self.restart_worker(rank)

    def check_monitor(self) -> None:
        if not self.monitor.is_alive() and self.monitor.exitcode != 0:
            raise RunError(f"the monitor died (exit code {self.monitor.exitcode}): {self.last_error('monitor')}")

    def count_restart(self, rank: int, why: str, error: str) -> None:
        """Count a dead worker's restart, or raise RunError once ``train.max_worker_restarts`` is spent."""
        self.restarts += 1
        limit = self.cfg.train.max_worker_restarts
        if self.restarts > limit:
            raise RunError(f"workers failed {self.restarts} times (worker {rank}: {why}; "
                           f"last error: {error}); stopping")
        print(f"\nworker {rank} died ({why}); restarting it ({self.restarts}/{limit})", file=sys.stderr)

    def budget_total(self) -> int | None:
        t = self.cfg.train
        totals = []
        if t.max_updates > 0:
            totals.append(t.max_updates)
        if t.epochs > 0:
            totals.append(math.ceil(t.epochs * self.spec.n_train / t.batch_size))
        return min(totals) if totals else None

    def train(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.budget_total(), initial=self.spec.start_updates, unit="upd", dynamic_ncols=True,
                   disable=not self.progress, mininterval=1.0, file=sys.stderr)
        try:
            while True:
                self.refresh()
                if self.shared.get("done"):
                    break
                self.check_children()
                bar.set_postfix(progress_postfix(self.shared, self.spec.workers), refresh=False)
                bar.update(int(self.shared.get("updates")) - bar.n)  # redraws at most every mininterval
                time.sleep(0.5)
            self.refresh()
            bar.update(int(self.shared.get("updates")) - bar.n)
        finally:
            bar.close()
        if self.shared.get("diverged"):
            raise RunError(f"the last {MAX_REJECTED_IN_A_ROW} gradients were all non-finite and rejected: training "
                           f"has diverged (try a lower optim.lr, or optim.grad_clip > 0; "
                           f"see {self.log_dir}/server.log)")

    def wind_down(self, evaluate_last: bool) -> None:
        """Workers stop, the server exits, the monitor takes a last look (``evaluate_last``) or stops.

        At the end of a budget the workers get ``"stop"`` from the server and a few seconds to
        finish; after an interrupt their in-flight gradients are useless, so they are ended at
        once and every wait is short (all children gone within about 8 s).
        """
        if evaluate_last:  # the final checkpoint is on disk: the monitor's last look overlaps the shutdown
            self.finish.set()
        self.end_training(evaluate_last)
        self.end_monitor(evaluate_last)

    def end_monitor(self, evaluate_last: bool) -> None:
        """A last evaluation of the final checkpoint (waited for), or a stop within about a second."""
        if evaluate_last:
            self.finish.set()
            while self.monitor.is_alive():
                self.monitor.join(1.0)
        else:
            self.stop_monitor.set()
            self.monitor.join(1.0)

    def stop_with_checkpoint(self) -> None:
        """A stop on an error or a Ctrl-C: the server's final checkpoint when it still runs, then
        every child ends without a last evaluation."""
        self.request_stop()
        self.wind_down(evaluate_last=False)
