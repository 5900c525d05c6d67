"""The real 8-patient LGG subset (../shared/data/lgg-kaggle3m-8.tar.xz), where present."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datasets.store import SliceStore

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "lgg-kaggle3m-8.tar.xz"

pytestmark = [pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present"), pytest.mark.slow]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lgg")
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(tmp, filter="data")
    out = tmp / "lgg.h5"
    r = subprocess.run([sys.executable, "-m", "datasets.convert", "lgg", str(tmp / "kaggle_3m"), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_real_lgg_conversion(converted):
    out, stdout = converted
    print(stdout)
    s = SliceStore(out)
    assert s.image_shape == (3, 256, 256)
    assert len(s.cases("all")) == 8
    assert s.n == 96  # slices with tumour (docs/DATA.md, "Example outputs")
    assert s.attrs["n_slices_read"] == 241
    splits = {name: set(s.cases(name)) for name in ("train", "val", "test")}
    assert all(splits.values())
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert sum(len(s.indices(n)) for n in ("train", "val", "test")) == 96
    images, masks = s.read(np.arange(s.n))
    assert set(np.unique(masks)) == {0, 1} and masks.reshape(96, -1).any(1).all()
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    per_case = {c: sum(1 for i in range(s.n) if s.meta(i)["case"] == c) for c in s.cases("all")}
    assert per_case["TCGA_HT_A61A_20000127"] == 37 and per_case["TCGA_CS_4942_19970222"] == 6


def test_real_lgg_inspect_json(converted):
    out, _ = converted
    r = subprocess.run([sys.executable, "-m", "datasets.inspect", str(out), "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert sum(v["slices"] for v in info["splits"].values()) == 96
