"""Shared store writer: atomic output, per-case normalisation, seeded splits, subsets and folds.

Every converter (``datasets.convert``) and the synthetic generator (``datasets.synth``) write
through :class:`StoreWriter`, so all stores share one schema (see ``datasets/store.py``) and one
set of rules:

* **Atomic output.** Data go to a temporary file ``.<name>.<random>.tmp`` in the output's
  folder; only a completed store is moved to the output path with ``os.replace``. On any error
  (including Ctrl-C, and SIGTERM in the command-line tools) the temporary file is removed and
  nothing is left at the output path. The store gets the mode ``open()`` would give
  (``0o666 & ~umask``). An output that is a folder, FIFO, device or socket is refused, even with
  ``overwrite``.
* **Normalisation** (:func:`normalise_case`): per case and per channel, clip to the 0.5th and
  99.5th percentiles (``percentiles``; converters' ``--percentiles``) of the case's nonzero
  voxels (all of its slices, before negatives are dropped), then scale linearly to [0, 1]. Zero
  stays the darkest value, which fits the method's ``X(t) = I * m(t)`` state where a zeroed
  pixel means "background".
* **Split by case** (:func:`allocate_counts`, :func:`split_cases`): the sorted case ids are
  shuffled with ``seed`` and cut by the ratios (largest-remainder rounding over cases); every
  split with a positive ratio gets at least one case when there are enough cases (test is served
  before val). No case is in two splits.
* **k-shot subsets**: one seeded permutation of the train slices; ``train_50`` is its first 50
  and ``train_100`` its first 100 (so ``train_50`` is inside ``train_100``), all of train when
  train is smaller.
* **Folds**: all cases (train, val and test) shuffled with the seed and dealt round-robin into
  5 folds, so fold sizes differ by at most one case.

Each random draw uses its own stream (``np.random.default_rng([seed, k])``), so changing the
split ratios does not change the folds.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from a3c.fileio import make_temp, special_kind

from .normalise import DEFAULT_PERCENTILES, normalisation_name
from .store import N_FOLDS, SCHEMA_VERSION, SUBSET_SIZES

_STREAM_SPLIT, _STREAM_SUBSET, _STREAM_FOLD = 1, 2, 3


class ConvertError(Exception):
    """A bad input or output. The message is one line naming the file and the problem."""


# --------------------------------------------------------------------------------------------
# Splits, subsets, folds


def parse_split(text: str) -> tuple[float, float, float]:
    """Parse ``"70/10/20"`` into three non-negative percentages (train, val, test) summing to 100."""
    parts = str(text).split("/")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--split must be three non-negative numbers like 70/10/20, got {text!r}")
    if abs(sum(values) - 100) > 1e-6:
        raise ValueError(f"--split percentages must sum to 100, got {text!r} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def allocate_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Number of cases per split for ``n`` cases: largest remainder (ties favour test, then val),
    then at least one case for
    each split with a positive ratio when possible (test first, then val, then train), taken
    from the largest split that has more than one."""
    r = np.asarray(ratios, dtype=float)
    r = r / r.sum()
    exact = n * r
    counts = np.floor(exact).astype(int)
    remainder = n - int(counts.sum())
    # Largest remainder first; ties (to 1e-9) go to test, then val, then train.
    frac = np.round(exact - counts, 9)
    order = sorted(range(3), key=lambda i: (-frac[i], -i))
    for i in order[:remainder]:
        counts[i] += 1
    for i in (2, 1, 0):
        if r[i] > 0 and counts[i] == 0:
            donors = [j for j in range(3) if counts[j] > 1]
            if donors:
                j = max(donors, key=lambda k: (counts[k], -k))
                counts[j] -= 1
                counts[i] += 1
    return [int(c) for c in counts]


def split_cases(cases: Iterable[str], ratios: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Seeded split of case ids into ``{"train": [...], "val": [...], "test": [...]}`` (sorted)."""
    ordered = sorted(set(cases))
    rng = np.random.default_rng([int(seed), _STREAM_SPLIT])
    perm = [ordered[i] for i in rng.permutation(len(ordered))]
    n_train, n_val, _ = allocate_counts(len(ordered), ratios)
    return {
        "train": sorted(perm[:n_train]),
        "val": sorted(perm[n_train:n_train + n_val]),
        "test": sorted(perm[n_train + n_val:]),
    }


def assign_folds(cases: Iterable[str], seed: int, n_folds: int = N_FOLDS) -> dict[str, int]:
    """Seeded round-robin assignment of every case to one of ``n_folds`` folds."""
    ordered = sorted(set(cases))
    rng = np.random.default_rng([int(seed), _STREAM_FOLD])
    return {ordered[i]: k % n_folds for k, i in enumerate(rng.permutation(len(ordered)))}


def kshot_subsets(train_idx: np.ndarray, seed: int, sizes: Sequence[int] = SUBSET_SIZES) -> dict[int, np.ndarray]:
    """Nested seeded subsets of the train slice indices: first k of one permutation, sorted."""
    rng = np.random.default_rng([int(seed), _STREAM_SUBSET])
    perm = np.asarray(train_idx, dtype=np.int64)[rng.permutation(len(train_idx))]
    return {k: np.sort(perm[:k]) for k in sizes}


# --------------------------------------------------------------------------------------------
# Per-case checks and normalisation


def normalise_case(images: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Normalise one case ``[S, C, H, W]`` to float32 in [0, 1], per channel.

    Clip to the ``percentiles`` (default 0.5th / 99.5th) of the channel's nonzero voxels over
    all S slices, then scale linearly; ``(0, 100)`` is min-max scaling; a channel with no nonzero
    voxel, or a constant one, becomes all zeros (constant nonzero: ones where nonzero).
    """
    images = np.asarray(images, dtype=np.float32)
    out = np.zeros_like(images, dtype=np.float32)
    for c in range(images.shape[1]):
        ch = images[:, c]
        nz = ch[ch != 0]
        if nz.size == 0:
            continue
        if nz.size > 4_000_000:  # percentiles of a large volume: a strided sample is plenty
            nz = nz[:: nz.size // 2_000_000]
        lo, hi = np.percentile(nz, list(percentiles))
        if hi <= lo:
            out[:, c] = (ch != 0).astype(np.float32) if lo != 0 else 0.0
            continue
        out[:, c] = np.clip((ch - lo) / (hi - lo), 0.0, 1.0)
    return out


def resize_slices(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize raw slices ``[S, C, H, W]`` to ``[S, C, h, w]`` float32, as ``convert --size`` does.

    Linear interpolation with edge padding (``skimage.transform.resize``, values kept in their
    range), anti-aliased when either side shrinks. The same size returns the input as float32.
    """
    images = np.asarray(images, dtype=np.float32)
    s, c, h, w = images.shape
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return images
    from skimage.transform import resize

    return resize(images, (s, c) + size, order=1, mode="edge", anti_aliasing=size[0] < h or size[1] < w,
                  preserve_range=True).astype(np.float32)


def check_finite(arr: np.ndarray, source: os.PathLike | str) -> None:
    """Raise ConvertError if a float array holds NaN or infinite values."""
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ConvertError(f"{source}: contains {bad} NaN or infinite voxel(s)")


def binarise_mask(arr: np.ndarray, source: os.PathLike | str, label: float | None = None) -> np.ndarray:
    """Return a uint8 0/1 mask. Without ``label`` the values must be within {0, 1} or within
    {0, 255}; with ``label`` the mask is ``arr == label`` (for multi-label files)."""
    arr = np.asarray(arr)
    if label is not None:
        check_finite(arr, source)
        return (arr == label).astype(np.uint8)
    zero = arr == 0
    one = arr == 1
    full = arr == 255
    other = ~(zero | one | full)
    if other.any():
        vals = np.unique(arr[other])
        shown = ", ".join(f"{v:g}" for v in vals[:5]) + (", ..." if vals.size > 5 else "")
        raise ConvertError(f"{source}: mask values must be {{0,1}} or {{0,255}}, found {shown}")
    if one.any() and full.any():
        raise ConvertError(f"{source}: mask mixes values 1 and 255; expected {{0,1}} or {{0,255}}")
    return (~zero).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writer


def check_output(out: os.PathLike | str, overwrite: bool) -> Path:
    """Refuse an existing output without ``overwrite``; refuse always a folder, FIFO, device or
    socket (``--overwrite`` replaces regular files only)."""
    out = Path(out)
    kind = special_kind(out)
    if kind is not None:
        raise ConvertError(f"{out}: output exists and is {kind}, not a regular file; refusing to replace it")
    if out.exists() and not overwrite:
        raise ConvertError(f"{out}: output exists (use --overwrite to replace it)")
    return out


@dataclass(frozen=True)
class StoreLayout:
    """How the writer makes a store of its cases, as the store's attributes record it.

    ``split``: train/val/test percentages over cases, and ``seed``: the draws of the splits,
    subsets and folds (attributes ``split``, ``seed``); ``keep_negatives``: keep empty-mask
    slices; ``normalise``: per-case normalisation to the clip ``percentiles`` (``normalise_case``),
    else raw values (attribute ``normalisation``); ``compression``: the HDF5 filter of the images
    and masks (None or "none" = none). Values are made canonical on construction (floats, an int
    seed); bad percentiles are a ValueError.
    """

    split: Sequence[float] = (70, 10, 20)
    seed: int = 0
    keep_negatives: bool = False
    normalise: bool = True
    percentiles: Sequence[float] = DEFAULT_PERCENTILES
    compression: str | None = None

    def __post_init__(self) -> None:
        percentiles = tuple(float(p) for p in self.percentiles)
        if not (len(percentiles) == 2 and 0 <= percentiles[0] < percentiles[1] <= 100):
            raise ValueError(f"percentiles must be 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", percentiles)
        object.__setattr__(self, "split", tuple(float(x) for x in self.split))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "compression", None if self.compression in (None, "none") else self.compression)


class StoreWriter:
    """Write one store atomically, case by case.

    Usage::

        with StoreWriter(out, layout=StoreLayout(split=(70, 10, 20), seed=0), attrs={...}) as w:
            for ...:
                w.add_case(case_id, images, masks, slice_index, spacing, source=path)
        # the file exists at ``out`` only if the ``with`` block finished without an exception

    ``add_case`` takes raw images ``[S, C, H, W]`` (any real dtype), masks ``[S, H, W]`` 0/1,
    ``slice_index`` ``[S]`` and ``spacing`` ``(sy, sx)`` or None; it normalises the case
    (``layout.normalise``), drops empty-mask slices unless ``layout.keep_negatives`` and appends.
    ``attrs`` (provenance: ``source``, ``converter``, ``arguments``, ...) go to the store's
    attributes; ``source`` names the input in errors (default: ``out``).
    """

    def __init__(
        self,
        out: os.PathLike | str,
        *,
        layout: StoreLayout = StoreLayout(),
        attrs: dict | None = None,
        overwrite: bool = False,
        source: str = "",
    ) -> None:
        self.out = check_output(out, overwrite)
        self.layout = layout
        self.attrs = dict(attrs or {})
        self.source = source or str(self.out)
        self._tmp: Path | None = None
        self._h5: h5py.File | None = None
        self._shape: tuple[int, int, int] | None = None
        self._n = 0
        self._case_ids: list[str] = []
        self._slice_index: list[np.ndarray] = []
        self._spacing: list[np.ndarray] = []
        self._seen: set[str] = set()
        self.n_cases_in = 0
        self.n_slices_in = 0

    # context manager -------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        fd, self._tmp = make_temp(self.out)  # mode 0o666 & ~umask, like an ordinary open()
        os.close(fd)
        try:
            self._h5 = h5py.File(self._tmp, "w")
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                self._discard()
                raise
        else:
            self._discard()
        return False

    def _discard(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:
                pass
            self._h5 = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._tmp = None

    # data ------------------------------------------------------------------------------
    def add_case(
        self,
        case_id: str,
        images: np.ndarray,
        masks: np.ndarray,
        slice_index: Sequence[int] | np.ndarray,
        spacing: Sequence[float] | None = None,
        source: os.PathLike | str | None = None,
    ) -> int:
        """Append one case; returns the number of slices kept."""
        assert self._h5 is not None, "use StoreWriter as a context manager"
        src = source if source is not None else case_id
        case_id = str(case_id)
        if case_id in self._seen:
            raise ConvertError(f"{src}: case id {case_id!r} occurs twice")
        self._seen.add(case_id)
        images = np.asarray(images)
        masks = np.asarray(masks)
        slice_index = np.asarray(slice_index, dtype=np.int64).reshape(-1)
        if images.ndim != 4:
            raise ConvertError(f"{src}: images must be [S,C,H,W], got shape {images.shape}")
        if masks.shape != (images.shape[0],) + images.shape[2:]:
            raise ConvertError(
                f"{src}: mask shape {masks.shape[1:]} differs from image shape {images.shape[2:]}"
                if masks.ndim == 3 and masks.shape[0] == images.shape[0]
                else f"{src}: mask array {masks.shape} does not match images {images.shape}"
            )
        if slice_index.shape[0] != images.shape[0]:
            raise ConvertError(f"{src}: {slice_index.shape[0]} slice indices for {images.shape[0]} slices")
        check_finite(images, src)
        if masks.dtype != np.uint8 or masks.max(initial=0) > 1:
            masks = binarise_mask(masks, src)
        self.n_cases_in += 1
        self.n_slices_in += images.shape[0]
        shape = tuple(int(x) for x in images.shape[1:])
        if self._shape is None:
            self._create(shape)
        elif shape != self._shape:
            raise ConvertError(
                f"{src}: slice shape (C,H,W)={shape} differs from earlier cases' {self._shape}; "
                "all cases must share one shape (try --size)"
            )
        layout = self.layout
        data = normalise_case(images, layout.percentiles) if layout.normalise else images.astype(np.float32)
        keep = np.ones(images.shape[0], bool) if layout.keep_negatives else masks.reshape(masks.shape[0], -1).any(1)
        k = int(keep.sum())
        if k == 0:
            return 0
        n0, n1 = self._n, self._n + k
        self._h5["images"].resize(n1, axis=0)
        self._h5["masks"].resize(n1, axis=0)
        self._h5["images"][n0:n1] = data[keep]
        self._h5["masks"][n0:n1] = masks[keep]
        self._n = n1
        self._case_ids.extend([case_id] * k)
        self._slice_index.append(slice_index[keep])
        sp = np.full(2, np.nan, np.float32) if spacing is None else np.asarray(spacing, np.float32).reshape(2)
        self._spacing.append(np.repeat(sp[None], k, axis=0))
        return k

    def _create(self, shape: tuple[int, int, int]) -> None:
        c, h, w = shape
        self._shape = shape
        kw = {"compression": self.layout.compression} if self.layout.compression else {}
        self._h5.create_dataset("images", shape=(0, c, h, w), maxshape=(None, c, h, w), dtype="f4",
                                chunks=(1, c, h, w), **kw)
        self._h5.create_dataset("masks", shape=(0, h, w), maxshape=(None, h, w), dtype="u1",
                                chunks=(1, h, w), **kw)

    def _finish(self) -> None:
        h5 = self._h5
        if self._n == 0:
            if self.n_slices_in == 0:
                raise ConvertError(f"{self.source}: no slices found")
            raise ConvertError(
                f"{self.source}: nothing left after dropping negative (empty-mask) slices "
                f"({self.n_slices_in} slices in {self.n_cases_in} cases; --keep-negatives keeps them)"
            )
        n = self._n
        case_ids = np.asarray(self._case_ids, dtype=object)
        h5.create_dataset("case_id", data=case_ids, dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("slice_index", data=np.concatenate(self._slice_index).astype(np.int32))
        h5.create_dataset("spacing", data=np.concatenate(self._spacing).astype(np.float32))

        cases = sorted(set(self._case_ids))
        layout = self.layout
        parts = split_cases(cases, layout.split, layout.seed)
        g = h5.create_group("splits")
        for name in ("train", "val", "test"):
            chosen = np.isin(case_ids, np.asarray(parts[name], dtype=object))
            g.create_dataset(name, data=np.flatnonzero(chosen).astype(np.int64))
        subsets = kshot_subsets(g["train"][()], layout.seed)
        gs = h5.create_group("subsets")
        for k, idx in subsets.items():
            gs.create_dataset(f"train_{k}", data=idx.astype(np.int64))
        folds = assign_folds(cases, layout.seed)
        gf = h5.create_group("folds")
        gf.create_dataset("assignment", data=np.asarray([folds[c] for c in self._case_ids], np.int8))
        gf.attrs["n_folds"] = N_FOLDS

        attrs = {
            "source": "",
            "converter": "",
            "arguments": "{}",
            **self.attrs,
            "schema_version": SCHEMA_VERSION,
            "seed": layout.seed,
            "split": "/".join(f"{x:g}" for x in layout.split),
            "normalisation": normalisation_name(layout.percentiles if layout.normalise else None),
            "keep_negatives": bool(layout.keep_negatives),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_cases_read": self.n_cases_in,
            "n_slices_read": self.n_slices_in,
        }
        for key, value in attrs.items():
            if isinstance(value, (dict, list, tuple)):
                value = json.dumps(value, default=str)
            h5.attrs[key] = value
        h5.flush()
        h5.close()
        self._h5 = None
        check_output(self.out, True)  # nothing special appeared at the output meanwhile
        os.replace(self._tmp, self.out)
        self._tmp = None
        self.n_slices = n
