"""Synthetic, patient-like slice stores that an intensity threshold cannot solve.

::

    python -m datasets.synth --out FILE.h5 [--cases 16] [--size 64] [--slices 12] [--seed 0]
                             [--split 70/10/20] [--overwrite]

or from Python ``make_synthetic_store(path, SynthSpec(cases=16, size=64, slices=12, seed=0))``.

Each case is a small 3-D volume (``size x size x slices``); its slices are neighbouring cuts
through one irregular 3-D object, so slices of a case are alike and cases differ. One channel.

What makes it hard for a threshold:

* **distractors**: 2-4 blobs per case with the object's mean intensity and, together, roughly
  1.5 times its area, also 3-D and irregular;
* a smooth multiplicative **bias field** (about 0.7-1.3 over the image), low-frequency
  background **texture** and Gaussian **noise**;
* **soft, irregular boundaries** (the shapes are level sets of an ellipsoid plus smooth noise;
  intensities are blurred across the edge).

An Otsu threshold per slice segments object and distractors alike (mean Dice 0.34 on the
default store, see ``tests/test_datasets_synth.py``).

What makes it learnable: the object alone carries an oriented **stripe texture** (period 4-6
pixels, orientation random per case) and a thin darker **rim**; distractors are smooth inside
and rimless. A few 3x3 convolutions see both, so a small CNN can separate object from
distractor locally.

Images are normalised like converted data (``datasets.writer.normalise_case``), the split is by
case, and negatives cannot occur (every slice cuts the object).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from a3c.fileio import interrupt_status, sigterm_as_interrupt

from .writer import ConvertError, StoreLayout, StoreWriter, check_output, parse_split


@dataclass(frozen=True)
class SynthSpec:
    """What the generator makes: ``cases`` volumes of ``size x size x slices``, drawn from ``seed``
    (which also seeds the store's split, subsets and folds)."""

    cases: int = 16
    size: int = 64
    slices: int = 12
    seed: int = 0


DEFAULTS = asdict(SynthSpec())
#: Bumped whenever the generator's output changes (stored as the ``generator_version`` attribute),
#: so cached stores can be told apart.
GENERATOR_VERSION = 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return field / (field.std() + 1e-8)


@dataclass(frozen=True)
class _Grid:
    """A case's voxel coordinates [slices, size, size] (z in [-0.65, 0.65], y and x in pixels) and
    the smoothing (z, y, x) of its shapes' noise."""

    zz: np.ndarray
    yy: np.ndarray
    xx: np.ndarray
    noise_sigma: tuple[float, float, float]


def _blob(rng, grid: _Grid, center, radii, angle, wobble):
    """Signed level set of a rotated ellipsoid with smooth radial noise (< 1 inside)."""
    cy, cx = center
    ry, rx, rz = radii
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = grid.yy - cy, grid.xx - cx
    u, v = c * dy + s * dx, -s * dy + c * dx
    d = np.sqrt((u / ry) ** 2 + (v / rx) ** 2 + (grid.zz / rz) ** 2)
    return d + wobble * _smooth_noise(rng, grid.zz.shape, grid.noise_sigma)


def generate_case(rng: np.random.Generator, size: int = 64, slices: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: images float32 ``[slices, 1, size, size]`` (unnormalised),
    masks uint8 ``[slices, size, size]``."""
    k, n = int(slices), int(size)
    zs = np.linspace(-0.65, 0.65, k) if k > 1 else np.zeros(1)
    zz, yy, xx = np.meshgrid(zs, np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
    grid = _Grid(zz, yy, xx, (max(k / 6.0, 0.5), n / 14.0, n / 14.0))

    # Object: irregular ellipsoid, in-plane radius 12-20 % of the image.
    r_obj = n * rng.uniform(0.15, 0.21)
    margin = r_obj * 1.3
    center = tuple(rng.uniform(margin, n - margin, size=2))
    radii = (r_obj * rng.uniform(0.8, 1.2), r_obj * rng.uniform(0.8, 1.2), 1.0)
    level = _blob(rng, grid, center, radii, rng.uniform(0, np.pi), 0.18)
    obj = level < 1.0

    # Distractors: 2-4 blobs, same mean intensity, together roughly 1.5x the object's area.
    n_dis = int(rng.integers(2, 5))
    dis_level = np.full(zz.shape, np.inf)
    placed = []
    area_each = 1.5 / n_dis
    for _ in range(n_dis):
        r = r_obj * np.sqrt(area_each) * rng.uniform(0.85, 1.15)
        for _try in range(40):
            c = tuple(rng.uniform(r, n - r, size=2))
            far_obj = np.hypot(c[0] - center[0], c[1] - center[1]) > (r + r_obj) * 1.05
            far_dis = all(np.hypot(c[0] - p[0], c[1] - p[1]) > (r + q) * 1.0 for p, q in placed)
            if far_obj and far_dis:
                break
        placed.append((c, r))
        rad = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), rng.uniform(1.0, 1.3))
        dis_level = np.minimum(dis_level, _blob(rng, grid, c, rad, rng.uniform(0, np.pi), 0.18))
    dis = (dis_level < 1.0) & ~obj

    # Soft indicator maps (edges blurred in-plane).
    blur = (0, 1.0, 1.0)
    obj_soft = gaussian_filter(obj.astype(np.float64), blur)
    dis_soft = gaussian_filter(dis.astype(np.float64), blur)

    # Background tissue with low-frequency texture.
    img = 0.35 + 0.05 * _smooth_noise(rng, zz.shape, (1.0, 3.0, 3.0))
    bright = rng.uniform(0.62, 0.68)
    # Distractors: the object's mean brightness, smooth inside.
    img = img + dis_soft * (bright - 0.35 + 0.03 * _smooth_noise(rng, zz.shape, (1.0, 4.0, 4.0)))
    # Object: same mean brightness, oriented stripes, thin darker rim.
    period = rng.uniform(4.0, 6.0)
    phi = rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * (np.cos(phi) * yy + np.sin(phi) * xx) / period + rng.uniform(0, 2 * np.pi))
    rim = obj_soft * (1 - obj_soft) * 4.0  # peaks (=1) on the boundary
    img = img + obj_soft * (bright - 0.35 + 0.13 * stripes) - 0.12 * rim
    # Smooth multiplicative bias field (per case, same for all slices) and noise.
    bias = 1.0 + 0.15 * _smooth_noise(rng, (1, n, n), (0, n / 4.0, n / 4.0))
    gy, gx = rng.uniform(-0.2, 0.2, size=2)
    bias = bias + gy * (yy[:1] / n - 0.5) + gx * (xx[:1] / n - 0.5)
    img = img * np.clip(bias, 0.6, 1.4) + rng.normal(0.0, 0.045, size=img.shape)
    img = np.clip(img, 0.0, None)
    return img[:, None].astype(np.float32), obj.astype(np.uint8)


def make_synthetic_store(
    path,
    spec: SynthSpec = SynthSpec(),
    *,
    split: str | Sequence[float] = "70/10/20",
    overwrite: bool = False,
    compression: str | None = None,
) -> Path:
    """Write the synthetic store ``spec`` describes to ``path`` (atomically) and return ``path``.

    Deterministic for given arguments (apart from the ``created`` attribute). Raises
    ConvertError if ``path`` exists and not ``overwrite``.
    """
    path = Path(path)
    cases, size, slices, seed = spec.cases, spec.size, spec.slices, spec.seed
    if cases < 1 or not 16 <= size <= 4096 or slices < 1 or not 0 <= seed < 2 ** 63:
        raise ValueError("need cases >= 1, 16 <= size <= 4096, slices >= 1, 0 <= seed < 2**63")
    ratios = parse_split(split) if isinstance(split, str) else tuple(float(x) for x in split)
    check_output(path, overwrite)
    args = {"cases": cases, "size": size, "seed": seed, "slices": slices,
            "split": "/".join(f"{r:g}" for r in ratios)}
    attrs = {"source": "synthetic", "converter": "datasets.synth", "arguments": json.dumps(args),
             "generator_version": GENERATOR_VERSION,
             "description": "irregular 3-D object with stripe texture and dark rim; smooth distractor blobs of the "
                            "same brightness; bias field; noise"}
    seeds = np.random.SeedSequence([int(seed), 7]).spawn(cases)
    layout = StoreLayout(split=ratios, seed=seed, compression=compression)
    with StoreWriter(path, layout=layout, attrs=attrs, overwrite=overwrite, source="synthetic") as w:
        for i in range(cases):
            images, masks = generate_case(np.random.default_rng(seeds[i]), size, slices)
            w.add_case(f"synth{i:03d}", images, masks, np.arange(slices), (1.0, 1.0))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.synth",
                                 description="Write a synthetic PixelDRL-MG slice store (hard for thresholds).")
    ap.add_argument("--out", required=True, help="output store (.h5)")
    ap.add_argument("--cases", type=int, default=DEFAULTS["cases"], help="number of cases (default 16)")
    ap.add_argument("--size", type=int, default=DEFAULTS["size"], help="slice size in pixels (default 64)")
    ap.add_argument("--slices", type=int, default=DEFAULTS["slices"], help="slices per case (default 12)")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed (default 0)")
    ap.add_argument("--split", default="70/10/20",
                    help="train/val/test percentages over cases, summing to 100 (default 70/10/20)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = ap.parse_args(argv)
    try:
        ratios = parse_split(args.split)
        if args.cases < 1 or not 16 <= args.size <= 4096 or args.slices < 1 or not 0 <= args.seed < 2 ** 63:
            raise ValueError("need --cases >= 1, 16 <= --size <= 4096, --slices >= 1, 0 <= --seed < 2**63")
    except ValueError as exc:  # one line, exit 2
        print(f"datasets.synth: error: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            spec = SynthSpec(cases=args.cases, size=args.size, slices=args.slices, seed=args.seed)
            make_synthetic_store(args.out, spec, split=ratios, overwrite=args.overwrite)
    except (ConvertError, OSError) as exc:
        print(f"datasets.synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("datasets.synth: interrupted; no output written", file=sys.stderr)
        return interrupt_status(exc)
    from .convert import empty_split_warning, format_summary, summarize

    summary = summarize(args.out)
    warning = empty_split_warning(summary, ratios)
    if warning:
        print(f"datasets.synth: warning: {warning}", file=sys.stderr)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
