"""Issue 3's learning check: the reference update, single process, makes the greedy policy segment.

The data are generated blobs (bright discs in noise): the built-in synthetic store is hard by
design and takes the default network minutes to learn (docs/RESULTS.md); this test
shows, within a minute, that the RL machinery itself learns.
"""
import numpy as np
import pytest
import torch

from a3c.config import load_config
from a3c.evaluate import evaluate
from a3c.learner import train_single_process
from a3c.metrics import overlap_metrics
from a3c.model import build_model
from datasets.store import SliceStore
from datasets.writer import StoreLayout, StoreWriter

pytestmark = pytest.mark.slow  # 300 updates in one process

UPDATES = 300


def make_blob_store(path, cases=8, slices=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with StoreWriter(path, layout=StoreLayout(split=(60, 20, 20), seed=seed)) as writer:
        for c in range(cases):
            images = rng.normal(0.0, 0.3, (slices, 1, size, size)).astype(np.float32)
            masks = np.zeros((slices, size, size), np.uint8)
            for s in range(slices):
                cy, cx = rng.integers(8, size - 8, 2)
                r = rng.integers(3, 7)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
                masks[s] = disc
                images[s, 0][disc] += 1.0
            writer.add_case(f"case{c}", images, masks, np.arange(slices), None)


def test_smoke_config_learns_within_a_minute(tmp_path):
    make_blob_store(tmp_path / "blobs.h5")
    store = SliceStore(tmp_path / "blobs.h5")
    cfg = load_config("configs/smoke.yaml")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, store.image_shape[0], cfg.env.state)
    _, val_masks = store.read(store.indices("val"))
    all_ones = np.mean([overlap_metrics(np.ones_like(m), m)["dice"] for m in val_masks])

    train_single_process(model, cfg, lambda rng: store.sample("train", cfg.train.batch_size, rng),
                         len(store.indices("train")), UPDATES)
    after = evaluate(model, store.batches("val", 16), cfg, "cpu").summary["dice"]["mean"]
    print(f"validation Dice: all-ones mask {all_ones:.3f}, greedy policy after {UPDATES} updates {after:.3f}")
    assert after > all_ones + 0.4 and after > 0.6
