"""Renewal times and the rotation plan (pure), and the candidates read from the inventory."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pki.clock import FixedClock
from pki.inventory import Inventory
from rotation.planner import Candidate, candidates, plan
from rotation.schedule import RenewalPolicy, renewal_time
from tests.conftest import Cli
from tests.helpers import NOW

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_renewal_time_is_two_thirds_with_bounded_stable_jitter() -> None:
    end = START + dt.timedelta(days=90)
    policy = RenewalPolicy()
    times = [renewal_time(START, end, serial, policy) for serial in range(1, 30_000, 13)]
    assert min(times) >= START + dt.timedelta(days=60 - 4.5)
    assert max(times) <= START + dt.timedelta(days=60 + 4.5)
    assert max(times) - min(times) > dt.timedelta(days=8)  # really spread
    assert renewal_time(START, end, 1234, policy) == renewal_time(START, end, 1234, policy)
    exact = RenewalPolicy(jitter=0)
    assert renewal_time(START, end, 99, exact) == START + dt.timedelta(days=60)


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RenewalPolicy(fraction=1.5)
    with pytest.raises(ValueError, match="jitter"):
        RenewalPolicy(fraction=0.9, jitter=0.2)


def test_plan_selects_due_certificates_most_urgent_first() -> None:
    def cand(serial: int, days_old: int, lifetime: int) -> Candidate:
        nb = NOW - dt.timedelta(days=days_old)
        return Candidate(serial, f"t{serial}", "device", nb, nb + dt.timedelta(days=lifetime))

    pool = [cand(1, 10, 90), cand(2, 80, 90), cand(3, 70, 90), cand(4, 300, 397)]
    exact = RenewalPolicy(jitter=0)
    due = plan(pool, NOW, exact)
    assert [item.serial for item in due] == [2, 3, 4]  # by not_after
    assert [i.serial for i in plan(pool, NOW - dt.timedelta(days=11), exact)] == [2, 4]
    assert [i.serial for i in plan(pool, NOW, exact, horizon=dt.timedelta(days=50))] == [2, 3, 1, 4]


def test_candidates_come_from_the_inventory(
    cli: Cli, home: Path, tmp_path: Path, db_url: str | None
) -> None:
    clock = FixedClock(NOW)
    cli.ok("ca", "init", clock=clock)
    serials = {}
    for name in ("a", "b", "c"):
        out = cli.ok(
            "issue",
            "device",
            name,
            "--generate-key",
            "--out",
            tmp_path / name,
            "--json",
            clock=clock,
        ).out
        serials[name] = int(json.loads(out)["serial"], 16)
    cli.ok("revoke", format(serials["b"], "x"), clock=clock)
    inventory = Inventory.open(db_url or f"sqlite:///{home / 'inventory.db'}")
    try:
        found = {c.serial: c for c in candidates(inventory, NOW)}
    finally:
        inventory.close()
    assert set(found) == {serials["a"], serials["c"]}  # not the revoked one, not the CAs
    assert found[serials["a"]].thing == "a"
    assert found[serials["a"]].not_after.tzinfo is not None
