"""Converters on small files written in each real layout, and the CLI's handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from datasets.convert import ConvertOptions, bbox_grid, convert, discover_pairs, main
from datasets.store import SliceStore
from datasets.writer import ConvertError

REPO = Path(__file__).resolve().parents[1]


# ============================================================================ layout writers

def write_lgg(root: Path, cases=("TCGA_AA_0001_20000101", "TCGA_BB_0002_20000202", "TCGA_CC_0003_20000303"),
              slices=12, size=32) -> Path:
    """kaggle_3m layout: <case>/<case>_<n>.tif (HxWx3 uint8) + <case>_<n>_mask.tif {0,255};
    slices 1..slices, positive where n is odd and n > 2 (so numeric order matters)."""
    rng = np.random.default_rng(0)
    top = root / "kaggle_3m"
    for ci, case in enumerate(cases):
        d = top / case
        d.mkdir(parents=True)
        for n in range(1, slices + 1):
            img = np.zeros((size, size, 3), np.uint8)
            img[4:-4, 4:-4] = rng.integers(20, 120, size=(size - 8, size - 8, 3))
            img[0, 0] = (n, ci, 0)  # marker: the slice number sits in channel 0 of pixel (0, 0)
            mask = np.zeros((size, size), np.uint8)
            if n % 2 == 1 and n > 2:
                mask[10:16, 10:18] = 255
                img[10:16, 10:18] += 100
            tifffile.imwrite(d / f"{case}_{n}.tif", img)
            tifffile.imwrite(d / f"{case}_{n}_mask.tif", mask)
    (top / "data.csv").write_text("Patient,x\n")
    return top


def _save_nifti(path: Path, arr, affine=None, zooms=None):
    img = nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_msd(root: Path, n_cases=4, shape=(24, 20, 6)) -> Path:
    """MSD Task02_Heart layout with macOS '._' junk files that must be skipped."""
    rng = np.random.default_rng(1)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "name": "LeftAtrium", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "numTraining": n_cases, "training": []}))
    aff = np.diag([1.25, 1.25, 1.37, 1.0])
    for i in range(1, n_cases + 1):
        img = rng.normal(300, 40, size=shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[8:14, 6:12, 1:5] = 1  # slices 0 and 5 negative
        img[lab > 0] += 200
        _save_nifti(root / "imagesTr" / f"la_{i:03d}.nii.gz", img, aff)
        _save_nifti(root / "labelsTr" / f"la_{i:03d}.nii.gz", lab, aff)
        (root / "imagesTr" / f"._la_{i:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        (root / "labelsTr" / f"._la_{i:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    return root


def hecktor_affine(spacing, origin_ras):
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = origin_ras
    return a


# The hot cube, in RAS mm: x in [-20, -10), y in [10, 20), z in [0, 10).
CUBE_RAS = ((-20.0, -10.0), (10.0, 20.0), (0.0, 10.0))


def _cube(shape, affine):
    idx = np.indices(shape).reshape(3, -1).T
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.ones(len(world), bool)
    for ax, (lo, hi) in enumerate(CUBE_RAS):
        inside &= (world[:, ax] >= lo) & (world[:, ax] < hi)
    return inside.reshape(shape)


def write_hecktor(root: Path, ids=("CHGJ007", "CHUM010", "CHUS004"), nested=True) -> Path:
    """HECKTOR 2020 layout: <ID>/<ID>_pt.nii.gz on a 2 mm PET grid and <ID>_ct_gtvt.nii.gz on a
    1 mm 'CT' grid; a hot cube in PET where the label is. Plus bbox.csv in LPS mm."""
    rng = np.random.default_rng(2)
    pet_aff = hecktor_affine(2.0, (-40.0, -10.0, -20.0))
    ct_aff = hecktor_affine(1.0, (-40.0, -10.0, -20.0))
    for pid in ids:
        d = root / pid if nested else root
        pet = rng.uniform(0.5, 1.5, size=(30, 30, 30)).astype(np.float32)
        pet[_cube(pet.shape, pet_aff)] += 8.0
        lab = _cube((60, 60, 60), ct_aff).astype(np.uint8)
        _save_nifti(d / f"{pid}_pt.nii.gz", pet, pet_aff)
        _save_nifti(d / f"{pid}_ct_gtvt.nii.gz", lab, ct_aff)
        _save_nifti(d / f"{pid}_ct.nii.gz", np.zeros((60, 60, 60), np.int16), ct_aff)
    # Box in LPS: RAS x in [-30, 0) -> LPS x in (0, 30]; RAS y in [0, 30) -> LPS y in (-30, 0]
    rows = ["PatientID,x1,x2,y1,y2,z1,z2"] + [f"{pid},0,30,-30,0,-5,15" for pid in ids]
    (root / "bbox.csv").write_text("\n".join(rows) + "\n")
    return root


def write_pairs(root: Path, n=3, shape=(16, 16, 4)) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        img = rng.random(shape).astype(np.float32) + 1
        lab = np.zeros(shape, np.uint8)
        lab[4:9, 4:9, :] = 1
        _save_nifti(root / "img" / f"pat{i}_0000.nii.gz", img)
        _save_nifti(root / "lbl" / f"pat{i}.nii.gz", lab)
    return root


# ============================================================================ converters

def test_lgg_layout(tmp_path):
    src = write_lgg(tmp_path / "src")
    out = tmp_path / "lgg.h5"
    summary = convert("lgg", tmp_path / "src", out, progress=False)  # folder above kaggle_3m is accepted
    s = SliceStore(out)
    assert s.image_shape == (3, 32, 32) and summary["cases"] == 3
    assert s.n == 3 * 5  # n in {3,5,7,9,11} positive
    images, masks = s.read(np.arange(s.n))
    assert set(np.unique(masks)) == {0, 1}
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    first = [s.meta(i) for i in range(5)]
    assert [m["slice"] for m in first] == [3, 5, 7, 9, 11]  # numeric, not text order
    assert first[0]["case"] == "TCGA_AA_0001_20000101" and first[0]["spacing"] is None
    assert s.attrs["converter"] == "datasets.convert lgg"
    assert json.loads(s.attrs["arguments"])["kind"] == "lgg"
    assert json.loads(s.attrs["channel_names"]) == ["pre-contrast", "FLAIR", "post-contrast"]
    assert src.exists()


def test_lgg_channels_and_keep_negatives(tmp_path):
    write_lgg(tmp_path / "src", cases=("TCGA_A", "TCGA_B"), slices=6)
    out = tmp_path / "flair.h5"
    convert("lgg", tmp_path / "src" / "kaggle_3m", out, channels=[1], keep_negatives=True, progress=False)
    s = SliceStore(out)
    assert s.image_shape == (1, 32, 32) and s.n == 12
    assert [s.meta(i)["slice"] for i in range(6)] == [1, 2, 3, 4, 5, 6]
    assert json.loads(s.attrs["channel_names"]) == ["FLAIR"]


def test_msd_heart_layout(tmp_path):
    src = write_msd(tmp_path / "Task02_Heart")
    out = tmp_path / "heart.h5"
    convert("msd-heart", src, out, progress=False)
    s = SliceStore(out)
    assert s.image_shape == (1, 24, 20)  # slices along the last axis: [X, Y]
    assert s.n == 4 * 4 and s.cases("all") == ["la_001", "la_002", "la_003", "la_004"]
    m = s.meta(0)
    assert m["slice"] == 1 and m["spacing"] == pytest.approx((1.25, 1.25))
    _, masks = s.read(np.arange(s.n))
    assert masks[:, 8:14, 6:12].all() and masks.sum() == s.n * 36
    assert json.loads(s.attrs["dataset_json"])["name"] == "LeftAtrium"


def test_hecktor_without_bbox_resamples_label_to_pet(tmp_path):
    src = write_hecktor(tmp_path / "hecktor_nii")
    out = tmp_path / "h.h5"
    convert("hecktor", src, out, progress=False)
    s = SliceStore(out)
    assert s.image_shape == (1, 30, 30)
    assert s.cases("all") == ["CHGJ007", "CHUM010", "CHUS004"]
    assert s.meta(0)["spacing"] == (2.0, 2.0)
    images, masks = s.read(s.indices("all"))
    assert s.n == 3 * 5  # cube 10 mm deep on a 2 mm grid
    # the label (1 mm grid) lands exactly on the PET grid's cube voxels
    expected = np.moveaxis(_cube((30, 30, 30), hecktor_affine(2.0, (-40.0, -10.0, -20.0))), 2, 0)
    expected = expected[expected.reshape(30, -1).any(1)]
    assert np.array_equal(masks[:5].astype(bool), expected)
    # the default clip (99.5th percentile) saturates the small hot cube; background stays lower
    assert np.all(images[:, 0][masks > 0] == 1.0) and images[:, 0][masks == 0].mean() < 0.6
    # min-max scaling keeps the hot spot apart from the background
    out2 = tmp_path / "h2.h5"
    convert("hecktor", src, out2, percentiles=(0, 100), progress=False)
    s2 = SliceStore(out2)
    images2, masks2 = s2.read(s2.indices("all"))
    assert s2.attrs["normalisation"].startswith("percentile_0_100")
    assert np.array_equal((images2[:, 0] > 0.5), masks2 > 0)


def test_hecktor_bbox_crop_and_orientation(tmp_path):
    src = write_hecktor(tmp_path / "hecktor_nii", nested=False)
    out = tmp_path / "hb.h5"
    convert("hecktor", src, out, bbox=src / "bbox.csv", resample=1.0, keep_negatives=True, progress=False)
    s = SliceStore(out)
    assert s.image_shape == (1, 30, 30)  # round((x2 - x1) / 1 mm)
    assert s.n == 3 * 20  # z: 20 mm at 1 mm
    assert s.meta(0)["spacing"] == (1.0, 1.0) and s.attrs["resampled_spacing_mm"] == 1.0
    images, masks = s.read(np.arange(20))
    # output voxel (i, j, k) is LPS (0 + i, -30 + j, -5 + k) = RAS (-i, 30 - j, k - 5)
    # cube RAS x in [-20,-10) -> i in (10, 20]; y in [10, 20) -> j in (10, 20]; z in [0, 10) -> k in [5, 15)
    expected = np.zeros((20, 30, 30), bool)
    expected[5:15, 11:21, 11:21] = True
    assert (masks.astype(bool) ^ expected).sum() <= 0.05 * expected.sum()
    hot = images[:, 0] > 0.5
    assert 2 * (hot & expected).sum() / (hot.sum() + expected.sum()) > 0.85
    a, shape = bbox_grid((0, 30, -30, 0, -5, 15), 1.0)
    assert shape == (30, 30, 20) and np.allclose(a[:3, 3], [0, 30, -5])


def test_nifti_pairs_by_key_and_order(tmp_path):
    src = write_pairs(tmp_path / "mine")
    cases = discover_pairs(src, "img/*_0000.nii.gz", "lbl/*.nii.gz")
    assert [c.case_id for c in cases] == ["pat0", "pat1", "pat2"]
    assert all(c.mask.name == f"{c.case_id}.nii.gz" for c in cases)
    out = tmp_path / "p.h5"
    convert("nifti-pairs", src, out, images="img/*_0000.nii.gz", labels="lbl/*.nii.gz", split="0/0/100",
            progress=False)
    s = SliceStore(out)
    assert s.n == 12 and s.cases("test") == ["pat0", "pat1", "pat2"] and s.split_sizes()["train"] == 0
    by_order = discover_pairs(src, "img/*.nii.gz", "lbl/*.nii.gz", pair_by="order")
    assert [(c.image.name, c.mask.name) for c in by_order][0] == ("pat0_0000.nii.gz", "pat0.nii.gz")
    with pytest.raises(ConvertError, match="image has no label"):
        discover_pairs(src, "img/*.nii.gz", "lbl/*.nii.gz")  # keys 'pat0_0000' vs 'pat0'


def test_nifti_pairs_label_option_and_size(tmp_path):
    src = tmp_path / "multi"
    img = np.random.default_rng(0).random((20, 20, 3)).astype(np.float32) + 1
    lab = np.zeros((20, 20, 3), np.uint8)
    lab[2:8, 2:8] = 1
    lab[10:16, 10:16] = 2
    _save_nifti(src / "a_img.nii.gz", img, zooms=(0.5, 0.5, 2.0))
    _save_nifti(src / "a_seg.nii.gz", lab, zooms=(0.5, 0.5, 2.0))
    with pytest.raises(ConvertError, match="mask values"):
        convert("nifti-pairs", src, tmp_path / "x.h5", images="*_img.nii.gz", labels="*_seg.nii.gz", progress=False)
    out = tmp_path / "y.h5"
    convert("nifti-pairs", src, out, images="*_img.nii.gz", labels="*_seg.nii.gz", label=2, size=(10, 10),
            progress=False)
    s = SliceStore(out)
    assert s.image_shape == (1, 10, 10) and s.cases("all") == ["a"]
    assert s.meta(0)["spacing"] == pytest.approx((1.0, 1.0))
    masks = s.read_masks(np.arange(s.n))
    assert masks[:, 5:8, 5:8].all() and masks[:, :4, :4].sum() == 0


def test_seed_changes_split_but_is_reproducible(tmp_path):
    write_lgg(tmp_path / "src", cases=tuple(f"TCGA_{i:02d}" for i in range(10)), slices=4, size=16)
    a, b, c = (tmp_path / f"{n}.h5" for n in "abc")
    convert("lgg", tmp_path / "src", a, seed=1, progress=False)
    convert("lgg", tmp_path / "src", b, seed=1, progress=False)
    convert("lgg", tmp_path / "src", c, seed=2, progress=False)
    sa, sb, sc = SliceStore(a), SliceStore(b), SliceStore(c)
    assert all(sa.cases(x) == sb.cases(x) for x in ("train", "val", "test", "fold0/test"))
    assert any(sa.cases(x) != sc.cases(x) for x in ("train", "val", "test"))
    assert np.array_equal(sa.read(np.arange(sa.n))[0], sb.read(np.arange(sb.n))[0])



def test_arguments_attribute_is_the_options(tmp_path):
    """The store's ``arguments`` are ``asdict(ConvertOptions)``, the same from the API and the CLI."""
    write_lgg(tmp_path / "src", cases=("TCGA_A", "TCGA_B"), slices=4, size=16)
    api, cli = tmp_path / "api.h5", tmp_path / "cli.h5"
    convert("lgg", tmp_path / "src", api, split=(50, 0, 50), channels=[1], size=(8, 8), percentiles=(1, 99),
            progress=False)
    assert main(["lgg", str(tmp_path / "src"), "--out", str(cli), "--split", "50/0/50", "--channels", "1",
                 "--size", "8", "--percentiles", "1,99", "--quiet"]) == 0
    opts = ConvertOptions("lgg", str(tmp_path / "src"), str(cli), split="50/0/50", channels="1", size="8x8",
                          percentiles="1,99")
    recorded = [json.loads(SliceStore(p).attrs["arguments"]) for p in (api, cli)]
    assert recorded[1] == json.loads(json.dumps(asdict(opts)))
    assert {**recorded[0], "out": str(cli)} == recorded[1]
    assert recorded[1]["split"] == "50/0/50" and recorded[1]["size"] == [8, 8] and recorded[1]["channels"] == [1]
    with pytest.raises(ConvertError, match="unknown kind"):
        ConvertOptions("mri", "src", "out")
    with pytest.raises(ValueError, match="--split"):
        ConvertOptions("lgg", "src", "out", split="70/10")


# ============================================================================ CLI and bad input

def run_cli(*args, module="datasets.convert"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def assert_bad(result, out: Path, *words):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    for w in words:
        assert str(w) in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_ok_and_existing_output(tmp_path):
    write_lgg(tmp_path / "src", slices=4, size=16)
    out = tmp_path / "out" / "lgg.h5"
    r = run_cli("lgg", tmp_path / "src", "--out", out, "--split", "70/10/20", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.exists()
    before = out.read_bytes()
    r = run_cli("lgg", tmp_path / "src", "--out", out)
    assert r.returncode == 2 and str(out) in r.stderr and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and out.read_bytes() == before
    r = run_cli("lgg", tmp_path / "src", "--out", out, "--overwrite", "--channels", "1", "--quiet")
    assert r.returncode == 0 and r.stdout == "" and SliceStore(out).image_shape == (1, 16, 16)


def test_cli_bad_lgg_inputs(tmp_path):
    out = tmp_path / "o" / "x.h5"
    out.parent.mkdir()
    # source folder missing
    assert_bad(run_cli("lgg", tmp_path / "nowhere", "--out", out), out, tmp_path / "nowhere", "does not exist")
    # source folder empty
    (tmp_path / "empty").mkdir()
    assert_bad(run_cli("lgg", tmp_path / "empty", "--out", out), out, tmp_path / "empty", "no case folders")

    top = write_lgg(tmp_path / "a", slices=4, size=16)
    case = top / "TCGA_BB_0002_20000202"
    # image without its mask
    (case / "TCGA_BB_0002_20000202_3_mask.tif").unlink()
    assert_bad(run_cli("lgg", top, "--out", out), out, case / "TCGA_BB_0002_20000202_3.tif", "no mask")
    # mask without its image
    tifffile.imwrite(case / "TCGA_BB_0002_20000202_3_mask.tif", np.zeros((16, 16), np.uint8))
    (case / "TCGA_BB_0002_20000202_4.tif").unlink()
    assert_bad(run_cli("lgg", top, "--out", out), out, case / "TCGA_BB_0002_20000202_4_mask.tif", "no image")
    tifffile.imwrite(case / "TCGA_BB_0002_20000202_4.tif", np.ones((16, 16, 3), np.uint8))
    # mask shape different from the image's
    bad = case / "TCGA_BB_0002_20000202_2_mask.tif"
    tifffile.imwrite(bad, np.zeros((16, 12), np.uint8))
    assert_bad(run_cli("lgg", top, "--out", out), out, bad, "mask shape")
    # mask values other than {0,1} / {0,255}
    tifffile.imwrite(bad, np.full((16, 16), 7, np.uint8))
    assert_bad(run_cli("lgg", top, "--out", out), out, bad, "mask values")
    tifffile.imwrite(bad, np.zeros((16, 16), np.uint8))
    # unreadable / truncated file
    trunc = case / "TCGA_BB_0002_20000202_1.tif"
    trunc.write_bytes(trunc.read_bytes()[:60])
    assert_bad(run_cli("lgg", top, "--out", out), out, trunc, "cannot read TIFF")
    # --channels out of range
    tifffile.imwrite(trunc, np.ones((16, 16, 3), np.uint8))
    assert_bad(run_cli("lgg", top, "--out", out, "--channels", "5"), out, "--channels 5")


def test_cli_nothing_left_after_negatives(tmp_path):
    top = tmp_path / "src" / "TCGA_X"
    top.mkdir(parents=True)
    for n in (1, 2):
        tifffile.imwrite(top / f"TCGA_X_{n}.tif", np.ones((8, 8, 3), np.uint8))
        tifffile.imwrite(top / f"TCGA_X_{n}_mask.tif", np.zeros((8, 8), np.uint8))
    out = tmp_path / "x.h5"
    assert_bad(run_cli("lgg", tmp_path / "src", "--out", out), out, tmp_path / "src", "nothing left")
    r = run_cli("lgg", tmp_path / "src", "--out", out, "--keep-negatives", "--split", "0/0/100", "--quiet")
    assert r.returncode == 0, r.stderr
    assert SliceStore(out).n == 2


def test_cli_bad_nifti_inputs(tmp_path):
    out = tmp_path / "o" / "x.h5"
    out.parent.mkdir()
    src = write_msd(tmp_path / "heart", n_cases=2, shape=(10, 10, 4))
    img2, lab2 = src / "imagesTr" / "la_002.nii.gz", src / "labelsTr" / "la_002.nii.gz"
    # NaN voxels
    arr = np.asanyarray(nib.load(str(img2)).dataobj).astype(np.float32)
    good = arr.copy()
    arr[1, 1, 1] = np.nan
    _save_nifti(img2, arr)
    assert_bad(run_cli("msd-heart", src, "--out", out), out, img2, "NaN")
    arr[1, 1, 1] = np.inf
    _save_nifti(img2, arr)
    assert_bad(run_cli("msd-heart", src, "--out", out), out, img2, "NaN or infinite")
    _save_nifti(img2, good)
    # label shape differs
    lab = np.asanyarray(nib.load(str(lab2)).dataobj)
    _save_nifti(lab2, np.zeros((10, 8, 4), np.uint8))
    assert_bad(run_cli("msd-heart", src, "--out", out), out, lab2, "mask shape")
    # label values
    _save_nifti(lab2, lab * 3)
    assert_bad(run_cli("msd-heart", src, "--out", out), out, lab2, "mask values")
    # truncated gzip
    _save_nifti(lab2, lab)
    data = img2.read_bytes()
    img2.write_bytes(data[: len(data) // 2])
    assert_bad(run_cli("msd-heart", src, "--out", out), out, img2, "cannot read NIfTI")
    # image without label, label without image
    img2.unlink()
    assert_bad(run_cli("msd-heart", src, "--out", out), out, lab2, "label has no image")
    lab2.unlink()
    _save_nifti(src / "imagesTr" / "la_009.nii.gz", good)
    assert_bad(run_cli("msd-heart", src, "--out", out), out, src / "imagesTr" / "la_009.nii.gz", "image has no label")
    # missing imagesTr
    assert_bad(run_cli("msd-heart", tmp_path, "--out", out), out, tmp_path / "imagesTr", "missing")


def test_cli_bad_hecktor_and_pairs(tmp_path):
    out = tmp_path / "o" / "x.h5"
    out.parent.mkdir()
    src = write_hecktor(tmp_path / "h", ids=("P1", "P2"))
    (src / "P2" / "P2_ct_gtvt.nii.gz").unlink()
    assert_bad(run_cli("hecktor", src, "--out", out), out, src / "P2" / "P2_pt.nii.gz", "no mask")
    src = write_hecktor(tmp_path / "h2", ids=("P1", "P2"))
    (src / "bbox.csv").write_text("PatientID,x1,x2,y1,y2,z1,z2\nP1,0,30,-30,0,-5,15\n")
    assert_bad(run_cli("hecktor", src, "--out", out, "--bbox", src / "bbox.csv"), out, src / "bbox.csv", "P2")
    (src / "bbox.csv").write_text("PatientID,x1,x2\nP1,0,30\n")
    assert_bad(run_cli("hecktor", src, "--out", out, "--bbox", src / "bbox.csv"), out, src / "bbox.csv", "column")
    (tmp_path / "e").mkdir()
    assert_bad(run_cli("hecktor", tmp_path / "e", "--out", out), out, tmp_path / "e", "no <ID>_pt")
    p = write_pairs(tmp_path / "p", n=2)
    (p / "lbl" / "pat1.nii.gz").unlink()
    assert_bad(run_cli("nifti-pairs", p, "--out", out, "--images", "img/*_0000.nii.gz", "--labels", "lbl/*.nii.gz"),
               out, p / "img" / "pat1_0000.nii.gz", "no label")
    assert_bad(run_cli("nifti-pairs", p, "--out", out, "--images", "x/*.nii.gz", "--labels", "lbl/*.nii.gz"),
               out, p, "no files match")


def test_cli_usage_errors_exit_2(tmp_path):
    r = run_cli("lgg", tmp_path, "--out", tmp_path / "x.h5", "--split", "70/30")
    assert r.returncode == 2 and "--split" in r.stderr
    r = run_cli("nosuchkind", tmp_path, "--out", tmp_path / "x.h5")
    assert r.returncode == 2
