"""The direction of imports (README.md, "Layout"), checked on the source with ``ast``."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"a3c", "workers", "datasets", "tools", "baselines", "configs", "tests", "bench"}


# Standard-library-only leaf modules any package may import (the writers' shared output checks).
LEAVES = {"a3c.fileio"}


def project_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names if a.name not in LEAVES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module not in LEAVES:
            names.add(node.module.split(".")[0])
    return names & PROJECT


def test_leaves_import_only_the_standard_library():
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert top <= set(sys.stdlib_module_names) | {"__future__"}, (leaf, top)


RULES = [
    # (package, files exempt, packages it must not import)
    ("datasets", set(), PROJECT - {"datasets"}),
    ("a3c", {"launch.py"}, {"workers", "datasets", "tools", "baselines"}),
    ("tools", set(), {"workers"}),
    ("workers", set(), {"tools", "baselines"}),
    ("baselines", set(), {"workers", "tools"}),
]


@pytest.mark.parametrize("package,exempt,forbidden", RULES, ids=[r[0] for r in RULES])
def test_import_direction(package, exempt, forbidden):
    files = [p for p in sorted((ROOT / package).rglob("*.py")) if p.name not in exempt]
    assert files
    offenders = [f"{p.relative_to(ROOT)} imports {sorted(project_imports(p) & forbidden)}"
                 for p in files if project_imports(p) & forbidden]
    assert not offenders, offenders


def test_only_launch_imports_workers():
    importers = [p.relative_to(ROOT) for p in ROOT.glob("*/*.py")
                 if "workers" in project_imports(p) and p.parent.name not in ("workers", "tests")]
    assert [str(p) for p in importers] == ["a3c/launch.py"]
