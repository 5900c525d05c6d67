"""`datasets` imports no other project code (DESIGN.md section 6)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "datasets"
PROJECT = {"a3c", "workers", "tools", "configs", "tests", "bench"}


def test_datasets_imports_no_project_code():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in PROJECT]
    assert not offenders, offenders
