"""Re-measure the paper's tables and figures on a slice store: train every cell, then tabulate.

    python tools/reproduce.py EXPERIMENT --data FILE.h5 [--config FILE] [--seeds 0,1,2] [--out DIR]
        [--budget F] [--workers N] [--device auto|cpu|cuda] [--baselines unet,attention_unet,unet_plus_plus]
        [--baselines-only] [--baseline-epochs N] [--baseline-width W] [--baseline-ema-decay D] [--t-max 1,2,...,12]
        [--folds 0,1,2,3,4] [--cv-folds K] [--coarse unet,unet_plus_plus] [--no-progress]

EXPERIMENT (one per paper table or figure):

* ``table2``: PixelDRL-MG (the config as given) against the U-Net family (``--baselines``).
* ``table3``: the ablation: PA3C alone (no SAM, no dilation), PA3C+SAM, PA3C+DC, PixelDRL-MG.
* ``table4``: PixelDRL-MG and the baselines trained on the store's ``train_50`` and
  ``train_100`` subsets (the paper's extreme data constraints) and on the whole train split.
* ``table6``: 5-fold cross-validation: each method on ``fold{k}/train``, tested on
  ``fold{k}/test``; model selection uses the training folds (every case is in some test fold, so
  no held-out validation set exists); mean and sd over folds and seeds.
* ``cv``: patient-level K-fold cross-validation (``--cv-folds``, default 4): each method on
  ``cvK/fold{k}/train``, best checkpoint by ``cvK/fold{k}/val`` (a training-side patient), tested on
  ``cvK/fold{k}/test`` (``datasets.store.cv_folds``); the report of ``tools/cv_report.py`` (per
  patient, pooled, collapsed runs, step Dice, paired comparisons) follows the table, and its
  per-patient table is written to ``patients.csv`` (small enough to keep with the results). The
  baselines get the config's ``data.image_size``, ``data.augment`` and ``data.jitter_*``; they keep their raw weights
  unless ``--baseline-ema-decay`` is given (a moving average did not help the U-Net on the
  LGG cross-validation, docs/RESULTS.md, so its opponent stays the stronger one).
* ``fig5``: PixelDRL-MG against the PixelRL refinement of coarse masks: for each baseline in
  ``--coarse`` (the paper: U-Net and U-Net3+; MONAI has no U-Net3+, so U-Net++ stands in), the
  baseline is trained, its probability maps become the last image channel of a copy of the store
  (``baselines.coarse``), and PixelRL-<baseline> is trained on that copy with ``env.kind=refine``
  (actions add ``env.deltas``, default +-1.0, +-0.4, +-0.2, +-0.1, to the probability; the mask is
  p > 0.5) and ``env.state=stacked``; a PNG bar chart of the overlap metrics per method.
* ``fig7``: PixelDRL-MG trained with ``t_max`` in ``--t-max`` (default 1..12); a PNG plot of the
  test Dice against ``t_max``.

Each cell (one method, one setting, one seed) trains in its own folder ``OUT/cells/ID/`` through
``python -m a3c.launch`` or ``python -m baselines.train`` and is finished when ``result.json``
is there. A rerun skips finished cells and resumes a PixelDRL-MG cell from its last checkpoint,
so an interrupted experiment continues where it stopped. ``--budget F`` multiplies every
training budget (PixelDRL-MG's ``train.max_updates`` and ``train.epochs``, the baselines' epochs)
by F for a quick check. At the end it writes ``OUT/EXPERIMENT.md`` (mean ± sd over seeds, and
for table6 over folds too), ``OUT/EXPERIMENT.csv`` (one line per cell) and for fig5 and fig7
``OUT/EXPERIMENT.png``. Every method is scored by the same code (``a3c.metrics`` through
``a3c.evaluate.score_batch``) on the same split of the same store.

Exit status: 0 when every cell finished; 1 when a cell failed (its log is named, finished cells
are kept); 2 on bad input, with one ``error: ...`` line.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from a3c.cli import UsageError, one_line, positive_float, positive_int
from a3c.config import SELECTIONS, ConfigError, load_config
from a3c.fileio import write_atomic, write_bytes_atomic, write_json_atomic
from a3c.metrics import METRIC_KEYS, TABLE_HEADER

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENTS = ("table2", "table3", "table4", "table6", "cv", "fig5", "fig7")
PIXELDRL = "PixelDRL-MG"
BASELINE_NAMES = {"unet": "U-Net", "attention_unet": "Attention U-Net", "unet_plus_plus": "U-Net++",
                  "basic_unet": "Basic U-Net", "segresnet": "SegResNet"}
ABLATION = (("PA3C", False, False), ("PA3C+SAM", True, False), ("PA3C+DC", False, True), (PIXELDRL, True, True))
SUBSETS = (("50 slices", "train_50"), ("100 slices", "train_100"), ("all training slices", "train"))
REFINE = ("env.kind=refine", "env.state=stacked")  # the PixelRL baseline of Fig. 5
RL_METHODS = ("pixeldrl", "pixelrl")  # trained by a3c.launch (resumable); the rest by baselines.train


@dataclass(frozen=True)
class Cell:
    """One training: ``method`` is "pixeldrl" or a baseline name; ``setting`` groups cells into one table row.

    The splits are the cell's for every method (PixelDRL-MG gets them as ``data.*_split`` overrides);
    ``overrides`` holds the other PixelDRL-MG config changes (ablation switches, ``t_max``)."""

    setting: str
    row: str
    method: str
    seed: int
    overrides: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        split = "" if self.train_split == "train" else f"-{self.train_split}"  # table6: one cell per fold
        text = f"{self.setting}-{self.row}{split}-seed{self.seed}".replace("+", "plus")  # U-Net++ is not U-Net
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def plan(args) -> list[Cell]:
    """The cells of ``args.experiment``, in table order."""
    cells: list[Cell] = []
    baselines = [b for b in args.baselines.split(",") if b]

    def methods(setting: str, seed: int, train: str = "train", val: str = "val", test: str = "test", **extra):
        if not args.baselines_only:
            yield Cell(setting, PIXELDRL, "pixeldrl", seed, (), train, val, test, extra)
        for b in baselines:
            yield Cell(setting, BASELINE_NAMES.get(b, b), b, seed, (), train, val, test, extra)

    for seed in args.seeds:
        if args.experiment == "table2":
            cells += methods("test split", seed)
        elif args.experiment == "table3":
            cells += [Cell("ablation", name, "pixeldrl", seed, (f"model.sam={sam}", f"model.dilation={dc}"))
                      for name, sam, dc in ABLATION]
        elif args.experiment == "table4":
            for label, split in SUBSETS:
                cells += methods(label, seed, train=split)
        elif args.experiment == "table6":
            for k in args.folds:
                cells += methods("5-fold CV", seed, train=f"fold{k}/train", val=f"fold{k}/train", test=f"fold{k}/test",
                                 fold=k)
        elif args.experiment == "cv":
            for k in args.folds:
                splits = {p: f"cv{args.cv_folds}/fold{k}/{p}" for p in ("train", "val", "test")}
                cells += methods(f"{args.cv_folds}-fold patient CV", seed, fold=k, **splits)
        elif args.experiment == "fig5":
            for b in [b for b in args.coarse.split(",") if b]:
                base = Cell("coarse masks", BASELINE_NAMES.get(b, b), b, seed)
                cells += [base, Cell("coarse masks", f"PixelRL-{base.row}", "pixelrl", seed, REFINE,
                                     extra={"coarse": b, "coarse_cell": base.id})]
            cells.append(Cell("coarse masks", PIXELDRL, "pixeldrl", seed))
        elif args.experiment == "fig7":
            cells += [Cell(f"t_max={t}", PIXELDRL, "pixeldrl", seed, (f"env.t_max={t}",), extra={"t_max": t})
                      for t in args.t_max]
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise UsageError(f"two cells share a folder name: {sorted({i for i in ids if ids.count(i) > 1})}")
    return cells


def scaled_budget(cfg, budget: float) -> list[str]:
    """Overrides that multiply the config's update and epoch budgets by ``budget``."""
    out = []
    if cfg.train.max_updates > 0:
        out.append(f"train.max_updates={max(1, round(cfg.train.max_updates * budget))}")
    if cfg.train.epochs > 0:
        out.append(f"train.epochs={cfg.train.epochs * budget:g}")
    return out


def command(cell: Cell, args, run: Path, resume: bool, data: str | None = None) -> list[str]:
    """The training command of ``cell``; ``data`` replaces ``--data`` (PixelRL's coarse-map store)."""
    py = [sys.executable]
    data = data or args.data
    if cell.method in RL_METHODS:
        if resume:
            return py + ["-m", "a3c.launch", "--workers", str(args.workers), "--run-dir", str(run), "--resume",
                         "--data", data, "--device", args.device, "--no-progress"]
        overrides = [*cell.overrides, f"data.train_split={cell.train_split}", f"data.val_split={cell.val_split}",
                     f"data.test_split={cell.test_split}", f"train.seed={cell.seed}", f"eval.select={args.select}"]
        cfg = load_config(args.config, overrides)
        return py + ["-m", "a3c.launch", "--workers", str(args.workers), "--data", data, "--run-dir", str(run),
                     "--device", args.device, "--no-progress", *(["--config", args.config] if args.config else []),
                     *overrides, *scaled_budget(cfg, args.budget)]
    data_cfg = load_config(args.config).data  # same input size and augmentation as PixelDRL-MG
    return py + ["-m", "baselines.train", cell.method, "--data", args.data, "--out", str(run),
                 "--epochs", f"{max(args.baseline_epochs * args.budget, 1e-3):g}", "--width", args.baseline_width,
                 "--image-size", str(data_cfg.image_size), "--augment", data_cfg.augment,
                 "--jitter-rotate", f"{data_cfg.jitter_rotate:g}", "--jitter-scale", f"{data_cfg.jitter_scale:g}",
                 "--jitter-gamma", f"{data_cfg.jitter_gamma:g}",
                 "--ema-decay", f"{args.baseline_ema_decay:g}",
                 "--seed", str(cell.seed), "--device", args.device, "--no-progress", "--select", args.select,
                 "--train-split", cell.train_split, "--val-split", cell.val_split, "--test-split", cell.test_split]


def finished(out: Path, cell: Cell) -> dict | None:
    """The result an earlier run of ``cell`` left in ``out``, or None; UsageError if it is unreadable."""
    path = out / "cells" / cell.id / "result.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({one_line(exc)}); delete it to retrain the cell") from exc


def run_cell(cell: Cell, args, out: Path) -> dict:
    """Train ``cell`` in ``out``; returns the result dict (metrics, params, wall time)."""
    folder = out / "cells" / cell.id
    result_path = folder / "result.json"
    run = folder / "run"
    resume = cell.method in RL_METHODS and (run / "checkpoints" / "latest.pt").exists()
    if run.exists() and not resume:
        shutil.rmtree(run)  # a start that wrote no checkpoint: nothing to keep
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    t0 = time.monotonic()
    data = None
    if cell.method == "pixelrl":  # the coarse baseline's cell ran before this one (plan order)
        data = str(folder / "coarse.h5")
        if not Path(data).exists():
            best = out / "cells" / cell.extra["coarse_cell"] / "run" / "best.pt"
            logged(["-m", "baselines.coarse", "--ckpt", str(best), "--data", args.data, "--out", data,
                    "--device", args.device, "--no-progress"], log, cell)
    cmd = command(cell, args, run, resume, data)
    logged(cmd[1:], log, cell)
    metrics = json.loads((run / "test_metrics.json").read_text())
    result = {"id": cell.id, "setting": cell.setting, "row": cell.row, "method": cell.method, "seed": cell.seed,
              "train_split": cell.train_split, "val_split": cell.val_split, "test_split": cell.test_split,
              **cell.extra, "params": int(metrics["params"]), "slices": int(metrics.get("slices", metrics.get("n", 0))),
              "wall_s": round(time.monotonic() - t0, 1), "command": " ".join(cmd[1:]),
              "selection": metrics.get("selection", "best"), **scores(metrics),
              "by_selection": {rule: scores(one) for rule, one in (metrics.get("by_selection") or {}).items()}}
    write_json_atomic(result, result_path)
    return result


def scores(metrics: dict) -> dict:
    """A trainer's test scores (``test_metrics.json`` or one of its ``by_selection`` entries) ->
    the cell result's ``metrics`` (means), ``step_dice`` and slim ``per_image`` rows."""
    return {"metrics": {k: float(metrics[k]) for k in METRIC_KEYS}, "step_dice": metrics.get("step_dice", []),
            "per_image": [{k: r.get(k) for k in ("case", "slice", "kept", "object", *METRIC_KEYS)}
                          for r in metrics.get("per_image", [])]}


def logged(args: list[str], log: Path, cell: Cell) -> None:
    """Run ``python ARGS`` from the repository root, appending its output to ``log``; RuntimeError on failure."""
    cmd = [sys.executable, *args]
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        res = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(f"cell {cell.id} failed (exit code {res.returncode}); see {log}")


def summarise(results: list[dict]) -> list[dict]:
    """Group results by (setting, row) in first-seen order: mean and population sd of every metric."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["setting"], r["row"]), []).append(r)
    rows = []
    for (setting, row), rs in groups.items():
        stats = {k: (statistics.fmean(r["metrics"][k] for r in rs), statistics.pstdev(r["metrics"][k] for r in rs))
                 for k in METRIC_KEYS}
        rows.append({"setting": setting, "row": row, "n": len(rs), "params": rs[0]["params"], "stats": stats,
                     "wall_s": sum(r["wall_s"] for r in rs), "extra": {k: rs[0][k] for k in ("t_max",) if k in rs[0]}})
    return rows


def markdown(experiment: str, rows: list[dict], args) -> str:
    names = TABLE_HEADER.split()
    lines = [f"# {experiment}: {Path(args.data).name}", "",
             f"Config `{args.config or 'configs/default.yaml'}`, budget x{args.budget:g}, seeds {args.seeds}, "
             f"{args.workers} workers, device {args.device}. Mean ± sd over "
             + ("folds and seeds" if experiment in ("table6", "cv") else "seeds") + "; n = cells averaged.", "",
             "| setting | method | " + " | ".join(names) + " | params | n | train s |",
             "|---|---|" + "---|" * (len(names) + 3)]
    for r in rows:
        cells = " | ".join(f"{r['stats'][k][0]:.4f} ± {r['stats'][k][1]:.4f}" for k in METRIC_KEYS)
        lines.append(f"| {r['setting']} | {r['row']} | {cells} | "
                     f"{r['params'] / 1e6:.2f}M | {r['n']} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def csv_text(results: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["id", "setting", "row", "method", "seed", "fold", "t_max", "train_split", "test_split", "slices", "params",
            *METRIC_KEYS, "wall_s"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({**r, **r["metrics"]})
    return buf.getvalue()


def plot_fig7(rows: list[dict], path: Path) -> None:
    """Test Dice (mean ± sd over seeds) against t_max, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r["extra"]["t_max"], *r["stats"]["dice"]) for r in rows)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3)
    ax.set_xlabel("t_max (training and inference steps)")
    ax.set_ylabel("test Dice")
    ax.set_xticks([p[0] for p in pts])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


def plot_fig5(rows: list[dict], path: Path) -> None:
    """The overlap metrics (mean ± sd over seeds) of each method as grouped bars, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in METRIC_KEYS if k != "hd95"]
    names = dict(zip(METRIC_KEYS, TABLE_HEADER.split()))
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [r["stats"][k][0] for k in keys], width, yerr=[r["stats"][k][1] for k in keys], capsize=2,
               label=r["row"])
    ax.set_xticks(range(len(keys)), [names[k] for k in keys])
    ax.set_ylabel("test mean")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(3, len(rows)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python tools/reproduce.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=EXPERIMENTS)
    ap.add_argument("--data", required=True, metavar="FILE.h5", help="HDF5 slice store")
    ap.add_argument("--config", default=None, help="PixelDRL-MG config (default configs/default.yaml)")
    ap.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds (default 0)")
    ap.add_argument("--out", default=None, help="output folder (default reproduce/EXPERIMENT-<store name>)")
    ap.add_argument("--budget", type=positive_float, default=1.0, help="multiply every training budget by this")
    ap.add_argument("--workers", type=positive_int, default=2, help="PixelDRL-MG worker processes (default 2)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--baselines", default="unet,attention_unet,unet_plus_plus",
                    help="comma-separated baselines for table2/4/6 ('' for none)")
    ap.add_argument("--baselines-only", action="store_true",
                    help="table2/4/6, cv: train the baselines only (e.g. more seeds of them in the same folder)")
    ap.add_argument("--baseline-epochs", type=positive_float, default=50, help="baseline epochs before --budget")
    ap.add_argument("--baseline-width", default="small", help="baseline channel width (default small: CPU-sized)")
    ap.add_argument("--baseline-ema-decay", type=float, default=0.0, metavar="D",
                    help="the baselines' moving average of the weights (baselines.train --ema-decay; "
                         "default 0 = off, the raw weights)")
    ap.add_argument("--t-max", type=int_list, default=list(range(1, 13)), help="fig7's t_max values (default 1..12)")
    ap.add_argument("--folds", type=int_list, default=None, help="table6's or cv's folds (default all)")
    ap.add_argument("--cv-folds", type=positive_int, default=4,
                    help="cv: number of patient folds K (default 4: 8 patients, 2 test patients a fold)")
    ap.add_argument("--coarse", default="unet,unet_plus_plus",
                    help="fig5's baselines whose masks PixelRL refines (default unet,unet_plus_plus)")
    ap.add_argument("--select", choices=SELECTIONS, default=None,
                    help="checkpoint each cell's test headlines: best = best validation Dice, last = the final "
                         "parameters (default: the config's eval.select); both are scored and kept in "
                         "result.json's by_selection")
    ap.add_argument("--no-progress", action="store_true", help="print nothing but errors and the table")
    return ap.parse_args(argv)


def check(args) -> None:
    """Bad input -> UsageError with one line. Also fills in what the store and the config decide:
    ``args.select`` (the config's ``eval.select`` when not given) and ``args.folds`` (every fold)."""
    from datasets.store import SliceStore, StoreError

    try:
        store = SliceStore(args.data)
    except (StoreError, OSError) as exc:
        raise UsageError(one_line(exc)) from None
    try:
        check_with(store, args)
    finally:
        store.close()


def check_with(store, args) -> None:
    """``check`` on an open store."""
    from datasets.store import StoreError

    try:
        n = len(store.indices("train"))
    except (StoreError, OSError) as exc:
        raise UsageError(one_line(exc)) from None
    if n == 0:
        raise UsageError(f"{args.data}: the train split is empty")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(one_line(exc)) from None
    args.select = args.select or cfg.eval.select  # one rule for every method of the folder
    from baselines.models import BASELINES

    for flag, value in (("--baselines", args.baselines), ("--coarse", args.coarse)):
        unknown = [b for b in value.split(",") if b and b not in BASELINES]
        if unknown:
            raise UsageError(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    if not 0.0 <= args.baseline_ema_decay < 1.0:
        raise UsageError(f"--baseline-ema-decay must lie in [0, 1) (0 = off), got {args.baseline_ema_decay:g}")
    if any(t < 1 for t in args.t_max):
        raise UsageError("--t-max: every value must be at least 1")
    n_folds = args.cv_folds if args.experiment == "cv" else 5
    if args.experiment == "cv":
        n_cases = len(store.cases("all"))
        if not 2 <= n_folds <= n_cases:
            raise UsageError(f"--cv-folds: {args.data} has {n_cases} cases, so 2 to {n_cases} folds, got {n_folds}")
    if args.folds is None:
        args.folds = list(range(n_folds))
    if any(not 0 <= k < n_folds for k in args.folds):
        raise UsageError(f"--folds: folds are 0..{n_folds - 1}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the trainings run from the repository root: paths given relative to here must not move
    args.data = str(Path(args.data).resolve())
    if args.config:
        args.config = str(Path(args.config).resolve())
    if args.out:
        args.out = str(Path(args.out).resolve())
    try:
        check(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or ROOT / "reproduce" / f"{args.experiment}-{Path(args.data).stem}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: {out}: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        cells = plan(args)
        earlier = {c.id: finished(out, c) for c in cells}
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clash = [i for i, r in earlier.items() if r is not None and r.get("selection", "best") != args.select]
    if clash:
        print(f"error: {out}: cell {clash[0]} was scored with another --select than {args.select}; use another "
              f"--out (tools/cv_report.py DIR=LABEL@{args.select} reads the other rule's scores)", file=sys.stderr)
        return 2
    say = (lambda *a: None) if args.no_progress else (lambda msg: print(msg, flush=True))
    results = []
    for i, cell in enumerate(cells, 1):
        done = earlier[cell.id]
        say(f"[{i}/{len(cells)}] {cell.setting} · {cell.row} · seed {cell.seed}: "
            + ("finished earlier, skipped" if done else "training ..."))
        if done:
            results.append(done)
            continue
        try:
            results.append(run_cell(cell, args, out))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        say(f"    Dice {results[-1]['metrics']['dice']:.4f} in {results[-1]['wall_s']:.0f} s")
    rows = summarise(results)
    table = markdown(args.experiment, rows, args)
    if args.experiment == "cv":
        from tools.cv_report import cv_markdown, patient_csv

        table += "\n" + cv_markdown(results)
        write_bytes_atomic(out / "patients.csv", patient_csv(results).encode())
    write_bytes_atomic(out / f"{args.experiment}.md", table.encode())
    write_bytes_atomic(out / f"{args.experiment}.csv", csv_text(results).encode())
    plots = {"fig5": plot_fig5, "fig7": plot_fig7}
    if args.experiment in plots:
        plots[args.experiment](rows, out / f"{args.experiment}.png")
    print(table)
    say(f"wrote {out / (args.experiment + '.md')} and .csv"
        + (f" and {args.experiment}.png" if args.experiment in plots else "")
        + (" and patients.csv (the per-patient table tools/cv_report.py reads back)" if args.experiment == "cv"
           else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
