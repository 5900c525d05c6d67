"""datasets.inspect: text and JSON output, exit status 2 on a bad store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from datasets.inspect import describe
from datasets.synth import SynthSpec, make_synthetic_store

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "datasets.inspect", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("insp") / "s.h5", SynthSpec(cases=8, size=32, slices=3))


def test_json(store):
    r = run(store, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["image_shape"] == [1, 32, 32]
    splits = info["splits"]
    assert set(splits) == {"train", "val", "test"}
    assert [len(splits[s]["cases"]) for s in ("train", "val", "test")] == [5, 1, 2]
    assert sum(splits[s]["slices"] for s in splits) == info["slices"] == 24
    assert 0 < splits["train"]["foreground_fraction"] < 1
    assert info["attrs"]["schema_version"] == 1 and info["attrs"]["source"] == "synthetic"
    assert info["subsets"]["train_50"]["slices"] == 15
    assert sum(f["test_slices"] for f in info["folds"].values()) == 24
    assert describe(store)["splits"] == splits


def test_text(store):
    r = run(store)
    assert r.returncode == 0, r.stderr
    for word in ("train", "val", "test", "synth000", "image shape", "provenance", "normalisation"):
        assert word in r.stdout


@pytest.mark.parametrize("version", [None, 7])
def test_bad_schema_exit_2(tmp_path, store, version):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(Path(store).read_bytes())
    with h5py.File(bad, "a") as f:
        if version is None:
            del f.attrs["schema_version"]
        else:
            f.attrs["schema_version"] = version
    r = run(bad)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "schema_version" in lines[0]


def test_not_a_store_exit_2(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("not hdf5")
    r = run(p, "--json")
    assert r.returncode == 2 and str(p) in r.stderr
    r = run(tmp_path / "missing.h5")
    assert r.returncode == 2 and "no such file" in r.stderr
