"""Read-only access to a PixelDRL-MG slice store (one HDF5 file per dataset).

Schema (``SCHEMA_VERSION = 1``)
-------------------------------
==========================  ==========================  =============================================
name                        type / shape                meaning
==========================  ==========================  =============================================
``images``                  float32 ``[N, C, H, W]``    slices, normalised per case (attr
                                                        ``normalisation``; converters: per case and
                                                        channel, clip to the 0.5/99.5th percentile of
                                                        the nonzero voxels, scale to [0, 1]).
                                                        Chunked one slice per chunk, uncompressed by
                                                        default.
``masks``                   uint8 ``[N, H, W]``         ground truth, values 0/1
``case_id``                 utf-8 strings ``[N]``       patient / case of each slice
``slice_index``             int32 ``[N]``               slice number within its case (the source's
                                                        numbering: LGG file number, NIfTI z index)
``spacing``                 float32 ``[N, 2]``          in-plane pixel spacing (rows, cols) in mm;
                                                        NaN where unknown
``splits/train|val|test``   int64 ``[n]`` sorted        slice indices of each split; split by case
``subsets/train_50|_100``   int64 ``[n]`` sorted        seeded k-shot subsets of the train slices
                                                        (nested; all of train if it is smaller)
``folds/assignment``        int8 ``[N]``                fold (0..4) of each slice, assigned by case
==========================  ==========================  =============================================

File attributes: ``schema_version`` (int), ``source``, ``converter``, ``arguments`` (JSON),
``seed``, ``split`` (e.g. ``"70/10/20"``), ``normalisation``, ``created`` (ISO time, UTC), plus
converter-specific provenance (``keep_negatives``, ``n_cases_read``, ...).

Split names accepted by :meth:`SliceStore.indices`: ``train``, ``val``, ``test``, ``all``,
``train_50``, ``train_100``, ``fold{k}/train`` and ``fold{k}/test`` for k in 0..4 (fold k's cases
form the test part, the other four folds the train part), and the patient-level cross-validation
splits ``cv{K}/fold{k}/train|val|test`` for 2 <= K <= cases, 0 <= k < K (``cv_folds``: fold k's
cases are the test part, one case of fold k+1 the validation part, the rest the train part).

Values: the constructor also reads a sample of up to ``CHECK_SLICES`` evenly spaced slices (the
first and the last included) and refuses the store if a sampled image holds NaN or infinite
values or a sampled mask a value other than 0 and 1. Converted stores always pass; the sample
catches hand-made stores cheaply (a few milliseconds), not a single bad slice among thousands.

Process safety: the constructor validates the file and closes it. The HDF5 handle is opened
lazily, read-only, on the first data access and re-opened when ``os.getpid()`` changes (after a
fork); pickling drops it, so a store can be handed to ``torch.multiprocessing`` spawn children.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

SCHEMA_VERSION = 1
SUBSET_SIZES = (50, 100)
N_FOLDS = 5
CHECK_SLICES = 32  # slices whose values the constructor checks

REQUIRED = (
    "images",
    "masks",
    "case_id",
    "slice_index",
    "spacing",
    "splits/train",
    "splits/val",
    "splits/test",
    "subsets/train_50",
    "subsets/train_100",
    "folds/assignment",
)

SPLIT_NAMES = (
    ("train", "val", "test", "all")
    + tuple(f"train_{k}" for k in SUBSET_SIZES)
    + tuple(f"fold{k}/{part}" for k in range(N_FOLDS) for part in ("train", "test"))
)


CV_SPLIT = re.compile(r"cv(\d+)/fold(\d+)/(train|val|test)")
_STREAM_CV = 4  # seed stream of the cross-validation folds (the writer uses 1-3)


def cv_folds(cases, n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Patient-level K-fold cross-validation: ``n_folds`` dicts ``{"train", "val", "test"}`` of case ids.

    The sorted cases are permuted with ``seed`` and dealt round-robin into ``n_folds`` folds, so fold
    sizes differ by at most one. Fold k tests on its own cases and validates on the first case (in
    that order) of fold k+1 (mod K); the other cases train. Every case is tested exactly once.
    """
    ordered = sorted(set(cases))
    if not 2 <= n_folds <= len(ordered):
        raise ValueError(f"cross-validation needs 2 to {len(ordered)} folds for {len(ordered)} cases, got {n_folds}")
    rng = np.random.default_rng([int(seed), _STREAM_CV])
    perm = [ordered[i] for i in rng.permutation(len(ordered))]
    folds = [perm[k::n_folds] for k in range(n_folds)]
    out = []
    for k in range(n_folds):
        val = folds[(k + 1) % n_folds][:1]
        out.append({"train": sorted(c for c in ordered if c not in folds[k] and c not in val),
                    "val": sorted(val), "test": sorted(folds[k])})
    return out


class StoreError(Exception):
    """A store that cannot be used. The message is one line naming the file and the problem."""


def _plain(value):
    """HDF5 attribute value -> plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class SliceStore:
    """One HDF5 slice store; see the module docstring for the schema.

    Attributes: ``path`` (Path), ``image_shape`` ``(C, H, W)``, ``attrs`` (provenance dict),
    ``n`` (number of slices).
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._meta: dict | None = None
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a store file")
        try:
            f = h5py.File(self.path, "r")
        except Exception as exc:  # OSError for non-HDF5, truncated or unreadable files
            raise StoreError(f"{self.path}: not a readable HDF5 file ({_one_line(exc)})") from None
        try:
            if "schema_version" not in f.attrs:
                raise StoreError(f"{self.path}: no schema_version attribute (not a PixelDRL-MG store?)")
            try:
                version = int(_plain(f.attrs["schema_version"]))
            except (TypeError, ValueError):
                version = None
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema_version {_plain(f.attrs['schema_version'])!r} "
                    f"but this reader supports {SCHEMA_VERSION}; re-create the store"
                )
            missing = [name for name in REQUIRED if name not in f]
            if missing:
                raise StoreError(f"{self.path}: missing dataset(s) {', '.join(missing)}")
            images, masks = f["images"], f["masks"]
            if images.ndim != 4 or images.shape[0] == 0:
                raise StoreError(f"{self.path}: images must be a non-empty [N,C,H,W] array, got {images.shape}")
            n = images.shape[0]
            if masks.shape != (n,) + images.shape[2:]:
                raise StoreError(f"{self.path}: masks shape {masks.shape} does not match images {images.shape}")
            for name, shape in (("case_id", (n,)), ("slice_index", (n,)), ("spacing", (n, 2)),
                                ("folds/assignment", (n,))):
                if f[name].shape != shape:
                    raise StoreError(f"{self.path}: {name} shape {f[name].shape}, expected {shape}")
            self.n = int(n)
            self.image_shape: tuple[int, int, int] = tuple(int(x) for x in images.shape[1:])
            self.attrs: dict = {k: _plain(v) for k, v in f.attrs.items()}
            problem = sample_problem(images, masks)
            if problem:
                raise StoreError(f"{self.path}: {problem}")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.path}: unreadable store ({_one_line(exc)})") from None
        finally:
            f.close()

    # ----------------------------------------------------------------------------- handle
    def _h5(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # After a fork the inherited handle belongs to the parent: drop it unclosed.
            self._file = None
            try:
                self._file = h5py.File(self.path, "r")
            except Exception as exc:
                raise StoreError(f"{self.path}: cannot open for reading ({_one_line(exc)})") from None
            self._pid = pid
            self._dimg, self._dmask = self._file["images"], self._file["masks"]
            self._raw = _raw_chunk_ok(self._dimg) and _raw_chunk_ok(self._dmask)
        return self._file

    def close(self) -> None:
        """Close the HDF5 handle (it is re-opened on the next data access)."""
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:
                pass
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        for key in ("_dimg", "_dmask", "_raw"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __enter__(self) -> "SliceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"SliceStore({str(self.path)!r}, n={self.n}, image_shape={self.image_shape})"

    # ------------------------------------------------------------------------- metadata
    def _load_meta(self) -> dict:
        if self._meta is None:
            f = self._h5()
            try:
                case_id = np.asarray([c.decode("utf-8") if isinstance(c, bytes) else str(c)
                                      for c in f["case_id"][()]], dtype=object)
                meta = {
                    "case_id": case_id,
                    "slice_index": f["slice_index"][()].astype(np.int64),
                    "spacing": f["spacing"][()].astype(np.float32),
                    "fold": f["folds/assignment"][()].astype(np.int64),
                    "splits": {name: np.sort(f[f"splits/{name}"][()].astype(np.int64))
                               for name in ("train", "val", "test")},
                    "subsets": {k: np.sort(f[f"subsets/train_{k}"][()].astype(np.int64)) for k in SUBSET_SIZES},
                }
            except Exception as exc:
                raise StoreError(f"{self.path}: unreadable metadata ({_one_line(exc)})") from None
            for name, idx in list(meta["splits"].items()) + [(f"train_{k}", v) for k, v in meta["subsets"].items()]:
                if idx.size and (idx[0] < 0 or idx[-1] >= self.n):
                    raise StoreError(f"{self.path}: split {name} holds indices outside 0..{self.n - 1}")
            self._meta = meta
        return self._meta

    def _raw_indices(self, split: str) -> np.ndarray | None:
        """Indices of a known split name (possibly empty), None for an unknown name."""
        m = self._load_meta()
        if split == "all":
            return np.arange(self.n, dtype=np.int64)
        if split in m["splits"]:
            return m["splits"][split]
        if split.startswith("train_") and split[6:].isdigit() and int(split[6:]) in m["subsets"]:
            return m["subsets"][int(split[6:])]
        cv = CV_SPLIT.fullmatch(split)
        if cv:
            n_folds, k, part = int(cv[1]), int(cv[2]), cv[3]
            cases = sorted(set(m["case_id"].tolist()))
            if not (2 <= n_folds <= len(cases) and k < n_folds):
                return None
            chosen = set(cv_folds(cases, n_folds, int(self.attrs.get("seed", 0)))[k][part])
            return np.flatnonzero([c in chosen for c in m["case_id"]]).astype(np.int64)
        if split.startswith("fold") and split in SPLIT_NAMES:
            k, part = split[4:].split("/")
            in_fold = m["fold"] == int(k)
            return np.flatnonzero(in_fold if part == "test" else ~in_fold).astype(np.int64)
        return None

    def indices(self, split: str) -> np.ndarray:
        """Sorted int64 slice indices of ``split`` (see ``SPLIT_NAMES``); StoreError if the name
        is unknown or the split is empty."""
        idx = self._raw_indices(split)
        if idx is None:
            raise StoreError(f"{self.path}: unknown split {split!r}; valid names: {', '.join(SPLIT_NAMES)}, "
                             "cv{K}/fold{k}/train|val|test (2 <= K <= cases, k < K)")
        if idx.size == 0:
            valid = [s for s, n in self.split_sizes().items() if n > 0]
            raise StoreError(f"{self.path}: split {split!r} is empty; non-empty splits: {', '.join(valid)}")
        return idx.copy()

    def split_sizes(self) -> dict[str, int]:
        """Number of slices of every split name (0 for empty ones)."""
        return {s: int(self._raw_indices(s).size) for s in SPLIT_NAMES}

    def cases(self, split: str) -> list[str]:
        """Sorted unique case ids of ``split``."""
        return sorted(set(self._load_meta()["case_id"][self.indices(split)].tolist()))

    def meta(self, idx: int) -> dict:
        """``{"case": str, "slice": int, "spacing": (sy, sx) or None}`` of slice ``idx``."""
        m = self._load_meta()
        i = int(idx)
        if not 0 <= i < self.n:
            raise IndexError(f"slice {idx} out of range 0..{self.n - 1}")
        sp = m["spacing"][i]
        return {
            "case": str(m["case_id"][i]),
            "slice": int(m["slice_index"][i]),
            "spacing": None if not np.all(np.isfinite(sp)) else (float(sp[0]), float(sp[1])),
        }

    # ----------------------------------------------------------------------------- data
    def read(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 ``[B, C, H, W]`` and masks uint8 ``[B, H, W]`` of ``idx``, in its order.

        Reads the sorted unique indices, then reorders (and repeats duplicates) to the requested
        order. With the default layout (one uncompressed chunk per slice) each slice is one raw
        chunk read straight into the output buffer (``read_direct_chunk``, ~3x faster than a
        hyperslab read); otherwise each run of consecutive indices is one ``read_direct``.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        c, h, w = self.image_shape
        if idx.size == 0:
            return np.zeros((0, c, h, w), np.float32), np.zeros((0, h, w), np.uint8)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"slice indices must be in 0..{self.n - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        images = np.empty((uniq.size, c, h, w), np.float32)
        masks = np.empty((uniq.size, h, w), np.uint8)
        self._h5()
        dimg, dmask = self._dimg, self._dmask
        try:
            if self._raw:
                img_bytes = images.reshape(uniq.size, -1).view(np.uint8)
                mask_bytes = masks.reshape(uniq.size, -1)
                iid, mid = dimg.id, dmask.id
                for j, i in enumerate(uniq.tolist()):
                    iid.read_direct_chunk((i, 0, 0, 0), out=img_bytes[j])
                    mid.read_direct_chunk((i, 0, 0), out=mask_bytes[j])
            else:
                breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
                starts = np.concatenate([[0], breaks])
                ends = np.concatenate([breaks, [uniq.size]])
                for s, e in zip(starts.tolist(), ends.tolist()):
                    a, b = int(uniq[s]), int(uniq[e - 1]) + 1
                    dimg.read_direct(images, np.s_[a:b], np.s_[s:e])
                    dmask.read_direct(masks, np.s_[a:b], np.s_[s:e])
        except Exception as exc:
            raise StoreError(f"{self.path}: read failed ({_one_line(exc)})") from None
        if uniq.size == idx.size and np.array_equal(uniq, idx):
            return images, masks
        return images[inverse], masks[inverse]

    def read_masks(self, idx) -> np.ndarray:
        """Masks uint8 ``[B, H, W]`` of ``idx`` only (sorted unique reads, then reordered)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        h, w = self.image_shape[1:]
        if idx.size == 0:
            return np.zeros((0, h, w), np.uint8)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"slice indices must be in 0..{self.n - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        self._h5()
        try:
            masks = self._dmask[uniq] if uniq.size > 1 else self._dmask[int(uniq[0])][None]
        except Exception as exc:
            raise StoreError(f"{self.path}: read failed ({_one_line(exc)})") from None
        return masks if uniq.size == idx.size and np.array_equal(uniq, idx) else masks[inverse]

    def sample(self, split: str, batch_size: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``min(batch_size, n)`` distinct random slices of ``split``: (images, masks, idx).

        Deterministic for a given ``rng`` state (one ``rng.choice(n, size, replace=False)``).
        """
        pool = self.indices(split)
        pick = rng.choice(pool.size, size=min(int(batch_size), pool.size), replace=False)
        idx = pool[pick]
        images, masks = self.read(idx)
        return images, masks, idx

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The slices of ``split`` in index order, ``batch_size`` at a time (last may be smaller)."""
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        pool = self.indices(split)
        for s in range(0, pool.size, int(batch_size)):
            idx = pool[s:s + int(batch_size)]
            images, masks = self.read(idx)
            yield images, masks, idx


def sample_indices(n: int, k: int = CHECK_SLICES) -> list[int]:
    """Up to ``k`` evenly spaced slice indices of ``n``, first and last included."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


def sample_problem(images, masks, k: int = CHECK_SLICES) -> str | None:
    """What is wrong with the values of a sample of slices (``sample_indices``), or None.

    ``images`` must be finite, ``masks`` 0 or 1; both are array-likes indexed per slice.
    """
    for i in sample_indices(len(images), k):
        img = np.asarray(images[i])
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            return f"images hold NaN or infinite values (slice {i}; a store must hold finite values)"
        m = np.asarray(masks[i])
        bad = m[(m != 0) & (m != 1)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in np.unique(bad)[:5])
            return f"masks hold values other than 0 and 1 (slice {i}: {shown})"
    return None


def _raw_chunk_ok(ds: h5py.Dataset) -> bool:
    """True if each slice of ``ds`` is one unfiltered chunk in native byte order, so a raw
    chunk read gives the slice's bytes exactly."""
    try:
        return (
            ds.chunks == (1,) + tuple(ds.shape[1:])
            and ds.id.get_create_plist().get_nfilters() == 0
            and ds.dtype.isnative
            and hasattr(ds.id, "read_direct_chunk")
        )
    except Exception:
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
