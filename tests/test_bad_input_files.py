"""Issue 18's bad inputs and faults for the writers (converters, synth, baselines.coarse, segment,
eval_ckpt): special output files, argument bounds, SIGTERM, file modes, and quietly accepted or
misleading input. Each ends in one ``error:`` line, exit 2 (or 143 on SIGTERM), nothing left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from a3c import fileio
from a3c.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from datasets import convert as conv
from datasets import synth
from datasets.store import SliceStore, StoreError
from tests.test_datasets_convert import _save_nifti, write_lgg, write_pairs

REPO = Path(__file__).resolve().parents[1]
PAIRS = ["--images", "img/*_0000.nii.gz", "--labels", "lbl/*.nii.gz"]


def run_main(main, capsys, *args) -> tuple[int, list[str]]:
    """``main(args)`` in-process: (exit status, non-empty stderr lines)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def one_error(rc: int, err: list[str], *words) -> str:
    assert rc == 2 and len(err) == 1 and "error: " in err[0], err
    for w in words:
        assert str(w) in err[0], err[0]
    return err[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "out.h5"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def lgg(tmp_path_factory) -> Path:
    return write_lgg(tmp_path_factory.mktemp("lgg") / "src", cases=("TCGA_AA_0001_20000101",), slices=4, size=16)


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    from tests.test_segment import make_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    make_checkpoint(path)
    return path


# ================================================================ 1. special files at the output
def test_target_check_refuses_fifo_and_folder(tmp_path, fifo):
    assert fileio.special_kind(tmp_path / "absent") is None
    (tmp_path / "plain").write_text("x")
    assert fileio.special_kind(tmp_path / "plain") is None
    with pytest.raises(fileio.TargetError, match="is a FIFO, not a regular file"):
        fileio.write_bytes_atomic(fifo, b"data")
    with pytest.raises(fileio.TargetError, match="is a folder"):
        fileio.write_bytes_atomic(tmp_path, b"data")
    assert fileio.special_kind(fifo) == "a FIFO" and leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["fifo", "folder"])
def test_convert_and_synth_refuse_a_special_output_even_with_overwrite(lgg, tmp_path, capsys, target):
    out = tmp_path / "out.h5"
    os.mkfifo(out) if target == "fifo" else out.mkdir()
    kind = "a FIFO" if target == "fifo" else "a folder"
    rc, err = run_main(conv.main, capsys, "lgg", lgg, "--out", out, "--overwrite", "--quiet")
    one_error(rc, err, out, kind, "not a regular file")
    rc, err = run_main(synth.main, capsys, "--out", out, "--overwrite", "--cases", "1", "--size", "16",
                       "--slices", "1")
    one_error(rc, err, out, kind)
    assert (out.is_fifo() if target == "fifo" else out.is_dir()) and leftovers(tmp_path) == []


def test_coarse_refuses_a_fifo(tiny_store, fifo, capsys):
    from baselines import coarse

    rc, err = run_main(coarse.main, capsys, "--ckpt", fifo.parent / "none.pt", "--data", tiny_store,
                       "--out", fifo, "--overwrite", "--no-progress")
    one_error(rc, err, fifo, "FIFO")
    assert fifo.is_fifo()


def test_eval_json_refuses_a_fifo(tiny_store, seg_ckpt, fifo, capsys):
    from tools import eval_ckpt

    rc, err = run_main(eval_ckpt.main, capsys, "--ckpt", seg_ckpt, "--data", tiny_store, "--json", fifo,
                       "--no-progress", "--device", "cpu")
    one_error(rc, err, fifo, "FIFO")
    assert fifo.is_fifo()


def test_segment_refuses_a_fifo_mask_with_overwrite(seg_ckpt, tmp_path, capsys):
    import imageio.v3 as iio

    from tools import segment

    iio.imwrite(tmp_path / "x.png", np.arange(32 * 32, dtype=np.uint8).reshape(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "x_mask.png")
    rc, err = run_main(segment.main, capsys, "--ckpt", seg_ckpt, tmp_path / "x.png", "--out", out,
                       "--overwrite", "--no-progress", "--device", "cpu")
    one_error(rc, err, out / "x_mask.png", "FIFO")
    assert (out / "x_mask.png").is_fifo() and leftovers(out) == []


# ================================================================ 7. bounds at argument parsing
@pytest.mark.parametrize("args, word", [
    (["--size", "1000000"], "4096"),
    (["--size", "64x5000"], "4096"),
    (["--seed", "99999999999999999999999"], "2**63"),
    (["--seed", "-1"], "--seed"),
])
def test_convert_bounds_size_and_seed_before_reading(tmp_path, capsys, args, word):
    # The source does not exist: the bound must be checked before any input is looked at.
    out = tmp_path / "o.h5"
    rc, err = run_main(conv.main, capsys, "lgg", tmp_path / "nowhere", "--out", out, *args)
    one_error(rc, err, word)
    assert not out.exists()


def test_synth_bounds_size_and_seed(tmp_path, capsys):
    out = tmp_path / "o.h5"
    one_error(*run_main(synth.main, capsys, "--out", out, "--size", "100000"), "4096")
    one_error(*run_main(synth.main, capsys, "--out", out, "--seed", str(2 ** 63)), "2**63")
    assert not out.exists()


# ================================================================ 8. SIGTERM
@pytest.mark.parametrize("module, loader", [("convert", "load_lgg"), ("synth", "generate_case")])
def test_sigterm_leaves_no_temporary_store(lgg, tmp_path, module, loader):
    from tests.conftest import sigterm_midway

    out = tmp_path / "o.h5"
    args = ["lgg", str(lgg), "--out", str(out), "--quiet"] if module == "convert" else \
        ["--out", str(out), "--cases", "2", "--size", "16", "--slices", "1"]

    def being_written():
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".o.h5.")]

    rc, err = sigterm_midway(f"datasets.{module}", f"datasets.{module}", loader, args, midway=being_written)
    assert rc == 143, err
    assert err.strip().splitlines() == [f"datasets.{module}: interrupted; no output written"]
    assert list(tmp_path.iterdir()) == []


COARSE = """
import sys, time, torch
import baselines.coarse as m
class Fake(torch.nn.Module):
    def forward(self, x):
        return x[:, :1]
m.model_from_baseline_checkpoint = lambda path, dev: (Fake(), {"image_channels": 1, "baseline": {"name": "fake"}})
orig = m.coarse_maps
def slow(*a, **k):
    out = orig(*a, **k)
    print("LOADED", flush=True)
    time.sleep(60)
    return out
m.coarse_maps = slow
sys.exit(m.main(sys.argv[1:]))
"""


def test_sigterm_leaves_no_temporary_coarse_store(tiny_store, tmp_path):
    out = tmp_path / "o.h5"
    proc = subprocess.Popen([sys.executable, "-c", COARSE, "--ckpt", "fake.pt", "--data", str(tiny_store),
                             "--out", str(out), "--device", "cpu", "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "LOADED"
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".o.h5.")]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines() == ["interrupted; no output written"], err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_as_interrupt_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(fileio.Terminated):
        with fileio.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before
    assert fileio.interrupt_status(fileio.Terminated()) == 143 and fileio.interrupt_status(KeyboardInterrupt()) == 130


# ================================================================ 10. file modes follow the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        fileio.write_json_atomic({"a": 1}, tmp_path / "a.json")
        save_checkpoint({"x": torch.zeros(2)}, tmp_path / "c.pt")
        synth.make_synthetic_store(tmp_path / "s.h5", synth.SynthSpec(cases=1, size=16, slices=1))
    finally:
        os.umask(old)
    for name in ("a.json", "c.pt", "s.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ================================================================ 11. quietly accepted or misleading
def test_label_affine_must_match_its_image(tmp_path, capsys):
    src = write_pairs(tmp_path / "p", n=2)
    lab = src / "lbl" / "pat1.nii.gz"
    shifted = np.eye(4)
    shifted[0, 3] = 2.5
    _save_nifti(lab, np.asanyarray(nib.load(str(lab)).dataobj), shifted)
    out = tmp_path / "o.h5"
    rc, err = run_main(conv.main, capsys, "nifti-pairs", src, "--out", out, *PAIRS, "--quiet")
    one_error(rc, err, lab, "affine differs", "--allow-affine-mismatch")
    assert not out.exists() and leftovers(tmp_path) == []
    rc, err = run_main(conv.main, capsys, "nifti-pairs", src, "--out", out, *PAIRS, "--quiet",
                       "--allow-affine-mismatch")
    assert rc == 0 and SliceStore(out).n > 0


def test_split_must_sum_to_100(tmp_path, capsys):
    one_error(*run_main(conv.main, capsys, "lgg", tmp_path, "--out", tmp_path / "o.h5", "--split", "70/10/10"),
              "sum to 100", "70/10/10")
    one_error(*run_main(synth.main, capsys, "--out", tmp_path / "o.h5", "--split", "7/1/2"), "sum to 100")


def test_one_case_conversion_warns_that_val_and_test_are_empty(lgg, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, err = run_main(conv.main, capsys, "lgg", lgg, "--out", out, "--quiet")
    assert rc == 0 and out.exists()
    assert len(err) == 1 and "warning:" in err[0] and "val, test" in err[0] and "1 case" in err[0], err
    rc, err = run_main(conv.main, capsys, "lgg", lgg, "--out", out, "--quiet", "--overwrite", "--split", "100/0/0")
    assert rc == 0 and err == []


@pytest.mark.parametrize("dataset, index, value, words", [
    ("images", (0, 0, 0, 0), np.nan, ("NaN", "slice 0")),
    ("images", (-1, 0, 3, 3), np.inf, ("infinite",)),
    ("masks", (-1, 2, 2), 7, ("other than 0 and 1", "7")),
])
def test_store_checks_values_on_open(tiny_store, tmp_path, dataset, index, value, words):
    path = tmp_path / "bad.h5"
    shutil.copy(tiny_store, path)
    with h5py.File(path, "a") as f:
        ds = f[dataset]
        idx = (ds.shape[0] - 1,) + index[1:] if index[0] == -1 else index
        ds[idx] = value
    with pytest.raises(StoreError) as info:
        SliceStore(path)
    assert str(info.value).startswith(f"{path}: ") and all(w in str(info.value) for w in words)


def test_eval_json_unwritable_is_refused_before_evaluating(tiny_store, seg_ckpt, tmp_path, capsys, monkeypatch):
    import a3c.evaluate
    from tools import eval_ckpt

    def evaluated(*a, **k):
        raise AssertionError("evaluated before checking --json")

    monkeypatch.setattr(a3c.evaluate, "evaluate_checkpoint", evaluated)
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "out.json"
    rc, err = run_main(eval_ckpt.main, capsys, "--ckpt", seg_ckpt, "--data", tiny_store, "--json", target,
                       "--no-progress", "--device", "cpu")
    line = one_error(rc, err, target, "cannot write")
    assert ".tmp" not in line and "evaluated" not in line


def test_atomic_write_names_the_real_path_not_the_temporary_file(tmp_path, monkeypatch):
    def refuse(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc" + suffix))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        fileio.write_json_atomic({}, tmp_path / "out.json")
    assert info.value.filename == str(tmp_path / "out.json")


def test_segment_removes_the_output_folder_it_made_when_every_input_fails(seg_ckpt, tmp_path, capsys):
    from tools import segment

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "new" / "masks"
    rc, err = run_main(segment.main, capsys, "--ckpt", seg_ckpt, tmp_path / "broken.png", "--out", out,
                       "--no-progress", "--device", "cpu")
    assert rc == 2 and [ln for ln in err if ln.startswith("error:")] and not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    rc, _ = run_main(segment.main, capsys, "--ckpt", seg_ckpt, tmp_path / "broken.png", "--out", kept,
                     "--no-progress", "--device", "cpu")
    assert rc == 2 and kept.is_dir()  # a folder that was there before stays


def test_truncated_tiff_says_so(lgg, tmp_path, capsys):
    from tools import segment

    src = tmp_path / "src"
    shutil.copytree(lgg, src)
    tif = sorted(src.glob("*/*_2.tif"))[0]
    tif.write_bytes(tif.read_bytes()[:8])
    rc, err = run_main(conv.main, capsys, "lgg", src, "--out", tmp_path / "o.h5", "--quiet")
    line = one_error(rc, err, tif, "truncated")
    assert "shape (0,)" not in line
    with pytest.raises(segment.InputError, match="truncated"):
        segment.read_image(tif, None)
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def good_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt") / "good.pt"
    save_checkpoint({"format": 1, "model": {"w": torch.arange(400, dtype=torch.float32)}}, path)
    return path


@pytest.mark.parametrize("content, words", [
    (b"", ("empty file",)),
    (b"hello world", ("not written by torch.save",)),
    (b"e", ("not written by torch.save",)),
    ("half", ("truncated",)),
    ("flip", ("checksum",)),
])
def test_checkpoint_errors_name_the_problem(good_pt, tmp_path, content, words):
    data = good_pt.read_bytes()
    if content == "half":
        content = data[: len(data) // 2]
    elif content == "flip":
        with zipfile.ZipFile(good_pt) as zf:  # spoil data.pkl's last byte, the pickle's STOP opcode
            info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        h = info.header_offset
        start = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little")
        at = start + info.compress_size - 1
        content = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: ") and all(w in msg for w in words), msg
    assert "(101)" not in msg and "pop from empty list" not in msg
