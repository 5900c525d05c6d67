"""The local transport's supervisor: starts, watches and stops the processes of one run.

Process topology (all started with ``spawn``)::

    launcher --> param server (theta, Adam, LR schedule, checkpoints, training scalars)
             --> worker 0..N-1 (pull theta, roll out t_max steps, push the gradient)
             --> monitor (evaluates checkpoints on the validation split, keeps best.pt)

A dead worker is replaced (up to ``train.max_worker_restarts`` in all), a dead server or monitor
ends the run with ``RunError``, ``request_stop`` asks the server for a final checkpoint and
``stop_with_checkpoint`` (every stop that is not the end of the budget) adds the wind-down. The
Ray transport's supervisor (``workers.ray_backend.RayLauncher``) has the same methods.
"""
from __future__ import annotations

import argparse
import math
import queue
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from workers.common import run_child, signals_blocked
from workers.monitor import watch
from workers.param_server import MAX_REJECTED_IN_A_ROW, ServerEnds, serve
from workers.run import RunSpec
from workers.shared import SharedState
from workers.worker import work

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


class Launcher:
    """Starts, watches and stops the children of one run.

    ``worker_overrides`` (``{section: {key: value}}``) are the settings the launcher resolved for
    this run's workers alone (``train.cudnn_benchmark`` under MPS); the server, and so every
    checkpoint, keeps the config as given."""

    def __init__(self, args: argparse.Namespace, spec: RunSpec, resume: dict | None):
        self.args, self.spec, self.resume = args, spec, resume
        self.cfg, self.run, self.device = spec.config(), Path(spec.run_dir), torch.device(spec.device)
        self.worker_cfg = spec.worker_cfg
        # every worker shares the device's memory (train.rollout auto), also while it waits for its turn: the
        # allocators (CUDA's cache, glibc's heap) keep a process's peak memory after its update
        self.sharers = spec.workers
        self.ctx = mp.get_context("spawn")
        self.log_dir = spec.log_dir
        self.workers: dict[int, mp.Process] = {}
        self.starts: dict[int, int] = {}
        self.restarts = 0
        self.server = self.monitor = None
        self.started = False  # True once the server, the workers and the monitor all run
        self.start_updates = spec.start_updates

    def _spawn(self, name: str, fn, threads: int, *args) -> mp.Process:
        p = self.ctx.Process(target=run_child, args=(name, fn, self.log_dir, threads, *args), name=name, daemon=False)
        with signals_blocked():  # a Ctrl-C while the child imports torch must not raise there
            p.start()
        return p

    def start(self) -> None:
        """Server, workers and monitor start at once (their imports and set-up overlap); a worker
        waits for the server's shared state on its pipe, the monitor for the first checkpoint."""
        n = self.spec.workers
        pipes = {r: self.ctx.Pipe(duplex=True) for r in range(n)}
        self.ctrl, server_ctrl = self.ctx.Pipe(duplex=True)
        init_q = self.ctx.Queue()
        self.shared = SharedState.counters_only()
        ends = ServerEnds({r: p[0] for r, p in pipes.items()}, server_ctrl, init_q, self.shared)
        self.server = self._spawn("server", serve, max(1, self.cfg.train.threads_per_worker), self.spec, self.resume,
                                  ends)
        server_ctrl.close()
        for r, (_, wrk_end) in pipes.items():
            self._start_worker(r, wrk_end)
        self.start_monitor()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                init_q.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.server.is_alive():
                    raise RunError(f"the parameter server failed to start: {self.last_error('server')}")
                if time.monotonic() > deadline:
                    raise RunError("the parameter server did not start within "
                                   f"{STARTUP_TIMEOUT_S:.0f} s (see {self.log_dir}/server.log)")
        for srv_end, _ in pipes.values():
            srv_end.close()
        self.started = True

    def start_monitor(self) -> None:
        """The monitor process, on this machine: it reads the checkpoints the server writes to the run folder."""
        self.finish, self.stop_monitor = self.ctx.Event(), self.ctx.Event()
        self.monitor = self._spawn("monitor", watch, max(1, self.cfg.train.threads_per_worker), self.spec,
                                   self.shared, self.finish, self.stop_monitor)

    def refresh(self) -> None:
        """Bring ``self.shared``'s counters up to date (the local server writes them itself)."""

    def _start_worker(self, rank: int, conn) -> None:
        seed = self.next_seed(rank)
        self.workers[rank] = self._spawn(f"worker{rank}", work, self.cfg.train.threads_per_worker, self.spec, rank,
                                         seed, conn, self.sharers)
        conn.close()

    def next_seed(self, rank: int) -> int:
        """The seed of worker ``rank``'s next start: distinct per rank, per restart and per resume."""
        gen = self.starts.get(rank, 0)
        self.starts[rank] = gen + 1
        return self.spec.worker_seed(rank, gen)

    def last_error(self, name: str) -> str:
        err = Path(self.log_dir) / f"{name}.err"
        return err.read_text().strip() if err.exists() else f"no error recorded, see {self.log_dir}/{name}.log"

    def check_children(self) -> None:
        """Replace dead workers; raise RunError when the run cannot go on."""
        if not self.server.is_alive():
            raise RunError(f"the parameter server died (exit code {self.server.exitcode}): {self.last_error('server')}")
        self.check_monitor()
        if self.shared.get("done"):
            return
        for rank, p in list(self.workers.items()):
            if p.is_alive():
                continue
            code = p.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self.count_restart(rank, why, self.last_error(f"worker{rank}"))
            srv_end, wrk_end = self.ctx.Pipe(duplex=True)
            self.ctrl.send(("add_worker", rank, srv_end))
            srv_end.close()
            self._start_worker(rank, wrk_end)

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

        bar = tqdm(total=self.budget_total(), initial=self.start_updates, unit="upd", dynamic_ncols=True,
                   disable=self.args.no_progress, mininterval=1.0, file=sys.stderr)
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
        finish; after an interrupt their in-flight gradients are useless, so they are terminated
        at once and every wait is short (all children gone within about 8 s).
        """
        if evaluate_last:  # the final checkpoint is on disk: the monitor's last look overlaps the shutdown
            self.finish.set()
        grace = STOP_GRACE_S if evaluate_last else 0.0
        deadline = time.monotonic() + grace
        for p in self.workers.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.workers.values():
            if p.is_alive():
                p.kill()  # children ignore SIGTERM (workers.common)
        try:
            self.ctrl.send(("exit",))
        except OSError:
            pass
        self.server.join(STOP_GRACE_S if evaluate_last else 2.0)
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

    def request_stop(self) -> None:
        """Ctrl-C: ask the server for a final checkpoint, then wind down without a last evaluation."""
        try:
            self.ctrl.send(("stop",))
        except OSError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while not self.shared.get("done") and self.server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop_with_checkpoint(self) -> None:
        """A stop on an error or a Ctrl-C: the server's final checkpoint when it still runs, then
        every child ends without a last evaluation."""
        if self.server.is_alive():
            self.request_stop()
        self.wind_down(evaluate_last=False)

    def kill_all(self) -> None:
        """SIGKILL every child still alive (they ignore SIGTERM) and reap it."""
        for p in [self.server, self.monitor, *self.workers.values()]:
            if p is not None and p.is_alive():
                p.kill()
                p.join(1.0)
