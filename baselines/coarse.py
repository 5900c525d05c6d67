"""Coarse segmentations for the PixelRL refinement baseline (the paper's Fig. 5).

::

    python -m baselines.coarse --ckpt BASELINE/best.pt --data IN.h5 --out OUT.h5
        [--device auto|cpu|cuda] [--batch 32] [--overwrite] [--no-progress]

Writes a copy of the store ``IN.h5`` whose images carry one more channel, last: the baseline's
probability map ``sigmoid(logits)`` in [0, 1], predicted at the baseline's input size and
resized (bilinear) to the stored size. Everything else (masks, splits, subsets, folds, spacing,
attributes) is copied unchanged, so a run with ``env.kind=refine`` on ``OUT.h5`` sees the same
slices, splits and ground truth as PixelDRL-MG on ``IN.h5``. The attribute ``coarse_from`` names
the checkpoint. The output is written to a temporary file beside it and renamed when complete.

Exit status 0; 2 on bad input (unreadable store or checkpoint, a checkpoint that is not a
baseline's, channels that do not match, an existing output without ``--overwrite``, an output
that is a folder, FIFO, device or socket) with one ``error: ...`` line on stderr and no output
file; 130 on Ctrl-C and 143 on SIGTERM, with the temporary file removed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from a3c.batch import prepare_batch
from a3c.checkpoint import CheckpointError
from a3c.cli import UsageError, positive_int, resolve_device
from a3c.fileio import TargetError, check_target, interrupt_status, make_temp, sigterm_as_interrupt
from baselines.train import model_from_baseline_checkpoint
from datasets.store import SliceStore, StoreError


@torch.no_grad()
def coarse_maps(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, image_size: int,
                device: torch.device) -> np.ndarray:
    """images float32 [B, C, H, W] (masks [B, H, W], unused) -> the baseline's probabilities float32
    [B, 1, H, W] at the stored size."""
    x, _ = prepare_batch(images, masks, device, image_size)
    prob = torch.sigmoid(model(x).float())
    if prob.shape[-2:] != images.shape[-2:]:
        prob = F.interpolate(prob, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return prob.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class CoarseJob:
    """One coarse-map store to make, as the command line gives it: the baseline checkpoint, the input
    store, the output path, the device (auto, cpu, cuda) and the slices per forward pass."""

    ckpt_path: str | Path
    data: str | Path
    out: str | Path
    device: str = "auto"
    batch: int = 32


def write_coarse_store(job: CoarseJob, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Make ``job.out``: ``job.data`` with the baseline's probability map as a last image channel. Returns the path."""
    ckpt_path, data, batch = job.ckpt_path, job.data, job.batch
    out = check_target(job.out)  # a folder, FIFO, device or socket is never replaced
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: exists (--overwrite replaces it)")
    if out.resolve() == Path(data).resolve():
        raise UsageError(f"{out}: is the input store; write the copy elsewhere")
    store = SliceStore(data)
    dev = resolve_device(job.device)
    try:
        model, ckpt = model_from_baseline_checkpoint(ckpt_path, dev)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt_path}: {exc}") from None
    c, h, w = store.image_shape
    if int(ckpt["image_channels"]) != c:
        raise UsageError(f"{data}: images have {c} channels, the baseline {ckpt_path} takes {ckpt['image_channels']}")
    used = ckpt.get("image_size") or [h, w]
    image_size = int(used[0]) if list(used) != [h, w] else 0
    fd, tmp = make_temp(out)  # mode 0o666 & ~umask, like an ordinary open()
    os.close(fd)
    try:
        from tqdm import tqdm

        with h5py.File(store.path, "r") as src, h5py.File(tmp, "w") as dst:
            for name in src:
                if name != "images":
                    src.copy(src[name], dst, name=name)
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            try:  # converters record channel names as a JSON list
                names = json.loads(store.attrs.get("channel_names", ""))
                dst.attrs["channel_names"] = json.dumps(list(names) + ["coarse"])
            except (TypeError, ValueError):
                pass
            dst.attrs["coarse_from"] = json.dumps({"checkpoint": str(Path(ckpt_path).resolve()),
                                                   "baseline": ckpt["baseline"]["name"],
                                                   "source": str(store.path.resolve())})
            images = dst.create_dataset("images", shape=(store.n, c + 1, h, w), dtype="f4", chunks=(1, c + 1, h, w))
            bar = tqdm(total=store.n, unit="slice", desc="coarse maps", file=sys.stderr, disable=not progress)
            for start in range(0, store.n, batch):
                idx = np.arange(start, min(store.n, start + batch))
                imgs, masks = store.read(idx)
                probs = coarse_maps(model, imgs, masks, image_size, dev)
                images[start:start + len(idx)] = np.concatenate([imgs, probs], axis=1)
                bar.update(len(idx))
            bar.close()
        check_target(out)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    SliceStore(out)  # the copy must open as a store
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m baselines.coarse", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="a baseline checkpoint (baselines.train's best.pt)")
    ap.add_argument("--data", required=True, help="the store the baseline segments")
    ap.add_argument("--out", required=True, help="the new store (images + the coarse map channel)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            job = CoarseJob(args.ckpt, args.data, args.out, args.device, args.batch)
            path = write_coarse_store(job, overwrite=args.overwrite, progress=not args.no_progress)
    except (UsageError, StoreError, CheckpointError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted; no output written", file=sys.stderr)
        return interrupt_status(exc)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
