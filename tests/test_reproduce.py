"""tools/reproduce.py: every experiment runs end to end on a tiny store, writes its table, and skips finished cells."""
import csv
import json

import h5py
import pytest

from a3c.metrics import METRIC_KEYS
from tests.conftest import ROOT, run_module

QUICK = ["--config", "configs/smoke.yaml", "--budget", "0.2", "--baseline-epochs", "1", "--baseline-width", "tiny",
         "--device", "cpu", "--no-progress"]


def reproduce(store, out, experiment, *extra, timeout=600):
    return run_module(["tools/reproduce.py", experiment, "--data", str(store), "--out", str(out), *QUICK, *extra],
                      timeout=timeout)


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("experiment,extra,rows", [
    ("table2", ["--baselines", "unet,attention_unet,unet_plus_plus"], {("test split", "PixelDRL-MG"),
                                                                       ("test split", "U-Net"),
                                                                       ("test split", "Attention U-Net"),
                                                                       ("test split", "U-Net++")}),
    # the subsets reach both trainers through the same cell splits; the U-Net alone keeps the test short
    ("table4", ["--baselines", "unet", "--baselines-only"], {(s, "U-Net") for s in ("50 slices", "100 slices",
                                                                                  "all training slices")}),
    ("table6", ["--baselines", "unet", "--folds", "0,1"], {("5-fold CV", "PixelDRL-MG"), ("5-fold CV", "U-Net")}),
    ("cv", ["--baselines", "unet", "--cv-folds", "2"], {("2-fold patient CV", "PixelDRL-MG"),
                                                          ("2-fold patient CV", "U-Net")}),
])
def test_experiments_with_baselines_write_their_tables(tiny_store, tmp_path, experiment, extra, rows):
    out = tmp_path / experiment
    res = reproduce(tiny_store, out, experiment, *extra)
    assert res.returncode == 0, res.stderr
    lines = read_csv(out / f"{experiment}.csv")
    assert {(r["setting"], r["row"]) for r in lines} == rows
    for r in lines:
        assert all(0.0 <= float(r[k]) <= 1.0 for k in METRIC_KEYS if k != "hd95")
        assert int(r["params"]) > 0 and int(r["slices"]) > 0
    table = (out / f"{experiment}.md").read_text()
    assert all(f"| {setting} | {row} |" in table for setting, row in rows)
    if experiment == "table6":  # each fold tested on its own cases; both folds averaged into one row
        assert {r["test_split"] for r in lines} == {"fold0/test", "fold1/test"}
        for r in lines:  # the trainings themselves were tested on the fold's cases
            assert (json.loads((out / "cells" / r["id"] / "run" / "test_metrics.json").read_text())["split"]
                    == r["test_split"])
        assert "| 2 |" in table
    if experiment == "cv":  # every case tested once per method; per-patient and paired sections
        assert {r["test_split"] for r in lines} == {"cv2/fold0/test", "cv2/fold1/test"}
        cases = set()
        for r in lines:
            if r["row"] == "U-Net":
                cases |= {i["case"]
                          for i in json.loads((out / "cells" / r["id"] / "result.json").read_text())["per_image"]}
        with h5py.File(tiny_store) as f:
            assert cases == {c.decode() for c in f["case_id"][()]}
        for section in ("## Pooled over patients", "## Dice per patient", "## Collapsed runs", "## Paired per-patient"):
            assert section in table
        from tools.cv_report import cv_markdown, load_patient_table

        assert cv_markdown(load_patient_table(out / "patients.csv")) in table  # the table gives the report back
        for r in lines:  # both trainers scored their best-validation and their final checkpoint
            cell = json.loads((out / "cells" / r["id"] / "result.json").read_text())
            assert cell["selection"] == "best" and set(cell["by_selection"]) == {"best", "last"}
            assert cell["by_selection"]["best"]["per_image"] == cell["per_image"]
            assert len(cell["by_selection"]["last"]["per_image"]) == len(cell["per_image"])
        again = reproduce(tiny_store, out, experiment, *extra, "--select", "last")
        assert again.returncode == 2 and "was scored with another --select than last" in again.stderr
        last_cfg = out.parent / "last.yaml"  # without --select the config's eval.select is the rule
        last_cfg.write_text(f"base: {ROOT / 'configs' / 'smoke.yaml'}\neval:\n  select: last\n")
        again = run_module(["tools/reproduce.py", experiment, "--data", str(tiny_store), "--out", str(out),
                            *QUICK[2:], *extra, "--config", str(last_cfg)])
        assert again.returncode == 2 and "was scored with another --select than last" in again.stderr
    if experiment == "table4":
        assert {r["train_split"] for r in lines} == {"train_50", "train_100", "train"}


@pytest.mark.slow
def test_table3_ablation_switches_sam_and_dilation_and_resumes(tiny_store, tmp_path):
    out = tmp_path / "t3"
    res = reproduce(tiny_store, out, "table3")
    assert res.returncode == 0, res.stderr
    lines = read_csv(out / "table3.csv")
    assert [r["row"] for r in lines] == ["PA3C", "PA3C+SAM", "PA3C+DC", "PixelDRL-MG"]
    params = {r["row"]: int(r["params"]) for r in lines}
    assert params["PA3C"] < params["PA3C+SAM"] == params["PixelDRL-MG"]  # SAM adds its 1x1 conv
    assert params["PA3C"] == params["PA3C+DC"]  # dilation adds no parameters
    for cell in (out / "cells").iterdir():
        assert (cell / "result.json").exists() and (cell / "run" / "checkpoints" / "latest.pt").exists()
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}

    res = run_module(["tools/reproduce.py", "table3", "--data", str(tiny_store), "--out", str(out), *QUICK[:-1]],
                     timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("finished earlier, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")} == before

    broken = sorted(before)[0]
    broken.write_text('{"id": ')  # a result cut short: named, not trusted, not retrained over
    res = run_module(["tools/reproduce.py", "table3", "--data", str(tiny_store), "--out", str(out), *QUICK[:-1]],
                     timeout=120)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and str(broken) in err[0] and "unreadable" in err[0], res.stderr
    assert broken.read_text() == '{"id": '


@pytest.mark.slow
def test_fig7_sweeps_t_max_and_plots_with_paths_taken_from_the_callers_folder(tiny_store, tmp_path):
    import shutil
    import subprocess
    import sys

    shutil.copy(tiny_store, tmp_path / "s.h5")  # relative --data, --out and --config: read from the caller's folder
    shutil.copy(ROOT / "configs" / "smoke.yaml", tmp_path / "c.yaml")
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce.py"), "fig7", "--data", "s.h5", "--out", "f7",
                          "--config", "c.yaml", "--t-max", "1,3", *QUICK[2:]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "f7"
    assert not (ROOT / "f7").exists()
    lines = read_csv(out / "fig7.csv")
    assert [int(r["t_max"]) for r in lines] == [1, 3]
    assert (out / "fig7.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt_cfgs = [json.loads((out / "cells" / r["id"] / "result.json").read_text())["command"] for r in lines]
    assert "env.t_max=1" in ckpt_cfgs[0] and "env.t_max=3" in ckpt_cfgs[1]


@pytest.mark.slow
def test_fig5_refines_the_baseline_masks_with_pixelrl_and_plots(tiny_store, tmp_path):
    out = tmp_path / "f5"
    res = reproduce(tiny_store, out, "fig5", "--coarse", "unet")
    assert res.returncode == 0, res.stderr
    lines = read_csv(out / "fig5.csv")
    assert [r["row"] for r in lines] == ["U-Net", "PixelRL-U-Net", "PixelDRL-MG"]
    assert (out / "fig5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rl = json.loads((out / "cells" / lines[1]["id"] / "result.json").read_text())
    coarse = out / "cells" / lines[1]["id"] / "coarse.h5"
    assert coarse.exists() and f"--data {coarse}" in rl["command"] and "env.kind=refine" in rl["command"]
    # the refinement started from the U-Net cell's own checkpoint
    from_ckpt = json.loads(h5py.File(coarse, "r").attrs["coarse_from"])["checkpoint"]
    assert from_ckpt == str((out / "cells" / lines[0]["id"] / "run" / "best.pt").resolve())
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in lines)


@pytest.mark.slow
def test_a_failed_cell_names_its_log_and_exits_1(tiny_store, tmp_path):
    out = tmp_path / "bad"
    cfg = tmp_path / "no-restarts.yaml"  # the first fault ends the cell: no restarts to wait for
    cfg.write_text(f"base: {ROOT / 'configs' / 'smoke.yaml'}\ntrain:\n  max_worker_restarts: 0\n")
    res = run_module(["tools/reproduce.py", "table3", "--data", str(tiny_store), "--out", str(out), *QUICK,
                      "--config", str(cfg)], env={"PIXELDRL_FAULT_RAISE": "1"}, timeout=300)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cell ") and "train.log" in err[0]
    assert not list(out.glob("cells/*/result.json"))


@pytest.mark.parametrize("args,message", [
    (["table2", "--data", "/nonexistent.h5"], "/nonexistent.h5"),
    (["table2", "--baselines", "vnet"], "--baselines: unknown vnet"),
    (["fig7", "--t-max", "0,2"], "--t-max"),
    (["table6", "--folds", "5"], "--folds"),
    (["cv", "--cv-folds", "99"], "--cv-folds"),
    (["fig5", "--coarse", "unet3plus"], "--coarse: unknown unet3plus"),
    (["cv", "--baseline-ema-decay", "1"], "--baseline-ema-decay"),
])
def test_bad_input_is_one_line_exit_2(tiny_store, tmp_path, args, message):
    if "--data" not in args:
        args = args + ["--data", str(tiny_store)]
    res = run_module(["tools/reproduce.py", *args, "--out", str(tmp_path / "o")], timeout=60)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], res.stderr


def test_baselines_only_plans_no_pixeldrl_cell():
    from tools import reproduce

    args = reproduce.parse_args(["cv", "--data", "x.h5", "--baselines", "unet", "--folds", "0,1", "--seeds", "1,2",
                                 "--baselines-only"])
    cells = reproduce.plan(args)
    assert [(c.method, c.seed, c.extra["fold"]) for c in cells] == [("unet", s, k) for s in (1, 2) for k in (0, 1)]
    args = reproduce.parse_args(["cv", "--data", "x.h5", "--baselines", "unet", "--folds", "0"])
    assert [c.method for c in reproduce.plan(args)] == ["pixeldrl", "unet"]


def test_baselines_average_their_weights_only_when_asked(tmp_path):
    # the config's optim.ema_decay is PixelDRL-MG's alone; --baseline-ema-decay gives the U-Net one
    from tools import reproduce

    cfg = tmp_path / "ema.yaml"
    cfg.write_text(f"base: {ROOT / 'configs' / 'lgg-cpu.yaml'}\noptim:\n  ema_decay: 0.99\n")

    def decay(*extra):
        args = reproduce.parse_args(["cv", "--data", "x.h5", "--config", str(cfg), "--baselines", "unet",
                                     "--folds", "0", "--baselines-only", "--select", "last", *extra])
        cmd = reproduce.command(reproduce.plan(args)[0], args, tmp_path / "run", resume=False)
        assert cmd[cmd.index("-m") + 1] == "baselines.train"
        return cmd[cmd.index("--ema-decay") + 1]

    assert decay() == "0"
    assert decay("--baseline-ema-decay", "0.995") == "0.995"
