"""tools.cv_report: patient means, pooled figures, collapses and the paired comparison on made-up cells."""
from __future__ import annotations

import pytest

from tools.cv_report import collapsed_seeds, cv_markdown, paired, patient_means, pooled


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
