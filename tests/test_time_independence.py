"""The suite holds on any calendar day: no test fixes an absolute date.

Every fixed clock in a test is relative to ``tests.helpers.NOW`` (the real clock, to the
minute), so a fixture can never be overtaken by the calendar. Committed database fixtures
made by an older fleetpki (named migration fixtures) are the one exemption.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folders whose files are snapshots made on a given day (exempt by name)
EXEMPT = ("tests/fixtures/migrations/",)
_DATE_TEXT = re.compile(r"(19|20|21)\d\d-[01]\d-[0-3]\d")
_DATETIME_CALLS = {"datetime", "date"}


def _sources() -> list[Path]:
    found = [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
    me = Path(__file__).resolve()  # its own self-test holds sample dates
    return [p for p in found if p != me and not str(p.relative_to(ROOT)).startswith(EXEMPT)]


def absolute_dates(source: str) -> list[tuple[int, str]]:
    """(line, text) of every absolute date in ``source``: ``datetime(2026, …)`` or
    ``date(…)`` with a literal year, and ISO-like date text in a string."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if (
                name in _DATETIME_CALLS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, int)
            ):
                found.append((node.lineno, f"{name}({first.value}, …)"))
            if name in {"fromisoformat", "strptime"} and isinstance(first, ast.Constant):
                found.append((node.lineno, f"{name}({first.value!r})"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _DATE_TEXT.search(node.value)
            if match:
                found.append((node.lineno, repr(match.group(0))))
    return found


def test_no_fixture_date_is_absolute() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in _sources()
        for line, text in absolute_dates(path.read_text())
    ]
    assert offenders == [], "absolute dates in tests (make them relative to NOW):\n" + "\n".join(
        offenders
    )


def test_the_guard_finds_absolute_dates() -> None:
    sample = (
        "import datetime as dt\n"
        "A = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)\n"
        "B = dt.date(2030, 1, 1)\n"
        "C = '2026-01-01T00:00:00Z'\n"
        "D = dt.datetime.fromisoformat('2027-03-04')\n"
        "E = dt.timedelta(days=2026)\n"
    )
    assert [line for line, _ in absolute_dates(sample)] == [2, 3, 4, 5, 5]


def test_a_shifted_run_shifts_this_process_and_its_children(moto_endpoint: str) -> None:
    """Under ``scripts/test --shift``, this process and the programs it starts agree on the
    shifted time, and moto_server (left on the real clock) is that far behind: the shift
    really reached what checks dates."""
    import datetime as dt
    import email.utils
    import os
    import subprocess
    import urllib.request

    here = dt.datetime.now(dt.UTC)
    child = int(subprocess.run(["date", "+%s"], capture_output=True, text=True).stdout)
    assert abs(child - here.timestamp()) < 60
    with urllib.request.urlopen(f"{moto_endpoint}/moto-api/", timeout=10) as answer:
        real = email.utils.parsedate_to_datetime(answer.headers["Date"])
    shift = os.environ.get("FLEETPKI_TEST_SHIFT")
    if not shift:
        assert abs((here - real).total_seconds()) < 60
        return
    from pki.model import parse_duration

    expected = parse_duration(shift).total_seconds()
    assert abs((here - real).total_seconds() - expected) < 120
