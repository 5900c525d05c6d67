"""Segment new images with a trained checkpoint: NIfTI volumes slice by slice, 2D images, folders.

::

    python -m tools.segment --ckpt FILE INPUT... --out DIR [--device auto|cpu|cuda] [--t-max N]
                            [--save-steps] [--overwrite] [--no-progress]

(also ``python tools/segment.py ...``). Each INPUT is

* a NIfTI volume (``.nii``, ``.nii.gz``): sliced along its last voxel axis as the converters slice
  (slice ``k`` is ``volume[:, :, k]``; a 4-D volume gives one channel per volume along its 4th
  axis, as ``datasets.convert`` reads it, and must hold as many volumes as the model has
  channels), normalised as one case, written as ``DIR/<name>_mask.nii.gz`` (uint8 0/1, the
  input's 3-D shape, affine and header);
* a 2D image (``.tif``, ``.tiff``, ``.png``; grey or RGB; a constant alpha channel is dropped),
  normalised as one case of one slice, written as ``DIR/<stem>_mask.png`` (uint8 0/255, the
  input's size);
* a folder: every such file in it (not recursive; hidden files and ``*_mask.*`` files, the LGG
  layout's ground truth and this tool's own outputs, are skipped).

The checkpoint alone says how to prepare the input: its ``preprocess.normalisation`` (the
training store's per-case, per-channel percentile clip of the nonzero voxels, scaled to [0, 1],
``datasets.writer.normalise_case``), its ``image_channels`` and its ``image_size`` (the size the
network was trained at). A slice of another size than the training store's goes through the
steps that made the training data, in their order: resized to the store's slice size as
``datasets.convert --size`` resizes, normalised, resized to ``image_size`` (bilinear, as training
resizes); its mask is resized back to the input's size (nearest). Each slice
runs the greedy ``t_max``-step episode (``a3c.rollout.greedy_episode``); the mask is the last
action map, with no threshold.

``--save-steps`` also writes, per slice, ``<stem>_steps.png`` (``a3c.evaluate.example_grid`` at
the network's input size: input, a blank ground-truth tile, m(1)..m(T) on top, the pixels changed
at each step in red below) and ``<stem>_overlay.png`` (the normalised input's first channel in
grey with the mask in semi-transparent red, at the input's size); for a volume ``<stem>`` is
``<name>_z<k>`` (k with three digits).

Exit status: 0 when every input was segmented; 2 when any input failed (one ``error: FILE:
problem`` line each on stderr; the other inputs are still processed) or on a bad checkpoint,
device or output folder (one line, nothing processed). Every output file is written to a hidden
temporary file in DIR and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from a3c.cli import UsageError, one_line, positive_int, resolve_device
from a3c.fileio import (
    interrupt_status,
    make_dirs,
    remove_empty_dirs,
    sigterm_as_interrupt,
    special_kind,
    write_bytes_atomic,
)
from datasets.normalise import DEFAULT_NORMALISATION, parse_normalisation
from tools.overlay import overlay_picture

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


class InputError(Exception):
    """One input cannot be segmented; the message is one line ``FILE: problem``."""


# ------------------------------------------------------------------------------------ checkpoint
@dataclass
class Preprocess:
    """How new slices must be prepared for one checkpoint's network."""

    normalisation: str                       # the training store's name, or "none"
    percentiles: tuple[float, float] | None  # None: no normalisation (the store kept raw values)
    channels: int                            # image channels the model takes
    image_size: tuple[int, int] | None       # (H, W) the network was trained at; None: any size
    store_hw: tuple[int, int] | None = None  # (H, W) of the training store's slices
    converter: str = ""
    channel_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Segmenter:
    """A checkpoint made ready to segment (``load_model``): its network on ``device``, its config
    and how new slices must be prepared for it."""

    model: Any           # a3c.model.PixelDRLNet, in eval mode
    cfg: Any             # a3c.config.Config stored in the checkpoint
    prep: Preprocess
    device: Any          # torch.device


def _hw(value) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (h, w) if h >= 1 and w >= 1 else None


def preprocess_from_checkpoint(ckpt: dict, cfg, source: str) -> tuple[Preprocess, list[str]]:
    """Read a checkpoint's ``preprocess``, ``image_channels`` and ``image_size``.

    Returns (Preprocess, warnings). Raises UsageError (one line naming ``source``) when they
    cannot be used.
    """
    warnings: list[str] = []
    pre = ckpt.get("preprocess")
    if pre is None:
        pre = {}
        warnings.append(f"{source}: no 'preprocess' entry (a checkpoint from before it was recorded); "
                        f"assuming the converters' default normalisation {DEFAULT_NORMALISATION}")
    if not isinstance(pre, dict):
        raise UsageError(f"{source}: 'preprocess' entry is not a dict")
    name = str(pre.get("normalisation", DEFAULT_NORMALISATION))
    try:
        percentiles = parse_normalisation(name)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    try:
        channels = int(ckpt["image_channels"])
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{source}: checkpoint has no usable 'image_channels' entry") from None
    if channels < 1:
        raise UsageError(f"{source}: image_channels {channels} < 1")
    shape = pre.get("image_shape")
    store_hw = _hw(shape[1:]) if isinstance(shape, (list, tuple)) and len(shape) == 3 else None
    if "image_size" in ckpt:
        size = _hw(ckpt["image_size"]) if isinstance(ckpt["image_size"], (list, tuple)) else None
        if size is None:
            raise UsageError(f"{source}: 'image_size' must be [H, W], got {ckpt['image_size']!r}")
    elif int(cfg.data.image_size):
        size = (int(cfg.data.image_size),) * 2
    else:
        size = store_hw
    names = pre.get("channel_names", [])
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except ValueError:
            names = []
    names = [str(n) for n in names] if isinstance(names, list) else []
    return Preprocess(name, percentiles, channels, size, store_hw, str(pre.get("converter", "")), names), warnings


# ------------------------------------------------------------------------------------ preparation
def normalise_slices(slices: np.ndarray, prep: Preprocess) -> np.ndarray:
    """Raw slices of one case [S, C, H, W] -> float32 [S, C, H, W], normalised as in training."""
    from datasets.writer import normalise_case

    if prep.percentiles is None:
        return np.asarray(slices, dtype=np.float32)
    return normalise_case(slices, prep.percentiles)


def to_network(norm: np.ndarray, prep: Preprocess, device="cpu"):
    """Normalised slices [S, C, H, W] -> the network's input tensor [S, C, h, w] on ``device``.

    Resized to ``prep.image_size`` when the size differs, bilinear with ``align_corners=False``,
    as ``a3c.batch.prepare_batch`` resizes the store's slices in training.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(norm, dtype=np.float32)).to(device)
    if prep.image_size is None or tuple(x.shape[-2:]) == tuple(prep.image_size):
        return x
    return F.interpolate(x, size=tuple(prep.image_size), mode="bilinear", align_corners=False)


def prepare_input(slices: np.ndarray, prep: Preprocess, device="cpu"):
    """Raw slices of one case [S, C, H, W] -> (shown [S, C, H, W], network tensor [S, C, h, w]).

    The steps that made the training data, in their order: slices of another size than the
    training store's are resized to the store's slice size as ``convert --size`` resizes
    (``datasets.writer.resize_slices``), normalised as one case, then resized to the network's
    ``image_size`` as training does. ``shown`` is the input normalised at its own size, for the
    overlay picture. A checkpoint that does not record its store's shape normalises at the
    input's own size.
    """
    from datasets.writer import resize_slices

    hw = tuple(slices.shape[-2:])
    shown = normalise_slices(slices, prep)
    if prep.store_hw is None or hw == tuple(prep.store_hw):
        return shown, to_network(shown, prep, device)
    return shown, to_network(normalise_slices(resize_slices(slices, prep.store_hw), prep), prep, device)


# ------------------------------------------------------------------------------------ inputs
def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def stem_of(path: Path) -> str:
    name = path.name
    for suf in NIFTI_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def expand_inputs(inputs: Sequence[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """INPUT arguments -> ([(file, kind)], [error lines]); folders give their supported files."""
    files: list[tuple[Path, str]] = []
    errors: list[str] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = [(q, kind_of(q)) for q in sorted(p.iterdir())
                     if q.is_file() and not q.name.startswith(".") and kind_of(q)
                     and not stem_of(q).endswith("_mask")]
            if not found:
                errors.append(f"{p}: folder holds no .nii, .nii.gz, .tif, .tiff or .png file (besides *_mask files)")
            files += found
        elif not p.exists():
            errors.append(f"{p}: no such file or folder")
        elif kind_of(p) is None:
            errors.append(f"{p}: unsupported file type (expected .nii, .nii.gz, .tif, .tiff, .png or a folder of them)")
        else:
            files.append((p, kind_of(p)))
    seen: set[Path] = set()
    unique = []
    for p, kind in files:  # the same file named twice (or also inside a named folder) runs once
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append((p, kind))
    return unique, errors


def count_slices(path: Path, kind: str) -> int:
    """Slices an input will give (from the NIfTI header alone); 1 when unknown."""
    if kind != "nifti":
        return 1
    try:
        import nibabel as nib

        shape = nib.load(str(path)).shape
        return int(shape[2]) if len(shape) >= 3 else 1
    except Exception:
        return 1


@dataclass
class Loaded:
    slices: np.ndarray        # raw [S, C, H, W] float32
    out_shape: tuple          # the mask's shape on disk
    nifti: object = None      # the nibabel image of a volume


def read_volume(path: Path, prep: Preprocess) -> Loaded:
    import nibabel as nib

    from datasets.convert import volume_to_slices
    from datasets.writer import ConvertError, check_finite

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as exc:
        raise InputError(f"{path}: cannot read NIfTI ({one_line(exc)})") from None
    if len(shape) not in (2, 3, 4):
        raise InputError(f"{path}: expected a 2-D, 3-D or 4-D volume, got shape {shape}")
    n_in = shape[3] if len(shape) == 4 else 1
    if n_in != prep.channels:
        if len(shape) == 4:
            raise InputError(f"{path}: 4-D volume of shape {shape} gives {n_in} channel(s) (one per volume "
                             f"along the 4th axis), the model takes {prep.channels}")
        raise InputError(f"{path}: a {len(shape)}-D volume gives 1 channel, the model takes {prep.channels} "
                         f"(give a 4-D volume with one volume per channel)")
    try:
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise InputError(f"{path}: cannot read NIfTI data ({one_line(exc)})") from None
    try:
        check_finite(arr, path)
        slices = volume_to_slices(arr, path)
    except ConvertError as exc:
        raise InputError(one_line(exc)) from None
    return Loaded(slices, shape[:3], img)


def _lgg_indices(prep: Preprocess, n_in: int) -> list[int] | None:
    """Channels of an LGG RGB slice kept by the training store (``convert lgg --channels``)."""
    from datasets.convert import LGG_CHANNELS

    names = prep.channel_names
    if ("lgg" in prep.converter and n_in == len(LGG_CHANNELS) and len(names) == prep.channels
            and all(n in LGG_CHANNELS for n in names)):
        return [LGG_CHANNELS.index(n) for n in names]
    return None


def match_channels(img: np.ndarray, prep: Preprocess, path: Path) -> np.ndarray:
    """[C, H, W] -> [prep.channels, H, W]: drop a constant alpha channel, keep the channels an LGG
    store kept, or one of three identical channels (grey saved as RGB); else InputError."""
    n = prep.channels
    if img.shape[0] != n and img.shape[0] in (2, 4) and img[-1].min() == img[-1].max():
        img = img[:-1]
    c = img.shape[0]
    if c == n:
        return img
    lgg = _lgg_indices(prep, c)
    if lgg is not None:
        return img[lgg]
    if n == 1 and c == 3 and np.array_equal(img[0], img[1]) and np.array_equal(img[0], img[2]):
        return img[:1]
    raise InputError(f"{path}: image has {c} channel(s), the model takes {n}")


def read_image(path: Path, prep: Preprocess) -> Loaded:
    from datasets.writer import ConvertError, check_finite

    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            from datasets.convert import read_tiff

            arr = read_tiff(path)
        else:
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path))
    except ConvertError as exc:
        raise InputError(one_line(exc)) from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({one_line(exc)})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{path}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] <= 4:
        arr = np.moveaxis(arr, -1, 0)
    elif arr.ndim == 3 and arr.shape[0] <= 4:  # planar TIFF: [C, H, W]
        pass
    else:
        raise InputError(f"{path}: expected an HxW or HxWxC image (C <= 4), got shape {arr.shape}")
    if min(arr.shape[1:]) < 1:
        raise InputError(f"{path}: empty image of shape {arr.shape}")
    try:
        check_finite(arr, path)
    except ConvertError as exc:
        raise InputError(one_line(exc)) from None
    arr = match_channels(arr, prep, path)
    return Loaded(arr[None].astype(np.float32), tuple(arr.shape[1:]))


# ------------------------------------------------------------------------------------ running
def segment(model, cfg, x, t_max: int, out_hw: tuple[int, int], progress=None):
    """Greedy episodes on x [S, C, h, w], ``cfg.eval.batch_size`` slices at a time
    -> (final masks at out_hw [S, H, W] bool, steps [S, T, h, w] bool)."""
    import torch
    import torch.nn.functional as F

    from a3c.rollout import greedy_episode

    batch_size = max(1, int(cfg.eval.batch_size))
    finals, steps_all = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        steps = torch.stack(greedy_episode(model, xb, cfg.env, t_max=t_max, amp=cfg.train.amp), dim=1)
        last = steps[:, -1:].float()
        if tuple(last.shape[-2:]) != tuple(out_hw):
            last = F.interpolate(last, size=tuple(out_hw), mode="nearest-exact")
        finals.append(last[:, 0].cpu().numpy() > 0.5)
        steps_all.append(steps.cpu().numpy())
        if progress:
            progress(xb.shape[0])
    return np.concatenate(finals), np.concatenate(steps_all)


def steps_picture(x_slice: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Network input [C, h, w] and masks m(1..T) [T, h, w] -> uint8 example_grid picture."""
    from a3c.evaluate import Example, example_grid

    ex = Example(0, x_slice, np.zeros(steps.shape[1:], dtype=bool), steps)
    return np.clip(np.round(example_grid(ex) * 255.0), 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", arr, extension=".png")


def nifti_bytes(mask: np.ndarray, like) -> bytes:
    """uint8 mask with the affine and header of the nibabel image ``like``, as .nii.gz bytes."""
    hdr = like.header.copy()
    hdr.set_data_dtype(np.uint8)
    out = like.__class__(mask.astype(np.uint8), like.affine, hdr)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, 1
    return gzip.compress(out.to_bytes(), compresslevel=6)


def _check_outputs(src: Path, paths: list[Path], overwrite: bool, claimed: dict[Path, Path]) -> None:
    for p in paths:
        if p.resolve() in claimed and claimed[p.resolve()] != src:
            raise InputError(f"{src}: its output {p} is also the output of {claimed[p.resolve()]} (rename one)")
        kind = special_kind(p)
        if kind is not None:
            raise InputError(f"{src}: output {p} exists and is {kind}, not a regular file; refusing to replace it")
        if p.exists() and not overwrite:
            raise InputError(f"{src}: output {p} exists (use --overwrite to replace it)")


def segment_input(src: Path, kind: str, net: Segmenter, args, claimed: dict, progress=None) -> list[Path]:
    """Segment one file and write its outputs; returns the written paths (mask first)."""
    import torch

    model, cfg, prep, device = net.model, net.cfg, net.prep, net.device
    out_dir = Path(args.out)
    stem = stem_of(src)
    mask_path = out_dir / (f"{stem}_mask.nii.gz" if kind == "nifti" else f"{stem}_mask.png")
    _check_outputs(src, [mask_path], args.overwrite, claimed)
    loaded = read_volume(src, prep) if kind == "nifti" else read_image(src, prep)
    n = loaded.slices.shape[0]
    pics: list[Path] = []
    if args.save_steps:
        stems = [f"{stem}_z{k:03d}" for k in range(n)] if kind == "nifti" else [stem]
        pics = [out_dir / f"{s}_{what}.png" for s in stems for what in ("steps", "overlay")]
        _check_outputs(src, pics, args.overwrite, claimed)
    for p in [mask_path, *pics]:
        claimed[p.resolve()] = src

    t_max = int(args.t_max or cfg.env.t_max)
    try:
        norm, x = prepare_input(loaded.slices, prep, device)
        final, steps = segment(model, cfg, x, t_max, loaded.slices.shape[-2:], progress)
    except RuntimeError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise InputError(f"{src}: the model cannot run on it ({one_line(exc)})") from None

    if kind == "nifti":
        vol = np.moveaxis(final, 0, 2).reshape(loaded.out_shape).astype(np.uint8)
        data = nifti_bytes(vol, loaded.nifti)
    else:
        data = png_bytes((final[0] * 255).astype(np.uint8))
    written = []
    x_np = x.float().cpu().numpy() if args.save_steps else None
    for k in range(n if args.save_steps else 0):
        write_bytes_atomic(pics[2 * k], png_bytes(steps_picture(x_np[k], steps[k])))
        write_bytes_atomic(pics[2 * k + 1], png_bytes(overlay_picture(norm[k], final[k])))
        written += pics[2 * k:2 * k + 2]
    write_bytes_atomic(mask_path, data)
    return [mask_path, *written]


def load_model(path: str, device) -> tuple[Segmenter, list[str]]:
    """(Segmenter, warnings) of a checkpoint; UsageError (one line) if unusable."""
    from a3c.checkpoint import CheckpointError, load_checkpoint
    from a3c.config import ConfigError
    from a3c.evaluate import model_from_checkpoint

    try:
        ckpt = load_checkpoint(path)
        model, cfg, ckpt = model_from_checkpoint(ckpt, device)
    except CheckpointError as exc:
        msg = one_line(exc)
        raise UsageError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except ConfigError as exc:
        raise UsageError(f"{path}: bad stored config ({one_line(exc)})") from None
    except (KeyError, ValueError, TypeError, RuntimeError, AssertionError) as exc:
        raise UsageError(f"{path}: cannot rebuild the model ({type(exc).__name__}: {one_line(exc)})") from None
    if cfg.env.kind != "mask":
        raise UsageError(f"{path}: a PixelRL refinement checkpoint (env.kind {cfg.env.kind}, Fig. 5's baseline) needs "
                         "a coarse map per image; segment takes PixelDRL-MG checkpoints")
    prep, warnings = preprocess_from_checkpoint(ckpt, cfg, str(path))
    return Segmenter(model, cfg, prep, device), warnings


# ------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tools.segment",
        description="Segment NIfTI volumes (slice by slice along the last axis) and 2D images (.tif, .tiff, "
                    ".png, or folders of them) with a PixelDRL-MG checkpoint: greedy t_max-step episodes, "
                    "the last mask is the segmentation. Preprocessing (normalisation, channels, size) comes "
                    "from the checkpoint.",
        epilog="Outputs: DIR/<name>_mask.nii.gz (uint8 0/1, the volume's shape, affine and header) and "
               "DIR/<stem>_mask.png (0/255, the image's size). Exit status 0 when every input was segmented, "
               "2 otherwise (one 'error: FILE: problem' line per bad input; the others are still written).")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI volume, .tif/.tiff/.png image, or a folder")
    ap.add_argument("--ckpt", required=True, help="checkpoint file (a3c.checkpoint format)")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (made if missing)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda if available, else cpu (default auto)")
    ap.add_argument("--t-max", type=positive_int, default=None, metavar="N",
                    help="steps per episode (default: the checkpoint's env.t_max)")
    ap.add_argument("--save-steps", action="store_true",
                    help="also write <stem>_steps.png (the mask after each step) and <stem>_overlay.png per slice")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def run(args) -> int:
    """Segment every input; the exit status. An output folder made here and left empty is removed."""
    try:
        device = resolve_device(args.device)
        net, warnings = load_model(args.ckpt, device)
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"{out_dir}: exists and is not a folder (--out names the output folder)")
        try:
            created = make_dirs(out_dir)
        except OSError as exc:
            raise UsageError(f"{out_dir}: cannot create the output folder ({exc.strerror or one_line(exc)})") from None
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _segment_all(args, net, warnings)
    finally:
        remove_empty_dirs(created)  # a folder this run made and left empty (every input failed) goes


def _segment_all(args, net: Segmenter, warnings) -> int:
    from tqdm import tqdm

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    files, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    counts = [count_slices(p, k) for p, k in files]
    bar = tqdm(total=sum(counts), unit="slice", desc="segment", file=sys.stderr, dynamic_ncols=True,
               disable=args.no_progress)
    claimed: dict[Path, Path] = {}
    n_ok = n_slices = 0
    try:
        for (src, kind), planned in zip(files, counts):
            done = [0]

            def progress(k: int) -> None:
                done[0] += k
                bar.update(k)

            try:
                written = segment_input(src, kind, net, args, claimed, progress)
            except (InputError, OSError) as exc:
                msg = str(exc) if isinstance(exc, InputError) else (
                    f"{src}: cannot write {getattr(exc, 'filename', None) or 'output'} "
                    f"({exc.strerror or one_line(exc)})")
                bar.write(f"error: {msg}", file=sys.stderr)
                errors.append(msg)
                bar.total = max(bar.n, bar.total - (planned - done[0]))
                bar.refresh()
                continue
            if done[0] != planned:  # the header's slice count was a guess
                bar.total += done[0] - planned
                bar.refresh()
            n_ok += 1
            n_slices += done[0]
            extra = f" (+{len(written) - 1} PNGs)" if len(written) > 1 else ""
            bar.write(f"{src} -> {written[0]}{extra}", file=sys.stdout)
    except KeyboardInterrupt:
        bar.close()
        raise
    bar.close()
    print(f"segmented {n_ok} of {n_ok + len(errors)} input(s) ({n_slices} slice(s), t_max "
          f"{int(args.t_max or net.cfg.env.t_max)}, device {net.device}) into {args.out}"
          + (f"; {len(errors)} error(s)" if errors else ""))
    return 2 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return run(args)
    except KeyboardInterrupt as exc:
        print("interrupted; outputs written so far are complete, none is half-written", file=sys.stderr)
        return interrupt_status(exc)


if __name__ == "__main__":
    raise SystemExit(main())
