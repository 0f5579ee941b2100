"""Rotation's own tables on the inventory's database (SQLite or PostgreSQL): one row per
rotation of a device certificate, and the lease that keeps a second daemon from working
the same inventory at the same time. They are on the inventory's shared ``MetaData``;
their schema is made and changed by this package's migrations (``rotation/migrations``).
``pki`` knows nothing of them."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import socket
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.errors import LeaseLost
from pki.model import Status
from pki.storage import UtcDateTime, certificates, dialect_insert, metadata
from pki.storage.database import writing


class State(enum.StrEnum):
    REQUESTED = "requested"  # request sent, waiting for the device's CSR
    ISSUED = "issued"  # certificate sent, waiting for the device to confirm
    CONFIRMED = "confirmed"  # the device uses the new certificate; old one in its grace
    COMPLETED = "completed"  # the old certificate is revoked (superseded)
    FAILED = "failed"


OPEN = (State.REQUESTED, State.ISSUED, State.CONFIRMED)

rotations = sa.Table(
    "rotations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("thing", sa.String(128), nullable=False, index=True),
    sa.Column("old_serial", sa.String(42), nullable=False),
    sa.Column("new_serial", sa.String(42), nullable=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("days", sa.Integer, nullable=False),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("deadline", UtcDateTime, nullable=False),
    sa.Column("confirmed_at", UtcDateTime, nullable=True),
    sa.Column("completed_at", UtcDateTime, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # how long the old certificate stays valid after the confirmation: the requester's
    # setting, whichever process sweeps
    sa.Column("grace_seconds", sa.Integer, nullable=False, default=3600),
    # what the rotation replaces: a device's certificate or a server's (migration rot_0002)
    sa.Column("profile", sa.String(16), nullable=False, server_default="device"),
    # when revoking the old certificate first failed (its hooks are retried for a while)
    sa.Column("retry_since", UtcDateTime, nullable=True),
    # how often the request went out, and when it goes out again (rot_0003)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True),
    # at most one rotation in progress per thing, across every process on the inventory
    sa.Index(
        "ux_rotations_open_thing",
        "thing",
        unique=True,
        sqlite_where=sa.text("state IN ('requested', 'issued', 'confirmed')"),
        postgresql_where=sa.text("state IN ('requested', 'issued', 'confirmed')"),
    ),
)

# Server certificates kept current on disk (rotation.servers).
server_targets = sa.Table(
    "server_targets",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("directory", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: names, key type, days, reload command
    sa.Column("serial", sa.String(42), nullable=False),  # the certificate installed now
    sa.Column("added_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    # raised on every takeover: the fence a returning former holder runs into (rot_0003)
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
)


@dataclass(frozen=True)
class Rotation:
    id: str
    thing: str
    old_serial: str
    new_serial: str | None
    state: State
    days: int
    requested_at: dt.datetime
    updated_at: dt.datetime
    deadline: dt.datetime
    confirmed_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    error: str | None = None
    grace_seconds: int = 3600
    retry_since: dt.datetime | None = None
    profile: str = "device"  # device | server: what it replaces
    attempts: int = 1  # times the request was sent to the device
    next_attempt_at: dt.datetime | None = None  # when it is sent again, unanswered

    @property
    def revoke_old_at(self) -> dt.datetime | None:
        if self.confirmed_at is None:
            return None
        return self.confirmed_at + dt.timedelta(seconds=self.grace_seconds)

    def grace_over(self, now: dt.datetime) -> bool:
        """Confirmed, and its old certificate's grace period over: the sweep completes it."""
        return self.revoke_old_at is not None and self.revoke_old_at <= now

    def to_json(self) -> dict[str, Any]:
        """The rotation as JSON: event times in RFC 3339 UTC with ``Z``; ``name`` is the
        thing or server, ``thing`` only a device's (as in certificate records)."""
        from pki.model import iso_event

        data: dict[str, Any] = {"id": self.id, "profile": self.profile, "name": self.thing}
        for key, value in self.__dict__.items():
            if key in ("id", "thing", "profile"):
                continue
            data[key] = iso_event(value) if isinstance(value, dt.datetime) else value
        data["thing"] = self.thing if self.profile == "device" else None
        data["state"] = self.state.value
        return data


def transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """A transaction on the rotation tables; a database failure is one ``StorageError``."""
    return writing(engine, "rotation tables")


def _rotation(row: Any) -> Rotation:
    m = row._mapping
    return Rotation(
        id=m["id"],
        thing=m["thing"],
        old_serial=m["old_serial"],
        new_serial=m["new_serial"],
        state=State(m["state"]),
        days=m["days"],
        requested_at=m["requested_at"],
        updated_at=m["updated_at"],
        deadline=m["deadline"],
        confirmed_at=m["confirmed_at"],
        completed_at=m["completed_at"],
        error=m["error"],
        grace_seconds=int(m["grace_seconds"]),
        retry_since=m["retry_since"],
        profile=m["profile"],
        attempts=int(m["attempts"]),
        next_attempt_at=m["next_attempt_at"],
    )


def _values(r: Rotation) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, State) else v) for k, v in r.__dict__.items()}


def insert(conn: Connection, items: Sequence[Rotation]) -> list[Rotation]:
    """Insert; a thing that already has a rotation in progress (another process got there
    first) is skipped. Returns the rotations inserted."""
    if not items:
        return []
    statement = dialect_insert(conn, rotations).on_conflict_do_nothing()
    conn.execute(statement, [_values(r) for r in items])
    ids = {row[0] for row in conn.execute(
        sa.select(rotations.c.id).where(rotations.c.id.in_([r.id for r in items]))
    )}  # fmt: skip
    return [r for r in items if r.id in ids]


def get(conn: Connection, rotation_id: str) -> Rotation | None:
    row = conn.execute(sa.select(rotations).where(rotations.c.id == rotation_id)).first()
    return None if row is None else _rotation(row)


def advance(conn: Connection, rotation_id: str, expected: State, to: State, **values: Any) -> bool:
    """Compare-and-set: move one rotation from ``expected`` to ``to``; False if it was not
    in ``expected`` any more (a repeat message, or another worker got there first)."""
    done = conn.execute(
        rotations.update()
        .where(rotations.c.id == rotation_id, rotations.c.state == expected.value)
        .values(state=to.value, **values)
    )
    return bool(done.rowcount)


def confirm(
    conn: Connection,
    rotation_id: str,
    expected: State,
    now: dt.datetime,
    note: str | None = None,
) -> bool:
    """The new certificate is in use (the device reconnected with it, or the server was
    reloaded): the grace period of the old one starts now. ``note`` stays on the row (a
    rotation confirmed after it had failed says so)."""
    return advance(
        conn, rotation_id, expected, State.CONFIRMED, confirmed_at=now, updated_at=now, error=note
    )


def open_things(conn: Connection) -> set[str]:
    query = sa.select(rotations.c.thing).where(rotations.c.state.in_([s.value for s in OPEN]))
    return {row[0] for row in conn.execute(query)}


def still_active(conn: Connection, serials: Sequence[str]) -> set[str]:
    """Which of ``serials`` (hex) are active certificates now, their rows locked until the
    transaction ends (PostgreSQL; SQLite's writer is alone anyway): a revocation that a
    concurrent sweep commits waits for this transaction, so a certificate that rotation
    already replaced is never asked for again."""
    c = certificates.c
    found: set[str] = set()
    ordered = sorted(set(serials))
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        query = (
            sa.select(c.serial)
            .where(c.serial.in_(chunk), c.status == Status.ACTIVE.value)
            .order_by(c.serial)  # rows locked in one order: two processes never deadlock
            .with_for_update()
        )
        found.update(row[0] for row in conn.execute(query))
    return found


def failed_since(conn: Connection, since: dt.datetime) -> set[str]:
    query = sa.select(rotations.c.thing).where(
        rotations.c.state == State.FAILED.value, rotations.c.updated_at >= since
    )
    return {row[0] for row in conn.execute(query)}


def select(
    conn: Connection,
    states: Sequence[State] = (),
    *,
    ids: Sequence[str] = (),
    things: Sequence[str] = (),
    updated_before: dt.datetime | None = None,
    deadline_before: dt.datetime | None = None,
    confirmed_before: dt.datetime | None = None,
    attempt_due_by: dt.datetime | None = None,
    limit: int | None = None,
) -> list[Rotation]:
    c = rotations.c
    query = sa.select(rotations)
    if states:
        query = query.where(c.state.in_([s.value for s in states]))
    if ids:
        query = query.where(c.id.in_(list(ids)))
    if things:
        query = query.where(c.thing.in_(list(things)))
    if updated_before is not None:
        query = query.where(c.updated_at < updated_before)
    if deadline_before is not None:
        query = query.where(c.deadline < deadline_before)
    if confirmed_before is not None:
        query = query.where(c.confirmed_at <= confirmed_before)
    if attempt_due_by is not None:
        query = query.where(c.next_attempt_at <= attempt_due_by)
    query = query.order_by(c.requested_at.desc(), c.id)
    if limit is not None:
        query = query.limit(limit)
    return [_rotation(row) for row in conn.execute(query)]


def counts(conn: Connection) -> dict[str, int]:
    query = sa.select(rotations.c.state, sa.func.count()).group_by(rotations.c.state)
    found = {state: int(n) for state, n in conn.execute(query)}
    return {s.value: found.get(s.value, 0) for s in State}


def take_lease(
    engine: Engine,
    name: str,
    holder: str,
    now: dt.datetime,
    ttl: dt.timedelta,
    *,
    renewing: int | None = None,
) -> int | None:
    """Hold ``name`` until ``now + ttl`` unless someone else holds it unexpired. Returns
    the lease's epoch (raised on every takeover), or None when someone else holds it.
    ``renewing`` (the epoch held): only extend that holding, never take the lease anew;
    once another process took it over, the former holder stays out."""
    with transaction(engine) as conn:
        row = conn.execute(
            sa.select(leases.c.holder, leases.c.expires_at, leases.c.epoch)
            .where(leases.c.name == name)
            .with_for_update()
        ).first()
        if renewing is not None and (
            row is None or row.holder != holder or row.epoch != renewing
        ):
            return None
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        leases.insert().values(
                            name=name, holder=holder, expires_at=now + ttl, epoch=1
                        )
                    )
            except sa.exc.IntegrityError:
                return None  # another daemon inserted it first
            return 1
        if row.holder == holder:  # a renewal: only the holder itself writes this row
            done = conn.execute(
                leases.update()
                .where(leases.c.name == name, leases.c.holder == holder,
                       leases.c.epoch == row.epoch)
                .values(expires_at=max(row.expires_at, now + ttl))
            )  # fmt: skip
            return int(row.epoch) if done.rowcount else None
        if row.expires_at > now and not _dead_here(row.holder):
            return None
        done = conn.execute(  # a takeover: only if nobody renewed or took it meanwhile
            leases.update()
            .where(
                leases.c.name == name,
                leases.c.holder == row.holder,
                leases.c.expires_at == row.expires_at,
                leases.c.epoch == row.epoch,
            )
            .values(holder=holder, expires_at=now + ttl, epoch=row.epoch + 1)
        )
        return int(row.epoch) + 1 if done.rowcount else None


def check_lease(conn: Connection, name: str, holder: str, epoch: int, now: dt.datetime) -> None:
    """Inside a write transaction: the lease is still ``holder``'s, in ``epoch`` and
    unexpired, or ``LeaseLost``. On PostgreSQL the row stays share-locked until the
    transaction ends, so a takeover waits for it (on SQLite the one writer is alone)."""
    row = conn.execute(
        sa.select(leases.c.holder, leases.c.expires_at, leases.c.epoch)
        .where(leases.c.name == name)
        .with_for_update(read=True)
    ).first()
    if row is None or row.holder != holder or row.epoch != epoch or row.expires_at <= now:
        who = "nobody" if row is None else f"{row.holder} (epoch {row.epoch})"
        raise LeaseLost(f"the {name} lease is no longer this process's: held by {who}")


def holder_id() -> str:
    """``host:pid-namespace:pid``: on one host, containers sharing the host name but not
    the PID namespace never mistake each other's pids."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _dead_here(holder: str) -> bool:
    """A holder in this host and PID namespace whose process is gone (a crash, kill -9)."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, namespace, pid = parts
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lease_holder(engine: Engine, name: str, now: dt.datetime) -> str | None:
    with transaction(engine) as conn:
        row = conn.execute(
            sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
        ).first()
    if row is None or row.expires_at <= now or _dead_here(row.holder):
        return None
    return str(row.holder)


def release_lease(engine: Engine, name: str, holder: str) -> None:
    with transaction(engine) as conn:
        conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))


# -- pause ------------------------------------------------------------------------------

PAUSED = "rotation_paused"  # a fleetpki_meta row while rotation is paused (JSON)


def paused(conn: Connection) -> dict[str, Any] | None:
    """Who paused rotation, when and why; None when it is not paused."""
    from pki.storage.schema import meta

    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == PAUSED)).scalar()
    return dict(json.loads(value)) if value else None


def describe_pause(held: dict[str, Any]) -> str:
    """One line for the operator: since when, by whom, why."""
    reason = f": {held['reason']}" if held.get("reason") else ""
    return f"rotation is paused since {held['since']} by {held['by']}{reason}"


def set_paused(conn: Connection, info: dict[str, Any] | None) -> bool:
    """Pause (``info``) or resume (None); False when it already was so."""
    from pki.storage.schema import meta

    before = paused(conn)
    if info is None:
        conn.execute(meta.delete().where(meta.c.key == PAUSED))
        return before is not None
    if before is not None:
        return False
    conn.execute(meta.insert().values(key=PAUSED, value=json.dumps(info, sort_keys=True)))
    return True
