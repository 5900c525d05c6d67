"""What every child process does first and last: signals, threads, logging, error reports.

``run_child(name, fn, log_dir, threads, *args)`` is the target of every spawned process:
it dies with the launcher (``PR_SET_PDEATHSIG``); it ignores SIGINT and SIGTERM, which the
launcher turns into an orderly stop (a terminal's Ctrl-C, ``timeout`` and Slurm signal every
process of the run at once, and a child that died of them would miss the server's last
checkpoint; the launcher ends its children with SIGKILL; a child starts with both blocked
(``signals_blocked`` around its start), so that one sent while it still imports torch is
dropped instead of raising there); it sets the torch thread count, logs
to ``log_dir/<name>.log``, writes its Python stacks there on SIGUSR1, and on an exception logs
the traceback, writes its last line to ``log_dir/<name>.err`` for the launcher's message, and
re-raises (exit code 1). KeyboardInterrupt is a clean exit.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the launcher's to act on; children ignore them


@contextmanager
def signals_blocked():
    """Block SIGINT and SIGTERM in this thread meanwhile: a process started inside inherits the
    block through ``exec`` and unblocks them in ``run_child`` once it ignores them; here they wait
    until the block ends, then are handled as usual."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the launcher) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() == 1:  # the launcher is already gone
        os._exit(1)


def setup_logging(name: str, log_dir: Path | None) -> logging.Logger:
    """Logger ``name`` writing to ``log_dir/<name>.log``, or to stderr when ``log_dir`` is None."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    if log_dir is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s pid=%(process)d %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def set_threads(threads: int) -> None:
    """One process's CPU threads: OpenMP's (for libraries that start later) and torch's."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def dump_stacks_on_sigusr1(logger: logging.Logger) -> None:
    """``kill -USR1 PID`` writes this process's Python stacks (all threads) into its log file:
    where a run hangs, this shows where each child is waiting."""
    import faulthandler

    stream = getattr(logger.handlers[0], "stream", None) if logger.handlers else None
    if stream is not None:
        faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)


def run_child(name: str, fn: Callable, log_dir: str, threads: int, *args) -> None:
    die_with_parent()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # also drops one that came while they were blocked
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    set_threads(threads)
    logger = setup_logging(name, Path(log_dir))
    dump_stacks_on_sigusr1(logger)
    logger.info("started")
    try:
        fn(logger, *args)
        logger.info("finished")
    except KeyboardInterrupt:
        logger.info("interrupted")
    except BaseException as exc:
        tb = traceback.format_exc()
        logger.error("failed:\n%s", tb)
        line = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:300]
        try:
            (Path(log_dir) / f"{name}.err").write_text(line + "\n")
        except OSError:
            pass
        print(f"[{name}] {tb}", file=sys.stderr, flush=True)
        raise


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def active_workers(setting: int, workers: int, device, threads: int, cores: int | None = None) -> int:
    """How many of ``workers`` may compute at once (``train.active_workers``; 0 = no limit).

    ``setting`` > 0 is taken as it is (capped at ``workers``); 0 is auto: on a CPU the cores that
    fit ``threads`` each (at least 1), on CUDA no limit."""
    if setting > 0:
        return min(setting, workers)
    if str(device).startswith("cuda"):
        return 0
    fit = max(1, (cores or usable_cores()) // max(1, threads))
    return fit if fit < workers else 0
