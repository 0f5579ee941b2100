"""How the suite is run: the default and full tiers, and PostgreSQL required in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import full_tier_selected

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:9/test"  # the discard port: refused


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPKI_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_an_unreachable_postgresql_fails_the_run_where_it_is_required() -> None:
    selection = ("tests/test_ledger.py", "-k", "postgres")
    skipped = _pytest(*selection, FLEETPKI_TEST_PG_URL=UNREACHABLE_PG)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "skipped" in skipped.stdout and "PostgreSQL not reachable" in skipped.stdout
    required = _pytest(*selection, FLEETPKI_TEST_PG_URL=UNREACHABLE_PG, FLEETPKI_REQUIRE_PG="1")
    assert required.returncode != 0
    assert "FLEETPKI_REQUIRE_PG=1: the PostgreSQL half must run" in required.stdout
    assert "skipped" not in required.stdout.splitlines()[-1]


def test_ci_runs_the_full_tier_with_postgresql_required() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "FLEETPKI_REQUIRE_PG=1" in script and "scripts/test --full" in script


@pytest.mark.parametrize(
    ("markexpr", "env", "full"),
    [("", {}, False), ("", {"FLEETPKI_TEST_FULL": "1"}, True), ("slow", {}, True),
     ("not slow", {}, False), ("postgres and slow", {}, True), ("slowly", {}, False)],
)  # fmt: skip
def test_full_tier_selection(markexpr: str, env: dict[str, str], full: bool) -> None:
    assert full_tier_selected(markexpr, env) is full
