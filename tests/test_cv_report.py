"""tools.cv_report: patient means, pooled figures, collapses and the paired comparison on made-up cells."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.cv_report import collapsed_seeds, cv_markdown, main, paired, patient_means, pooled, selected


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
