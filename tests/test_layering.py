"""The layer rules of docs/architecture.md, checked by walking every import:

- ``pki`` imports nothing of ``devices`` or ``rotation``; ``devices`` nothing of
  ``rotation``; third-party libraries only where they belong (boto3 in one module);
- click, and ``pki.cli``, only in the command-line modules (``pki/cli/``,
  ``devices/cli*.py``, ``rotation/cli*.py``; ``pki/__main__.py`` starts the CLI): the
  application core never needs the CLI;
- no import circle between modules (imports inside functions count; those under
  ``if TYPE_CHECKING:`` do not: they never run);
- no ``create_all`` outside the storage package: the schema comes from migrations.
"""

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


def is_cli_module(relative: str) -> bool:
    return (
        relative.startswith("pki/cli/")
        or (relative.startswith("devices/cli") and relative.endswith(".py"))
        or (relative.startswith("rotation/cli") and relative.endswith(".py"))
    )


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module ``path`` imports (``from A import B``: ``A``, and ``A.B`` as well, in
    case B is a module); with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if runtime_only and _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module)
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def source_files() -> list[Path]:
    return sorted(p for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports at run time. ``from A import B`` where
    ``A.B`` is a module is an edge to ``A.B`` (the package ``A`` is only where it lives);
    otherwise to ``A``."""
    modules = {module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = _runtime_imports(ast.parse(path.read_text(), filename=str(path)), modules)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def _runtime_imports(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    edges: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if _type_checking_only(child):
            continue
        if isinstance(child, ast.Import):
            edges.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            for alias in child.names:
                sub = f"{child.module}.{alias.name}"
                edges.add(sub if sub in modules else child.module)
        edges |= _runtime_imports(child, modules)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_is_code_to_check() -> None:
    assert any(p.parts[-2] == "pki" for p in source_files())
    assert any(is_cli_module(p.relative_to(ROOT).as_posix()) for p in source_files())


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
        if top == "click" or module == "pki.cli" or module.startswith("pki.cli."):
            assert is_cli_module(relative) or relative == "pki/__main__.py", (
                f"{relative} imports {module}: only the command-line modules may"
            )


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_absolute(path: Path) -> None:
    """Relative imports would pass the walkers above unseen."""
    relative = [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == [], f"relative imports on lines {relative}"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_schema_comes_from_migrations(path: Path) -> None:
    relative = path.relative_to(ROOT).as_posix()
    if "/migrations/" in relative:
        return
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "create_all"
    ]
    assert not calls, f"{relative} calls create_all: add a migration instead"


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_checkers_catch_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import devices.simulator\nfrom rotation import planner\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import click\n"
    )
    assert {"devices.simulator", "rotation", "rotation.planner", "click"} <= imported_modules(bad)
    assert "click" not in imported_modules(bad, runtime_only=True)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles(import_graph()) == [] and "pki.app" in import_graph()["pki.cli.root"]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert not is_cli_module("pki/app.py") and is_cli_module("rotation/cli_server.py")


def test_a_one_shot_issue_without_stand_ins_does_not_load_them(tmp_path: Path) -> None:
    """Factory lines call 'fleetpki issue' once per device: what it imports is its latency.
    Without running stand-ins, their modules (and the processes helpers) stay unloaded."""
    import os
    import subprocess
    import sys

    from tests.helpers import make_csr

    env = dict(os.environ, FLEETPKI_HOME=str(tmp_path / "home"))
    env.pop("FLEETPKI_DATABASE_URL", None)
    run = [sys.executable, "-X", "importtime", "-m", "pki"]
    subprocess.run([*run, "ca", "init"], env=env, check=True, capture_output=True, timeout=120)
    csr, _key = make_csr("line-1")
    (tmp_path / "d.csr").write_bytes(csr)
    done = subprocess.run(
        [*run, "issue", "device", "line-1", "--csr", str(tmp_path / "d.csr"), "--out",
         str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}  # fmt: skip
    assert "pki.issue.issuer" in imported  # the log is what we think it is
    unneeded = ("devices.standins", "rotation", "multiprocessing", "pki.processes")
    loaded = sorted(m for m in imported if m.startswith(unneeded))
    assert loaded == []


def test_fleetpki_plugins_are_found_as_importlib_metadata_finds_them() -> None:
    """pki.plugins reads entry_points.txt itself (importing importlib.metadata would cost
    fleetpki --help a quarter of its time): it must find exactly what the library finds."""
    import importlib.metadata

    from pki import plugins

    everything = importlib.metadata.entry_points()
    theirs = sorted(
        (point.group, point.name, point.value)
        for group in everything.groups
        if group.startswith("fleetpki.")
        for point in everything.select(group=group)
    )
    ours = sorted((p.group, p.name, p.value) for p in plugins.installed())
    assert ours == theirs and ("fleetpki.commands", "rotation", "rotation.cli:rotation") in ours
    loaded = plugins.entry_points("fleetpki.migrations")[0].load()
    assert type(loaded).__name__ == "Branch"


def test_an_entry_points_file_is_read_as_ini() -> None:
    from pki import plugins

    text = (
        "# comment\n[console_scripts]\nx = y:z\n\n[fleetpki.commands]\n"
        " hello = some.module:group.sub [extra]\n; other\nbroken\n=nothing\n"
        "[fleetpki.migrations]\nmine=pkg.migrations:BRANCH\n"
    )
    assert plugins.parse(text) == [
        plugins.EntryPoint("hello", "some.module:group.sub [extra]", "fleetpki.commands"),
        plugins.EntryPoint("mine", "pkg.migrations:BRANCH", "fleetpki.migrations"),
    ]
    point = plugins.EntryPoint("j", "json:decoder.JSONDecoder [x]", "fleetpki.t")
    assert point.load().__name__ == "JSONDecoder"


def test_version_and_default_home_agree_with_their_sources() -> None:
    """--version prints pki.__version__ without a metadata lookup; pki.app repeats the
    default home so that the command line starts without importing pki.home."""
    import importlib.metadata

    import pki
    import pki.app
    import pki.home

    assert pki.__version__ == importlib.metadata.version("fleetpki")
    assert pki.app.DEFAULT_HOME == pki.home.DEFAULT_HOME
