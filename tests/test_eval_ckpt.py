"""tools/eval_ckpt.py: JSON, printed row, PNGs, an independent metric check, and bad input (exit 2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from a3c.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from a3c.config import config_from_dict, load_config
from a3c.metrics import segmentation_metrics
from a3c.model import build_model
from a3c.params import numel
from a3c.rollout import ActionRule, greedy_episode
from datasets.store import SliceStore
from datasets.synth import SynthSpec, make_synthetic_store

REPO = Path(__file__).resolve().parents[1]
KEYS = ("dice", "ppv", "sen", "iou", "biou", "hd95")


def make_checkpoint(path: Path, channels: int = 1) -> int:
    """A smoke-config checkpoint whose (seeded, rescaled) random weights give non-trivial masks."""
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, channels, cfg.env.state)
    with torch.no_grad():  # default init keeps every pixel; larger weights make the agents act
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    save_checkpoint({
        "format": FORMAT, "config": cfg.to_dict(), "image_channels": channels, "image_size": [32, 32],
        "params": numel(model), "model": model.state_dict(), "optimizer": opt.state_dict(),
        "counters": {"updates": 5, "images": 10, "epoch": 0.1, "rejected": 0, "lr": 0.001},
        "rng": torch.get_rng_state(), "created": time.time(),
    }, path)
    return numel(model)


def run(*args, module: bool = False):
    cmd = [sys.executable, "-m", "tools.eval_ckpt"] if module else [sys.executable, "tools/eval_ckpt.py"]
    return subprocess.run(cmd + [str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalckpt")
    store = make_synthetic_store(d / "s.h5", SynthSpec(cases=4, size=32, slices=4, seed=0))
    ckpt = d / "c.pt"
    params = make_checkpoint(ckpt)
    n_test = int(SliceStore(store).indices("test").size)
    out = d / "out.json"
    png = d / "png"
    r = run("--ckpt", ckpt, "--data", store, "--json", out, "--save-png", png)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "store": store, "ckpt": ckpt, "params": params, "n": n_test, "run": r,
            "json": json.loads(out.read_text()), "png": png}


def test_json_keys_and_ranges(fx):
    j = fx["json"]
    for k in KEYS:
        assert k in j and k in j["std"]
        assert math.isfinite(j[k]) and math.isfinite(j["std"][k])
    for k in ("dice", "ppv", "sen", "iou", "biou"):
        assert 0.0 <= j[k] <= 1.0
    assert j["params"] == fx["params"]
    assert j["n"] == j["slices"] == len(j["per_image"]) == fx["n"]
    assert j["split"] == "test" and j["updates"] == 5 and j["t_max"] == 3
    assert Path(j["checkpoint"]) == fx["ckpt"].resolve() and j["weights"] == "model"
    assert len(j["step_dice"]) == 3 and all(0.0 <= v <= 1.0 for v in j["step_dice"])
    assert j["step_dice"][-1] == pytest.approx(j["dice"])
    for row in j["per_image"]:
        assert {"index", "case", "slice", *KEYS} <= set(row)
    assert j["dice"] == pytest.approx(np.mean([r["dice"] for r in j["per_image"]]))
    assert j["std"]["hd95"] == pytest.approx(np.std([r["hd95"] for r in j["per_image"]]))
    # no temporary files left beside the JSON
    assert sorted(p.name for p in fx["dir"].iterdir() if p.name.startswith(".")) == []


def test_printed_row(fx):
    out = fx["run"].stdout
    assert "DICE" in out and "HD95" in out and "Params" in out
    assert f"{fx['params'] / 1e6:.2f}M" in out
    assert "updates 5" in out and "epoch 0.10" in out and f"{fx['n']} slices" in out and "test" in out


def test_pngs(fx):
    from skimage.io import imread

    names = sorted(p.name for p in fx["png"].iterdir())
    assert len(names) == 2 * fx["n"]
    for row in fx["json"]["per_image"]:
        over = imread(fx["png"] / f"{row['case']}_{row['slice']}_overlay.png")
        steps = imread(fx["png"] / f"{row['case']}_{row['slice']}_steps.png")
        assert over.shape == (32, 32, 3) and over.dtype == np.uint8
        assert steps.shape == (64, (2 + 3) * 32, 3) and steps.dtype == np.uint8


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_metrics_match_independent_episode(fx, tta):
    j = fx["json"]
    if tta != "none":
        out = fx["dir"] / "tta.json"
        r = run("--ckpt", fx["ckpt"], "--data", fx["store"], "--tta", tta, "--no-progress", "--json", out)
        assert r.returncode == 0, r.stderr
        j = json.loads(out.read_text())
    assert j["tta"] == tta
    row = j["per_image"][1]
    ckpt = load_checkpoint(fx["ckpt"])
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg.model, ckpt["image_channels"], cfg.env.state)
    model.load_state_dict(ckpt["model"])
    model.eval()
    store = SliceStore(fx["store"])
    images, masks = store.read([row["index"]])
    info = store.meta(row["index"])
    assert (info["case"], info["slice"]) == (row["case"], row["slice"])
    steps = greedy_episode(model, torch.from_numpy(images), cfg.env, rule=ActionRule(tta=tta))
    pred = steps[-1][0].numpy()
    assert 0 < pred.sum() < pred.size  # the fixture's agents do act
    ref = segmentation_metrics(pred, masks[0] > 0, spacing=info["spacing"])
    for k in KEYS:
        assert row[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_t_max_override_as_module(fx):
    out = fx["dir"] / "t5.json"
    r = run("--ckpt", fx["ckpt"], "--data", fx["store"], "--t-max", "5", "--max-slices", "2", "--batch-size", "1",
            "--no-progress", "--json", out, module=True)
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    assert j["t_max"] == 5 and len(j["step_dice"]) == 5 and j["n"] == len(j["per_image"]) == 2
    # --max-slices keeps the split's first slices, in order
    assert [p["index"] for p in j["per_image"]] == [p["index"] for p in fx["json"]["per_image"][:2]]
    assert j["per_image"][0]["case"] == fx["json"]["per_image"][0]["case"]


def test_keep_threshold_keeps_fewer_pixels_and_is_recorded(fx):
    out = fx["dir"] / "thr.json"
    r = run("--ckpt", fx["ckpt"], "--data", fx["store"], "--keep-threshold", "0.999", "--no-progress", "--json", out)
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    assert j["keep_threshold"] == 0.999 and fx["json"]["keep_threshold"] == 0.5
    # a stricter "keep" can only lower sensitivity, slice by slice
    for strict, plain in zip(j["per_image"], fx["json"]["per_image"]):
        assert strict["sen"] <= plain["sen"] + 1e-12
    assert j["sen"] < fx["json"]["sen"]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "x"])
def test_keep_threshold_outside_zero_one_is_a_usage_error(fx, value, tmp_path):
    r = run("--ckpt", fx["ckpt"], "--data", fx["store"], "--keep-threshold", value, "--json", tmp_path / "o.json")
    assert r.returncode == 2 and "between 0 and 1" in r.stderr and not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad(fx):
    d = fx["dir"] / "bad"
    d.mkdir()
    (d / "garbage.pt").write_bytes(b"not a checkpoint\n")
    wrong = d / "schema.h5"
    wrong.write_bytes(Path(fx["store"]).read_bytes())
    with h5py.File(wrong, "a") as f:
        f.attrs["schema_version"] = 7
    make_checkpoint(d / "two.pt", channels=2)
    ck, st = fx["ckpt"], fx["store"]
    return {
        "missing checkpoint": (["--ckpt", d / "nope.pt", "--data", st], "nope.pt"),
        "unreadable checkpoint": (["--ckpt", d / "garbage.pt", "--data", st], "garbage.pt"),
        "missing store": (["--ckpt", ck, "--data", d / "nope.h5"], "nope.h5"),
        "wrong schema": (["--ckpt", ck, "--data", wrong], "schema.h5"),
        "unknown split": (["--ckpt", ck, "--data", st, "--split", "nosuch"], "nosuch"),
        "channel mismatch": (["--ckpt", d / "two.pt", "--data", st], "channel"),
        "cuda without CUDA": (["--ckpt", ck, "--data", st, "--device", "cuda"], "CUDA"),
    }


CASES = ["missing checkpoint", "unreadable checkpoint", "missing store", "wrong schema", "unknown split",
         "channel mismatch", "cuda without CUDA"]


def _check_error(rc, stderr, needle, out: Path):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_in_process(bad, fx, case, capsys, tmp_path):
    """Every bad input through main(): exit 2, one error line, no JSON (fast, same code path)."""
    from tools.eval_ckpt import main

    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    args, needle = bad[case]
    out = tmp_path / "out.json"
    rc = main([str(a) for a in args] + ["--json", str(out), "--no-progress"])
    _check_error(rc, capsys.readouterr().err, needle, out)


@pytest.mark.parametrize("case,module", [("missing checkpoint", False), ("channel mismatch", True)])
def test_bad_input_subprocess(bad, case, module, tmp_path):
    args, needle = bad[case]
    out = tmp_path / "out.json"
    r = run(*args, "--json", out, module=module)
    _check_error(r.returncode, r.stderr, needle, out)


def test_sigterm_midway_writes_nothing_and_removes_the_png_folder_it_made(fx, tmp_path):
    from tests.conftest import sigterm_midway

    out, png = tmp_path / "o.json", tmp_path / "new" / "png"
    rc, err = sigterm_midway("tools.eval_ckpt", "a3c.evaluate", "evaluate_checkpoint",
                             ["--ckpt", fx["ckpt"], "--data", fx["store"], "--json", out, "--save-png", png,
                              "--no-progress"])
    assert rc == 143 and err.strip().splitlines() == ["interrupted; no JSON written"], err
    assert list(tmp_path.iterdir()) == []  # neither the JSON nor the two folders made for the PNGs


def test_failed_evaluation_removes_the_png_folder_it_made(fx, tmp_path, monkeypatch, capsys):
    import a3c.evaluate
    from tools.eval_ckpt import main as eval_main

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(a3c.evaluate, "evaluate_checkpoint", broken)
    kept = tmp_path / "kept"
    kept.mkdir()
    assert eval_main(["--ckpt", str(fx["ckpt"]), "--data", str(fx["store"]), "--save-png", str(kept / "a" / "b"),
                      "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "error: boom"
    assert list(tmp_path.iterdir()) == [kept] and list(kept.iterdir()) == []  # a folder that was there stays
