"""tools.cv_report: patient means, pooled figures, collapses and the paired comparison on made-up cells."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.cv_report import (
    collapsed_seeds,
    cv_markdown,
    load_patient_table,
    main,
    paired,
    patient_means,
    patient_rows,
    pooled,
    selected,
)


def cell(method, seed, fold, rows, step_dice=()):
    per_image = [{"case": c, "slice": i, "kept": kept, "object": 0.05, "dice": d, "ppv": d, "sen": d, "iou": d / 2,
                  "biou": d / 4, "hd95": 10 * (1 - d)} for i, (c, d, kept) in enumerate(rows)]
    return {"id": f"{method}-{fold}-{seed}", "row": method, "seed": seed, "fold": fold, "per_image": per_image,
            "step_dice": list(step_dice)}


@pytest.fixture
def results():
    # patient a has three slices, b one: patient means weigh them equally, slice pooling does not
    return [
        cell("RL", 0, 0, [("a", 0.9, 0.05), ("a", 0.7, 0.05), ("a", 0.8, 0.05)], (0.6, 0.8)),
        cell("RL", 0, 1, [("b", 0.4, 0.05)], (0.3, 0.4)),
        cell("RL", 1, 0, [("a", 0.6, 0.05), ("a", 0.6, 0.05), ("a", 0.6, 0.05)], (0.6, 0.6)),
        cell("RL", 1, 1, [("b", 0.2, 0.05)], (0.3, 0.2)),
        cell("UNet", 0, 0, [("a", 0.5, 0.05), ("a", 0.5, 0.05), ("a", 0.5, 0.05)]),
        cell("UNet", 0, 1, [("b", 0.5, 0.99)]),
    ]


def test_patient_means_and_pooled(results):
    pm = patient_means(results)
    assert pm["RL"][0]["a"]["dice"] == pytest.approx(0.8) and pm["RL"][0]["b"]["dice"] == pytest.approx(0.4)
    p = pooled(results)
    # seed 0: (0.8 + 0.4) / 2 = 0.6; seed 1: (0.6 + 0.2) / 2 = 0.4 -> 0.5 ± 0.1
    assert p["RL"]["patient"]["dice"] == pytest.approx((0.5, 0.1))
    # slice-pooled: seed 0 (0.9 + 0.7 + 0.8 + 0.4) / 4 = 0.7, seed 1 (1.8 + 0.2) / 4 = 0.5
    assert p["RL"]["slice"]["dice"] == pytest.approx((0.6, 0.1))
    assert p["RL"]["seeds"] == pytest.approx({0: 0.6, 1: 0.4}) and p["RL"]["cases"] == 2


def test_collapsed_seeds():
    assert collapsed_seeds({0: 0.7, 1: 0.3}) == [1]  # 0.3 < 0.8 * 0.5
    assert collapsed_seeds({0: 0.6, 1: 0.5}) == []


def test_paired(results):
    p = paired(results, "RL", "UNet")
    # RL over seeds: a (0.8 + 0.6) / 2 = 0.7, b 0.3; UNet: a 0.5, b 0.5
    assert p["cases"] == ["a", "b"] and p["diffs"] == pytest.approx([0.2, -0.2])
    assert p["mean"] == pytest.approx(0.0) and p["wins"] == 1 and p["p"] == 1.0


def test_markdown_names_collapses_and_steps(results):
    text = cv_markdown(results)
    assert "| RL | 2 | 2 | 0.5000 ± 0.1000" in text
    assert "UNet-1-0" in text  # kept 99% of the pixels: keeps every pixel
    assert "after step 1 0.4500, after the last step 0.5000" in text and "last below first in 1" in text
    assert "| UNet | 2 |" in text  # paired table: two patients


def write_folder(root, cells):
    for c in cells:
        d = root / "cells" / c["id"]
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(c))
    return root


def test_command_line_merges_labelled_folders(results, tmp_path, capsys):
    a = write_folder(tmp_path / "a", [c for c in results if c["row"] == "RL"])
    b = write_folder(tmp_path / "b", [c for c in results if c["row"] == "UNet"])
    out = tmp_path / "report.md"
    assert main([f"{b}=B", f"{a}=A", "--first", "A RL", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "| A RL | 2 | 2 | 0.5000 ± 0.1000" in text
    assert "minus each other method" in text and "| B UNet | 2 | +0.0000" in text  # A RL is compared first


def test_command_line_errors_are_one_line(results, tmp_path, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith("none: no finished cells (cells/*/result.json)")
    a = write_folder(tmp_path / "a", results[:1])
    assert main([str(a), "--first", "nope"]) == 2
    assert "--first: no method 'nope'; methods: RL" in capsys.readouterr().err
    bad = tmp_path / "bad" / "cells" / "x"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{}")
    assert main([str(tmp_path / "bad")]) == 2
    assert "not a cross-validation cell" in capsys.readouterr().err


def test_runs_as_a_script(results, tmp_path):
    from tests.conftest import ROOT

    a = write_folder(tmp_path / "a", results)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "cv_report.py"), str(a)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "## Pooled over patients" in proc.stdout


def test_selected_takes_the_other_checkpoints_scores(results, tmp_path, capsys):
    last = cell("RL", 0, 0, [("a", 0.1, 0.05)], (0.2, 0.1))
    r = results[0] | {"selection": "best", "by_selection": {"best": {}, "last": {k: last[k] for k in
                                                                             ("per_image", "step_dice")}}}
    assert selected(r, "best") is r
    s = selected(r, "last")
    assert s["selection"] == "last" and s["per_image"] == last["per_image"] and s["step_dice"] == [0.2, 0.1]
    assert r["per_image"] != last["per_image"]  # the input is left as it was
    with pytest.raises(ValueError, match="no scores of its 'last' checkpoint"):
        selected(results[1], "last")
    a = write_folder(tmp_path / "a", [r])
    assert main([f"{a}=A@last"]) == 0 and "| A RL | 1 | 1 | 0.1000" in capsys.readouterr().out
    b = write_folder(tmp_path / "b", results[1:2])
    assert main([f"{b}=B@last"]) == 2 and "predates by_selection" in capsys.readouterr().err
    assert main([f"{b}=B@median"]) == 2 and "best or last, got 'median'" in capsys.readouterr().err


def test_patient_rows_hold_the_means_per_fold(results):
    rows = {(r["method"], r["seed"], r["case"]): r for r in patient_rows(results)}
    a = rows[("RL", 0, "a")]
    assert a["slices"] == 3 and a["fold"] == 0 and a["dice"] == pytest.approx(0.8) and a["iou"] == pytest.approx(0.4)
    assert a["kept"] == pytest.approx(0.05) and a["step_dice"] == [0.6, 0.8]
    assert rows[("UNet", 0, "b")]["kept"] == pytest.approx(0.99) and rows[("UNet", 0, "b")]["step_dice"] == []


def test_patient_table_round_trip_gives_the_same_report(results, tmp_path, capsys):
    a = write_folder(tmp_path / "a", results)
    table = tmp_path / "patients.csv"
    assert main([str(a), "--patients", str(table)]) == 0
    direct = capsys.readouterr().out
    assert table.read_text().startswith("method,seed,fold,case,slices,dice,iou,biou,hd95,kept,object,step_dice,cell\n")
    assert main([str(table)]) == 0
    assert capsys.readouterr().out == direct  # pooled, slice-pooled, collapses (UNet-1-0 kept 99%), steps, paired
    assert main([f"{table}=T", str(a), "--first", "RL"]) == 0
    assert "| T RL | 2 | +0.0000" in capsys.readouterr().out  # a table pairs with a folder of the same cells


def test_a_minimal_patient_table_pairs_by_dice_alone(tmp_path):
    table = tmp_path / "ref.csv"
    table.write_text("# typed from a report\nmethod,seed,case,dice\nref,0,a,0.5\n# b came later\nref,0,b,0.6\n")
    cells = load_patient_table(table, "R")
    assert len(cells) == 1 and cells[0]["row"] == "R ref" and cells[0]["fold"] == 0
    assert [i["case"] for i in cells[0]["per_image"]] == ["a", "b"]
    mine = [cell("RL", 0, 0, [("a", 0.7, 0.05)]), cell("RL", 0, 1, [("b", 0.5, 0.05)])]
    p = paired(mine + cells, "RL", "R ref")
    assert p["diffs"] == pytest.approx([0.2, -0.1]) and p["mean"] == pytest.approx(0.05)
    assert "| R ref | 1 | 2 | 0.5500 ± 0.0000 | nan" in cv_markdown(cells)  # no IoU column: NaN, not a guess


@pytest.mark.parametrize("text, message", [
    ("", "no rows"),
    ("method,seed,case\nx,0,a\n", "not a patient table: no dice column"),
    ("method,seed,case,dice\nx,0,a,0.5\nx,zero,b,0.5\n", "line 3: invalid literal for int()"),
    ("method,seed,case,dice\nx,0,a,high\n", "line 2: could not convert string to float"),
    ("# a comment\nmethod,seed,case,dice\n# another\nx,0,a,high\n", "line 4: could not convert"),
    ("method,seed,case,dice,slices\nx,0,a,0.5,0\n", "line 2: needs a method, a case and at least one slice"),
    ("method,seed,case,dice\nx,0,a,0.5\nx\n", "line 3: int() argument must be"),
])
def test_bad_patient_tables_are_one_line_errors(tmp_path, capsys, text, message):
    table = tmp_path / "bad.csv"
    table.write_text(text)
    assert main([str(table)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {table}") and message in err and "\n" not in err


def test_a_patient_table_takes_no_checkpoint_rule(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("method,seed,case,dice\nx,0,a,0.5\n")
    assert main([f"{table}=T@last"]) == 2 and "holds one checkpoint's scores" in capsys.readouterr().err


def test_the_committed_patient_tables_read_back():
    from tests.conftest import ROOT

    tables = sorted((ROOT / "docs" / "cv").glob("*.csv"))
    assert tables, "docs/cv holds the per-patient tables of docs/RESULTS.md"
    for t in tables:
        cells = load_patient_table(t)
        for method, seeds in patient_means(cells).items():
            for seed, cases in seeds.items():  # every seed of a 4-fold CV tests each of the 8 patients once
                assert len(cases) == 8, f"{t.name}: {method} seed {seed} has {len(cases)} patients"
