"""The rotation plan: which certificates are due for renewal, most urgent first."""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import sqlalchemy as sa

from pki.issue.policy import BACKDATE, PROBE_THING
from pki.issue.profiles import PROFILES
from pki.model import Status
from pki.storage import Inventory, UtcDateTime, certificates
from rotation.schedule import RenewalPolicy, renewal_timestamp

DEFAULT_POLICY = RenewalPolicy()
# fleetpki's own probe identity is not part of the fleet: never planned, rotated or counted
NOT_PROBE = sa.or_(certificates.c.thing.is_(None), certificates.c.thing != PROBE_THING)
ROTATED_PROFILES = ("device", "server")
# The longest lifetime a rotated certificate can have.
MAX_LIFETIME = max(p.max_days for p in PROFILES.values()) * dt.timedelta(days=1) + BACKDATE


# NamedTuples rather than dataclasses: a plan reads up to millions of these.
class Candidate(NamedTuple):
    serial: int
    thing: str | None
    profile: str
    not_before: dt.datetime
    not_after: dt.datetime


class PlanItem(NamedTuple):
    serial: int
    thing: str | None
    profile: str
    renew_at: dt.datetime
    not_after: dt.datetime
    not_before: dt.datetime


def plan(
    candidates: Iterable[Candidate],
    now: dt.datetime,
    policy: RenewalPolicy = DEFAULT_POLICY,
    horizon: dt.timedelta = dt.timedelta(0),
) -> list[PlanItem]:
    """Every candidate whose renewal time is at or before ``now + horizon``, soonest
    expiry first. Pure."""
    until = (now + horizon).timestamp()
    due = []
    for c in candidates:
        at = renewal_timestamp(c.not_before.timestamp(), c.not_after.timestamp(), c.serial, policy)
        if at <= until:
            due.append(
                PlanItem(
                    c.serial,
                    c.thing,
                    c.profile,
                    dt.datetime.fromtimestamp(at, dt.UTC),
                    c.not_after,
                    c.not_before,
                )
            )
    due.sort(key=lambda item: (item.not_after, item.serial))
    return due


def candidates(
    inventory: Inventory,
    now: dt.datetime,
    *,
    batch: int = 10_000,
) -> Iterator[Candidate]:
    """Active, unexpired device and server certificates, streamed from the inventory."""
    c = certificates.c
    query = sa.select(c.serial, c.thing, c.profile, c.not_before, c.not_after).where(
        c.status == Status.ACTIVE.value,
        c.not_after > now,
        c.profile.in_(ROTATED_PROFILES),
        NOT_PROBE,
    )
    with inventory.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for serial, thing, profile, not_before, not_after in result:
            yield Candidate(int(serial, 16), thing, profile, not_before, not_after)


def plan_inventory(
    inventory: Inventory,
    now: dt.datetime,
    policy: RenewalPolicy = DEFAULT_POLICY,
    horizon: dt.timedelta = dt.timedelta(0),
) -> list[PlanItem]:
    """``plan`` over the whole inventory, the same decisions, at a million rows.

    Only certificates that can be due are read: one renewed by ``until`` at the earliest
    share of the longest lifetime expires no later than ``until + MAX_LIFETIME x (1 -
    earliest)``, a range the covering expiry index finds without touching the table. The
    database hands back POSIX seconds; a ``PlanItem`` is made only for the certificates
    that are due.
    """
    until = now + horizon
    until_ts = until.timestamp()
    bound = until + MAX_LIFETIME * (1 - policy.earliest)
    due: list[PlanItem] = []
    with inventory.engine.connect() as conn:
        dialect = conn.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        # The database turns the times into POSIX seconds (C speed, no datetime objects).
        nb, na = (_EPOCH_SQL[dialect.name].format(column=c) for c in ("not_before", "not_after"))
        where = (
            f"status = {mark} AND not_after > {mark} AND not_after <= {mark} "
            f"AND (thing IS NULL OR thing <> {mark})"
        )
        # Constant text and placeholders only.
        sql = (
            f"SELECT serial, thing, profile, {nb}, {na} FROM certificates "  # noqa: S608
            f"WHERE {where} AND profile IN ({', '.join([mark] * len(ROTATED_PROFILES))})"
        )
        to_db = UtcDateTime().process_bind_param
        params = (
            Status.ACTIVE.value,
            to_db(now, dialect),
            to_db(bound, dialect),
            PROBE_THING,
            *ROTATED_PROFILES,
        )
        cursor = conn.exec_driver_sql(sql, params)
        renew = renewal_timestamp
        for serial_text, thing, profile, before, after in cursor:
            serial = int(serial_text, 16)
            at = renew(before, after, serial, policy)
            if at <= until_ts:
                due.append(
                    PlanItem(
                        serial,
                        thing,
                        profile,
                        dt.datetime.fromtimestamp(at, dt.UTC),
                        dt.datetime.fromtimestamp(after, dt.UTC),
                        dt.datetime.fromtimestamp(before, dt.UTC),
                    )
                )
    due.sort(key=lambda item: (item.not_after, item.serial))
    return due


# POSIX seconds of a stored UtcDateTime column, per dialect.
_EPOCH_SQL = {
    "sqlite": "(julianday({column}) - 2440587.5) * 86400.0",
    "postgresql": "CAST(EXTRACT(EPOCH FROM {column}) AS DOUBLE PRECISION)",
}


def active_devices(
    inventory: Inventory,
    now: dt.datetime,
    *,
    things: Sequence[str] = (),
    match: str | None = None,
) -> list[PlanItem]:
    """Active device certificates of the named things or of things matching a glob
    (``line7-*``), as plan items due now: an operator's rotation wave."""
    c = certificates.c
    query = sa.select(c.serial, c.thing, c.profile, c.not_before, c.not_after).where(
        c.status == Status.ACTIVE.value,
        c.not_after > now,
        c.profile == "device",
        c.thing.is_not(None),
        NOT_PROBE,
    )
    if things:
        query = query.where(c.thing.in_(list(things)))
    items = []
    with inventory.engine.connect() as conn:
        for serial, thing, profile, not_before, not_after in conn.execute(query):
            if match is None or fnmatch.fnmatchcase(thing, match):
                items.append(PlanItem(int(serial, 16), thing, profile, now, not_after, not_before))
    items.sort(key=lambda item: (item.not_after, item.serial))
    return items


def newest_per_device(items: Iterable[PlanItem]) -> dict[str, PlanItem]:
    """One item per thing, the certificate expiring last (a thing asked to rotate rotates
    once, whatever number of certificates it holds); server items are left out."""
    newest: dict[str, PlanItem] = {}
    for item in items:
        if item.profile != "device" or not item.thing:
            continue  # server certificates are not rotated over MQTT
        seen = newest.get(item.thing)
        if seen is None or item.not_after > seen.not_after:
            newest[item.thing] = item
    return newest


EXPIRY_WINDOWS = (("1d", 1), ("7d", 7), ("30d", 30), ("90d", 90))


class ExpirySummary(NamedTuple):
    profile: str
    active: int
    earliest: dt.datetime | None
    within: dict[str, int]  # window -> active certificates expiring within it


def expiry_summary(inventory: Inventory, now: dt.datetime) -> list[ExpirySummary]:
    """Per rotated profile: active unexpired certificates, the earliest expiry, and how many
    expire within each window — one aggregate query, whatever the fleet's size (a series
    per certificate would be a million series for a million devices)."""
    c = certificates.c
    columns = [c.profile, sa.func.count(), sa.func.min(c.not_after)]
    for _name, days in EXPIRY_WINDOWS:
        edge = now + dt.timedelta(days=days)
        columns.append(sa.func.sum(sa.case((c.not_after <= edge, 1), else_=0)))
    query = (
        sa.select(*columns)
        .where(c.status == Status.ACTIVE.value, c.not_after > now,
               c.profile.in_(ROTATED_PROFILES), NOT_PROBE)
        .group_by(c.profile)
    )  # fmt: skip
    found = []
    with inventory.engine.connect() as conn:
        for profile, count, earliest, *sums in conn.execute(query):
            windows = {name: int(n or 0) for (name, _d), n in zip(EXPIRY_WINDOWS, sums,
                                                                   strict=True)}  # fmt: skip
            found.append(ExpirySummary(profile, int(count), earliest, windows))
    return found
