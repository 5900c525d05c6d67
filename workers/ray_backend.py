"""The Ray transport: the parameter server and the workers as Ray actors, tensors through Ray's object store.

Same Algorithm 1 as the local transport (``workers.param_server.ParamServer`` and
``workers.worker.run_worker`` are shared), same checkpoints, TensorBoard and monitor:

* ``ServerActor`` runs ``ParamServer`` on the launcher's node (checkpoints and TensorBoard land
  in the run folder there). With ``--device cuda`` theta and the Adam state live on a GPU of that
  node (the server asks Ray for a tenth of one, ``gpu_plan``), else on the CPU; they travel
  through the object store as CPU tensors either way. Its methods run one at a time, so pushes
  are applied in arrival order. After each update it puts a CPU copy of theta [P] in the object
  store once; every worker's pull of that version reads the same object.
* ``WorkerActor`` runs ``run_worker`` with a ``RayLink``: ``push`` sends the gradient [P] and
  gets back the go-on flag and a reference to the latest theta, which the next ``pull`` reads
  (one round trip per update). Workers are spread over the cluster's nodes (``SPREAD``) and ask
  for ``train.threads_per_worker`` CPUs each (and, with ``--device cuda``, an equal share of a
  GPU: ``gpu_plan``), and run on CUDA there.
* ``RaySupervisor`` is the supervisor (``workers.supervisor.Supervisor``, the pair of
  ``workers.local_backend.LocalSupervisor``): a worker whose actor died (killed, its node lost,
  an exception) is replaced by a new actor.

Every node needs the project's Python packages (torch, h5py, ...) installed and must see the
HDF5 store at the path given to ``--data``; the project's own code is shipped to the nodes by
Ray (``py_modules``). Where the run folder is not visible on a worker's node, that worker logs
to its Ray log (``/tmp/ray/session_latest/logs`` on that node) instead of ``RUN/logs``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal
import socket
import traceback
import uuid
from pathlib import Path

import torch

from a3c.fileio import write_json_atomic
from workers.common import set_threads, setup_logging
from workers.param_server import ParamServer
from workers.run import RunSpec
from workers.supervisor import STARTUP_TIMEOUT_S, STOP_GRACE_S, RunError, Supervisor
from workers.worker import run_worker

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("a3c", "workers", "datasets")
STATUS_TIMEOUT_S = 60.0
SERVER_GPU_SHARE = 0.1  # of one GPU, for theta, Adam and the flat gradient (4 vectors of P floats)


def gpu_plan(gpus_total: float, gpus_here: float, workers: int) -> tuple[float, float, int]:
    """``--device cuda`` on Ray: (the server's share of a GPU, each worker's, workers per GPU).

    The workers are spread evenly, ``ceil(workers / GPUs)`` to a GPU, sharing what the server
    leaves of one; the server takes ``SERVER_GPU_SHARE`` of a GPU of the launcher's node, or none
    (theta and Adam on the CPU) where that node has no GPU."""
    per_gpu = math.ceil(workers / max(1, int(gpus_total)))
    server = SERVER_GPU_SHARE if gpus_here > 0 else 0.0
    return server, (1.0 - server) / per_gpu, per_gpu


def actor_logger(name: str, log_dir: str) -> logging.Logger:
    """``log_dir/<name>.log`` where this node can write it, else stderr (Ray's log on that node)."""
    try:
        return setup_logging(name, Path(log_dir))
    except OSError:
        return setup_logging(name, None)


class ServerActor:
    """``ParamServer`` behind Ray methods: ``pull``, ``push``, ``status``, ``stop``, ``close``."""

    def __init__(self, spec: RunSpec, resume: dict | None):
        """``spec.device`` is the server's: theta and Adam live there (``gpu_plan``)."""
        set_threads(max(1, spec.config().train.threads_per_worker))
        self.logger = actor_logger("server", spec.log_dir)
        self.logger.info("started")
        self.device = torch.device(spec.device)
        try:
            self.server = ParamServer(self.logger, spec, resume, lambda n: torch.zeros(n, device=self.device))
        except BaseException:
            self.logger.error("failed:\n%s", traceback.format_exc())
            raise
        self.logger.info("theta and Adam on %s", self.server.theta.device)
        self.ref, self.ref_version = None, -1

    def latest(self) -> tuple[int, list]:
        """(version, [object ref of theta [P]]); the ref is in a list so that Ray passes it unread."""
        import ray

        if self.ref_version != self.server.updates:
            self.ref, self.ref_version = ray.put(self.server.theta.to("cpu", copy=True)), self.server.updates
        return self.ref_version, [self.ref]

    def pull(self) -> tuple[int, list]:
        return self.latest()

    def push(self, rank: int, grad: torch.Tensor, version: int, n_images: int, stats: dict) -> tuple[bool, int, list]:
        """Apply ``grad`` [P] (a CPU tensor); returns (go on, latest version, [ref of its theta])."""
        go_on = self.server.push(rank, grad.to(self.device), version, n_images, stats)
        self.server.tick()
        return (go_on, *self.latest())

    def status(self) -> dict:
        self.server.tick()
        return self.server.status()

    def stop(self) -> dict:
        self.server.stop("stop requested")
        return self.server.status()

    def close(self) -> None:
        self.server.close()
        self.logger.info("finished")


class RayLink:
    """Worker ``rank``'s link to a ``ServerActor``: a local gradient buffer, one round trip per update."""

    def __init__(self, server, rank: int, n_params: int, device: torch.device):
        self.server, self.rank = server, rank
        self.grad = torch.zeros(n_params, device=device)
        self.next: tuple[int, list] | None = None  # what the last push returned: the version to pull

    def pull(self, out: torch.Tensor) -> int:
        import ray

        version, (ref,) = self.next or ray.get(self.server.pull.remote())
        self.next = None
        out.copy_(ray.get(ref))
        return version

    def free_bytes(self) -> None:
        """Workers may sit on other nodes than the server: each reads its own device's free memory."""
        return None

    def push(self, version: int, n_images: int, stats: dict) -> bool:
        import ray

        grad = self.grad.cpu()  # the same tensor on the CPU; serialised at the call, so reuse is safe
        go_on, latest, refs = ray.get(self.server.push.remote(self.rank, grad, version, n_images, stats))
        self.next = (latest, refs)
        return go_on


class WorkerActor:
    """One worker; ``where()`` says which node it was placed on, ``run(...)`` trains until stop."""

    def __init__(self, rank: int, log_dir: str, threads: int):
        set_threads(threads)
        self.rank = rank
        self.logger = actor_logger(f"worker{rank}", log_dir)
        self.logger.info("started")

    def where(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def run(self, spec: RunSpec, seed: int, server, sharers: int = 1) -> int:
        try:
            pushed = run_worker(self.logger, spec, self.rank, seed,
                                lambda n_params, device: RayLink(server, self.rank, n_params, device), sharers)
        except BaseException:
            self.logger.error("failed:\n%s", traceback.format_exc())
            raise
        self.logger.info("finished")
        return pushed


def error_line(exc: BaseException) -> str:
    """One line for a Ray error: the actor's own exception where Ray carries it (as its cause, or
    as the last line of the traceback it quotes), else the error's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() if ln.strip()]
    quoted = [ln for ln in lines[1:] if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
    line = quoted[-1] if quoted else f"{exc.__class__.__name__}: {lines[0] if lines else ''}"
    return line[:300]


class RaySupervisor(Supervisor):
    """The supervisor of a run on Ray: a local instance, or the running cluster at ``address``
    (``--ray-address``)."""

    def __init__(self, spec: RunSpec, resume: dict | None, progress: bool = True, address: str | None = None):
        super().__init__(spec, resume, progress)
        self.address = address
        self.ray = None
        self.actors: dict = {}
        self.wheres: dict = {}
        self.runs: dict = {}
        self.places: dict = {}

    def start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cfg, n = self.cfg, self.spec.workers
        threads = max(1, cfg.train.threads_per_worker)
        env = {k: v for k, v in os.environ.items() if k.startswith("PIXELDRL_")}
        runtime_env = {"py_modules": [str(ROOT / p) for p in PACKAGES], "env_vars": env}
        self.namespace = f"pixeldrl-{uuid.uuid4().hex[:12]}"
        init = {"namespace": self.namespace, "runtime_env": runtime_env, "log_to_driver": False,
                "logging_level": logging.WARNING, "configure_logging": True}
        address = self.address
        on_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init puts its own, which kills this process outright
        try:
            if address:
                ray.init(address=address, **init)
            else:  # a new instance, as many CPUs as the workers ask for (the local transport's oversubscription)
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, n * threads), include_dashboard=False,
                         **init)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            raise RunError(f"could not {where}: {error_line(exc)}") from None
        finally:
            signal.signal(signal.SIGTERM, on_sigterm)
        self.ray = ray
        self.worker_options = {"num_cpus": threads, "scheduling_strategy": "SPREAD"}
        here = ray.get_runtime_context().get_node_id()
        self.sharers = n  # no turns on Ray: every worker computes at once (train.rollout auto)
        server_options, server_device = {}, "cpu"
        if self.spec.device.startswith("cuda"):
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus <= 0:
                raise RunError("--device cuda: the Ray cluster has no GPU")
            gpus_here = next((node.get("Resources", {}).get("GPU", 0) for node in ray.nodes()
                              if node.get("NodeID") == here), 0)
            server_share, self.worker_options["num_gpus"], self.sharers = gpu_plan(gpus, gpus_here, n)
            if server_share > 0:  # Ray hides the GPUs from an actor that asks for none
                server_options, server_device = {"num_gpus": server_share}, self.spec.device
        server_spec = dataclasses.replace(self.spec, device=server_device)
        self.server = ray.remote(ServerActor).options(
            name="server", num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            **server_options).remote(server_spec, self.resume)
        try:
            self.copy_status(ray.get(self.server.status.remote(), timeout=STARTUP_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            raise RunError(f"the parameter server did not start within {STARTUP_TIMEOUT_S:.0f} s "
                           f"(see {self.log_dir}/server.log)") from None
        except ray.exceptions.RayError as exc:
            raise RunError(f"the parameter server failed to start: {error_line(exc)}") from None
        for rank in range(n):
            self.start_worker(rank)
        try:
            for rank, ref in self.wheres.items():
                self.places[rank] = ray.get(ref, timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            gpu_part = (" and " + str(self.worker_options["num_gpus"]) + " GPUs"
                        if "num_gpus" in self.worker_options else "")
            raise RunError(f"Ray could not place {n} workers of {self.worker_options.get('num_cpus')} CPUs{gpu_part}"
                           f" each within {STARTUP_TIMEOUT_S:.0f} s; "
                           f"the cluster has {ray.cluster_resources()}") from None
        except ray.exceptions.RayError as exc:
            raise RunError(f"a worker failed to start: {error_line(exc)}") from None
        self.write_placement()
        self.start_monitor()
        self.started = True

    def start_worker(self, rank: int) -> None:
        ray = self.ray
        gen = self.starts.get(rank, 0)
        seed = self.next_seed(rank)
        actor = ray.remote(WorkerActor).options(name=f"worker{rank}.{gen}", **self.worker_options).remote(
            rank, self.log_dir, max(1, self.cfg.train.threads_per_worker))
        self.actors[rank] = actor
        self.wheres[rank] = actor.where.remote()  # before run: an actor's calls are served in order
        self.runs[rank] = actor.run.remote(self.spec, seed, self.server, self.sharers)

    def write_placement(self) -> None:
        """``RUN/ray.json``: the cluster, the namespace, and each worker's actor name and node."""
        info = {"address": self.ray.get_runtime_context().gcs_address, "namespace": self.namespace,
                "server_node": self.ray.get_runtime_context().get_node_id(),
                "workers": {str(r): {"actor": f"worker{r}.{self.starts[r] - 1}", **self.places.get(r, {})}
                            for r in sorted(self.actors)}}
        write_json_atomic(info, self.run / "ray.json")

    def copy_status(self, status: dict) -> None:
        for k, v in status.items():
            self.shared.set(k, v)

    def refresh(self) -> None:
        """The server actor's counters into ``self.shared``; RunError when it is gone or does not answer."""
        ray = self.ray
        try:
            self.copy_status(ray.get(self.server.status.remote(), timeout=STATUS_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            raise RunError(f"the parameter server did not answer within {STATUS_TIMEOUT_S:.0f} s") from None
        except ray.exceptions.RayError as exc:
            raise RunError(f"the parameter server died: {error_line(exc)}") from None

    def ended_workers(self) -> list[tuple[int, str, str]]:
        """Workers whose actor ended before the server said stop (one told to stop returns normally)."""
        ray = self.ray
        finished, _ = ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=0)
        out = []
        for ref in finished:
            rank = next(r for r, x in self.runs.items() if x == ref)
            try:
                ray.get(ref)
                continue  # it was told to stop: the budget is spent
            except ray.exceptions.ActorDiedError as exc:
                out.append((rank, "its Ray actor died", error_line(exc)))
            except ray.exceptions.RayError as exc:
                out.append((rank, "it raised", error_line(exc)))
        return out

    def restart_worker(self, rank: int) -> None:
        """A new actor for ``rank`` (the old one killed), and its place in ``RUN/ray.json``."""
        ray = self.ray
        ray.kill(self.actors[rank])
        self.start_worker(rank)
        try:
            self.places[rank] = ray.get(self.wheres[rank], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.RayError:
            self.places.pop(rank, None)
        self.write_placement()

    def end_training(self, evaluate_last: bool) -> None:
        """At the end of a budget the workers have a few seconds to take the server's stop; then
        every actor is killed and the server closed."""
        ray = self.ray
        if evaluate_last:
            ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=STOP_GRACE_S)
        for actor in self.actors.values():
            ray.kill(actor)
        try:
            ray.get(self.server.close.remote(), timeout=STOP_GRACE_S if evaluate_last else 2.0)
        except ray.exceptions.RayError:
            pass

    def request_stop(self) -> None:
        """Ask the server actor for a final checkpoint; a dead one is no error here."""
        try:
            self.copy_status(self.ray.get(self.server.stop.remote(), timeout=STOP_GRACE_S))
        except self.ray.exceptions.RayError:
            pass

    def kill_all(self) -> None:
        ray = self.ray
        if self.monitor is not None and self.monitor.is_alive():
            self.monitor.kill()  # it ignores SIGTERM (workers.common)
            self.monitor.join(1.0)
        if ray is None:
            return
        for actor in [*self.actors.values(), self.server]:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # already gone
                    pass
        ray.shutdown()
