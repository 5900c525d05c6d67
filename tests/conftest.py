import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(args: list[str], timeout: float = 180, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` from the repository root and capture its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **kw)


SLOW_THEN_SIGTERM = """
import importlib, sys, time
target = importlib.import_module({target!r})
orig = getattr(target, {attr!r})
def slow(*a, **k):
    out = orig(*a, **k)
    print("LOADED", flush=True)
    time.sleep(60)
    return out
setattr(target, {attr!r}, slow)
sys.exit(importlib.import_module({tool!r}).main(sys.argv[1:]))
"""


def sigterm_midway(tool: str, target: str, attr: str, argv: list[str], midway=None) -> tuple[int, str]:
    """Run ``tool``'s ``main(argv)`` in a subprocess where ``target.attr`` pauses after its first
    call; there call ``midway()`` (checks of the half-done state) and SIGTERM it -> (exit status, stderr)."""
    import signal

    code = SLOW_THEN_SIGTERM.format(target=target, attr=attr, tool=tool)
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline().strip()
        assert line == "LOADED", (line, proc.stderr.read() if proc.poll() is not None else "")
        if midway is not None:
            midway()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def wait_for(cond, timeout=60.0, what="condition"):
    """Poll ``cond()`` every 0.1 s until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """Torch in the test process runs one intra-op thread, as the trainer's processes do
    (``train.threads_per_worker: 1``): on a CPU whose cores are busy with other jobs, one thread
    per core makes small operations up to 100x slower. Subprocesses keep torch's default."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A small synthetic store: 6 cases x 4 slices of 32x32."""
    from datasets.synth import SynthSpec, make_synthetic_store

    path = tmp_path_factory.mktemp("store") / "tiny.h5"
    make_synthetic_store(path, SynthSpec(cases=6, size=32, slices=4, seed=0))
    return path


def t2(rows):
    """A [1, 1, 2, 2] float32 tensor from 2x2 nested lists."""
    import torch

    return torch.tensor(rows, dtype=torch.float32).view(1, 1, 2, 2)


def smoke_cfg(**over):
    """configs/smoke.yaml with ``section__name=value`` fields set."""
    from a3c.config import load_config

    cfg = load_config("configs/smoke.yaml")
    for k, v in over.items():
        sec, name = k.split("__")
        setattr(getattr(cfg, sec), name, v)
    return cfg
