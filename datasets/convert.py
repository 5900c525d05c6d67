"""Convert public datasets (and users' own NIfTI pairs) into a slice store.

::

    python -m datasets.convert lgg         SRC --out FILE.h5 [common options] [--channels 1]
    python -m datasets.convert msd-heart   SRC --out FILE.h5 [common options]
    python -m datasets.convert hecktor     SRC --out FILE.h5 [--bbox bbox.csv] [--resample 1.0]
    python -m datasets.convert nifti-pairs SRC --out FILE.h5 --images GLOB --labels GLOB [--pair-by key|order]

Common options: ``--split 70/10/20 --seed 0 --keep-negatives --overwrite --channels LIST
--size S|HxW --label N --percentiles 0.5,99.5 --compression none|lzf|gzip --quiet``. The split's
three percentages must sum to 100; ``--size`` sides are at most 4096; ``0 <= --seed < 2**63``.
``msd-heart`` and ``nifti-pairs`` refuse a label whose affine differs from its image's (by more
than 0.001 mm) unless ``--allow-affine-mismatch``. A split asked for that too few cases leave
empty (e.g. val and test of a 1-case conversion) gives a warning on stderr.

Readings of each layout
-----------------------
``lgg``
    Kaggle ``kaggle_3m`` (Buda et al. 2019): SRC holds one folder per patient (``TCGA_*``; SRC may
    also be the folder above ``kaggle_3m``). ``<stem>_<n>.tif`` is a 256x256x3 uint8 slice
    (pre-contrast, FLAIR, post-contrast), ``<stem>_<n>_mask.tif`` its {0,255} mask. Slices are
    sorted numerically by ``n``, which becomes ``slice_index``. Spacing is unknown (NaN).
    ``--channels 1`` keeps FLAIR only (0-based channel numbers).
``msd-heart``
    Medical Segmentation Decathlon layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``. Like
    nnU-Net's converter, names beginning with ``.`` or ``_`` are skipped (the Task02_Heart archive
    holds macOS ``._la_*.nii.gz`` files). An image and its label share the file name. Volumes are
    sliced along the last voxel axis; slice ``k`` is ``volume[:, :, k]`` (rows = first voxel axis),
    its spacing ``zooms[0:2]`` from the header. 4-D images give one channel per volume.
``hecktor``
    HECKTOR 2020/2021: ``<ID>_pt.nii.gz`` (PET, used alone as in the paper) and its label
    ``<ID>_ct_gtvt.nii.gz`` (2020) or ``<ID>_gtvt.nii.gz`` (2021), found anywhere below SRC
    (per-patient folders or flat). The label lives on the CT grid, so it is resampled (nearest
    neighbour) onto the PET grid. With ``--bbox bbox.csv`` (columns ``PatientID,x1,x2,y1,y2,z1,z2``)
    both are instead resampled onto the box, exactly like the challenge's own
    ``src/resampling/resample.py``: the box is in SimpleITK physical coordinates (LPS, mm), the
    output grid has origin ``(x1, y1, z1)``, identity direction, ``--resample`` mm spacing
    (default 1.0) and ``round((x2 - x1) / spacing)`` voxels per axis (144^3 for the 2020 boxes).
    NIfTI world coordinates are RAS, so the LPS point ``(x, y, z)`` is RAS ``(-x, -y, z)``; voxel
    coordinates follow from the inverse affine. PET uses linear interpolation (the challenge used
    B-spline; linear cannot overshoot below zero), labels nearest neighbour; outside the field of
    view is 0. Slices are along the last axis of the result.
``nifti-pairs``
    Any image/label NIfTI pairs: ``--images`` and ``--labels`` are globs relative to SRC (``**``
    allowed). ``--pair-by key`` (default) pairs the files whose wildcards matched the same text,
    e.g. ``--images 'img/*_0000.nii.gz' --labels 'lbl/*.nii.gz'`` pairs ``img/p7_0000.nii.gz`` with
    ``lbl/p7.nii.gz``; the case id is that text (``p7``). ``--pair-by order`` pairs the sorted
    lists one to one; the case id is the image's file name without extension. Names beginning
    with ``.`` are skipped. Slicing as for ``msd-heart``.

All kinds: masks must hold {0,1} or {0,255} (``--label N`` instead takes ``mask == N`` from a
multi-label file); NaN/inf voxels are an error; every case is normalised over all its slices
(see ``datasets.writer``), then empty-mask slices are dropped unless ``--keep-negatives``;
``--size`` resizes every slice (linear for images, linear then >= 0.5 for masks) so that cases of
different in-plane sizes can share a store. Any bad input ends the run with a one-line message
naming the file, exit status 2, and no output file; so do an output path that is a folder, FIFO,
device or socket (``--overwrite`` replaces regular files only), Ctrl-C and SIGTERM (exit 130, 143).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from a3c.fileio import interrupt_status, sigterm_as_interrupt

from .store import SliceStore
from .writer import (
    ConvertError,
    StoreLayout,
    StoreWriter,
    binarise_mask,
    check_finite,
    check_output,
    parse_split,
    resize_slices,
)

KINDS = ("lgg", "msd-heart", "hecktor", "nifti-pairs")
LGG_CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")
MAX_SIZE = 4096      # --size bound: a 4096 x 4096 float32 slice is 64 MiB per channel
SEED_LIMIT = 2 ** 63  # seeds are stored as int64
AFFINE_ATOL = 1e-3   # mm; image and label affines closer than this match (float32 headers)


@dataclass
class CaseSource:
    """Where one case's files are: ``image``/``mask`` for volumes, ``slices`` for LGG."""

    case_id: str
    image: Path | None = None
    mask: Path | None = None
    slices: list[tuple[int, Path, Path]] = field(default_factory=list)


@dataclass
class CaseData:
    images: np.ndarray  # [S, C, H, W], raw intensities
    masks: np.ndarray  # [S, H, W] uint8 0/1
    slice_index: np.ndarray  # [S]
    spacing: tuple[float, float] | None
    source: Path


# ============================================================================ helpers


def _hidden(name: str, prefixes: str = ".") -> bool:
    return name.startswith(tuple(prefixes))


def _require_dir(src: Path) -> None:
    if not src.exists():
        raise ConvertError(f"{src}: source folder does not exist")
    if not src.is_dir():
        raise ConvertError(f"{src}: source is not a folder")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _nifti_stem(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name)


def read_nifti(path: Path, *, as_float: bool) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(array, affine, zooms) of a NIfTI file; ConvertError naming the file if unreadable."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = img.get_fdata(dtype=np.float32) if as_float else np.asanyarray(img.dataobj)
        arr = np.asarray(arr)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{path}: cannot read NIfTI ({_one_line(exc)})") from None
    return arr, affine, zooms


def volume_to_slices(arr: np.ndarray, path: Path) -> np.ndarray:
    """[X, Y] / [X, Y, Z] / [X, Y, Z, M] -> [Z, M, X, Y] (slices along the third voxel axis)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(arr, 2, 0)[:, None])
    if arr.ndim == 4:
        return np.ascontiguousarray(np.transpose(arr, (2, 3, 0, 1)))
    raise ConvertError(f"{path}: expected a 2-D, 3-D or 4-D image, got shape {arr.shape}")


def label_to_slices(arr: np.ndarray, path: Path) -> np.ndarray:
    """[X, Y] / [X, Y, Z] (/ [X, Y, Z, 1]) -> [Z, X, Y]."""
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ConvertError(f"{path}: expected a 3-D label volume, got shape {arr.shape}")
    return np.ascontiguousarray(np.moveaxis(arr, 2, 0))


def affine_mismatch(a: np.ndarray, b: np.ndarray) -> float | None:
    """Largest element difference of two voxel-to-world affines, None when they match."""
    diff = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
    return None if diff <= AFFINE_ATOL else diff


def load_nifti_case(case: CaseSource, label: float | None = None, allow_affine_mismatch: bool = False) -> CaseData:
    """Image + label NIfTI pair -> CaseData (checks shapes, affines, finiteness, label values)."""
    img, a_img, zooms = read_nifti(case.image, as_float=True)
    lab, a_lab, _ = read_nifti(case.mask, as_float=False)
    check_finite(img, case.image)
    spatial = img.shape[:3] if img.ndim >= 3 else img.shape + (1,)
    lab_shape = lab.shape[:3] if lab.ndim >= 3 else lab.shape + (1,)
    if lab.ndim == 4 and lab.shape[3] != 1:
        raise ConvertError(f"{case.mask}: expected a 3-D label volume, got shape {lab.shape}")
    if lab_shape != spatial:
        raise ConvertError(f"{case.mask}: mask shape {lab_shape} "
                           f"differs from image shape {spatial} of {case.image.name}")
    masks = binarise_mask(label_to_slices(lab, case.mask), case.mask, label)
    diff = affine_mismatch(a_img, a_lab)
    if diff is not None and not allow_affine_mismatch:
        raise ConvertError(f"{case.mask}: affine differs from that of its image {case.image.name} (by up to "
                           f"{diff:.3g} mm); --allow-affine-mismatch accepts it voxel for voxel")
    images = volume_to_slices(img, case.image)
    spacing = (zooms[0], zooms[1]) if len(zooms) >= 2 else None
    return CaseData(images, masks, np.arange(images.shape[0]), spacing, case.image)


# ============================================================================ lgg

_LGG_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


def discover_lgg(src: Path) -> list[CaseSource]:
    _require_dir(src)
    root = src

    def case_dirs(folder: Path) -> list[Path]:
        return sorted(
            d for d in folder.iterdir()
            if d.is_dir() and not _hidden(d.name, "._")
               and any(p.suffix.lower() in (".tif", ".tiff") for p in d.iterdir())
        )

    dirs = case_dirs(root)
    if not dirs and (src / "kaggle_3m").is_dir():
        root = src / "kaggle_3m"
        dirs = case_dirs(root)
    if not dirs:
        raise ConvertError(f"{src}: no case folders with .tif slices (expected kaggle_3m/TCGA_*/TCGA_*_<n>.tif)")
    cases = []
    for d in dirs:
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for p in sorted(d.iterdir()):
            if _hidden(p.name) or not p.is_file():
                continue
            m = _LGG_RE.match(p.name)
            if not m:
                continue
            (masks if m.group("mask") else images)[int(m.group("n"))] = p
        for n, p in sorted(images.items()):
            if n not in masks:
                raise ConvertError(f"{p}: image has no mask (expected {p.stem}_mask{p.suffix})")
        for n, p in sorted(masks.items()):
            if n not in images:
                raise ConvertError(f"{p}: mask has no image (expected {p.name.replace('_mask', '')})")
        if not images:
            continue
        cases.append(CaseSource(d.name, slices=[(n, images[n], masks[n]) for n in sorted(images)]))
    if not cases:
        raise ConvertError(f"{src}: no <name>_<n>.tif / <name>_<n>_mask.tif slices found")
    return cases


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's pixels; ConvertError naming the file when it is truncated, corrupt or holds none."""
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its warnings would be a second line; the error says it all
    try:
        arr = np.asarray(tifffile.imread(str(path)))
    except Exception as exc:
        raise ConvertError(f"{path}: cannot read TIFF, truncated or corrupt ({_one_line(exc)})") from None
    finally:
        log.setLevel(level)
    if arr.size == 0:
        raise ConvertError(f"{path}: cannot read TIFF, truncated or corrupt (no image data in it)")
    return arr



def load_lgg(case: CaseSource) -> CaseData:
    images, masks = [], []
    for n, ip, mp in case.slices:
        img = read_tiff(ip)
        if img.ndim == 2:
            img = img[None]
        elif img.ndim == 3 and img.shape[-1] <= 4:
            img = np.moveaxis(img, -1, 0)
        else:
            raise ConvertError(f"{ip}: expected an HxW or HxWxC image, got shape {img.shape}")
        check_finite(img, ip)
        mask = read_tiff(mp)
        if mask.ndim == 3 and mask.shape[-1] <= 4 and all(np.array_equal(mask[..., 0], mask[..., c])
                                                          for c in range(mask.shape[-1])):
            mask = mask[..., 0]
        if mask.shape != img.shape[1:]:
            raise ConvertError(f"{mp}: mask shape {mask.shape} differs from image shape {img.shape[1:]} of {ip.name}")
        if images and img.shape != images[0].shape:
            raise ConvertError(f"{ip}: image shape {img.shape} differs from the case's first slice {images[0].shape}")
        images.append(img)
        masks.append(binarise_mask(mask, mp))
    return CaseData(np.stack(images), np.stack(masks), np.asarray([s[0] for s in case.slices]), None,
                    case.slices[0][1].parent)


# ============================================================================ msd-heart


def discover_msd(src: Path) -> list[CaseSource]:
    _require_dir(src)
    img_dir, lab_dir = src / "imagesTr", src / "labelsTr"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise ConvertError(f"{d}: missing (expected the MSD layout dataset.json, imagesTr/, labelsTr/)")

    def listing(d: Path) -> dict[str, Path]:
        return {p.name: p for p in sorted(d.iterdir())
                if p.is_file() and not _hidden(p.name, "._") and re.search(r"\.nii(\.gz)?$", p.name)}

    images, labels = listing(img_dir), listing(lab_dir)
    if not images:
        raise ConvertError(f"{img_dir}: no NIfTI images")
    for name, p in images.items():
        if name not in labels:
            raise ConvertError(f"{p}: image has no label (expected {lab_dir / name})")
    for name, p in labels.items():
        if name not in images:
            raise ConvertError(f"{p}: label has no image (expected {img_dir / name})")
    return [CaseSource(_nifti_stem(n), image=images[n], mask=labels[n]) for n in sorted(images)]


def read_dataset_json(src: Path) -> dict | None:
    p = src / "dataset.json"
    if not p.exists():
        return None
    try:
        info = json.loads(p.read_text())
    except Exception as exc:
        raise ConvertError(f"{p}: not valid JSON ({_one_line(exc)})") from None
    return {k: info[k] for k in ("name", "description", "reference", "licence", "modality", "labels",
                                  "numTraining", "tensorImageSize") if k in info}


# ============================================================================ nifti-pairs


def _glob_regex(pattern: str) -> re.Pattern:
    """Regex for a glob with one capture group per wildcard (``*``, ``?``, ``[..]``, ``**/``)."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:(.*)/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += "(.*)"
            i += 2
        elif ch == "*":
            out += "([^/]*)"
            i += 1
        elif ch == "?":
            out += "([^/])"
            i += 1
        elif ch == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out += re.escape(ch)
                i += 1
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out += "([" + body.replace("\\", "\\\\") + "])"
                i = j + 1
        else:
            out += re.escape(ch)
            i += 1
    return re.compile(out + r"\Z")


def _match_glob(src: Path, pattern: str, what: str) -> dict[tuple[str, ...], Path]:
    if not pattern:
        raise ConvertError(f"{src}: --{what} GLOB is required for nifti-pairs")
    rx = _glob_regex(pattern)
    found: dict[tuple[str, ...], Path] = {}
    for p in sorted(src.glob(pattern)):
        if not p.is_file() or _hidden(p.name):
            continue
        m = rx.match(p.relative_to(src).as_posix())
        key = tuple(g or "" for g in m.groups()) if m else (p.relative_to(src).as_posix(),)
        if key in found:
            raise ConvertError(f"{p}: same pairing key as {found[key]} (use --pair-by order or a narrower glob)")
        found[key] = p
    if not found:
        raise ConvertError(f"{src}: no files match --{what} {pattern!r}")
    return found


def discover_pairs(src: Path, images_glob: str, labels_glob: str, pair_by: str = "key") -> list[CaseSource]:
    _require_dir(src)
    images = _match_glob(src, images_glob, "images")
    labels = _match_glob(src, labels_glob, "labels")
    cases: list[CaseSource] = []
    if pair_by == "order":
        imgs, labs = sorted(images.values()), sorted(labels.values())
        if len(imgs) != len(labs):
            extra = imgs[len(labs)] if len(imgs) > len(labs) else labs[len(imgs)]
            raise ConvertError(f"{extra}: {len(imgs)} images but {len(labs)} labels; cannot pair by order")
        cases = [CaseSource(_nifti_stem(img.name), image=img, mask=lab) for img, lab in zip(imgs, labs)]
    else:
        for key, p in sorted(images.items()):
            if key not in labels:
                raise ConvertError(f"{p}: image has no label (no --labels match for key {'/'.join(key)!r})")
        for key, p in sorted(labels.items()):
            if key not in images:
                raise ConvertError(f"{p}: label has no image (no --images match for key {'/'.join(key)!r})")
        for key in sorted(images):
            parts = [k for k in dict.fromkeys(key) if k]
            case_id = "/".join(parts) if parts else _nifti_stem(images[key].name)
            cases.append(CaseSource(case_id, image=images[key], mask=labels[key]))
    ids = [c.case_id for c in cases]
    dup = next((c for c in cases if ids.count(c.case_id) > 1), None)
    if dup is not None:
        raise ConvertError(f"{dup.image}: case id {dup.case_id!r} is not unique")
    return cases


# ============================================================================ hecktor

_BBOX_COLUMNS = ("PatientID", "x1", "x2", "y1", "y2", "z1", "z2")


def discover_hecktor(src: Path) -> list[CaseSource]:
    _require_dir(src)
    pets: dict[str, Path] = {}
    for p in sorted(src.rglob("*_pt.nii*")):
        if not p.is_file() or _hidden(p.name) or not re.search(r"_pt\.nii(\.gz)?$", p.name):
            continue
        pid = re.sub(r"_pt\.nii(\.gz)?$", "", p.name)
        if pid in pets:
            raise ConvertError(f"{p}: patient {pid} appears twice (also {pets[pid]})")
        pets[pid] = p
    labels: dict[str, Path] = {}
    for p in sorted(src.rglob("*gtvt.nii*")):
        if not p.is_file() or _hidden(p.name):
            continue
        m = re.match(r"^(.+?)(_ct)?_gtvt\.nii(\.gz)?$", p.name)
        if m:
            labels[m.group(1)] = p
    if not pets:
        raise ConvertError(f"{src}: no <ID>_pt.nii.gz files found")
    for pid, p in pets.items():
        if pid not in labels:
            raise ConvertError(f"{p}: image has no mask (expected {pid}_ct_gtvt.nii.gz or {pid}_gtvt.nii.gz)")
    for pid, p in labels.items():
        if pid not in pets:
            raise ConvertError(f"{p}: mask has no image (expected {pid}_pt.nii.gz)")
    return [CaseSource(pid, image=pets[pid], mask=labels[pid]) for pid in sorted(pets)]


def read_bbox_csv(path: Path) -> dict[str, tuple[float, ...]]:
    """HECKTOR bbox.csv -> {PatientID: (x1, x2, y1, y2, z1, z2)} in mm (LPS)."""
    if not path.is_file():
        raise ConvertError(f"{path}: bounding-box file does not exist")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _BBOX_COLUMNS if c not in header]
            if missing:
                raise ConvertError(f"{path}: missing column(s) {', '.join(missing)} "
                                   f"(expected {','.join(_BBOX_COLUMNS)})")
            boxes = {}
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): v for k, v in row.items()}
                try:
                    box = tuple(float(row[c]) for c in _BBOX_COLUMNS[1:])
                except (TypeError, ValueError):
                    raise ConvertError(f"{path}: line {line}: bounding box values must be numbers") from None
                if not all(np.isfinite(box)) or box[1] <= box[0] or box[3] <= box[2] or box[5] <= box[4]:
                    raise ConvertError(f"{path}: line {line}: need finite x1<x2, y1<y2, z1<z2")
                boxes[row["PatientID"].strip()] = box
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{path}: cannot read CSV ({_one_line(exc)})") from None
    return boxes


def bbox_grid(box: Sequence[float], spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS affine and shape of the HECKTOR resampling grid of an LPS box (x1,x2,y1,y2,z1,z2)."""
    x1, x2, y1, y2, z1, z2 = box
    shape = tuple(max(1, int(round((b - a) / spacing))) for a, b in ((x1, x2), (y1, y2), (z1, z2)))
    affine = np.array([
        [-spacing, 0, 0, -x1],
        [0, -spacing, 0, -y1],
        [0, 0, spacing, z1],
        [0, 0, 0, 1],
    ], dtype=np.float64)
    return affine, shape  # type: ignore[return-value]


def resample_to_grid(vol: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                     dst_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample ``vol`` (voxel->world ``src_affine``) onto a grid (``dst_affine``, ``dst_shape``)."""
    from scipy.ndimage import affine_transform

    t = np.linalg.inv(src_affine) @ dst_affine
    return affine_transform(vol, t[:3, :3], offset=t[:3, 3], output_shape=tuple(int(s) for s in dst_shape),
                            order=order, mode="constant", cval=0.0, prefilter=False)


def load_hecktor(case: CaseSource, boxes: dict | None, spacing_mm: float, label: float | None = None) -> CaseData:
    pet, a_pet, zooms = read_nifti(case.image, as_float=True)
    lab, a_lab, _ = read_nifti(case.mask, as_float=False)
    if pet.ndim != 3:
        raise ConvertError(f"{case.image}: expected a 3-D PET volume, got shape {pet.shape}")
    if lab.ndim != 3:
        raise ConvertError(f"{case.mask}: expected a 3-D label volume, got shape {lab.shape}")
    check_finite(pet, case.image)
    lab = binarise_mask(lab, case.mask, label)
    if boxes is not None:
        if case.case_id not in boxes:
            raise ConvertError(f"{case.image}: patient {case.case_id} has no row in the bounding-box file")
        a_dst, shape = bbox_grid(boxes[case.case_id], spacing_mm)
        pet = resample_to_grid(pet, a_pet, a_dst, shape, order=1)
        lab = resample_to_grid(lab, a_lab, a_dst, shape, order=0)
        spacing = (spacing_mm, spacing_mm)
    else:
        if lab.shape != pet.shape or not np.allclose(a_lab, a_pet, atol=1e-3):
            lab = resample_to_grid(lab, a_lab, a_pet, pet.shape, order=0)
        spacing = (zooms[0], zooms[1])
    images = volume_to_slices(pet.astype(np.float32), case.image)
    masks = label_to_slices(lab.astype(np.uint8), case.mask)
    return CaseData(images, masks, np.arange(images.shape[0]), spacing, case.image)


# ============================================================================ driver


def parse_channels(text: str | None) -> list[int] | None:
    if text in (None, ""):
        return None
    try:
        chans = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--channels must be comma-separated channel numbers like 1 or 0,2, got {text!r}") from None
    if any(c < 0 for c in chans) or len(set(chans)) != len(chans):
        raise ValueError(f"--channels must be distinct non-negative numbers, got {text!r}")
    return chans


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text in (None, ""):
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", str(text))
    if not m:
        raise ValueError(f"--size must be S or HxW (pixels), got {text!r}")
    h = int(m.group(1))
    hw = (h, int(m.group(2)) if m.group(2) else h)
    if not all(1 <= v <= MAX_SIZE for v in hw):
        raise ValueError(f"--size must be S or HxW with sides from 1 to {MAX_SIZE} pixels, got {text!r}")
    return hw


def check_seed(seed: int) -> int:
    """The seed if 0 <= seed < 2**63 (it is stored as int64), else ValueError."""
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1, got {seed}")
    return int(seed)


def empty_splits(summary: dict, ratios: Sequence[float]) -> list[str]:
    """Splits that ``ratios`` asked for (ratio > 0) but the store left empty (too few cases)."""
    return [s for s, r in zip(("train", "val", "test"), ratios) if r > 0 and summary["splits"][s]["slices"] == 0]


def empty_split_warning(summary: dict, ratios: Sequence[float]) -> str | None:
    """One warning line ``OUT: ...`` when a split asked for is empty, else None."""
    empty = empty_splits(summary, ratios)
    if not empty:
        return None
    split = "/".join(f"{r:g}" for r in ratios)
    return (f"{summary['out']}: split(s) {', '.join(empty)} empty: {summary['cases']} case(s) cannot fill "
            f"--split {split}; training needs non-empty train and val splits")


def parse_percentiles(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"--percentiles must be LOW,HIGH like 0.5,99.5, got {text!r}") from None
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"--percentiles must satisfy 0 <= LOW < HIGH <= 100, got {text!r}")
    return lo, hi


def select_channels(data: CaseData, channels: list[int] | None) -> CaseData:
    if channels is None:
        return data
    n = data.images.shape[1]
    if max(channels) >= n:
        raise ConvertError(f"{data.source}: --channels {','.join(map(str, channels))} but the image has {n} channel(s)")
    data.images = np.ascontiguousarray(data.images[:, channels])
    return data


def resize_case(data: CaseData, size: tuple[int, int] | None) -> CaseData:
    if size is None or tuple(data.images.shape[2:]) == tuple(size):
        return data
    from skimage.transform import resize

    s, c, h, w = data.images.shape
    data.images = resize_slices(data.images, size)
    data.masks = (resize(data.masks.astype(np.float32), (s,) + tuple(size), order=1, mode="edge",
                         anti_aliasing=False, preserve_range=True) >= 0.5).astype(np.uint8)
    if data.spacing is not None:
        data.spacing = (data.spacing[0] * h / size[0], data.spacing[1] * w / size[1])
    return data


@dataclass
class ConvertOptions:
    """One conversion's settings; ``dataclasses.asdict()`` of it is the store's ``arguments``
    attribute (JSON).

    Text as the command line gives it is parsed on construction (one-line ValueError when bad):
    ``split`` "70/10/20" (kept as that text, each percentage in ``%g``), ``channels`` "0,2" ->
    [0, 2], ``size`` "256" or "160x192" -> (H, W), ``percentiles`` "0.5,99.5" -> (lo, hi),
    ``compression`` "none" -> None.
    An unknown ``kind`` is a ConvertError naming ``src``.
    """

    kind: str
    src: str
    out: str
    split: str = "70/10/20"
    seed: int = 0
    keep_negatives: bool = False
    channels: list[int] | None = None
    size: tuple[int, int] | None = None
    label: float | None = None
    images: str | None = None
    labels: str | None = None
    pair_by: str = "key"
    bbox: str | None = None
    allow_affine_mismatch: bool = False
    resample: float = 1.0
    compression: str | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConvertError(f"{self.src}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        self.src, self.out = str(Path(self.src)), str(Path(self.out))
        ratios = parse_split(self.split) if isinstance(self.split, str) else tuple(float(x) for x in self.split)
        self._ratios = ratios  # not a field: asdict() records the text
        self.split = "/".join(f"{r:g}" for r in ratios)
        if isinstance(self.channels, (str, type(None))):
            self.channels = parse_channels(self.channels)
        else:
            self.channels = [int(c) for c in self.channels]
        self.size = parse_size(self.size) if isinstance(self.size, (str, type(None))) else tuple(self.size)
        if isinstance(self.percentiles, str):
            self.percentiles = parse_percentiles(self.percentiles)
        else:
            self.percentiles = tuple(float(p) for p in self.percentiles)
        self.seed = check_seed(self.seed)
        self.bbox = str(self.bbox) if self.bbox else None
        self.compression = None if self.compression in (None, "none") else self.compression

    @property
    def ratios(self) -> tuple[float, float, float]:
        """The train/val/test percentages of ``split``, as given."""
        return self._ratios


def convert(kind: str, src: str | Path, out: str | Path, *, overwrite: bool = False, progress: bool | None = None,
            **settings) -> dict:
    """Convert ``src`` (layout ``kind``) into the store ``out``; returns a summary dict.

    ``settings`` are ``ConvertOptions``' other fields (e.g. ``split="70/10/20"``, ``channels=[1]``);
    ``overwrite`` replaces an existing regular file; ``progress`` None: a bar on a terminal only.
    Raises ConvertError (one line naming the file) on bad input; ``out`` is then left absent.
    """
    return convert_options(ConvertOptions(kind, src, out, **settings), overwrite=overwrite, progress=progress)


def _layout(opts: ConvertOptions) -> tuple[list[CaseSource], Callable[[CaseSource], CaseData], dict]:
    """The cases of ``opts.src``, the loader of one case, and the kind's extra store attributes."""
    src, extra = Path(opts.src), {}
    if opts.kind == "lgg":
        names = [LGG_CHANNELS[c] if c < 3 else str(c) for c in (opts.channels or [0, 1, 2])]
        return discover_lgg(src), load_lgg, {"channel_names": json.dumps(names)}
    if opts.kind in ("msd-heart", "nifti-pairs"):
        if opts.kind == "msd-heart":
            cases = discover_msd(src)
            info = read_dataset_json(src)
            if info is not None:
                extra["dataset_json"] = json.dumps(info)
        else:
            if opts.pair_by not in ("key", "order"):
                raise ValueError("--pair-by must be key or order")
            cases = discover_pairs(src, opts.images or "", opts.labels or "", opts.pair_by)
        return cases, lambda c: load_nifti_case(c, opts.label, opts.allow_affine_mismatch), extra
    cases = discover_hecktor(src)
    boxes = read_bbox_csv(Path(opts.bbox)) if opts.bbox else None
    if boxes is not None:
        if not (opts.resample > 0 and np.isfinite(opts.resample)):
            raise ValueError("--resample must be a positive number of mm")
        missing = [c.case_id for c in cases if c.case_id not in boxes]
        if missing:
            raise ConvertError(f"{opts.bbox}: no row for patient(s) {', '.join(missing[:5])}")
        extra["resampled_spacing_mm"] = float(opts.resample)
    extra["modality"] = "PET"
    return cases, lambda c: load_hecktor(c, boxes, opts.resample, opts.label), extra


def convert_options(opts: ConvertOptions, *, overwrite: bool = False, progress: bool | None = None) -> dict:
    """``convert`` with its settings as one ``ConvertOptions``; returns the summary dict."""
    from tqdm import tqdm

    out = Path(opts.out)
    check_output(out, overwrite)
    cases, load, extra = _layout(opts)
    attrs = {"source": str(Path(opts.src).resolve()), "converter": f"datasets.convert {opts.kind}", "kind": opts.kind,
             "arguments": json.dumps(asdict(opts)), **extra}
    layout = StoreLayout(split=opts.ratios, seed=opts.seed, keep_negatives=opts.keep_negatives,
                         percentiles=opts.percentiles, compression=opts.compression)
    with StoreWriter(out, layout=layout, attrs=attrs, overwrite=overwrite, source=opts.src) as writer:
        bar = tqdm(cases, desc=f"convert {opts.kind}", unit="case", disable=None if progress is None else not progress,
                   file=sys.stderr)
        with bar:
            for case in bar:
                data = resize_case(select_channels(load(case), opts.channels), opts.size)
                writer.add_case(case.case_id, data.images, data.masks, data.slice_index, data.spacing,
                                source=data.source)
    return summarize(out)


def summarize(path: str | Path) -> dict:
    """Slices and cases per split of a store (for the convert/synth summaries)."""
    with SliceStore(path) as store:
        sizes = store.split_sizes()
        return {
            "out": str(path),
            "slices": store.n,
            "cases": len(store.cases("all")),
            "image_shape": list(store.image_shape),
            "splits": {s: {"slices": sizes[s], "cases": len(store.cases(s)) if sizes[s] else 0}
                       for s in ("train", "val", "test")},
        }


def format_summary(summary: dict) -> str:
    parts = ", ".join(f"{s} {v['slices']} slices/{v['cases']} cases" for s, v in summary["splits"].items())
    return (f"wrote {summary['out']}: {summary['slices']} slices from {summary['cases']} cases, "
            f"image shape {tuple(summary['image_shape'])}; {parts}")


# ============================================================================ CLI


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", help="source folder")
    common.add_argument("--out", required=True, help="output store (.h5)")
    common.add_argument("--split", default="70/10/20",
                        help="train/val/test percentages over cases, summing to 100 (default 70/10/20)")
    common.add_argument("--seed", type=int, default=0, help="seed of the split, k-shot subsets and folds (default 0)")
    common.add_argument("--keep-negatives", action="store_true", help="keep slices with an empty mask")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output")
    common.add_argument("--channels", default=None, help="keep these channels (0-based, comma-separated), e.g. 1")
    common.add_argument("--size", default=None, help="resize every slice to S x S or H x W pixels (e.g. 256, 160x192)")
    common.add_argument("--label", type=float, default=None,
                        help="take mask = (label == N) from a multi-label file "
                             "(default: values must be {0,1} or {0,255})")
    common.add_argument("--percentiles", default="0.5,99.5",
                        help="per-case clip percentiles of the nonzero voxels before scaling to [0,1] "
                             "(default 0.5,99.5; 0,100 = min-max, keeps the contrast of small hot spots)")
    common.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"],
                        help="HDF5 compression (default none: fastest reads)")
    common.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    ap = argparse.ArgumentParser(prog="python -m datasets.convert",
                                 description="Convert a dataset into a PixelDRL-MG slice store (HDF5).")
    sub = ap.add_subparsers(dest="kind", required=True, metavar="KIND")
    sub.add_parser("lgg", parents=[common], help="Kaggle LGG kaggle_3m TIFF layout")
    affine = argparse.ArgumentParser(add_help=False)
    affine.add_argument("--allow-affine-mismatch", action="store_true",
                        help="accept a label whose affine differs from its image's (used voxel for voxel)")
    sub.add_parser("msd-heart", parents=[common, affine], help="MSD layout (dataset.json, imagesTr/, labelsTr/)")
    p = sub.add_parser("hecktor", parents=[common], help="HECKTOR PET + GTVt NIfTI")
    p.add_argument("--bbox", default=None, help="bbox.csv (PatientID,x1,x2,y1,y2,z1,z2 in mm) to crop and resample")
    p.add_argument("--resample", type=float, default=1.0, help="output spacing in mm with --bbox (default 1.0)")
    p = sub.add_parser("nifti-pairs", parents=[common, affine], help="image/label NIfTI pairs found by globs")
    p.add_argument("--images", required=True, help="glob of image files relative to SRC")
    p.add_argument("--labels", required=True, help="glob of label files relative to SRC")
    p.add_argument("--pair-by", default="key", choices=["key", "order"],
                   help="pair by the text the wildcards matched (default) or by sorted order")
    return ap


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """The parsed command line -> ConvertOptions (ValueError, one line, on a bad value)."""
    if getattr(args, "resample", 1.0) <= 0:
        raise ValueError("--resample must be a positive number of mm")
    return ConvertOptions(
        args.kind, args.src, args.out, split=args.split, seed=args.seed, keep_negatives=args.keep_negatives,
        channels=args.channels, size=args.size, label=args.label, images=getattr(args, "images", None),
        labels=getattr(args, "labels", None), pair_by=getattr(args, "pair_by", "key"),
        bbox=getattr(args, "bbox", None), allow_affine_mismatch=getattr(args, "allow_affine_mismatch", False),
        resample=getattr(args, "resample", 1.0), compression=args.compression, percentiles=args.percentiles)


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        opts = options_from_args(args)
    except ValueError as exc:  # checked before any input is read: one line, exit 2
        print(f"datasets.convert: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            summary = convert_options(opts, overwrite=args.overwrite, progress=False if args.quiet else None)
    except (ConvertError, OSError) as exc:
        print(f"datasets.convert: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("datasets.convert: interrupted; no output written", file=sys.stderr)
        return interrupt_status(exc)
    warning = empty_split_warning(summary, opts.ratios)
    if warning:
        print(f"datasets.convert: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
