"""Mixed into ``Inventory``: the audit log, tamper-evident.

Each event carries the hash of the one before it (``prev_hash``) and its own (``hash``:
SHA-256 over the previous hash and the event's canonical form), and ``fleetpki_meta``
holds the newest hash (``audit_head``). Writers extend the chain under the database's
write lock (the head row is updated first), so concurrent writers never fork it.
:meth:`AuditLog.verify_audit` recomputes the chain: an edited event breaks its own hash,
a deleted one breaks the next event's link, deleting the newest ones breaks the head.
Someone who can rewrite the whole database can recompute the whole chain; an exported
copy (``audit --export``) kept elsewhere, or its last hash, is what proves that too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.clock import as_utc
from pki.model import serial_hex
from pki.storage.database import insert_params, reading
from pki.storage.schema import audit_events, meta

AUDIT_HEAD = "audit_head"


@dataclass(frozen=True)
class AuditEvent:
    at: dt.datetime
    actor: str
    action: str
    serial: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        from pki.model import iso_event

        return {
            "at": iso_event(self.at),
            "actor": self.actor,
            "action": self.action,
            "serial": self.serial,
            "detail": self.detail,
        }


def event_hash(prev: str, at: dt.datetime, actor: str, action: str, serial: str | None,
               detail: str) -> str:  # fmt: skip
    """The chain's hash of one event (``detail``: its JSON text as stored)."""
    moment = as_utc(at).isoformat(timespec="microseconds")
    canonical = json.dumps([prev, moment, actor, action, serial, detail], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    events: int
    head: str
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


class AuditLog:
    engine: Engine

    def audit(self, conn: Connection, events: Iterable[AuditEvent]) -> None:
        """Append ``events`` to the chain, inside the caller's transaction."""
        events = list(events)
        if not events:
            return
        head = _take_head(conn)
        rows: list[dict[str, Any]] = []
        for e in events:
            detail = json.dumps(e.detail, sort_keys=True)
            new = event_hash(head, e.at, e.actor, e.action, e.serial, detail)
            rows.append({"at": e.at, "actor": e.actor, "action": e.action, "serial": e.serial,
                         "detail": detail, "prev_hash": head, "hash": new})  # fmt: skip
            head = new
        sql, params = insert_params(conn, audit_events, rows)
        conn.exec_driver_sql(sql, params)
        conn.execute(meta.update().where(meta.c.key == AUDIT_HEAD).values(value=head))

    def reset_audit_head(self, conn: Connection) -> None:
        """After events were taken back (a failed ``ca init``): the head is the newest
        remaining event's hash."""
        newest = conn.execute(
            sa.select(audit_events.c.hash).order_by(audit_events.c.id.desc()).limit(1)
        ).scalar()
        conn.execute(meta.update().where(meta.c.key == AUDIT_HEAD).values(value=newest or ""))

    def audit_mark(self) -> int:
        """The id of the newest audit event (0 for none): what a failed ``ca init`` undoes
        is what came after it."""
        with reading(self.engine) as conn:
            return int(conn.execute(sa.select(sa.func.max(audit_events.c.id))).scalar() or 0)

    def audit_log(self, limit: int = 100, serial: int | None = None) -> list[AuditEvent]:
        query = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if serial is not None:
            query = query.where(audit_events.c.serial == serial_hex(serial))
        with reading(self.engine) as conn:
            rows = list(conn.execute(query))
        return [_event(r) for r in reversed(rows)]

    def _raw_rows(self, batch: int = 5000) -> Iterator[Any]:
        last = 0
        while True:
            query = (
                sa.select(audit_events)
                .where(audit_events.c.id > last)
                .order_by(audit_events.c.id)
                .limit(batch)
            )
            with reading(self.engine) as conn:
                rows = list(conn.execute(query))
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def audit_rows(self) -> Iterator[dict[str, Any]]:
        """Every event, oldest first, with its chain hashes: for export."""
        for r in self._raw_rows():
            yield {"id": r.id, **_event(r).to_json(), "prev_hash": r.prev_hash, "hash": r.hash}

    def verify_audit(self) -> ChainReport:
        """Recompute the chain over every event."""
        with reading(self.engine) as conn:  # first: events written meanwhile come after it
            head = conn.execute(sa.select(meta.c.value).where(meta.c.key == AUDIT_HEAD)).scalar()
        problems: list[str] = []
        prev, count, seen_head = "", 0, not head
        for r in self._raw_rows():
            count += 1
            where = f"event {r.id} ({r.action}, {as_utc(r.at):%Y-%m-%d %H:%M:%S}Z)"
            if (r.prev_hash or "") != prev:
                problems.append(f"{where}: the event before it was changed or deleted")
            expected = event_hash(r.prev_hash or "", r.at, r.actor, r.action, r.serial, r.detail)
            if r.hash != expected:
                problems.append(f"{where}: its contents do not match its hash (edited)")
            prev = r.hash or ""
            seen_head = seen_head or prev == head
        if not seen_head:
            problems.append("the newest events were deleted (the chain's head is missing)")
        return ChainReport(count, prev, tuple(problems))


def _take_head(conn: Connection) -> str:
    """The newest hash, with the write lock taken (PostgreSQL: the head row's lock;
    SQLite: the database's), so no other writer appends meanwhile."""
    conn.execute(meta.update().where(meta.c.key == AUDIT_HEAD).values(value=meta.c.value))
    return str(conn.execute(sa.select(meta.c.value).where(meta.c.key == AUDIT_HEAD)).scalar() or "")


def _event(r: Any) -> AuditEvent:
    return AuditEvent(
        at=as_utc(r.at), actor=r.actor, action=r.action, serial=r.serial,
        detail=json.loads(r.detail),
    )  # fmt: skip
