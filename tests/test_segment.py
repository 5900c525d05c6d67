"""tools/segment.py: NIfTI volumes and 2D images segmented with a checkpoint; preprocessing as in
training; --save-steps pictures; bad input (exit 2, one line each, the other inputs still written)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from a3c.checkpoint import FORMAT, save_checkpoint
from a3c.config import load_config
from a3c.model import build_model
from a3c.params import numel
from a3c.rollout import greedy_episode
from datasets.writer import normalise_case, resize_slices
from tools import segment as seg

REPO = Path(__file__).resolve().parents[1]
NORM = "percentile_0.5_99.5_nonzero_per_case_channel_to_0_1"
PRE = {"normalisation": NORM, "converter": "datasets.synth", "image_shape": [1, 32, 32]}


def make_checkpoint(path: Path, channels: int = 1, preprocess: dict | None = PRE) -> None:
    """A smoke-config checkpoint whose (seeded, rescaled) random weights give non-trivial masks."""
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, channels, cfg.env.state)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    obj = {"format": FORMAT, "config": cfg.to_dict(), "image_channels": channels, "image_size": [32, 32],
           "params": numel(model), "model": model.state_dict(),
           "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
           "counters": {"updates": 0, "images": 0, "epoch": 0.0, "rejected": 0, "lr": 0.001},
           "rng": torch.get_rng_state(), "created": time.time()}
    if preprocess is not None:
        obj["preprocess"] = preprocess
    save_checkpoint(obj, path)


def blob_volume(shape, seed=0) -> np.ndarray:
    """Raw intensities: a bright ellipsoid on a dimmer textured background, zero border (like a scan)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = sum((g / a) ** 2 for g, a in zip(grids, (0.5, 0.6, 1.5)[:len(shape)]))
    vol = 300 + 80 * rng.standard_normal(shape) + 900 * (r < 1)
    vol[:2] = 0
    return np.clip(vol, 0, None).astype(np.float32)


AFFINE = np.array([[0.0, -0.9, 0.0, 12.0], [0.8, 0.0, 0.0, -7.5], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1]])


def run_cli(*args, module: bool = False):
    cmd = [sys.executable, "-m", "tools.segment"] if module else [sys.executable, "tools/segment.py"]
    return subprocess.run(cmd + [str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=120)


def run_main(capsys, *args):
    rc = seg.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    ckpt = d / "c.pt"
    make_checkpoint(ckpt)
    vol = (blob_volume((40, 36, 5)) * 2).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, AFFINE), d / "vol.nii.gz")
    pngs = d / "pngs"
    pngs.mkdir()
    for i in range(3):
        img = blob_volume((48, 40), seed=i)
        iio.imwrite(pngs / f"im{i}.png", np.clip(img / 5, 0, 255).astype(np.uint8))
    iio.imwrite(pngs / "im0_mask.png", np.zeros((48, 40), np.uint8))  # ground truth beside: skipped
    (pngs / ".hidden.png").write_bytes(b"junk")                         # hidden: skipped
    return {"dir": d, "ckpt": ckpt, "vol": d / "vol.nii.gz", "pngs": pngs}


def test_volume_script(fx):
    out = fx["dir"] / "out_vol"
    r = run_cli("--ckpt", fx["ckpt"], fx["vol"], "--out", out)
    assert r.returncode == 0, r.stderr
    assert "slice" in r.stderr  # the progress bar counts slices
    src, res = nib.load(fx["vol"]), nib.load(out / "vol_mask.nii.gz")
    assert res.shape == (40, 36, 5)
    assert np.allclose(res.affine, AFFINE) and np.allclose(res.affine, src.affine)
    assert res.header.get_zooms() == src.header.get_zooms()
    assert res.get_data_dtype() == np.uint8
    data = np.asarray(res.dataobj)
    assert set(np.unique(data)) <= {0, 1} and 0 < data.sum() < data.size
    assert sorted(p.name for p in out.iterdir()) == ["vol_mask.nii.gz"]


def test_png_folder_module(fx):
    out = fx["dir"] / "out_png"
    r = run_cli("--ckpt", fx["ckpt"], fx["pngs"], "--out", out, "--no-progress", module=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["im0_mask.png", "im1_mask.png", "im2_mask.png"]
    for i in range(3):
        m = iio.imread(out / f"im{i}_mask.png")
        assert m.shape == (48, 40) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}
    assert "segmented 3 of 3" in r.stdout


def test_save_steps(fx, capsys):
    out = fx["dir"] / "out_steps"
    rc, stdout, err = run_main(capsys, "--ckpt", fx["ckpt"], fx["vol"], fx["pngs"] / "im1.png", "--out", out,
                               "--save-steps", "--t-max", "4", "--no-progress")
    assert rc == 0, err
    for k in range(5):
        strip = iio.imread(out / f"vol_z{k:03d}_steps.png")
        assert strip.shape == (2 * 32, (2 + 4) * 32, 3)
        assert iio.imread(out / f"vol_z{k:03d}_overlay.png").shape == (40, 36, 3)
    assert iio.imread(out / "im1_steps.png").shape == (64, 6 * 32, 3)
    assert iio.imread(out / "im1_overlay.png").shape == (48, 40, 3)
    # the strip's m(T) tile is the mask at network size; back at 48x40 it is the written mask
    strip = iio.imread(out / "im1_steps.png")
    last = strip[:32, 5 * 32:6 * 32, 0] > 127
    back = F.interpolate(torch.from_numpy(last)[None, None].float(), size=(48, 40), mode="nearest-exact")[0, 0] > 0.5
    assert np.array_equal(back.numpy(), iio.imread(out / "im1_mask.png") > 0)
    assert hidden(out) == []


def test_input_normalised_as_in_training(tmp_path, fx, monkeypatch, capsys):
    """The tensor fed to the network is normalise_case of the whole volume (its slices along the
    last axis); resized bilinear when the slices are not the training size; the mask is the
    greedy episode's last action map."""
    raw = blob_volume((32, 32, 4), seed=3) * 7 + 5
    prep, _ = seg.preprocess_from_checkpoint(torch.load(fx["ckpt"], weights_only=True),
                                             load_config(REPO / "configs" / "smoke.yaml"), "c.pt")
    assert prep.percentiles == (0.5, 99.5) and prep.image_size == (32, 32) and prep.channels == 1
    expected = normalise_case(np.moveaxis(raw, 2, 0)[:, None])
    norm, x = seg.prepare_input(np.moveaxis(raw, 2, 0)[:, None], prep)
    assert np.array_equal(norm, expected) and np.array_equal(x.numpy(), expected)

    # end to end: capture what the CLI feeds the network
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "v.nii")
    fed = []
    real = greedy_episode

    def spy(model, images, *a, **k):
        fed.append(images.clone())
        return real(model, images, *a, **k)

    monkeypatch.setattr("a3c.rollout.greedy_episode", spy)
    rc, _, err = run_main(capsys, "--ckpt", fx["ckpt"], tmp_path / "v.nii", "--out", tmp_path / "o", "--no-progress")
    assert rc == 0, err
    got = torch.cat(fed).numpy()
    assert np.array_equal(got, expected)

    # the written mask equals an independent greedy episode on that input
    from a3c.evaluate import model_from_checkpoint

    model, cfg, _ = model_from_checkpoint(str(fx["ckpt"]))
    pred = real(model, torch.from_numpy(expected), cfg.env)[-1].numpy()  # [S, H, W]
    written = np.asarray(nib.load(tmp_path / "o" / "v_mask.nii.gz").dataobj)
    assert np.array_equal(written, np.moveaxis(pred, 0, 2).astype(np.uint8))

    # another size: resized to the store's slice size first, then normalised (the converter's order);
    # the overlay's picture is the input normalised at its own size
    raw2 = np.moveaxis(blob_volume((48, 40, 2)), 2, 0)[:, None]
    shown2, x2 = seg.prepare_input(raw2, prep)
    assert np.array_equal(shown2, normalise_case(raw2))
    assert np.array_equal(x2.numpy(), normalise_case(resize_slices(raw2, (32, 32))))
    assert not np.allclose(x2.numpy(), F.interpolate(torch.from_numpy(normalise_case(raw2)), size=(32, 32),
                                                     mode="bilinear", align_corners=False, antialias=True).numpy(),
                           atol=1e-3)  # the other order would differ

    # a network trained at another size than its store's: store size first, then bilinear to image_size
    prep16 = seg.Preprocess(NORM, (0.5, 99.5), 1, (16, 16), (32, 32))
    ref16 = F.interpolate(torch.from_numpy(normalise_case(resize_slices(raw2, (32, 32)))), size=(16, 16),
                          mode="bilinear", align_corners=False)
    assert torch.equal(seg.prepare_input(raw2, prep16)[1], ref16)


def test_input_equals_the_store_slices_of_the_same_volume_converted_with_size(tmp_path):
    """A volume converted with ``--size`` and the same volume given to segment reach the network
    as the same numbers: the store's slices are what segment feeds a model trained on that store."""
    from datasets.convert import convert
    from datasets.store import SliceStore

    raw = blob_volume((48, 40, 3), seed=5) * 3 + 11
    lab = np.zeros(raw.shape, np.uint8)
    lab[10:30, 8:24] = 1
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "v_img.nii.gz")
    nib.save(nib.Nifti1Image(lab, AFFINE), tmp_path / "v_seg.nii.gz")
    out = tmp_path / "s.h5"
    convert("nifti-pairs", tmp_path, out, images="*_img.nii.gz", labels="*_seg.nii.gz", size=(32, 32),
            split="0/0/100", keep_negatives=True, progress=False)
    with SliceStore(out) as store:
        stored, _ = store.read(np.arange(store.n))
        pre = {"normalisation": store.attrs["normalisation"], "image_shape": list(store.image_shape)}
    ckpt = {"image_channels": 1, "image_size": [32, 32], "preprocess": pre}
    prep, warnings = seg.preprocess_from_checkpoint(ckpt, load_config(REPO / "configs" / "smoke.yaml"), "c.pt")
    assert warnings == [] and prep.store_hw == (32, 32)
    _, x = seg.prepare_input(np.moveaxis(raw, 2, 0)[:, None], prep)
    assert x.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(x.numpy(), stored, rtol=0, atol=1e-6)


def test_channel_matching():
    prep = seg.Preprocess(NORM, (0.5, 99.5), 1, (32, 32), (32, 32), "datasets.convert lgg", ["FLAIR"])
    rgb = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30)])
    assert seg.match_channels(rgb, prep, Path("x.tif"))[0, 0, 0] == 20  # FLAIR is channel 1 of an LGG slice
    prep.converter, prep.channel_names = "datasets.synth", []
    grey_rgba = np.concatenate([np.repeat(rgb[:1], 3, axis=0), np.full((1, 4, 4), 255, np.uint8)])
    assert seg.match_channels(grey_rgba, prep, Path("x.png")).shape == (1, 4, 4)
    with pytest.raises(seg.InputError, match=r"x\.png: image has 3 channel\(s\), the model takes 1"):
        seg.match_channels(rgb, prep, Path("x.png"))


def test_bad_inputs(tmp_path, fx, capsys):
    d = tmp_path / "in"
    d.mkdir()
    out = tmp_path / "out"
    good = fx["pngs"] / "im2.png"
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (d / "notes.txt").write_text("hello")
    rng = np.random.default_rng(0)
    tifffile.imwrite(d / "rgb.tif", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    nib.save(nib.Nifti1Image(blob_volume((16, 16, 3)), AFFINE), d / "grey.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((16, 16, 3, 3)).astype(np.float32), AFFINE), d / "four.nii.gz")
    nanv = blob_volume((16, 16, 3))
    nanv[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(nanv, AFFINE), d / "nan.nii.gz")
    (d / "trunc.nii.gz").write_bytes((fx["vol"]).read_bytes()[:200])
    out.mkdir()
    (out / "grey_mask.nii.gz").write_bytes(b"old")  # exists, no --overwrite
    bad = {"broken.png": "cannot read image", "notes.txt": "unsupported file type", "missing.png": "no such file",
           "rgb.tif": "3 channel(s), the model takes 1", "four.nii.gz": "4-D volume",
           "nan.nii.gz": "NaN", "trunc.nii.gz": "cannot read NIfTI", "grey.nii.gz": "exists (use --overwrite"}
    args = [good] + [d / n for n in bad]
    rc, stdout, err = run_main(capsys, "--ckpt", fx["ckpt"], *args, "--out", out, "--no-progress")
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == len(bad), err
    for name, why in bad.items():
        hit = [ln for ln in lines if f"{d / name}: " in ln]
        assert len(hit) == 1 and why in hit[0], (name, lines)
    assert iio.imread(out / "im2_mask.png").shape == (48, 40)  # the good input is written
    assert (out / "grey_mask.nii.gz").read_bytes() == b"old"
    assert sorted(p.name for p in out.iterdir()) == ["grey_mask.nii.gz", "im2_mask.png"]
    assert hidden(out) == [] and "1 of 9" in stdout

    # --overwrite replaces it
    rc, _, err = run_main(capsys, "--ckpt", fx["ckpt"], d / "grey.nii.gz", "--out", out, "--overwrite", "--no-progress")
    assert rc == 0, err
    assert nib.load(out / "grey_mask.nii.gz").shape == (16, 16, 3) and hidden(out) == []


def test_same_output_name_twice(tmp_path, fx, capsys):
    (tmp_path / "a").mkdir()
    iio.imwrite(tmp_path / "a" / "im2.png", iio.imread(fx["pngs"] / "im2.png"))
    rc, _, err = run_main(capsys, "--ckpt", fx["ckpt"], fx["pngs"] / "im2.png", tmp_path / "a" / "im2.png",
                          "--out", tmp_path / "o", "--no-progress")
    assert rc == 2
    (line,) = error_lines(err)
    assert line.startswith(f"error: {tmp_path / 'a' / 'im2.png'}: its output") and "also the output of" in line
    assert (tmp_path / "o" / "im2_mask.png").exists()


def test_bad_checkpoint(tmp_path, fx, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = run_cli("--ckpt", junk, fx["pngs"] / "im0.png", "--out", tmp_path / "o")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f"error: {junk}: ")
    assert not (tmp_path / "o").exists()

    odd = tmp_path / "odd.pt"
    make_checkpoint(odd, preprocess={**PRE, "normalisation": "zscore_per_slice"})
    rc, _, err = run_main(capsys, "--ckpt", odd, fx["pngs"] / "im0.png", "--out", tmp_path / "o2")
    assert rc == 2 and err.strip().splitlines() == [
        f"error: {odd}: unknown normalisation 'zscore_per_slice' (this tool knows "
        "percentile_<low>_<high>_nonzero_per_case_channel_to_0_1 and none)"]
    rc, _, err = run_main(capsys, "--ckpt", tmp_path / "none.pt", fx["pngs"] / "im0.png", "--out", tmp_path / "o3")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no such checkpoint file" in err


def test_old_checkpoint_without_preprocess(tmp_path, fx, capsys):
    old = tmp_path / "old.pt"
    make_checkpoint(old, preprocess=None)
    rc, _, err = run_main(capsys, "--ckpt", old, fx["pngs"] / "im0.png", "--out", tmp_path / "o", "--no-progress")
    assert rc == 0 and "warning:" in err and "no 'preprocess' entry" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_unavailable(tmp_path, fx, capsys):
    rc, _, err = run_main(capsys, "--ckpt", fx["ckpt"], fx["pngs"] / "im0.png", "--out", tmp_path / "o",
                          "--device", "cuda")
    assert rc == 2 and err.startswith("error: --device cuda: CUDA is not available")


def test_sigterm_midway_exits_143_and_removes_the_folder_it_made(fx, tmp_path):
    from tests.conftest import sigterm_midway

    out = tmp_path / "new" / "out"
    rc, err = sigterm_midway("tools.segment", "tools.segment", "segment",
                             ["--ckpt", fx["ckpt"], "--out", out, "--no-progress", fx["pngs"]])
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == "interrupted; outputs written so far are complete, none is half-written"
    assert list(tmp_path.iterdir()) == []  # nothing was written before the signal: no folder left
