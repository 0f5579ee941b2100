"""Renewal times and the rotation plan (pure), and the candidates read from the inventory."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pki.clock import FixedClock
from pki.storage import Inventory
from rotation.planner import Candidate, candidates, plan
from rotation.schedule import RenewalPolicy, renewal_time
from tests.conftest import Cli
from tests.helpers import NOW

START = NOW - dt.timedelta(days=300)


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


def test_inventory_plan_matches_the_pure_plan(tmp_path: Path, db_url: str | None) -> None:
    """The fast path over the inventory decides exactly what ``plan`` decides."""
    import random
    import secrets

    from pki.model import CertificateRecord, Status
    from pki.storage import NewCertificate
    from rotation.planner import plan_inventory

    rng = random.Random(7)
    inventory = Inventory.create(db_url or f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        rows = []
        for i in range(600):
            lifetime = dt.timedelta(days=rng.choice((30, 90, 397)))
            not_before = NOW - lifetime * rng.random() * 1.2
            status = Status.REVOKED if i % 50 == 0 else Status.ACTIVE
            rows.append(
                NewCertificate(
                    CertificateRecord(
                        serial=secrets.randbits(120) + 1,
                        thing=f"t{i}",
                        common_name=f"t{i}",
                        profile="server" if i % 7 == 0 else "device",
                        status=status,
                        not_before=not_before,
                        not_after=not_before + lifetime,
                        fingerprint_sha256=secrets.token_hex(32),
                        issuer="CN=x",
                        backend="local",
                        created_at=NOW,
                    ),
                    "pem",
                )
            )
        with inventory.transaction() as conn:
            inventory.add_certificates(conn, rows)
        for horizon in (dt.timedelta(0), dt.timedelta(days=14)):
            fast = plan_inventory(inventory, NOW, horizon=horizon)
            pure = plan(candidates(inventory, NOW), NOW, horizon=horizon)
            assert [i.serial for i in fast] == [i.serial for i in pure]
            assert len(fast) > 50
            for a, b in zip(fast, pure, strict=True):
                assert abs((a.renew_at - b.renew_at).total_seconds()) < 0.01
                assert a.not_after.replace(microsecond=0) == b.not_after.replace(microsecond=0)
    finally:
        inventory.close()
