"""The description of one training run: made once by ``a3c.launch``, passed as one value.

``RunSpec`` is what the supervisor of either backend, the parameter server, the workers and the
monitor need to know about a run; it travels to each child process (pickled by ``spawn`` or by
Ray) instead of long argument lists. It is frozen: a backend that must change a field for one
process (the Ray server's device) makes a copy with ``dataclasses.replace``. The checkpoint a run
resumes from is not part of it: only the server reads that, so only the server gets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from a3c.config import Config, config_from_dict
from datasets.store import SliceStore

SEED_STRIDE = 1_000_003  # between a worker rank's successive starts (restarts, resumes)


def preprocess_info(store: SliceStore) -> dict:
    """What a checkpoint records of its training data, so new images can be prepared the same way."""
    keep = ("normalisation", "converter", "arguments", "channel_names", "source", "schema_version")
    info = {k: v for k, v in store.attrs.items() if k in keep and isinstance(v, (str, int, float, list))}
    info["image_shape"] = list(store.image_shape)
    return info


def with_overrides(cfg_dict: dict, overrides: dict) -> dict:
    """``cfg_dict`` (``Config.to_dict()``) with ``{section: {key: value}}`` set over it; the input is unchanged."""
    return {sec: {**vals, **overrides.get(sec, {})} for sec, vals in cfg_dict.items()}


@dataclass(frozen=True)
class RunSpec:
    """One run, as every process of it sees it.

    ``cfg`` is the config as given (``Config.to_dict()``): the server's, and so every
    checkpoint's, and the monitor's. ``worker_overrides`` (``{section: {key: value}}``) are the
    settings the command line resolved for the workers alone (``train.cudnn_benchmark`` under
    MPS); ``worker_cfg`` is the config with them set over it."""

    cfg: dict
    store_path: str                      # the HDF5 slice store (absolute: Ray workers may run elsewhere)
    image_shape: tuple[int, int, int]    # the store's (C, H, W)
    n_train: int                         # slices in the training split (the server's epoch counter)
    preprocess: dict                     # what checkpoints record of the training data (``preprocess_info``)
    run_dir: str                         # the run folder (absolute)
    device: str                          # the training device: "cpu", "cuda", "cuda:1"
    workers: int                         # worker ranks 0..workers-1
    active: int = 0                      # at most this many workers compute at once (local server; 0 = all)
    start_updates: int = 0               # the update count resumed from (0: a new run); part of the workers' seeds
    worker_overrides: dict = field(default_factory=dict)

    def config(self) -> Config:
        """``cfg`` as a ``Config`` of its own (a new one each call)."""
        return config_from_dict(self.cfg)

    @property
    def worker_cfg(self) -> dict:
        return with_overrides(self.cfg, self.worker_overrides)

    @property
    def image_channels(self) -> int:
        return self.image_shape[0]

    @property
    def image_size(self) -> list[int]:
        """[H, W] the network sees: ``data.image_size`` square where set, else the store's."""
        size = self.cfg["data"]["image_size"]
        return [size] * 2 if size else list(self.image_shape[1:])

    @property
    def log_dir(self) -> str:
        return str(Path(self.run_dir) / "logs")

    def worker_seed(self, rank: int, start: int) -> int:
        """The seed of worker ``rank``'s ``start``-th start (0 first) in this process of the run:
        distinct per rank, per restart and per resume."""
        return int(self.cfg["train"]["seed"]) + rank + SEED_STRIDE * (start + self.start_updates)
