"""workers.run: the run description every process of a run gets."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from a3c.config import load_config
from workers.run import RunSpec, with_overrides

SMOKE = "configs/smoke.yaml"


def spec(**over) -> RunSpec:
    fields = {"cfg": load_config(SMOKE).to_dict(), "store_path": "/data/s.h5", "image_shape": (3, 40, 48),
              "n_train": 16, "preprocess": {}, "run_dir": "/runs/r", "device": "cpu", "workers": 2}
    return RunSpec(**{**fields, **over})


def test_derived_values():
    s = spec()
    assert s.image_channels == 3 and s.log_dir == "/runs/r/logs"
    assert s.config().train.seed == s.cfg["train"]["seed"]
    cfg = load_config(SMOKE, ["data.image_size=24"]).to_dict()
    assert spec(cfg=cfg).image_size == [24, 24]
    cfg["data"]["image_size"] = 0
    assert spec(cfg=cfg).image_size == [40, 48]  # the store's own size


def test_worker_cfg_sets_the_overrides_for_the_workers_alone():
    s = spec(worker_overrides={"train": {"cudnn_benchmark": "true"}})
    assert s.worker_cfg["train"]["cudnn_benchmark"] == "true"
    assert s.cfg["train"]["cudnn_benchmark"] == "auto" and s.config().train.cudnn_benchmark == "auto"
    assert with_overrides({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}}


def test_worker_seeds_are_distinct_per_rank_start_and_resume():
    base = spec().cfg["train"]["seed"]
    assert spec().worker_seed(1, 0) == base + 1
    assert spec().worker_seed(1, 2) == base + 1 + 2 * 1_000_003
    assert spec(start_updates=5).worker_seed(0, 1) == base + 6 * 1_000_003
    seeds = {spec(start_updates=u).worker_seed(r, g) for u in (0, 7) for r in range(4) for g in range(3)}
    assert len(seeds) == 2 * 4 * 3


def test_frozen_and_pickled_whole():
    s = spec(worker_overrides={"train": {"cudnn_benchmark": "false"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 3
    assert pickle.loads(pickle.dumps(s)) == s
    assert dataclasses.replace(s, device="cuda").device == "cuda" and s.device == "cpu"
