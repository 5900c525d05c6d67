"""The monitor process: evaluates each new checkpoint on the validation split into TensorBoard.

It polls ``checkpoints/latest.pt``; for each new update count it runs greedy episodes over the
validation split, writes ``val/*`` metrics, the Dice after every step (``val_steps/dice_tNN``, the
paper's Fig. 7) and pictures of a few slices (input, ground truth, mask after each step; second
row: pixels whose action changed at that step, the paper's Fig. 4), and keeps
``checkpoints/best.pt`` (+ ``best.json``) by validation Dice, ties to the later checkpoint
(``a3c.metrics.improves``). ``finish`` asks for a last look before exiting; ``stop`` exits at once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from a3c.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from a3c.evaluate import (
    EvalOptions,
    EvalResult,
    evaluate,
    example_grid,
    mask_shares,
    model_from_checkpoint,
    policy_collapse,
)
from a3c.fileio import write_json_atomic
from a3c.metrics import improves
from datasets.store import SliceStore
from workers.run import RunSpec
from workers.shared import SharedState


def write_eval(writer: SummaryWriter, res: EvalResult, step: int, shares: tuple[float, float]) -> None:
    """The validation scalars and images at ``step``; ``shares`` are ``mask_shares(res.per_image)``."""
    for k, v in res.summary.items():
        writer.add_scalar(f"val/{k}", v["mean"], step)
    if res.per_image:  # share of pixels the policy keeps, against the objects' share: 1.0 or 0 is a collapse
        writer.add_scalar("val/kept_fraction", shares[0], step)
        writer.add_scalar("val/object_fraction", shares[1], step)
    for t, d in enumerate(res.step_dice, start=1):
        writer.add_scalar(f"val_steps/dice_t{t:02d}", d, step)
    for i, ex in enumerate(res.examples):
        writer.add_image(f"val_examples/slice_{ex.index}", example_grid(ex), step, dataformats="HWC")
    writer.flush()


def watch(logger, spec: RunSpec, shared: SharedState, finish, stop) -> None:
    """Evaluate each new checkpoint of the run ``spec`` (on ``spec.device``) until ``stop``, or until
    ``finish`` and no newer checkpoint; ``shared`` gets the last validation Dice."""
    cfg = spec.config()
    run = Path(spec.run_dir)
    latest, best, best_json = (run / "checkpoints" / "latest.pt", run / "checkpoints" / "best.pt",
                               run / "checkpoints" / "best.json")
    store = SliceStore(spec.store_path)
    writer = SummaryWriter(str(run / "tb"))
    best_dice = json.loads(best_json.read_text())["dice"] if best_json.exists() else -1.0
    last_mtime, last_updates = None, -1
    collapsed = False
    while not stop.is_set():
        finishing = finish.is_set()
        mtime = latest.stat().st_mtime_ns if latest.exists() else None
        if mtime is None or mtime == last_mtime:
            if finishing:
                break
            time.sleep(cfg.eval.poll_s)
            continue
        last_mtime = mtime
        try:
            ckpt = load_checkpoint(latest)
        except CheckpointError as exc:
            logger.warning("%s", exc)
            continue
        updates = int(ckpt["counters"]["updates"])
        if updates == last_updates:
            continue
        last_updates = updates
        model, _, _ = model_from_checkpoint(ckpt, spec.device)
        res = evaluate(model, store.batches(cfg.data.val_split, cfg.eval.batch_size), cfg, spec.device,
                       meta=store.meta, options=EvalOptions(max_slices=cfg.eval.max_slices,
                                                            keep_examples=cfg.eval.images))
        dice = res.summary["dice"]["mean"]
        shares = mask_shares(res.per_image)
        write_eval(writer, res, updates, shares)
        logger.info("update %d: val dice %.4f (step dice %s)", updates, dice, np.round(res.step_dice, 3).tolist())
        collapse = policy_collapse(*shares)
        if collapse and not collapsed:
            logger.warning("update %d: the policy %s on the validation split: it has collapsed to one action "
                           "(best.pt keeps the best checkpoint so far)", updates, collapse)
        elif collapsed and not collapse:
            logger.info("update %d: the policy no longer collapses to one action", updates)
        collapsed = collapse is not None
        shared.set("val_dice", dice)
        shared.set("val_updates", updates)
        if improves(dice, best_dice):
            best_dice = max(best_dice, dice)
            save_checkpoint(ckpt, best)  # the evaluated dict itself: latest.pt may be newer by now
            info = {"updates": updates, "epoch": float(ckpt["counters"]["epoch"]), "dice": dice,
                    "summary": res.summary}
            write_json_atomic(info, best_json)
            writer.add_scalar("val/best_dice", dice, updates)
    writer.close()
