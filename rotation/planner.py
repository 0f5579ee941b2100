"""The rotation plan: which certificates are due for renewal, most urgent first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from pki.clock import as_utc
from pki.inventory import Inventory, certificates
from pki.model import Status
from rotation.schedule import RenewalPolicy, renewal_time

DEFAULT_POLICY = RenewalPolicy()


@dataclass(frozen=True)
class Candidate:
    serial: int
    thing: str | None
    profile: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class PlanItem:
    serial: int
    thing: str | None
    profile: str
    renew_at: dt.datetime
    not_after: dt.datetime


def plan(
    candidates: Iterable[Candidate],
    now: dt.datetime,
    policy: RenewalPolicy = DEFAULT_POLICY,
    horizon: dt.timedelta = dt.timedelta(0),
) -> list[PlanItem]:
    """Every candidate whose renewal time is at or before ``now + horizon``, soonest
    expiry first. Pure."""
    until = now + horizon
    due = []
    for c in candidates:
        at = renewal_time(c.not_before, c.not_after, c.serial, policy)
        if at <= until:
            due.append(PlanItem(c.serial, c.thing, c.profile, at, c.not_after))
    due.sort(key=lambda item: (item.not_after, item.serial))
    return due


def candidates(inventory: Inventory, now: dt.datetime, batch: int = 10_000) -> Iterator[Candidate]:
    """Active, unexpired device and server certificates, streamed from the inventory."""
    c = certificates.c
    query = sa.select(c.serial, c.thing, c.profile, c.not_before, c.not_after).where(
        c.status == Status.ACTIVE.value,
        c.not_after > now,
        c.profile.in_(("device", "server")),
    )
    with inventory.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for serial, thing, profile, not_before, not_after in result:
            yield Candidate(int(serial, 16), thing, profile, as_utc(not_before), as_utc(not_after))
