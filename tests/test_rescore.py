"""tools/rescore.py: a reproduce folder's cells scored again, as at the end of training, with other options."""
from __future__ import annotations

import json

import pytest

from a3c.evaluate import evaluate_checkpoint
from baselines.train import train_baseline
from datasets.store import SliceStore
from tests.test_bad_input_runs import fake_run
from tools import rescore
from tools.cv_report import load_cells


@pytest.fixture(scope="module")
def cv_folder(tiny_store, tmp_path_factory):
    """A reproduce.py cv folder with two finished cells of fold 0: an untrained PixelDRL-MG
    checkpoint and a U-Net trained for 2 updates (which scored its test split itself); read only."""
    src = tmp_path_factory.mktemp("rescore") / "src"
    rl, unet = src / "cells" / "rl", src / "cells" / "unet"
    fake_run(rl / "run", 1)
    train_baseline("unet", tiny_store, unet / "run", max_updates=2, batch=2, width="tiny", val_every=1,
                   select="last", progress=False)
    for cell, method, row in ((rl, "pixeldrl", "PixelDRL-MG"), (unet, "unet", "U-Net")):
        (cell / "result.json").write_text(json.dumps({
            "id": cell.name, "setting": "2-fold patient CV", "row": row, "method": method, "seed": 0, "fold": 0,
            "test_split": "test", "metrics": {}, "step_dice": [], "per_image": [], "by_selection": {}}))
    return src


def dice_rows(result: dict) -> list[float]:
    return [r["dice"] for r in result["per_image"]]


def test_rescoring_without_averaging_repeats_the_training_time_scores(cv_folder, tiny_store, tmp_path, capsys):
    out = tmp_path / "out"
    assert rescore.main([str(cv_folder), "--data", str(tiny_store), "--out", str(out), "--no-progress"]) == 0
    rl = json.loads((out / "cells" / "rl" / "result.json").read_text())
    unet = json.loads((out / "cells" / "unet" / "result.json").read_text())
    store = SliceStore(tiny_store)
    direct, _, _ = evaluate_checkpoint(str(cv_folder / "cells" / "rl" / "run" / "checkpoints" / "latest.pt"),
                                       store, "test", "cpu")
    store.close()
    assert dice_rows(rl) == [r["dice"] for r in direct.per_image] and len(dice_rows(rl)) == len(store.indices("test"))
    trained = json.loads((cv_folder / "cells" / "unet" / "run" / "test_metrics.json").read_text())
    assert dice_rows(unet) == [r["dice"] for r in trained["by_selection"]["last"]["per_image"]]
    for r in (rl, unet):
        assert (r["tta"], r["selection"], set(r["by_selection"]), r["fold"]) == ("none", "last", {"last"}, 0)
        assert r["by_selection"]["last"]["per_image"] == r["per_image"]
    cells = load_cells(f"{out}=R@last")
    assert sorted(c["row"] for c in cells) == ["R PixelDRL-MG", "R U-Net"]
    assert "Dice" in capsys.readouterr().out


def test_a_rerun_skips_finished_cells_and_refuses_other_options(cv_folder, tiny_store, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(cv_folder), "--data", str(tiny_store), "--out", str(out), "--no-progress", "--tta", "flip"]
    assert rescore.main(args) == 0
    target = out / "cells" / "unet" / "result.json"
    assert json.loads(target.read_text())["tta"] == "flip"
    before = target.stat().st_mtime_ns
    capsys.readouterr()
    assert rescore.main(args) == 0 and target.stat().st_mtime_ns == before
    assert capsys.readouterr().out == ""
    assert rescore.main([*args[:-1], "d4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rescored with other options (tta flip, select last)" in err[0]


@pytest.mark.parametrize("case,message", [
    ("same", "--out must differ from the source folder"),
    ("no-cells", "not a reproduce.py folder (no cells/)"),
    ("no-checkpoint", "no best checkpoint in cell rl"),
])
def test_bad_input_is_one_line_and_writes_nothing(cv_folder, tiny_store, tmp_path, capsys, case, message):
    src, out, select = cv_folder, tmp_path / "out", "last"
    if case == "same":
        out = cv_folder
    elif case == "no-cells":
        src = tmp_path
    else:
        select = "best"  # the fake PixelDRL-MG run has latest.pt only
    code = rescore.main([str(src), "--data", str(tiny_store), "--out", str(out), "--select", select, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if case != "same":
        assert not list(out.glob("cells/rl/*"))
