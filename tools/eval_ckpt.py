"""Evaluate a checkpoint on a split of a slice store: greedy episodes, Table-2-style metrics.

::

    python tools/eval_ckpt.py --ckpt FILE --data FILE.h5 [--split test] [--t-max N] [--tta none|flip|d4]
                              [--json OUT] [--save-png DIR] [--device auto|cpu|cuda] [--max-slices N]
                              [--batch-size N] [--no-progress]

(also ``python -m tools.eval_ckpt ...``). The checkpoint alone rebuilds the network (its stored
config, ``a3c.evaluate.evaluate_checkpoint``); every slice of the split runs a greedy episode of
``t_max`` steps from the all-ones mask and the final mask is scored with the paper's six metrics
(DICE, PPV, SEN, IoU, BIoU, HD95), aggregated over slices as mean ± sd (population sd).

Exit status: 0 on success; 2 on bad input (missing or unreadable checkpoint, store errors,
unknown split, channel mismatch, ``--device cuda`` without CUDA, a ``--json`` path that cannot be
written: checked before the evaluation), with one ``error: ...`` line on stderr and no JSON file
written; 130 on Ctrl-C, 143 on SIGTERM.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from a3c.augment import AUGMENT_MODES
from a3c.cli import UsageError, non_negative_int, one_line, open_unit_float, positive_int, resolve_device
from a3c.fileio import (
    TargetError,
    interrupt_status,
    make_dirs,
    probe_writable,
    remove_empty_dirs,
    sigterm_as_interrupt,
    write_json_atomic,
)
from a3c.metrics import METRIC_KEYS
from tools.overlay import overlay_picture

PNG_HELP = ("per slice, write <case>_<slice>_overlay.png (the input's first channel in grey, min-max "
            "scaled; the prediction filled in semi-transparent red; the ground-truth contour in green, "
            "drawn on top) and <case>_<slice>_steps.png (a3c.evaluate.example_grid: top row input, "
            "ground truth, m(1)..m(T); bottom row the pixels changed at each step in red) into DIR; "
            "images are at the network's input size")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python tools/eval_ckpt.py",
        description="Greedy evaluation of a PixelDRL-MG checkpoint on one split of a slice store: "
                    "per-slice DICE PPV SEN IoU BIoU HD95 of the final mask, printed as a Table-2 row "
                    "(mean ± sd). HD95 is in mm where the store records spacing, else in pixels.",
        epilog="Exit status 0 on success, 2 on bad input (one 'error: ...' line on stderr, no JSON written).")
    ap.add_argument("--ckpt", required=True, help="checkpoint file (a3c.checkpoint format)")
    ap.add_argument("--data", required=True, help="HDF5 slice store")
    ap.add_argument("--split", default="test", help="split to evaluate (train, val, test, all, train_50, "
                                                    "train_100, fold{k}/train, fold{k}/test; default test)")
    ap.add_argument("--t-max", type=positive_int, default=None, metavar="N",
                    help="steps per episode (default: the checkpoint's env.t_max); sweep it as in Fig. 7")
    ap.add_argument("--keep-threshold", type=open_unit_float, default=0.5, metavar="P",
                    help="keep a pixel only where the policy's p(keep) >= P (default 0.5: the greedy action); "
                         "a calibration check, not a tuning knob for test figures")
    ap.add_argument("--tta", choices=AUGMENT_MODES, default="none",
                    help="test-time averaging: each step's action from the policy's probabilities averaged over "
                         "the slice's symmetries, flip (2) or d4 (8, the 90-degree turns and mirrors); default none")
    ap.add_argument("--json", default=None, metavar="OUT",
                    help="write the means, stds, per-step Dice and per-slice metrics as one JSON object "
                         "(atomically)")
    ap.add_argument("--save-png", default=None, metavar="DIR", help=PNG_HELP)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda if available, else cpu (default auto)")
    ap.add_argument("--max-slices", type=non_negative_int, default=0, metavar="N",
                    help="evaluate only the first N slices of the split (0 = all, the default)")
    ap.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                    help="slices per forward batch (default: the checkpoint's eval.batch_size)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def save_pngs(examples, store, out_dir: Path) -> list[Path]:
    """Two PNGs per kept example; returns the written paths."""
    from skimage.io import imsave

    from a3c.evaluate import example_grid

    written = []
    for ex in examples:
        info = store.meta(ex.index)
        stem = f"{_safe(info.get('case', ex.index))}_{_safe(info.get('slice', ex.index))}"
        over = out_dir / f"{stem}_overlay.png"
        imsave(over, overlay_picture(ex.image, ex.masks[-1], contour=ex.gt), check_contrast=False)
        steps = out_dir / f"{stem}_steps.png"
        grid = np.clip(np.round(example_grid(ex) * 255.0), 0, 255).astype(np.uint8)
        imsave(steps, grid, check_contrast=False)
        written += [over, steps]
    return written


# ------------------------------------------------------------------------------------ output
def result_dict(res, cfg, ckpt: dict, args, t_max: int, device) -> dict:
    """The ``--json`` record of an evaluation: metrics, provenance and the per-slice rows."""
    keys = METRIC_KEYS
    n = len(res.per_image)
    counters = ckpt.get("counters", {}) or {}
    out = {k: res.summary[k]["mean"] for k in keys}
    out["std"] = {k: res.summary[k]["std"] for k in keys}
    out.update({
        "params": int(ckpt["params"]),
        "n": n,
        "slices": n,
        "split": args.split,
        "checkpoint": str(Path(args.ckpt).resolve()),
        "weights": "ema_model" if "ema_model" in ckpt else "model",  # which of its weights were scored
        "data": str(Path(args.data).resolve()),
        "updates": int(counters.get("updates", 0)),
        "epoch": float(counters.get("epoch", 0.0)),
        "images": int(counters.get("images", 0)),
        "t_max": t_max,
        "keep_threshold": args.keep_threshold,
        "tta": args.tta,
        "trained_t_max": int(cfg.env.t_max),
        "image_size": int(cfg.data.image_size),
        "device": str(device),
        "step_dice": [float(v) for v in res.step_dice],
        "per_image": res.per_image,
    })
    return out


# ------------------------------------------------------------------------------------ main
def run(args) -> int:
    import torch

    from a3c.checkpoint import CheckpointError, load_checkpoint
    from a3c.config import ConfigError
    from a3c.evaluate import EvalOptions, evaluate_checkpoint, table_row
    from datasets.store import SliceStore, StoreError

    try:
        if args.json:  # before the evaluation, not after it
            probe_writable(args.json)
        device = resolve_device(args.device)
        store = SliceStore(args.data)
        n_split = int(store.indices(args.split).size)
        n = min(n_split, args.max_slices) if args.max_slices else n_split
        ckpt = load_checkpoint(args.ckpt)
        for key in ("image_channels", "params"):
            if key not in ckpt:
                raise CheckpointError(f"{args.ckpt}: checkpoint has no {key!r} entry")
        channels = int(ckpt["image_channels"])
        if store.image_shape[0] != channels:
            raise UsageError(f"{args.data}: images have {store.image_shape[0]} channel(s), the model of "
                             f"{args.ckpt} takes {channels}")
        out_dir, created = None, []
        if args.save_png:
            out_dir = Path(args.save_png)
            try:
                created = make_dirs(out_dir)
            except OSError as exc:
                raise UsageError(f"{out_dir}: cannot create the PNG folder ({exc.strerror or exc})") from None
    except (UsageError, CheckpointError, StoreError, TargetError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2

    try:
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="slice", desc=f"eval {args.split}", file=sys.stderr, dynamic_ncols=True)
        try:
            try:
                options = EvalOptions(max_slices=args.max_slices, t_max=args.t_max, keep_threshold=args.keep_threshold,
                                      tta=args.tta,
                                      keep_examples=n if out_dir is not None else 0,
                                      progress=bar.update if bar is not None else None)
                res, cfg, ckpt = evaluate_checkpoint(ckpt, store, args.split, device, options,
                                                     batch_size=args.batch_size)
            except (StoreError, CheckpointError) as exc:
                raise UsageError(one_line(exc)) from None
            except ConfigError as exc:
                raise UsageError(f"{args.ckpt}: bad stored config ({one_line(exc)})") from None
            except ValueError as exc:  # channel mismatch (already checked above) and friends
                raise UsageError(one_line(exc)) from None
            except (KeyError, RuntimeError, AssertionError, TypeError) as exc:
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    raise
                raise UsageError(f"{args.ckpt}: cannot rebuild or run the model "
                                 f"({type(exc).__name__}: {one_line(exc)})") from None
        except UsageError as exc:
            if bar is not None:
                bar.leave = False
                bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            store.close()
        if bar is not None:
            bar.close()

        t_max = int(args.t_max or cfg.env.t_max)
        counters = ckpt.get("counters", {}) or {}
        print(f"checkpoint {args.ckpt} (updates {int(counters.get('updates', 0))}, "
              f"epoch {float(counters.get('epoch', 0.0)):.2f}), split {args.split} of {args.data}: "
              f"{len(res.per_image)} slices, t_max {t_max}, device {device}")
        print(table_row(res, int(ckpt["params"])))
        print("Dice per step: " + " ".join(f"{v:.4f}" for v in res.step_dice))

        try:
            if out_dir is not None:
                written = save_pngs(res.examples, store, out_dir)
                print(f"wrote {len(written)} PNGs to {out_dir}")
            if args.json:
                write_json_atomic(result_dict(res, cfg, ckpt, args, t_max, device), Path(args.json))
                print(f"wrote {args.json}")
        except OSError as exc:
            name = getattr(exc, "filename", None) or args.json or args.save_png
            print(f"error: {name}: cannot write ({exc.strerror or one_line(exc)})", file=sys.stderr)
            return 2
        return 0
    finally:
        remove_empty_dirs(created)  # a PNG folder this run made and left empty (a failed evaluation) goes


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return run(args)
    except KeyboardInterrupt as exc:
        print("interrupted; no JSON written" if args.json else "interrupted", file=sys.stderr)
        return interrupt_status(exc)


if __name__ == "__main__":
    raise SystemExit(main())
