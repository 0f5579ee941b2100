"""The layer rules of DESIGN.md, checked by walking every import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level packages it must never import
FORBIDDEN = {
    "pki": {"devices", "rotation", "paho", "awscrt", "awsiot", "apscheduler", "trustme"},
    "devices": {"rotation", "apscheduler", "trustme"},
    "rotation": {"trustme"},  # trustme is for tests only
}
# third-party modules only these files may import
ONLY_IN = {
    "boto3": {"pki/aws/client.py"},
    "apscheduler": {"rotation/daemon.py"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def source_files() -> list[Path]:
    return sorted(p for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py"))


def test_there_is_code_to_check() -> None:
    assert any(p.parts[-2] == "pki" for p in source_files())


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_layers(path: Path) -> None:
    relative = path.relative_to(ROOT).as_posix()
    package = relative.split("/")[0]
    for module in imported_modules(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN[package], f"{relative} imports {module}"
        allowed = ONLY_IN.get(top)
        if allowed is not None:
            assert relative in allowed, f"{relative} imports {module}; only {allowed} may"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import devices.simulator\nfrom rotation import planner\n")
    assert imported_modules(bad) == {"devices.simulator", "rotation"}
