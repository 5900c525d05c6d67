"""Score the trained cells of a ``tools/reproduce.py`` folder again, with other evaluation options.

    python tools/rescore.py SRC --data FILE.h5 --out DST [--tta none|flip|d4] [--select last|best]
                            [--device auto|cpu|cuda] [--no-progress]

Every cell of ``SRC/cells/`` (PixelDRL-MG and the baselines alike) has its checkpoint of
``--select`` (``last``: PixelDRL-MG's ``latest.pt``, a baseline's ``last.pt``; ``best``: their
``best.pt``) evaluated on the cell's own test split of ``--data``, by the code that scored it at
the end of its training (``a3c.evaluate.evaluate_checkpoint``, ``baselines.train.evaluate_baseline``),
with ``--tta``: test-time averaging of the probabilities over the symmetries of the square
(``a3c.augment.symmetric_mean``; PixelDRL-MG averages its policy at each step of one episode).
Nothing is retrained. ``DST/cells/ID/result.json`` keeps the source cell's identity (method,
seed, fold, splits) with the new scores under ``by_selection[SELECT]``, so ``tools/cv_report.py
DST=LABEL@SELECT`` reports it beside other folders. A rerun skips cells already rescored with the
same options.

Exit status 0 when every cell was scored; 2 on bad input (one ``error: ...`` line; cells scored
before it are kept, each written atomically).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from a3c.augment import AUGMENT_MODES
from a3c.cli import UsageError, one_line, resolve_device
from a3c.config import SELECTIONS
from a3c.fileio import write_json_atomic
from tools.reproduce import RL_METHODS, scores

BASELINE_EVAL_BATCH = 16  # slices per forward; the scores do not depend on it


def checkpoint_path(cell: Path, method: str, select: str) -> Path:
    """The checkpoint file of a cell folder for a selection rule (see the module docstring)."""
    if method in RL_METHODS:
        return cell / "run" / "checkpoints" / ("best.pt" if select == "best" else "latest.pt")
    return cell / "run" / ("best.pt" if select == "best" else "last.pt")


def cell_store(cell: Path, method: str, data: str) -> str:
    """The store a cell was tested on: PixelRL's copy with the coarse maps, else ``data``."""
    return str(cell / "coarse.h5") if method == "pixelrl" else data


def rescored(result: dict, res, select: str, tta: str, src: Path) -> dict:
    """The source cell ``result`` with its scores replaced by ``res`` (an ``EvalResult``) under ``select``."""
    new = scores({**{k: v["mean"] for k, v in res.summary.items()}, "step_dice": res.step_dice,
                  "per_image": res.per_image})
    keep = {k: v for k, v in result.items() if k not in ("metrics", "step_dice", "per_image", "by_selection")}
    return {**keep, **new, "selection": select, "by_selection": {select: new}, "tta": tta,
            "rescored_from": str(src)}


def score_cell(cell: Path, result: dict, args, device):
    """Evaluate one cell's checkpoint on its test split, with ``args``' ``data``, ``select``, ``tta`` and
    ``no_progress`` -> ``EvalResult``; UsageError on a bad cell."""
    from tqdm import tqdm

    from a3c.checkpoint import CheckpointError
    from a3c.evaluate import EvalOptions, evaluate_checkpoint
    from baselines.train import evaluate_baseline, model_from_baseline_checkpoint
    from datasets.store import SliceStore, StoreError

    method, split, select, tta = result["method"], result["test_split"], args.select, args.tta
    path = checkpoint_path(cell, method, select)
    if not path.exists():
        raise UsageError(f"{path}: no {select} checkpoint in cell {cell.name}")
    try:
        store = SliceStore(cell_store(cell, method, args.data))
    except StoreError as exc:
        raise UsageError(one_line(exc)) from None
    try:
        bar = tqdm(total=len(store.indices(split)), unit="slice", desc=f"{cell.name} ({tta})", file=sys.stderr,
                   dynamic_ncols=True, disable=args.no_progress)
        options = EvalOptions(tta=tta, progress=bar.update)
        try:
            if method in RL_METHODS:
                return evaluate_checkpoint(str(path), store, split, device, options)[0]
            model, _ = model_from_baseline_checkpoint(path, device)
            size = int(json.loads((cell / "run" / "test_metrics.json").read_text())["image_size"][0])
            return evaluate_baseline(model, store.batches(split, BASELINE_EVAL_BATCH), device, size,
                                     meta=store.meta, options=options)
        finally:
            bar.close()
    except (StoreError, CheckpointError, OSError, KeyError, ValueError) as exc:
        raise UsageError(f"{cell}: cannot score it ({one_line(exc)})") from None
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/rescore.py",
                                 description="Score the cells of a reproduce.py folder again (same test splits, "
                                             "same metric code) with other evaluation options; nothing is retrained.",
                                 epilog="Exit status 0 when every cell was scored, 2 on bad input.")
    ap.add_argument("src", help="a tools/reproduce.py output folder (with cells/)")
    ap.add_argument("--data", required=True, help="the HDF5 slice store the cells were trained on")
    ap.add_argument("--out", required=True, help="folder for the rescored cells (not SRC)")
    ap.add_argument("--tta", choices=AUGMENT_MODES, default="none",
                    help="test-time averaging over symmetries: none, flip (2) or d4 (8) (default none)")
    ap.add_argument("--select", choices=SELECTIONS, default="last",
                    help="checkpoint to score: last (the final parameters, default) or best (best validation Dice)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    try:
        if not (src / "cells").is_dir():
            raise UsageError(f"{src}: not a reproduce.py folder (no cells/)")
        if out.resolve() == src.resolve():
            raise UsageError(f"{out}: --out must differ from the source folder")
        if not Path(args.data).is_file():
            raise UsageError(f"{args.data}: no such store")
        device = resolve_device(args.device)
        cells = sorted(p for p in (src / "cells").iterdir() if (p / "result.json").exists())
        if not cells:
            raise UsageError(f"{src}: no finished cells (cells/*/result.json)")
        for cell in cells:
            target = out / "cells" / cell.name / "result.json"
            if target.exists():
                done = json.loads(target.read_text())
                if (done.get("tta"), done.get("selection")) == (args.tta, args.select):
                    continue
                raise UsageError(f"{target}: rescored with other options (tta {done.get('tta')}, "
                                 f"select {done.get('selection')}); use another --out")
            try:
                result = json.loads((cell / "result.json").read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"{cell / 'result.json'}: unreadable ({one_line(exc)})") from None
            res = score_cell(cell, result, args, device)
            write_json_atomic(rescored(result, res, args.select, args.tta, cell), target)
            print(f"{cell.name}: Dice {res.summary['dice']['mean']:.4f} ({len(res.per_image)} slices, "
                  f"{args.select}, tta {args.tta})")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
