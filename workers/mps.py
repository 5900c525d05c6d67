"""A private CUDA Multi-Process Service (MPS) control daemon for one run: by default with several
CUDA workers on one GPU (``plan_mps``), always with ``a3c.launch --mps``, never with ``--no-mps``.

Without MPS, processes that share a GPU take turns on it (time slicing): the kernels of N workers
never overlap, so each runs at the size of one worker's batch. Under MPS they run at the same
time. ``start_mps`` starts ``nvidia-cuda-mps-control -d`` with its own temporary folder (short: the
daemon's Unix socket path is limited in length) for its pipes and logs, checks that it answers,
and sets ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY`` in this process's environment,
which every child spawned afterwards inherits: CUDA in those children connects to the daemon,
which starts an MPS server for them. ``stop_mps`` says how many MPS servers served the run,
copies its logs to a folder of the run, restores the variables, and leaves a detached shell that
quits the daemon (which waits for the run's last CUDA process, this one, to exit) and then
removes the temporary folder.

Start it before this process touches CUDA, so that it too is a client of the daemon (the CUDA
driver connects to a daemon when it initialises).

When the launcher starts one by itself (``plan_mps``): the run uses CUDA (``--device cuda``, or
``auto`` with a GPU that NVML counts), the local backend, at least two workers, the control
program on PATH, and no daemon that already serves the machine (``mps_served``: the variable
``CUDA_MPS_PIPE_DIRECTORY`` set, which points CUDA at a daemon of the user's, or a ``control``
entry in the default pipe folder ``/tmp/nvidia-mps``, the machine's daemon).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

CONTROL = "nvidia-cuda-mps-control"
ENV_KEYS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
DEFAULT_PIPE = Path("/tmp/nvidia-mps")  # where CUDA and the control program look without CUDA_MPS_PIPE_DIRECTORY


class MPSError(RuntimeError):
    """The daemon could not be found, started or reached; the message is one line."""


def mps_served(env: Mapping[str, str], default_pipe: Path = DEFAULT_PIPE) -> str | None:
    """Why an MPS daemon already serves this machine's CUDA processes, or None: ``CUDA_MPS_PIPE_DIRECTORY``
    is set (the user's daemon), or the default pipe folder holds the daemon's ``control`` entry."""
    if env.get("CUDA_MPS_PIPE_DIRECTORY"):
        return f"CUDA_MPS_PIPE_DIRECTORY={env['CUDA_MPS_PIPE_DIRECTORY']} is set"
    control = default_pipe / "control"
    if os.path.lexists(control):
        return f"{control} exists"
    return None


@dataclass(frozen=True)
class MPSPlan:
    start: bool  # start a private daemon for the run
    why: str     # for the launcher's line; empty where nothing is said (the run is not on CUDA)


def plan_mps(mode: str, workers: int, backend: str, cuda: bool, control: str | None, served: str | None) -> MPSPlan:
    """Whether the launcher starts its private daemon. ``mode``: ``on`` (``--mps``: always, and
    ``start_mps`` fails loudly), ``off`` (``--no-mps``) or ``auto``; ``cuda``: the run will use
    CUDA; ``control``: the control program's path or None; ``served``: ``mps_served``'s answer."""
    if mode == "on":
        return MPSPlan(True, "--mps")
    if not cuda:
        return MPSPlan(False, "")
    if mode == "off":
        return MPSPlan(False, "--no-mps")
    if backend != "local":
        return MPSPlan(False, f"--backend {backend}: start MPS on each node yourself")
    if workers < 2:
        return MPSPlan(False, "one CUDA worker: no other process shares the GPU")
    if control is None:
        return MPSPlan(False, f"{CONTROL} is not on PATH (it comes with the NVIDIA driver)")
    if served:
        return MPSPlan(False, f"an MPS daemon already serves this machine: {served}")
    return MPSPlan(True, f"{workers} CUDA workers share the GPU; --no-mps to go without")


def gpu_settings_line(plan: MPSPlan, started: bool, cudnn_setting: str, cudnn_on: bool) -> str:
    """The launcher's one line on MPS and cuDNN autotuning for a CUDA run (``started``: the private
    daemon runs, its folder follows on the line where the caller adds it)."""
    if started:
        head = f"MPS: a private daemon for this run ({plan.why})"
    else:
        head = f"MPS: not used ({plan.why})" if plan.why else "MPS: not used"
    tuning = f"cuDNN autotuning {'on' if cudnn_on else 'off'} (train.cudnn_benchmark={cudnn_setting})"
    if not started and not cudnn_on and cudnn_setting == "auto":
        tuning += ", today's safe setting without MPS"
    return f"{head}; {tuning}"


@dataclass
class PrivateMPS:
    binary: str
    folder: Path                                   # temporary: pipes in pipe/, logs in log/
    previous: dict[str, str | None] | None = None  # the variables' values before start_mps

    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"),
                "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}

    def control(self, command: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run the control program with this daemon's folders: ``-d`` when command is None, else send it."""
        args = [self.binary] + (["-d"] if command is None else [])
        return subprocess.run(args, input=None if command is None else command + "\n", capture_output=True, text=True,
                              env={**os.environ, **self.env()}, timeout=timeout)

    def last_log_line(self) -> str:
        try:
            lines = (self.folder / "log" / "control.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f"; its log ends: {lines[-1][:200]}" if lines else ""


def _first_line(res: subprocess.CompletedProcess) -> str:
    text = (res.stderr or res.stdout or "").strip()
    return text.splitlines()[0][:200] if text else "no output"


def start_mps(binary: str | None = None) -> PrivateMPS:
    """Start the daemon and export its folders to this process's children; MPSError if it fails."""
    found = binary or shutil.which(CONTROL)
    if not found:
        raise MPSError(f"--mps: {CONTROL} is not on PATH (it comes with the NVIDIA driver)")
    mps = PrivateMPS(found, Path(tempfile.mkdtemp(prefix="pixeldrl-mps-")))
    for sub in ("pipe", "log"):
        (mps.folder / sub).mkdir()
    try:
        for command, what in ((None, f"{CONTROL} -d failed"), ("get_server_list", "the MPS daemon does not answer")):
            res = mps.control(command)
            if res.returncode != 0:
                raise MPSError(f"--mps: {what} (exit {res.returncode}): {_first_line(res)}{mps.last_log_line()}")
    except (OSError, subprocess.TimeoutExpired, MPSError) as exc:
        shutil.rmtree(mps.folder, ignore_errors=True)
        if isinstance(exc, MPSError):
            raise
        raise MPSError(f"--mps: {CONTROL}: {exc}") from None
    mps.previous = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(mps.env())
    return mps


def stop_mps(mps: PrivateMPS, keep_logs: Path | None = None) -> str:
    """Undo ``start_mps`` and have the daemon quit once this process has exited; its logs so far
    are copied into ``keep_logs`` where that folder's parent exists. Returns one line on how many
    MPS servers the daemon ran.

    The quit is sent by a detached shell that then removes the temporary folder: the daemon's
    ``quit`` waits for every client to leave, and this process is one (it touched CUDA under the
    daemon, for the test-set evaluation at least), so waiting for it here would wait for ever
    (the daemon logs "Server will not shutdown" until the control program's time limit).
    """
    try:
        servers = mps.control("get_server_list").stdout.split()
        said = (f"MPS: {len(servers)} server(s) served this run" if servers
                else "MPS: no process connected to the daemon (the GPU ran without MPS)")
    except (OSError, subprocess.TimeoutExpired) as exc:
        said = f"MPS: the daemon did not answer ({exc}); if it still runs, stop it with: echo quit | {CONTROL}"
    if keep_logs is not None and keep_logs.parent.is_dir():
        shutil.copytree(mps.folder / "log", keep_logs, dirs_exist_ok=True)
    for k, v in (mps.previous or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        subprocess.Popen(["sh", "-c", 'echo quit | "$0"; rm -rf "$1"', mps.binary, str(mps.folder)],
                         env={**os.environ, **mps.env()}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        said += f"; could not ask the daemon to quit ({exc}): echo quit | {CONTROL}"
    return said
