"""The local backend's supervisor: the server, the workers and the monitor as processes on this machine.

Every child is started with ``spawn`` (``workers.common.run_child``). The server
(``workers.param_server.serve``) and the workers (``workers.worker.work``) share theta and the
gradient slots in shared memory (CUDA IPC on a GPU) and talk over one pipe per worker; the
supervisor holds a control pipe to the server. A dead child is found by its exit code, its last
error in ``RUN/logs/<name>.err``. The policy (restarts, the progress loop, the order of a stop)
is ``workers.supervisor.Supervisor``'s; ``workers.ray_backend.RaySupervisor`` is the pair of this
one on Ray.
"""
from __future__ import annotations

import queue
import time

import torch.multiprocessing as mp

from workers.param_server import ServerEnds, serve
from workers.run import RunSpec
from workers.supervisor import STARTUP_TIMEOUT_S, STOP_GRACE_S, RunError, Supervisor
from workers.worker import work


class LocalSupervisor(Supervisor):
    """Starts, watches and stops the processes of one run on this machine."""

    def __init__(self, spec: RunSpec, resume: dict | None, progress: bool = True):
        super().__init__(spec, resume, progress)
        self.workers: dict[int, mp.Process] = {}

    def start(self) -> None:
        """Server, workers and monitor start at once (their imports and set-up overlap); a worker
        waits for the server's shared state on its pipe, the monitor for the first checkpoint."""
        pipes = {r: self.ctx.Pipe(duplex=True) for r in range(self.spec.workers)}
        self.ctrl, server_ctrl = self.ctx.Pipe(duplex=True)
        init_q = self.ctx.Queue()
        ends = ServerEnds({r: p[0] for r, p in pipes.items()}, server_ctrl, init_q, self.shared)
        self.server = self.spawn("server", serve, max(1, self.cfg.train.threads_per_worker), self.spec, self.resume,
                                 ends)
        server_ctrl.close()
        for r, (_, wrk_end) in pipes.items():
            self.start_worker(r, wrk_end)
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

    def start_worker(self, rank: int, conn) -> None:
        """Worker ``rank``'s process on its end ``conn`` of a pipe to the server."""
        seed = self.next_seed(rank)
        self.workers[rank] = self.spawn(f"worker{rank}", work, self.cfg.train.threads_per_worker, self.spec, rank,
                                        seed, conn, self.sharers)
        conn.close()

    def check_server(self) -> None:
        if not self.server.is_alive():
            raise RunError(f"the parameter server died (exit code {self.server.exitcode}): {self.last_error('server')}")

    def ended_workers(self) -> list[tuple[int, str, str]]:
        out = []
        for rank, p in list(self.workers.items()):
            if p.is_alive():
                continue
            code = p.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            out.append((rank, why, self.last_error(f"worker{rank}")))
        return out

    def restart_worker(self, rank: int) -> None:
        """A new process for ``rank``; the server gets its end of the new pipe over the control pipe."""
        srv_end, wrk_end = self.ctx.Pipe(duplex=True)
        self.ctrl.send(("add_worker", rank, srv_end))
        srv_end.close()
        self.start_worker(rank, wrk_end)

    def end_training(self, evaluate_last: bool) -> None:
        """At the end of a budget the workers have a few seconds to take the server's ``"stop"``;
        after an interrupt they are killed at once. Then the server exits."""
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

    def request_stop(self) -> None:
        """Ask a running server for a final checkpoint and wait (a few seconds at most) until it is written."""
        if not self.server.is_alive():
            return
        try:
            self.ctrl.send(("stop",))
        except OSError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while not self.shared.get("done") and self.server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_all(self) -> None:
        """SIGKILL every child still alive (they ignore SIGTERM) and reap it."""
        for p in [self.server, self.monitor, *self.workers.values()]:
            if p is not None and p.is_alive():
                p.kill()
                p.join(1.0)
