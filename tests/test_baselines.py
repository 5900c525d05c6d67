"""Supervised baselines (baselines/): model shapes, the trainer end to end, metrics, bad input."""
from __future__ import annotations

import ast
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from a3c.batch import prepare_batch
from a3c.checkpoint import load_checkpoint
from a3c.evaluate import EvalOptions, _scaled_spacing
from a3c.metrics import METRIC_KEYS, TABLE_HEADER, aggregate_metrics, segmentation_metrics
from a3c.params import numel
from baselines.models import BASELINES, WIDTHS, build_baseline, parse_width
from baselines.train import (
    BaselineError,
    BaselineOptions,
    evaluate_baseline,
    main,
    model_from_baseline_checkpoint,
    train_baseline,
    update_average,
)
from datasets.store import SliceStore
from tests.conftest import ROOT, run_module


# ------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", list(BASELINES))
def test_models_give_one_channel_logits_at_any_size(name):
    torch.manual_seed(0)
    for channels in (1, 3):
        model = build_baseline(name, channels, size_hint=(37, 45), width="tiny")
        for hw in ((37, 45), (32, 32), (9, 5)):
            x = torch.rand(2, channels, *hw)
            model.train()
            y = model(x)
            assert y.shape == (2, 1, *hw) and y.dtype == torch.float32
            y.float().mean().backward()  # differentiable end to end
            model.eval()
            with torch.no_grad():
                assert model(x[:1]).shape == (1, 1, *hw)
        with pytest.raises(ValueError, match="expected images"):
            model(torch.rand(1, channels + 1, 32, 32))


def test_padding_sizes_and_crop_is_centred():
    unet = build_baseline("unet", 1, width="tiny")
    assert unet.padded_size(37, 45) == (48, 48)
    assert unet.padded_size(64, 64) == (64, 64)
    assert unet.padded_size(9, 5) == (32, 32)  # coarsest map at least 2 x 2
    assert build_baseline("segresnet", 1).padded_size(37, 45) == (40, 48)

    # The wrapper pads with zeros, runs the MONAI network, crops back the same window.
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return [x[:, :1] * 0, x[:, :1]]  # a list, as U-Net++: the last output is used

    unet.net = Probe()
    x = torch.rand(1, 1, 37, 45)
    y = unet(x)
    assert seen["shape"] == (1, 1, 48, 48)
    assert torch.equal(y, x)


def test_widths_and_parameter_counts():
    assert parse_width("small") == WIDTHS["small"] == 0.25
    assert parse_width("0.5") == parse_width(0.5) == 0.5
    for bad in ("huge", "0", "-1", "nan", 0):
        with pytest.raises(ValueError):
            parse_width(bad)
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("swin_unetr", 1)
    with pytest.raises(ValueError):
        build_baseline("unet", 0)
    # Documented figures (docs/BASELINES.md): 3-channel input, width 1 and width small.
    assert numel(build_baseline("unet", 3)) == 6_495_868
    assert numel(build_baseline("unet", 3, width="small")) == 407_092
    assert (numel(build_baseline("unet", 1, width="small"))
            < numel(build_baseline("unet", 1, width="half")))


# ------------------------------------------------------------------------------ evaluation
class ThresholdModel(torch.nn.Module):
    """Logits +-10 where the first channel is above 0.5: a known prediction."""

    def forward(self, x):
        return (x[:, :1] > 0.5).float() * 20.0 - 10.0


def test_evaluate_baseline_scores_with_a3c_metrics(tiny_store):
    store = SliceStore(tiny_store)
    res = evaluate_baseline(ThresholdModel(), store.batches("test", 3), "cpu", meta=store.meta)
    idx = store.indices("test")
    images, masks = store.read(idx)
    rows = [segmentation_metrics(images[i, 0] > 0.5, masks[i], spacing=store.meta(int(j))["spacing"])
            for i, j in enumerate(idx)]
    assert [r["index"] for r in res.per_image] == idx.tolist()
    for row, ref in zip(res.per_image, rows):
        assert {k: row[k] for k in METRIC_KEYS} == ref
    assert res.summary == aggregate_metrics(rows)
    # resized evaluation: the ground truth and the spacing follow the network's input size
    res16 = evaluate_baseline(ThresholdModel(), store.batches("test", 8), "cpu", image_size=16, meta=store.meta,
                              options=EvalOptions(max_slices=2))
    assert len(res16.per_image) == 2
    x, g = prepare_batch(images[:2], masks[:2], "cpu", 16)
    sp = _scaled_spacing(store.meta(int(idx[0]))["spacing"], images.shape[-2:], (16, 16))
    assert res16.per_image[0]["hd95"] == segmentation_metrics(x[0, 0] > 0.5, g[0, 0] > 0.5, spacing=sp)["hd95"]
    store.close()


# ------------------------------------------------------------------------------ trainer
@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("bl") / "unet"
    r = run_module(["-m", "baselines.train", "unet", "--data", str(tiny_store), "--out", str(out),
                    "--max-updates", "5", "--width", "small", "--val-every", "2", "--no-progress"], timeout=120)
    assert r.returncode == 0, r.stderr
    return {"out": out, "run": r, "json": json.loads((out / "test_metrics.json").read_text())}


@pytest.mark.slow
def test_cli_writes_test_metrics(trained, tiny_store):
    j = trained["json"]
    store = SliceStore(tiny_store)
    n_test = int(store.indices("test").size)
    for k in METRIC_KEYS:
        assert np.isfinite(j[k]) and np.isfinite(j["std"][k]) and j["std"][k] >= 0
        if k != "hd95":
            assert 0.0 <= j[k] <= 1.0
    assert j["hd95"] >= 0
    assert j["params"] == numel(build_baseline("unet", 1, width="small"))
    assert (j["model"], j["width"], j["updates"], j["n"], j["split"]) == ("unet", 0.25, 5, n_test, "test")
    assert len(j["per_image"]) == n_test
    assert [h["update"] for h in j["val_history"]] == [2, 4, 5]
    assert j["best_val_dice"] == max(h["val_dice"] for h in j["val_history"])
    assert j["wall_s"] > 0 and j["command"]["max_updates"] == 5
    assert (trained["out"] / "best.pt").is_file() and (trained["out"] / "last.pt").is_file()
    assert j["selection"] == "best" and set(j["by_selection"]) == {"best", "last"}
    assert j["by_selection"]["best"]["per_image"] == j["per_image"]
    assert all(j["by_selection"]["best"][k] == j[k] for k in METRIC_KEYS)
    lines = trained["run"].stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:6] == TABLE_HEADER.split())
    assert lines[head].split()[-1] == "Params" and lines[head + 1].endswith("0.41M")
    store.close()


def recomputed(model, store, index: int) -> dict:
    """Slice ``index`` of ``store`` scored by hand: the model's sigmoid > 0.5 against its mask."""
    images, masks = store.read([index])
    x, _ = prepare_batch(images, masks, "cpu", 0)
    with torch.no_grad():
        pred = torch.sigmoid(model(x))[0, 0] > 0.5
    return segmentation_metrics(pred.numpy(), masks[0], spacing=store.meta(index)["spacing"])


@pytest.mark.slow
def test_metrics_equal_recomputed_slice(trained, tiny_store):
    j = trained["json"]
    model, ckpt = model_from_baseline_checkpoint(trained["out"] / "best.pt")
    assert ckpt["counters"]["updates"] == j["best_update"]
    store = SliceStore(tiny_store)
    row = j["per_image"][1]
    ref = recomputed(model, store, row["index"])
    for k in METRIC_KEYS:
        assert row[k] == pytest.approx(ref[k], abs=1e-12), k
    means = aggregate_metrics([{k: r[k] for k in METRIC_KEYS} for r in j["per_image"]])
    assert all(means[k]["mean"] == pytest.approx(j[k]) for k in METRIC_KEYS)
    store.close()


@pytest.mark.slow
def test_last_selection_scores_the_final_model(tiny_store, tmp_path):
    # Validation at updates 1, 2, 3: best.pt is whichever of them scored highest on val, last.pt
    # is update 3; --select last makes last.pt the headline, and both rules are scored either way.
    out = tmp_path / "last"
    res = train_baseline("unet", tiny_store, out, max_updates=3, batch=2, width="tiny", val_every=1,
                         select="last", progress=False)
    model, ckpt = model_from_baseline_checkpoint(out / "last.pt")
    assert ckpt["counters"]["updates"] == 3 and res["checkpoint"] == str((out / "last.pt").resolve())
    assert res["selection"] == "last" and res["per_image"] == res["by_selection"]["last"]["per_image"]
    best_ckpt = load_checkpoint(out / "best.pt")
    assert best_ckpt["counters"]["updates"] == res["best_update"]
    store = SliceStore(tiny_store)
    row = res["per_image"][0]
    assert row["dice"] == pytest.approx(recomputed(model, store, row["index"])["dice"], abs=1e-12)
    store.close()


@pytest.mark.slow
def test_api_without_validation_keeps_final_model(tiny_store, tmp_path):
    out = tmp_path / "bu"
    res = train_baseline("basic_unet", tiny_store, out, max_updates=2, batch=4, width="tiny", val_split="none",
                         progress=False)
    assert res == json.loads((out / "test_metrics.json").read_text())
    assert res["best_val_dice"] is None and res["val_history"] == [] and res["best_update"] == 2
    assert res["by_selection"] is None and not (out / "last.pt").exists()
    assert res["command"] == asdict(BaselineOptions("basic_unet", str(tiny_store), str(out), max_updates=2, batch=4,
                                                    width="tiny", val_split="none"))


@pytest.mark.slow
def test_pixeldrl_tools_refuse_a_baseline_checkpoint(trained, tiny_store, capsys):
    from tools.eval_ckpt import main as eval_main

    rc = eval_main(["--ckpt", str(trained["out"] / "best.pt"), "--data", str(tiny_store), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")


def test_update_average_by_hand():
    # decay 0.75: every float entry -> 0.75 * average + 0.25 * model; the integer counter is copied
    avg, model = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        avg.weight.copy_(torch.tensor([1.0, 2.0]))
        model.weight.copy_(torch.tensor([5.0, -2.0]))
        avg.running_mean.copy_(torch.tensor([0.0, 4.0]))
        model.running_mean.copy_(torch.tensor([4.0, 0.0]))
        model.num_batches_tracked.fill_(7)
    update_average(avg, model, 0.75)
    assert avg.weight.tolist() == [2.0, 1.0] and avg.running_mean.tolist() == [1.0, 3.0]
    assert avg.bias.tolist() == [0.0, 0.0] and int(avg.num_batches_tracked) == 7
    assert model.weight.tolist() == [5.0, -2.0]


@pytest.mark.slow
def test_ema_decay_saves_the_warmed_up_average(tiny_store, tmp_path):
    # One update: the saved weights are (2/11) W0 + (9/11) W1 (warm-up decay min(0.9, 2/11)), with W0
    # the seeded initialisation and W1 the raw weights after the update (the same run without averaging).
    common = dict(max_updates=1, batch=2, width="tiny", val_split="none", progress=False, seed=3)
    train_baseline("unet", tiny_store, tmp_path / "raw", **common)
    res = train_baseline("unet", tiny_store, tmp_path / "avg", ema_decay=0.9, **common)
    assert res["command"]["ema_decay"] == 0.9
    raw, _ = model_from_baseline_checkpoint(tmp_path / "raw" / "best.pt")
    avg, _ = model_from_baseline_checkpoint(tmp_path / "avg" / "best.pt")
    store = SliceStore(tiny_store)
    torch.manual_seed(3)
    init = build_baseline("unet", store.image_shape[0], store.image_shape[1:], width=parse_width("tiny"))
    store.close()
    w0, w1, a = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (init, raw, avg))
    assert not torch.allclose(w0, w1)
    torch.testing.assert_close(a, (2 / 11) * w0 + (9 / 11) * w1, rtol=1e-5, atol=1e-6)


def test_ema_decay_out_of_range_refused():
    with pytest.raises(BaselineError, match="ema_decay must lie in"):
        BaselineOptions("unet", "x.h5", "out", ema_decay=1.0).checked()


# ------------------------------------------------------------------------------ bad input
BAD = {
    "unknown model": (["nope"], "unknown model"),
    "missing store": (["unet", "--data", "{missing}"], "no such file"),
    "unknown test split": (["unet", "--test-split", "bogus"], "unknown split"),
    "unknown val split": (["unet", "--val-split", "train_7"], "unknown split"),
    "bad width": (["unet", "--width", "wide"], "width"),
    "both schedules": (["unet", "--epochs", "1"], "not allowed with"),
    "unknown selection": (["unet", "--select", "median"], "invalid choice"),
}


def _argv(args, store, tmp_path):
    argv = [a.replace("{missing}", str(tmp_path / "missing.h5")) for a in args]
    if "--data" not in argv:
        argv += ["--data", str(store)]
    return argv + ["--out", str(tmp_path / "out"), "--max-updates", "1", "--no-progress"]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(case, tiny_store, tmp_path, capsys):
    args, needle = BAD[case]
    try:
        rc = main(_argv(args, tiny_store, tmp_path))
    except SystemExit as exc:  # argparse's own errors (usage line + error line), also exit 2
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert needle in err[-1] and err[-1].startswith(("error:", "usage:", "python -m baselines.train: error:"))
    if case not in ("both schedules", "unknown selection"):  # argparse: a usage line first
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "out" / "test_metrics.json").exists()


def test_cuda_unavailable_subprocess(tiny_store, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = run_module(["-m", "baselines.train", "unet", "--data", str(tiny_store), "--out", str(tmp_path / "o"),
                    "--device", "cuda", "--no-progress"], timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --device cuda: CUDA is not available on this machine (use --device cpu or auto)"]


def test_baselines_import_only_a3c_and_datasets():
    project = {"a3c", "workers", "datasets", "tools", "configs", "tests", "bench", "baselines"}
    for path in sorted((ROOT / "baselines").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        assert names & project <= {"a3c", "datasets", "baselines"}, (path, names & project)


def test_unknown_selection_refused_by_the_api():
    with pytest.raises(BaselineError, match="unknown model selection 'median'"):
        BaselineOptions("unet", "x.h5", "out", select="median").checked()
