import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(args: list[str], timeout: float = 180, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` from the repository root and capture its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A small synthetic store: 6 cases x 4 slices of 32x32."""
    from datasets.synth import make_synthetic_store

    path = tmp_path_factory.mktemp("store") / "tiny.h5"
    make_synthetic_store(path, cases=6, size=32, slices=4, seed=0)
    return path
