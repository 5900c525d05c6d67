"""No runtime function takes more than 6 parameters (issue 19): longer lists are grouped into dataclasses.

Counted on the source with ``ast``: every parameter except a leading ``self``/``cls``, keyword-only ones
included, ``*args`` and ``**kwargs`` one each.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("a3c", "workers", "datasets", "tools", "baselines")
LIMIT = 6

# "path:qualified.name" of functions that truly cannot change, each with its reason. Empty on purpose.
ALLOWED: dict[str, str] = {}


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def long_signatures() -> dict[str, int]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for name, fn in functions(tree):
                n = parameter_count(fn)
                if n > LIMIT:
                    found[f"{path.relative_to(ROOT)}:{name}"] = n
    return found


def test_parameter_counting():
    fn = ast.parse("def f(self, a, b=1, /, c=2, *args, d, e=3, **kw): pass").body[0]
    assert parameter_count(fn) == 7
    fn = ast.parse("def f(a, b): pass").body[0]
    assert parameter_count(fn) == 2


def test_no_function_takes_more_than_six_parameters():
    offenders = {k: v for k, v in long_signatures().items() if k not in ALLOWED}
    assert not offenders, offenders


def test_allow_list_is_current():
    assert set(ALLOWED) <= set(long_signatures()), "remove allow-list entries that no longer apply"


if __name__ == "__main__":
    for name, n in sorted(long_signatures().items()):
        print(n, name)
