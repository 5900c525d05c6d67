"""Describe a slice store: splits, cases, image shape, foreground fraction, provenance.

::

    python -m datasets.inspect FILE.h5 [--json]

Exit status 2 with a one-line message on stderr if FILE is not a valid store (missing, not
HDF5, wrong or missing ``schema_version``, missing datasets).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from .store import N_FOLDS, SUBSET_SIZES, SliceStore, StoreError


def foreground_fraction(store: SliceStore, idx: np.ndarray, batch: int = 256) -> float:
    """Mean of the masks over the slices ``idx`` (fraction of pixels that are object)."""
    if len(idx) == 0:
        return 0.0
    total = 0
    for s in range(0, len(idx), batch):
        total += int(store.read_masks(idx[s:s + batch]).sum(dtype=np.int64))
    h, w = store.image_shape[1:]
    return total / (len(idx) * h * w)


def describe(path) -> dict:
    """Everything ``inspect`` prints, as one JSON-serialisable dict."""
    with SliceStore(path) as store:
        sizes = store.split_sizes()

        def part(name: str, with_cases: bool = True) -> dict:
            if sizes[name] == 0:
                return {"slices": 0, "cases": [] if with_cases else 0, "foreground_fraction": None}
            idx = store.indices(name)
            cases = store.cases(name)
            return {
                "slices": int(len(idx)),
                "cases": cases if with_cases else len(cases),
                "foreground_fraction": round(foreground_fraction(store, idx), 6),
            }

        info = {
            "path": str(store.path),
            "schema_version": store.attrs.get("schema_version"),
            "image_shape": list(store.image_shape),
            "slices": store.n,
            "cases": len(store.cases("all")),
            "splits": {name: part(name) for name in ("train", "val", "test")},
            "all": part("all", with_cases=False),
            "subsets": {f"train_{k}": {"slices": sizes[f"train_{k}"]} for k in SUBSET_SIZES},
            "folds": {
                f"fold{k}": {"test_slices": sizes[f"fold{k}/test"],
                             "test_cases": store.cases(f"fold{k}/test") if sizes[f"fold{k}/test"] else []}
                for k in range(N_FOLDS)
            },
            "attrs": store.attrs,
        }
        return info


def format_text(info: dict) -> str:
    c, h, w = info["image_shape"]
    lines = [
        f"{info['path']}",
        f"  schema_version {info['schema_version']}, {info['slices']} slices, {info['cases']} cases, "
        f"image shape (C,H,W) = ({c}, {h}, {w}), foreground {100 * (info['all']['foreground_fraction'] or 0):.2f}%",
        "",
        f"  {'split':<6} {'slices':>7} {'cases':>6} {'fg %':>7}  case ids",
    ]
    for name, s in info["splits"].items():
        fg = "-" if s["foreground_fraction"] is None else f"{100 * s['foreground_fraction']:.2f}"
        shown = ", ".join(s["cases"][:8]) + (f", ... (+{len(s['cases']) - 8})" if len(s["cases"]) > 8 else "")
        lines.append(f"  {name:<6} {s['slices']:>7} {len(s['cases']):>6} {fg:>7}  {shown}")
    lines.append("")
    lines.append("  k-shot subsets of train: " + ", ".join(
        f"{k} {v['slices']} slices" for k, v in info["subsets"].items()))
    lines.append("  folds (test part): " + ", ".join(
        f"{k} {v['test_slices']} slices/{len(v['test_cases'])} cases" for k, v in info["folds"].items()))
    lines.append("")
    lines.append("  provenance:")
    for key in sorted(info["attrs"]):
        value = str(info["attrs"][key])
        lines.append(f"    {key}: {value if len(value) <= 200 else value[:197] + '...'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.inspect", description="Describe a PixelDRL-MG slice store.")
    ap.add_argument("store", help="store file (.h5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    try:
        info = describe(args.store)
    except StoreError as exc:
        print(f"datasets.inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, default=str) if args.json else format_text(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
