"""The shape of the product code, kept: no module over 500 lines, no function over 80
lines or of cyclomatic complexity over 20 (radon's count) in ``pki/``, ``devices/`` and
``rotation/`` (migrations, generated once and never edited, excepted). See
docs/architecture.md for where things live."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pki", "devices", "rotation")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_COMPLEXITY = 20


def product_files() -> list[Path]:
    return sorted(
        p
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "migrations" not in p.relative_to(ROOT).parts
    )


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, from its
    ``def`` to its end (docstring included; a command's click decorators are declarations
    and not counted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def complex_functions(source: str, limit: int = MAX_COMPLEXITY) -> list[tuple[str, int]]:
    return [(b.fullname, b.complexity) for b in cc_visit(source) if b.complexity > limit]


def test_there_is_code_to_measure() -> None:
    files = product_files()
    assert len(files) > 50
    assert ROOT / "pki" / "app.py" in files
    assert not any("migrations" in p.parts for p in files)


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size_and_functions(path: Path) -> None:
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{lines} lines: split the module by what it holds"
    assert long_functions(source) == [], "functions over 80 lines"
    assert complex_functions(source) == [], "functions of cyclomatic complexity over 20"


def test_the_checks_catch_what_they_are_for() -> None:
    body = "\n".join(f"    x = {i}" for i in range(85))
    assert long_functions(f"def long():\n{body}\n") == [("long", 86)]
    branches = "\n".join(f"    if a == {i}:\n        return {i}" for i in range(21))
    assert complex_functions(f"def tangled(a):\n{branches}\n    return -1\n") == [("tangled", 22)]
    assert long_functions("def short():\n    return 1\n") == []
