"""Train a supervised baseline on a slice store and score it like PixelDRL-MG.

::

    python -m baselines.train MODEL --data FILE.h5 --out DIR [--epochs N | --max-updates N]
        [--batch 8] [--lr 1e-3] [--image-size S] [--device auto|cpu|cuda] [--seed 0]
        [--train-split train] [--val-split val] [--test-split test] [--width W]
        [--val-every N] [--threads N] [--augment none|flip|d4] [--jitter-rotate R] [--jitter-scale S]
        [--jitter-gamma G] [--select best|last] [--ema-decay D] [--no-progress]

or ``train_baseline(name, store_path, out_dir, ...)`` (``train_options(BaselineOptions(...))``) from
Python (returns the test-metrics dict).

Training: Adam (constant learning rate), loss ``monai.losses.DiceCELoss(sigmoid=True)`` (soft Dice
on sigmoid probabilities, per image, plus binary cross-entropy on the logits, weights 1 and 1).
Each update draws ``--batch`` distinct random slices of the train split (``SliceStore.sample``);
one epoch is ``ceil(n_train / batch)`` updates. ``--augment`` (default none) mirrors or rotates each
drawn slice (``a3c.augment``), as ``data.augment`` does for PixelDRL-MG, and ``--jitter-*`` (default
0, off) rotate, zoom and gamma-curve it after that, as ``data.jitter_*`` do. Every ``--val-every`` updates
(default: one epoch) and after the last update the model's mean per-slice Dice on the val split
(``a3c.metrics.overlap_metrics``, the same Dice as the test table) is measured; one at least as good
as the best so far (``a3c.metrics.improves``: ties go to the later model) is saved atomically to
``DIR/best.pt``, and the final model to ``DIR/last.pt``
(``--val-split none``: no validation, the final model is saved as ``best.pt``). Both checkpoints
are reloaded and evaluated on the test split (``by_selection`` in the JSON); ``--select best``
(default) or ``last`` says which one is the headline row. ``--ema-decay D`` > 0 (default 0, off)
validates, saves and scores an exponential moving average of the weights instead of the raw ones,
warmed up as PixelDRL-MG's ``optim.ema_decay`` (``a3c.learner.ema_decay_at``), so that the two
methods can be compared with the same averaging. Prediction
``sigmoid(logits) > 0.5`` at the network's input size (``--image-size``, as PixelDRL-MG's
evaluation), per-slice ``a3c.metrics.segmentation_metrics`` with the store's spacing scaled to
that size (HD95 in mm where the store records spacing, else pixels), aggregated with
``aggregate_metrics`` (mean and population sd). Prints a Table-2 row
(``a3c.evaluate.table_row``) and writes ``DIR/test_metrics.json`` atomically.

CPU threads: ``--threads 1`` by default (as PixelDRL-MG's workers, ``train.threads_per_worker``);
torch's default of one intra-op thread per core can be ~100x slower on a machine whose cores are
busy with other jobs (OpenMP threads waiting for each other), see docs/BASELINES.md.

Exit status: 0 on success; 2 on bad input (missing or unreadable store, unknown model, unknown
or empty split, bad width, ``--device cuda`` without CUDA, an output folder that cannot be
created) with one ``error: ...`` line on stderr.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from a3c.augment import AUGMENT_MODES, Jitter, augment_batch, jitter_batch, symmetric_mean
from a3c.batch import prepare_batch
from a3c.checkpoint import (
    CheckpointError,
    TrainedOn,
    baseline_checkpoint,
    baseline_spec,
    check_params,
    load_checkpoint,
    save_checkpoint,
)
from a3c.cli import UsageError, non_negative_int, one_line, positive_float, positive_int, resolve_device
from a3c.config import SELECTIONS
from a3c.evaluate import EvalOptions, EvalResult, limit_batches, score_batch, table_row
from a3c.fileio import write_json_atomic
from a3c.learner import ema_decay_at
from a3c.metrics import METRIC_KEYS, aggregate_metrics, improves
from a3c.params import numel
from baselines.models import BASELINES, WIDTHS, BaselineNet, build_baseline, parse_width

__all__ = ["BaselineError", "BaselineOptions", "DEFAULT_EPOCHS", "evaluate_baseline", "model_from_baseline_checkpoint",
           "train_baseline", "train_options", "main"]

DEFAULT_EPOCHS = 50
THRESHOLD = 0.5
LOSS_NAME = "DiceCELoss(sigmoid=True): soft Dice + BCE-with-logits, weights 1 and 1"
NO_SPLIT = ("", "none")

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


BaselineError = UsageError  # bad input to the trainer (model, width, split, device, output folder): one line


# ------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, threshold: float = THRESHOLD, tta: str = "none") -> torch.Tensor:
    """Binary masks bool [B, H, W]: sigmoid(logits) > threshold, the probabilities averaged over the
    symmetries of ``tta`` (none, flip, d4; ``a3c.augment.symmetric_mean``)."""
    return symmetric_mean(lambda s: torch.sigmoid(model(s).float()), x, tta)[:, 0] > threshold


def evaluate_baseline(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device | str,
                      image_size: int = 0, meta: Callable[[int], dict] | None = None,
                      options: EvalOptions = EvalOptions()) -> EvalResult:
    """Score a probability model over ``(images, masks, idx)`` batches, as ``a3c.evaluate.evaluate``
    scores PixelDRL-MG's final mask: per-slice ``segmentation_metrics`` of
    ``sigmoid(logits) > THRESHOLD`` against the ground truth at the network's input size
    (``image_size``, 0 = as stored), spacing from ``meta(idx)`` scaled to that size.

    ``options``: ``max_slices``, ``dice_only`` (rows carry only ``dice``, ``overlap_metrics``; for
    validation), ``tta`` (``predict``) and ``progress``; one-shot prediction has no ``t_max`` or ``keep_examples``: the
    result's ``step_dice`` and ``examples`` are empty. Leaves the model in eval mode.
    """
    model.eval()
    rows: list[dict] = []
    for images, masks, idx in limit_batches(batches, options.max_slices):
        x, g = prepare_batch(images, masks, device, image_size)
        pred = predict(model, x, tta=options.tta).cpu().numpy()
        gt = g[:, 0].cpu().numpy() > 0.5
        rows += score_batch(pred, gt, idx, images.shape[-2:], meta, dice_only=options.dice_only)
        if options.progress:
            options.progress(pred.shape[0])
    summary = aggregate_metrics([{k: r[k] for k in options.metric_keys} for r in rows])
    return EvalResult(rows, summary, [], [])


# ------------------------------------------------------------------------------ checkpoints
def _spec(model: BaselineNet) -> dict:
    return {"name": model.name, "width": model.width, "in_channels": model.in_channels,
            "size_hint": list(model.size_hint) if model.size_hint else None}


def model_from_baseline_checkpoint(ckpt: dict | str | Path,
                                   device: torch.device | str = "cpu") -> tuple[BaselineNet, dict]:
    """Rebuild a baseline from its checkpoint (``best.pt``) -> (model on device in eval mode, ckpt)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    spec = baseline_spec(ckpt)
    try:
        model = build_baseline(spec["name"], int(spec["in_channels"]), spec.get("size_hint"), width=spec["width"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"baseline checkpoint does not rebuild ({one_line(exc)})") from None
    check_params(ckpt, model, "spec")
    return model.to(device).eval(), ckpt


# ------------------------------------------------------------------------------ training
@dataclass
class BaselineOptions:
    """One baseline training run, as given; ``dataclasses.asdict()`` of it is the ``command``
    recorded in ``test_metrics.json``.

    Schedule: ``max_updates`` updates if given, else ``epochs`` (default ``DEFAULT_EPOCHS``) times
    ``ceil(n_train / batch)``. ``val_every`` 0 = once per epoch. ``val_split`` None/"none" = no
    validation (the final model is kept). ``select``: which checkpoint the test scores, ``best``
    (by val Dice) or ``last`` (the final model); both are saved and scored when there is a val
    split. ``width``: a number or a name of ``WIDTHS``. ``threads``
    > 0 sets torch's intra-op threads for the run (restored afterwards; default 1, as PixelDRL-MG's
    workers); 0 keeps torch's default.
    """

    name: str
    store_path: str
    out_dir: str
    epochs: float | None = None
    max_updates: int | None = None
    batch: int = 8
    lr: float = 1e-3
    image_size: int = 0
    device: str = "auto"
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str = "test"
    width: float | str = 1.0
    val_every: int = 0
    threads: int = 1
    augment: str = "none"
    jitter: Jitter = Jitter()
    select: str = "best"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.store_path, self.out_dir = str(self.store_path), str(self.out_dir)

    def checked(self) -> "BaselineOptions":
        """A copy with numbers as numbers, ``width`` a float and ``val_split`` None for no
        validation; BaselineError (one line) on a bad value. Reads no file."""
        if self.name not in BASELINES:
            raise BaselineError(f"unknown model {self.name!r}; known: {', '.join(BASELINES)}")
        if self.augment not in AUGMENT_MODES:
            raise BaselineError(f"unknown augmentation {self.augment!r}; known: {', '.join(AUGMENT_MODES)}")
        jitter_problem = self.jitter.problem(("--jitter-rotate", "--jitter-scale", "--jitter-gamma"))
        if jitter_problem:
            raise BaselineError(jitter_problem)
        if self.select not in SELECTIONS:
            raise BaselineError(f"unknown model selection {self.select!r}; known: {', '.join(SELECTIONS)}")
        try:
            width = parse_width(self.width)
        except ValueError as exc:
            raise BaselineError(str(exc)) from None
        epochs, max_updates = self.epochs, self.max_updates
        if epochs is not None and max_updates is not None:
            raise BaselineError("give epochs or max_updates, not both")
        if max_updates is not None and int(max_updates) < 1:
            raise BaselineError(f"max_updates must be >= 1, got {max_updates}")
        if epochs is not None and not float(epochs) > 0:
            raise BaselineError(f"epochs must be > 0, got {epochs}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise BaselineError(f"ema_decay must lie in [0, 1) (0 = off), got {self.ema_decay}")
        numbers = (self.batch, self.lr, self.image_size, self.val_every, self.threads)
        if int(self.batch) < 1 or not float(self.lr) > 0 or min(int(n) for n in numbers[2:]) < 0:
            raise BaselineError(f"need batch >= 1, lr > 0, image_size >= 0, val_every >= 0, threads >= 0 "
                                f"(got {', '.join(str(n) for n in numbers)})")
        val_split = self.val_split
        if val_split is not None and val_split.strip().lower() in NO_SPLIT:
            val_split = None
        return replace(self, epochs=None if epochs is None else float(epochs),
                       max_updates=None if max_updates is None else int(max_updates), batch=int(self.batch),
                       lr=float(self.lr), image_size=int(self.image_size), seed=int(self.seed), val_split=val_split,
                       width=width, val_every=int(self.val_every), threads=int(self.threads),
                       ema_decay=float(self.ema_decay))


@torch.no_grad()
def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One moving-average step, in place: every floating-point tensor of ``average``'s state dict
    becomes ``decay * average + (1 - decay) * model``; integer buffers (batch-norm counters) are
    copied. The two modules must have the same architecture."""
    for a, m in zip(average.state_dict().values(), model.state_dict().values(), strict=True):
        if a.is_floating_point():
            a.lerp_(m, 1.0 - decay)
        else:
            a.copy_(m)


@dataclass
class _Run:
    """One run under way: its checked options, the open store and its split sizes."""

    opts: BaselineOptions
    store: "object"          # datasets.store.SliceStore (not imported at module level)
    device: torch.device
    sizes: tuple[int, int, int]  # slices in the train, val and test splits
    progress: bool
    command: dict


def train_baseline(name: str, store_path: str | Path, out_dir: str | Path, *, progress: bool = True,
                   log: Callable[[str], None] | None = None, **settings) -> dict:
    """Train baseline ``name`` on ``store_path``, keep the best by val Dice in ``out_dir/best.pt``,
    evaluate it on ``test_split``, write ``out_dir/test_metrics.json`` and return that dict.

    ``settings`` are ``BaselineOptions``' other fields (``max_updates=``, ``batch=``, ...);
    ``log`` receives the summary lines (the CLI passes ``print``). Raises ``BaselineError`` or
    ``datasets.store.StoreError`` (one-line messages) on bad input, before any training.
    """
    return train_options(BaselineOptions(name, store_path, out_dir, **settings), progress=progress, log=log)


def train_options(options: BaselineOptions, *, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> dict:
    """``train_baseline`` with its settings as one ``BaselineOptions``."""
    from datasets.store import SliceStore

    t_start = time.perf_counter()
    o = options.checked()
    dev = resolve_device(o.device)
    store = SliceStore(o.store_path)
    old_threads = torch.get_num_threads()
    try:
        sizes = (int(store.indices(o.train_split).size), int(store.indices(o.val_split).size) if o.val_split else 0,
                 int(store.indices(o.test_split).size))
        out = Path(o.out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BaselineError(f"{out}: cannot create the output folder ({exc.strerror or one_line(exc)})") from None
        if not out.is_dir():
            raise BaselineError(f"{out}: not a folder")
        if o.threads:
            torch.set_num_threads(o.threads)
        run = _Run(o, store, dev, sizes, bool(progress), asdict(options))
        return _train(run, log or (lambda line: None), t_start)
    finally:
        store.close()
        torch.set_num_threads(old_threads)


def _train(r: _Run, say: Callable[[str], None], t_start: float) -> dict:
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    o, store, dev, out = r.opts, r.store, r.device, Path(r.opts.out_dir)
    n_train, n_val, n_test = r.sizes
    channels, h0, w0 = store.image_shape
    used_hw = (o.image_size, o.image_size) if o.image_size else (h0, w0)
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed)
    model = build_baseline(o.name, channels, used_hw, width=o.width).to(dev)
    params = numel(model)
    # the weights that are validated, saved and scored: the raw ones, or their moving average
    average = copy.deepcopy(model).eval() if o.ema_decay > 0 else None
    kept = model if average is None else average
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), lr=o.lr)
    per_epoch = math.ceil(n_train / o.batch)
    if o.max_updates is not None:
        total = o.max_updates
    else:
        total = max(1, int(round((o.epochs or DEFAULT_EPOCHS) * per_epoch)))
    every = o.val_every or per_epoch
    eval_batch = max(o.batch, 16)
    ckpt_path = out / "best.pt"
    say(f"{o.name} (width {o.width:g}, {params:,d} parameters, {channels}-channel {used_hw[0]}x{used_hw[1]} "
        f"input) on {store.path}: {n_train} train slices ({o.train_split}), {n_val} val "
        f"({o.val_split or 'none'}), {n_test} test ({o.test_split}); {total} updates of batch {o.batch} "
        f"({total / per_epoch:.2f} epochs), lr {o.lr:g}, device {dev}, {torch.get_num_threads()} thread(s)"
        + (f", moving average {o.ema_decay:g}" if average is not None else ""))

    trained_on = TrainedOn(channels, list(used_hw), {k: store.attrs.get(k) for k in ("normalisation", "converter")}
                           | {"image_shape": [int(s) for s in store.image_shape]})

    def checkpoint(updates: int, val_dice: float | None) -> dict:
        counters = {"updates": int(updates), "images": int(updates * o.batch), "epoch": float(updates / per_epoch),
                    "lr": o.lr}
        return baseline_checkpoint(kept, _spec(kept), trained_on, counters, val_dice)

    history: list[dict] = []
    best, best_update = -1.0, 0
    bar = tqdm(total=total, unit="upd", desc=f"train {o.name}", file=sys.stderr, dynamic_ncols=True,
               disable=not r.progress)
    t_train = time.perf_counter()
    model.train()
    loss_ema = None
    try:
        for u in range(1, total + 1):
            images, masks, _ = store.sample(o.train_split, o.batch, rng)
            images, masks = jitter_batch(*augment_batch(images, masks, o.augment, rng), o.jitter, rng)
            x, g = prepare_batch(images, masks, dev, o.image_size)
            loss = loss_fn(model(x), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                update_average(average, model, ema_decay_at(o.ema_decay, u))
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
            bar.update(1)
            if o.val_split and (u % every == 0 or u == total):
                res = evaluate_baseline(kept, store.batches(o.val_split, eval_batch), dev, o.image_size,
                                        options=EvalOptions(dice_only=True))
                model.train()
                d = float(res.summary["dice"]["mean"])
                history.append({"update": u, "epoch": u / per_epoch, "loss": loss_ema, "val_dice": d})
                if improves(d, best):
                    best, best_update = max(best, d), u
                    save_checkpoint(checkpoint(u, d), ckpt_path)
                bar.set_postfix(loss=f"{loss_ema:.3f}", val=f"{d:.3f}", best=f"{best:.3f}@{best_update}")
                if r.progress:
                    bar.write(f"update {u}/{total}: loss {loss_ema:.4f}, val Dice {d:.4f} "
                              f"(best {best:.4f} at {best_update})", file=sys.stderr)
            elif u % 10 == 0:
                bar.set_postfix(loss=f"{loss_ema:.3f}")
        if o.val_split:
            save_checkpoint(checkpoint(total, history[-1]["val_dice"]), out / "last.pt")
        else:
            best_update = total
            save_checkpoint(checkpoint(total, None), ckpt_path)
    finally:
        bar.close()
    train_s = time.perf_counter() - t_train

    # ---------------------------------------------------------------- test the selected checkpoint
    def score(path: Path):
        model, _ = model_from_baseline_checkpoint(path, dev)
        tbar = tqdm(total=n_test, unit="slice", desc=f"test {o.test_split} ({path.name})", file=sys.stderr,
                    dynamic_ncols=True, disable=not r.progress)
        try:
            return evaluate_baseline(model, store.batches(o.test_split, eval_batch), dev, o.image_size,
                                     meta=store.meta, options=EvalOptions(progress=tbar.update))
        finally:
            tbar.close()

    paths = {"best": ckpt_path, "last": out / "last.pt"} if o.val_split else {"best": ckpt_path}
    scored = {"best": score(ckpt_path)}
    if o.val_split:  # a best checkpoint from the final update is the final model: no second test
        scored["last"] = scored["best"] if best_update == total else score(paths["last"])
    select = o.select if o.val_split else "best"
    res, ckpt_path = scored[select], paths[select]
    wall = time.perf_counter() - t_start
    result = {k: res.summary[k]["mean"] for k in METRIC_KEYS}
    result["std"] = {k: res.summary[k]["std"] for k in METRIC_KEYS}
    result.update({
        "model": o.name, "width": o.width, "params": int(params), "in_channels": int(channels),
        "image_size": list(used_hw), "n": len(res.per_image), "split": o.test_split,
        "train_split": o.train_split, "val_split": o.val_split, "data": str(Path(store.path).resolve()),
        "checkpoint": str(ckpt_path.resolve()), "updates": total, "epochs": total / per_epoch,
        "batch": o.batch, "lr": o.lr, "seed": o.seed, "loss": LOSS_NAME, "optimizer": "Adam (constant lr)",
        "threshold": THRESHOLD, "augment": o.augment,
        "jitter": asdict(o.jitter), "best_update": best_update,
        "best_val_dice": best if o.val_split else None,
        "selection": o.select if o.val_split else "final (no validation)",
        "by_selection": {rule: {k: one.summary[k]["mean"] for k in METRIC_KEYS} | {"per_image": one.per_image}
                         for rule, one in scored.items()} if o.val_split else None,
        "val_history": history, "device": str(dev), "threads": torch.get_num_threads(),
        "train_s": train_s, "wall_s": wall, "command": r.command,
        "per_image": res.per_image,
    })
    write_json_atomic(result, out / "test_metrics.json")
    if o.val_split:
        say(f"best val Dice {best:.4f} at update {best_update}; scored: the {select} checkpoint "
            f"(test Dice {scored['best'].summary['dice']['mean']:.4f} best, "
            f"{scored['last'].summary['dice']['mean']:.4f} last); {len(res.per_image)} test slices; "
            f"train {train_s:.1f} s, wall {wall:.1f} s")
    else:
        say(f"final model (no validation); {len(res.per_image)} test slices; train {train_s:.1f} s, wall {wall:.1f} s")
    say(table_row(res, int(params)))
    say(f"wrote {out / 'test_metrics.json'} and {ckpt_path}")
    return result


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m baselines.train",
        description="Train a supervised MONAI baseline (Dice + BCE, Adam) on a slice store, keep the best "
                    "checkpoint by val Dice, and score it on the test split with PixelDRL-MG's metrics "
                    "(DICE PPV SEN IoU BIoU HD95, mean ± sd over slices).",
        epilog="Exit status 0 on success, 2 on bad input (one 'error: ...' line on stderr).")
    ap.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(BASELINES)}")
    ap.add_argument("--data", required=True, metavar="FILE.h5", help="HDF5 slice store")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (best.pt, last.pt, test_metrics.json)")
    sched = ap.add_mutually_exclusive_group()
    sched.add_argument("--epochs", type=positive_float, default=None, metavar="N",
                       help=f"epochs of ceil(n_train / batch) updates (default {DEFAULT_EPOCHS})")
    sched.add_argument("--max-updates", type=positive_int, default=None, metavar="N", help="number of updates")
    ap.add_argument("--batch", type=positive_int, default=8, metavar="N", help="slices per update (default 8)")
    ap.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    ap.add_argument("--image-size", type=non_negative_int, default=0, metavar="S",
                    help="resize slices to S x S (bilinear images, nearest masks); 0 = as stored (default)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda if available, else cpu (default auto)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch sampling")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--val-split", default="val", help="split for model selection; 'none' = keep the final model")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--width", default="1", metavar="W",
                    help="channel multiplier, a number or one of "
                         f"{', '.join(f'{k} ({v:g})' for k, v in WIDTHS.items())} (default 1)")
    ap.add_argument("--val-every", type=non_negative_int, default=0, metavar="N",
                    help="validate every N updates (default 0 = once per epoch) and after the last")
    ap.add_argument("--threads", type=non_negative_int, default=1, metavar="N",
                    help="torch intra-op CPU threads (default 1, as PixelDRL-MG's workers; 0 = torch's "
                         "default, one per core: faster on an idle machine, up to 100x slower on one "
                         "shared with other jobs, see docs/BASELINES.md)")
    ap.add_argument("--augment", choices=AUGMENT_MODES, default="none",
                    help="random transform of each training slice (a3c/augment.py; default none)")
    for name, what in (("rotate", "rotate each training slice by a uniform angle in [-R, R] degrees"),
                       ("scale", "zoom each training slice by a uniform factor in [1 - S, 1 + S]"),
                       ("gamma", "a gamma curve per slice and channel, exponent log-uniform in [1/(1 + G), 1 + G]")):
        ap.add_argument(f"--jitter-{name}", type=float, default=0.0, metavar=name[0].upper(),
                        help=f"after --augment, {what} (default 0 = off; as PixelDRL-MG's data.jitter_{name})")
    ap.add_argument("--select", choices=SELECTIONS, default="best",
                    help="checkpoint the test scores: best = best val Dice (default), last = the final "
                         "model; with a val split both are saved (best.pt, last.pt) and scored in "
                         "test_metrics.json's by_selection")
    ap.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                    help="validate, save and score a moving average of the weights with this decay, warmed up "
                         "as PixelDRL-MG's optim.ema_decay (default 0 = off, the raw weights)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from datasets.store import StoreError

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    options = BaselineOptions(args.model, args.data, args.out, epochs=args.epochs, max_updates=args.max_updates,
                              batch=args.batch, lr=args.lr, image_size=args.image_size, device=args.device,
                              seed=args.seed, train_split=args.train_split, val_split=args.val_split,
                              test_split=args.test_split, width=args.width, val_every=args.val_every,
                              threads=args.threads, augment=args.augment,
                              jitter=Jitter(args.jitter_rotate, args.jitter_scale, args.jitter_gamma),
                              select=args.select,
                              ema_decay=args.ema_decay)
    try:
        train_options(options, progress=not args.no_progress, log=print)
    except (BaselineError, StoreError, CheckpointError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        name = getattr(exc, "filename", None) or args.out
        print(f"error: {name}: cannot write ({exc.strerror or one_line(exc)})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
