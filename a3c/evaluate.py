"""Greedy evaluation of a model over batches of slices, and models rebuilt from checkpoints.

Takes arrays (``(images, masks, idx)`` batches and a ``meta`` callable), not paths, so that core
``a3c`` never imports the data layer; the monitor, the launcher and ``tools/eval_ckpt.py`` pass
a store's ``batches`` and ``meta``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from a3c.batch import prepare_batch
from a3c.checkpoint import CheckpointError, check_params, load_checkpoint
from a3c.config import Config, config_from_dict
from a3c.metrics import METRIC_KEYS, TABLE_HEADER, aggregate_metrics, overlap_metrics, segmentation_metrics
from a3c.model import PixelDRLNet, build_model, tune_for_device
from a3c.rollout import ActionRule, greedy_episode

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Example:
    """One slice kept for pictures: image [C, H, W], gt [H, W] and the masks m(1..T) [T, H, W]."""

    index: int
    image: np.ndarray
    gt: np.ndarray
    masks: np.ndarray


@dataclass
class EvalResult:
    per_image: list[dict]                 # per slice: index, case, slice, and the six metrics
    summary: dict                         # aggregate_metrics of the six metrics
    step_dice: list[float]                # mean Dice of m(t), t = 1..T (the paper's Fig. 7)
    examples: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class EvalOptions:
    """How much of a split an evaluation covers and what it reports: ``evaluate``, ``evaluate_checkpoint``
    and the baselines' ``evaluate_baseline`` (which has no episode: ``t_max`` and ``keep_examples`` unused)."""

    max_slices: int = 0                               # evaluate at most this many slices; 0 = all
    dice_only: bool = False                           # rows and summary hold only ``dice`` (validation)
    t_max: int | None = None                          # episode length; None = the config's env.t_max
    keep_threshold: float = 0.5                       # p(keep) a pixel needs to be kept; 0.5 = the greedy argmax
    keep_examples: int = 0                            # the first slices kept as ``Example`` for pictures
    tta: str = "none"                                 # test-time averaging over symmetries: none, flip, d4
    progress: Callable[[int], None] | None = None     # called with each batch's number of slices

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return ("dice",) if self.dice_only else METRIC_KEYS


def _scaled_spacing(spacing, stored_hw, used_hw):
    if spacing is None:
        return None
    sy, sx = spacing
    if not (np.isfinite(sy) and np.isfinite(sx)):
        return None
    return (float(sy) * stored_hw[0] / used_hw[0], float(sx) * stored_hw[1] / used_hw[1])


def limit_batches(batches: Iterable[Batch], max_slices: int = 0) -> Iterator[Batch]:
    """The batches up to ``max_slices`` slices in all (0 = all), the last one cut to fit."""
    seen = 0
    for images, masks, idx in batches:
        if max_slices:
            keep = max_slices - seen
            images, masks, idx = images[:keep], masks[:keep], idx[:keep]
        yield images, masks, idx
        seen += len(idx)
        if max_slices and seen >= max_slices:
            return


def score_batch(pred: np.ndarray, gt: np.ndarray, idx: np.ndarray, stored_hw, meta: Callable[[int], dict] | None,
                dice_only: bool = False) -> list[dict]:
    """Per-slice rows for predicted masks pred, gt bool [B, H, W] at the network's size.

    Each row holds index, case, slice, ``kept`` and ``object`` (the shares of the slice's pixels
    in the predicted and the true mask) and the six metrics (``dice`` alone with ``dice_only``);
    spacing comes from ``meta(idx)``, scaled from the stored size ``stored_hw`` to [H, W].
    """
    rows = []
    for b in range(pred.shape[0]):
        info = meta(int(idx[b])) if meta else {}
        row = {"index": int(idx[b]), "case": info.get("case"), "slice": info.get("slice"),
               "kept": float(pred[b].mean()), "object": float(gt[b].mean())}
        if dice_only:
            row["dice"] = overlap_metrics(pred[b], gt[b])["dice"]
        else:
            spacing = _scaled_spacing(info.get("spacing"), stored_hw, gt.shape[-2:])
            row.update(segmentation_metrics(pred[b], gt[b], spacing=spacing))
        rows.append(row)
    return rows


def evaluate(model: PixelDRLNet, batches: Iterable[Batch], cfg: Config, device: torch.device | str,
             meta: Callable[[int], dict] | None = None, options: EvalOptions = EvalOptions()) -> EvalResult:
    """Greedy t_max-step episodes over the batches; metrics of the final mask per slice.

    On CUDA with ``train.amp`` the network runs in bf16 autocast, as in training, so GPU
    figures may differ slightly from CPU (float32) ones.

    HD95 is in the store's spacing units (mm) where the store records spacing, else pixels.
    """
    model.eval()
    t_max = options.t_max or cfg.env.t_max
    rows: list[dict] = []
    step_sums = np.zeros(t_max)
    examples: list[Example] = []
    for images, masks, idx in limit_batches(batches, options.max_slices):
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        steps = greedy_episode(model, x, cfg.env, t_max=t_max, amp=cfg.train.amp,
                               rule=ActionRule(options.keep_threshold, options.tta))
        stack = torch.stack(steps, dim=1).cpu().numpy()  # [B, T, H, W] bool
        gt = g[:, 0].cpu().numpy() > 0.5
        rows += score_batch(stack[:, -1], gt, idx, images.shape[-2:], meta, dice_only=options.dice_only)
        for b in range(stack.shape[0]):
            step_sums += [overlap_metrics(stack[b, t], gt[b])["dice"] for t in range(t_max)]
            if len(examples) < options.keep_examples:
                examples.append(Example(int(idx[b]), x[b].float().cpu().numpy(), gt[b], stack[b]))
        if options.progress:
            options.progress(stack.shape[0])
    summary = aggregate_metrics([{k: r[k] for k in options.metric_keys} for r in rows])
    return EvalResult(rows, summary, list(step_sums / max(1, len(rows))), examples)


def mask_shares(rows: list[dict]) -> tuple[float, float]:
    """Means over ``score_batch`` rows of ``kept`` and ``object`` (the predicted and the true shares of pixels)."""
    if not rows:
        return float("nan"), float("nan")
    return float(np.mean([r["kept"] for r in rows])), float(np.mean([r["object"] for r in rows]))


def policy_collapse(kept: float, obj: float, keep_all: float = 0.98, zero_all: float = 0.02) -> str | None:
    """Whether a policy has collapsed to one action for every pixel, from ``mask_shares``.

    "keeps every pixel" when the kept share reaches ``keep_all`` while the objects cover less;
    "zeroes every pixel" when it is under ``zero_all`` times the objects' share; None otherwise
    (and when there is no object, or no slice: NaN).
    """
    if kept >= keep_all and obj < keep_all:
        return f"keeps every pixel ({kept:.1%} kept, objects cover {obj:.1%})"
    if obj > 0 and kept < zero_all * obj:
        return f"zeroes every pixel ({kept:.2%} kept, objects cover {obj:.1%})"
    return None


def model_from_checkpoint(ckpt: dict | str, device: torch.device | str = "cpu") -> tuple[PixelDRLNet, Config, dict]:
    """Rebuild the exact network of a checkpoint (its stored config) -> (model on device, config, ckpt).

    The weights are the checkpoint's moving average (``ema_model``, ``optim.ema_decay`` > 0) where it
    has one, else its parameters (``model``)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg.model, int(ckpt["image_channels"]), cfg.env)
    try:
        model.load_state_dict(ckpt.get("ema_model", ckpt["model"]))
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint parameters do not fit its own config "
                              f"({str(exc).splitlines()[0][:200]})") from None
    check_params(ckpt, model, "config")
    tune_for_device(model.to(device).eval(), device, cfg.train)
    return model, cfg, ckpt


def evaluate_checkpoint(ckpt: dict | str, store, split: str, device: torch.device | str,
                        options: EvalOptions = EvalOptions(), batch_size: int | None = None
                        ) -> tuple[EvalResult, Config, dict]:
    """Greedy evaluation of a checkpoint on ``store``'s ``split`` (a store with ``batches`` and ``meta``),
    ``batch_size`` slices at a time (default: the checkpoint's ``eval.batch_size``)."""
    model, cfg, ckpt = model_from_checkpoint(ckpt, device)
    channels = int(ckpt["image_channels"])
    if store.image_shape[0] != channels:
        raise ValueError(f"{store.path}: images have {store.image_shape[0]} channels, "
                         f"the checkpoint's model takes {channels}")
    batches = store.batches(split, batch_size or cfg.eval.batch_size)
    res = evaluate(model, batches, cfg, device, meta=store.meta, options=options)
    return res, cfg, ckpt


def table_row(res: EvalResult, params: int) -> str:
    """Table-2-style lines: the header ``DICE PPV SEN IoU BIoU HD95 Params`` and mean ± sd per column."""
    head = "".join(f"{name:>17}" for name in TABLE_HEADER.split())
    cells = "".join(f"{res.summary[k]['mean']:>9.4f}±{res.summary[k]['std']:<7.4f}" for k in METRIC_KEYS)
    return f"{head}{'Params':>10}\n{cells}{params / 1e6:>9.2f}M"


def example_grid(ex: Example) -> np.ndarray:
    """Picture of one episode: [2 * H, (2 + T) * W, 3] float in [0, 1].

    Row 1: input (first channel, min-max scaled), ground truth, m(1) .. m(T).
    Row 2: blank, blank, pixels whose mask changed at step t in red over the dimmed input.
    """
    img = ex.image[0]
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    h, w = img.shape
    t = ex.masks.shape[0]
    grid = np.zeros((2 * h, (2 + t) * w, 3), dtype=np.float32)
    grid[:h, :w] = img[..., None]
    grid[:h, w:2 * w] = ex.gt[..., None]
    prev = np.ones((h, w), dtype=bool)
    for k in range(t):
        m = ex.masks[k]
        x0 = (2 + k) * w
        grid[:h, x0:x0 + w] = m[..., None]
        changed = m != prev
        tile = np.repeat(0.4 * img[..., None], 3, axis=2)
        tile[changed] = (1.0, 0.0, 0.0)
        grid[h:, x0:x0 + w] = tile
        prev = m
    return grid
