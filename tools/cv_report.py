"""The patient-level cross-validation report of ``tools/reproduce.py cv``: pure functions on cell results.

A cell result (``reproduce.run_cell``) holds ``row`` (the method), ``seed``, ``fold``, ``step_dice``
and ``per_image`` rows (``case``, ``kept``, ``object`` and the six metrics of each test slice).
Every patient is tested in exactly one fold, so one seed's cells of a method cover every patient
once. Figures:

* **patient means**: each patient's mean over its slices, per seed;
* **pooled** (per seed): the mean of the patient means (every patient counts once, whatever its
  number of slices) and the slice-pooled mean; then mean ± sd over seeds;
* **collapsed runs**: seeds whose pooled Dice is under 0.8x the method's mean over seeds, and cells
  whose test masks keep every pixel or zero every pixel (``a3c.evaluate.policy_collapse``);
* **steps**: Dice after the first and after the last step (PixelDRL-MG), mean over cells;
* **paired**: per patient, Dice of the first method (mean over seeds) minus each other method's,
  with the mean difference, a bootstrap 95% interval over patients and the exact Wilcoxon
  signed-rank p-value (``a3c.stats``).

From the command line it merges the cells of several ``reproduce.py cv`` folders into one report,
e.g. two recipes and extra seeds of a baseline::

    python tools/cv_report.py OUT_A=V2 OUT_B=V2+aug [--first "V2 PixelDRL-MG"] [--out report.md]

``DIR=LABEL`` prefixes the methods of ``DIR`` with ``LABEL`` (cells of one label and method from
several folders pool as seeds of one method); the first method listed is the one compared.
``DIR=LABEL@last`` (or ``@best``) scores each cell on that checkpoint, from its ``by_selection``
(both trainers test the best-validation and the final checkpoint).

``--patients FILE.csv`` also writes the **patient table**: one row per method, seed, fold and
patient (slice count, the mean of each metric, of the kept and the true object share, and the
fold's Dice after each step). A run folder lives outside the repository and can be lost; its
patient table is small enough to commit, and ``FILE.csv`` (or ``FILE.csv=LABEL``) in place of a
folder reads it back, giving the same pooled figures, collapses, steps and paired comparisons.
Only ``method``, ``seed``, ``case`` and ``dice`` are required (e.g. a table typed from a report);
a missing ``fold`` reads as 0, ``slices`` as 1 and a missing metric as NaN; lines starting with
``#`` are comments.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from a3c.config import SELECTIONS
from a3c.evaluate import mask_shares, policy_collapse
from a3c.fileio import write_bytes_atomic
from a3c.stats import bootstrap_ci, wilcoxon_signed_rank

REPORT_KEYS = ("dice", "iou", "biou", "hd95")
SHARE_KEYS = ("kept", "object")
PATIENT_COLUMNS = ("method", "seed", "fold", "case", "slices", *REPORT_KEYS, *SHARE_KEYS, "step_dice", "cell")
COLLAPSE_FRACTION = 0.8


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, population sd); NaN for no values, and the sd NaN where a value is not finite."""
    if not values:
        return float("nan"), float("nan")
    finite = all(math.isfinite(v) for v in values)
    return statistics.fmean(values), statistics.pstdev(values) if finite else float("nan")


def patient_means(results: list[dict]) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """method -> seed -> case -> {metric: mean over the case's test slices} (from ``patient_rows``)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in patient_rows(results):
        out[row["method"]][row["seed"]][row["case"]] = {k: row[k] for k in REPORT_KEYS}
    return {m: dict(seeds) for m, seeds in out.items()}


def pooled(results: list[dict]) -> dict[str, dict]:
    """method -> {"patient": {metric: (mean, sd) over seeds of the mean of patient means},
    "slice": {metric: (mean, sd) over seeds of the slice-pooled mean}, "seeds": {seed: patient-pooled Dice},
    "cases": number of patients}."""
    pm = patient_means(results)
    out = {}
    for method, seeds in pm.items():
        per_seed = {s: {k: statistics.fmean(c[k] for c in cases.values()) for k in REPORT_KEYS}
                    for s, cases in seeds.items()}
        slices = defaultdict(list)
        for r in results:
            if r["row"] == method:
                slices[r["seed"]] += r["per_image"]
        per_seed_slice = {s: {k: float(np.mean([i[k] for i in imgs])) for k in REPORT_KEYS}
                          for s, imgs in slices.items()}
        out[method] = {
            "patient": {k: _mean_sd([v[k] for v in per_seed.values()]) for k in REPORT_KEYS},
            "slice": {k: _mean_sd([v[k] for v in per_seed_slice.values()]) for k in REPORT_KEYS},
            "seeds": {s: v["dice"] for s, v in sorted(per_seed.items())},
            "cases": len(next(iter(seeds.values()))),
        }
    return out


def collapsed_seeds(seed_dice: dict[int, float], fraction: float = COLLAPSE_FRACTION) -> list[int]:
    """Seeds whose pooled Dice is under ``fraction`` x the mean over seeds."""
    mean = statistics.fmean(seed_dice.values())
    return [s for s, d in seed_dice.items() if d < fraction * mean]


def collapsed_cells(results: list[dict]) -> dict[str, list[str]]:
    """method -> ids of cells whose test masks keep every pixel or zero every pixel."""
    out: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if policy_collapse(*mask_shares(r["per_image"])):
            out[r["row"]].append(r["id"])
    return out


def paired(results: list[dict], first: str, other: str, key: str = "dice") -> dict:
    """Per-patient ``key`` of ``first`` minus ``other`` (each the mean over its seeds), with the mean,
    a bootstrap 95% interval and the exact Wilcoxon p-value; patients tested by both only."""
    pm = patient_means(results)

    def by_case(method: str) -> dict[str, float]:
        per = defaultdict(list)
        for cases in pm[method].values():
            for c, v in cases.items():
                per[c].append(v[key])
        return {c: statistics.fmean(v) for c, v in per.items()}

    a, b = by_case(first), by_case(other)
    cases = sorted(set(a) & set(b))
    diffs = [a[c] - b[c] for c in cases]
    return {"cases": cases, "diffs": diffs, "mean": statistics.fmean(diffs) if diffs else float("nan"),
            "ci": bootstrap_ci(diffs), "wins": sum(d > 0 for d in diffs), **wilcoxon_signed_rank(diffs)}


def cv_markdown(results: list[dict]) -> str:
    """The report's markdown: pooled table, per-patient Dice, collapses, steps, paired comparisons."""
    if not results:
        return ""
    pool = pooled(results)
    methods = list(pool)
    lines = ["## Pooled over patients", "",
             "Mean over seeds (± sd over seeds) of the mean of the patient means; slice-pooled Dice beside it.", "",
             "| method | seeds | patients | DICE | IoU | BIoU | HD95 | slice-pooled DICE | per-seed DICE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        p = pool[m]
        cells = " | ".join(f"{p['patient'][k][0]:.4f} ± {p['patient'][k][1]:.4f}" for k in REPORT_KEYS)
        seeds = ", ".join(f"{s}: {d:.3f}" for s, d in p["seeds"].items())
        lines.append(f"| {m} | {len(p['seeds'])} | {p['cases']} | {cells} | "
                     f"{p['slice']['dice'][0]:.4f} ± {p['slice']['dice'][1]:.4f} | {seeds} |")
    pm = patient_means(results)
    cases = sorted({c for seeds in pm.values() for cs in seeds.values() for c in cs})
    lines += ["", "## Dice per patient", "", "Mean ± sd over seeds of the patient's mean slice Dice.", "",
              "| patient | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for c in cases:
        vals = [_mean_sd([cs[c]["dice"] for cs in pm[m].values() if c in cs]) for m in methods]
        lines.append(f"| {c} | " + " | ".join(f"{v[0]:.3f} ± {v[1]:.3f}" for v in vals) + " |")
    cc = collapsed_cells(results)
    lines += ["", "## Collapsed runs", ""]
    for m in methods:
        low = collapsed_seeds(pool[m]["seeds"])
        lines.append(f"- {m}: seeds under {COLLAPSE_FRACTION}x the mean pooled Dice: {low or 'none'}; "
                     f"cells keeping or zeroing every pixel: {cc.get(m) or 'none'}")
    by_method = defaultdict(list)  # each cell's Dice per step (PixelDRL-MG only: baselines have none)
    for r in results:
        if r.get("step_dice"):
            by_method[r["row"]].append(r["step_dice"])
    if by_method:
        lines += ["", "## Dice after each step", ""]
        for m, sd in by_method.items():
            first, last = statistics.fmean(s[0] for s in sd), statistics.fmean(s[-1] for s in sd)
            worse = sum(s[-1] < s[0] for s in sd)
            lines.append(f"- {m}: after step 1 {first:.4f}, after the last step {last:.4f} (mean over {len(sd)} cells; "
                         f"last below first in {worse})")
    if len(methods) > 1:
        lines += ["", f"## Paired per-patient comparison: {methods[0]} minus each other method (Dice)", "",
                  "| other method | patients | mean difference | bootstrap 95% CI | patients won "
                  "| Wilcoxon p (exact) |",
                  "|---|---|---|---|---|---|"]
        for m in methods[1:]:
            p = paired(results, methods[0], m)
            lines.append(f"| {m} | {len(p['cases'])} | {p['mean']:+.4f} | [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] | "
                         f"{p['wins']}/{len(p['cases'])} | {p['p']:.3f} |")
    return "\n".join(lines) + "\n"


def selected(result: dict, rule: str) -> dict:
    """``result`` with its ``metrics``, ``step_dice`` and ``per_image`` taken from the checkpoint that
    ``rule`` (best or last) selects; ValueError when the cell did not score that checkpoint."""
    if rule == result.get("selection", "best"):
        return result
    other = (result.get("by_selection") or {}).get(rule)
    if other is None:
        raise ValueError(f"cell {result.get('id', '?')} has no scores of its {rule!r} checkpoint "
                         f"(its result.json predates by_selection)")
    return result | other | {"selection": rule}


def load_cells(spec: str) -> list[dict]:
    """``DIR``, ``DIR=LABEL`` or ``DIR=LABEL@RULE`` -> the finished cells (``DIR/cells/*/result.json``)
    of a cv folder, each method renamed ``LABEL METHOD`` when a label is given and scored on the
    checkpoint ``RULE`` (best or last) selects when one is given; ``FILE.csv[=LABEL]`` -> the cells of
    a patient table (``load_patient_table``). Raises ValueError (one line)."""
    folder, _, label = spec.partition("=")
    label, _, rule = label.partition("@")
    if folder.endswith(".csv"):
        if rule:
            raise ValueError(f"{spec}: a patient table holds one checkpoint's scores; no @{rule}")
        return load_patient_table(folder, label)
    if rule and rule not in SELECTIONS:
        raise ValueError(f"{spec}: the rule after @ is best or last, got {rule!r}")
    paths = sorted(Path(folder).glob("cells/*/result.json"))
    if not paths:
        raise ValueError(f"{folder}: no finished cells (cells/*/result.json)")
    cells = []
    for p in paths:
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: not a readable cell result ({exc})") from None
        if "fold" not in r or "per_image" not in r:
            raise ValueError(f"{p}: not a cross-validation cell (no fold or per-slice rows)")
        if rule:
            try:
                r = selected(r, rule)
            except ValueError as exc:
                raise ValueError(f"{p}: {exc}") from None
        if label:
            r["row"] = f"{label} {r['row']}"
        cells.append(r)
    return cells


def patient_rows(results: list[dict]) -> list[dict]:
    """The patient table of ``results``: one row per method, seed, fold and case (``PATIENT_COLUMNS``),
    each metric and share the mean over the case's test slices, ``step_dice`` (a list) and ``cell``
    (the id) the fold's."""
    groups: dict = defaultdict(list)
    cell_of = {}
    for r in results:
        cell_of[(r["row"], r["seed"], r["fold"])] = r
        for img in r["per_image"]:
            groups[(r["row"], r["seed"], r["fold"], img["case"])].append(img)
    rows = []
    for (method, seed, fold, case), imgs in groups.items():
        cell = cell_of[(method, seed, fold)]
        means = {k: float(np.mean([i.get(k, math.nan) for i in imgs])) for k in (*REPORT_KEYS, *SHARE_KEYS)}
        rows.append({"method": method, "seed": seed, "fold": fold, "case": case, "slices": len(imgs), **means,
                     "step_dice": list(cell.get("step_dice") or []), "cell": cell.get("id", "")})
    return rows


def patient_csv(results: list[dict]) -> str:
    """``patient_rows`` as CSV text; floats in full precision, ``step_dice`` space-separated."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PATIENT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in patient_rows(results):
        w.writerow(row | {k: repr(row[k]) for k in (*REPORT_KEYS, *SHARE_KEYS)}
                   | {"step_dice": " ".join(repr(x) for x in row["step_dice"])})
    return buf.getvalue()


def load_patient_table(path: str | Path, label: str = "") -> list[dict]:
    """A patient table (``patient_csv``) -> cells, one per method, seed and fold, whose ``per_image``
    repeats each patient's means ``slices`` times (so patient means, slice-pooled means and mask
    shares come out as from the original cells). Raises ValueError (one line, naming the file)."""
    path = Path(path)
    try:
        numbered = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1)
                    if not line.startswith("#")]  # comment lines: where the figures came from
        table = list(csv.DictReader(line for _, line in numbered))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable patient table ({exc})") from None
    if not table:
        raise ValueError(f"{path}: no rows (a patient table has a header and one row per patient)")
    missing = {"method", "seed", "case", "dice"} - set(table[0])
    if missing:
        raise ValueError(f"{path}: not a patient table: no {', '.join(sorted(missing))} column "
                         f"(columns are {', '.join(PATIENT_COLUMNS)})")
    cells: dict = {}
    for (n, _), row in zip(numbered[1:], table):
        try:
            seed, fold = int(row["seed"]), int(row.get("fold") or 0)
            slices = int(row.get("slices") or 1)
            vals = {k: float(row[k]) if row.get(k) not in (None, "") else math.nan for k in (*REPORT_KEYS, *SHARE_KEYS)}
            steps = [float(x) for x in (row.get("step_dice") or "").split()]
        except (TypeError, ValueError) as exc:  # TypeError: a short row's missing field
            raise ValueError(f"{path}, line {n}: {exc}") from None
        if slices < 1 or not row["case"] or not row["method"]:
            raise ValueError(f"{path}, line {n}: needs a method, a case and at least one slice")
        method = f"{label} {row['method']}" if label else row["method"]
        cell_id = row.get("cell") or f"{path.name}:{method}:fold{fold}:seed{seed}"
        c = cells.setdefault((method, seed, fold), {"id": cell_id,
                                                    "row": method, "seed": seed, "fold": fold,
                                                    "step_dice": steps, "per_image": []})
        c["per_image"] += [{"case": row["case"], **vals} for _ in range(slices)]
    return list(cells.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/cv_report.py",
                                 description="Merge reproduce.py cv folders into one cross-validation report.")
    ap.add_argument("folders", nargs="+", metavar="DIR[=LABEL]", help="cv output folders, optionally labelled, "
                    "optionally with the checkpoint rule: DIR=LABEL@last; or patient tables FILE.csv[=LABEL]")
    ap.add_argument("--first", default=None, help="method the paired comparisons start from (default: the first)")
    ap.add_argument("--out", default=None, help="also write the markdown to this file")
    ap.add_argument("--patients", default=None, metavar="FILE.csv",
                    help="also write the patient table (one row per method, seed, fold and patient)")
    args = ap.parse_args(argv)
    try:
        results = [r for spec in args.folders for r in load_cells(spec)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.first:
        rows = {r["row"] for r in results}
        if args.first not in rows:
            print(f"error: --first: no method {args.first!r}; methods: {', '.join(sorted(rows))}", file=sys.stderr)
            return 2
        results.sort(key=lambda r: r["row"] != args.first)  # stable: the rest keep their order
    text = cv_markdown(results)
    print(text, end="")
    if args.out:
        write_bytes_atomic(Path(args.out), text.encode())
    if args.patients:
        write_bytes_atomic(Path(args.patients), patient_csv(results).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
