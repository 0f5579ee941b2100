"""The inventory: every certificate, every audit event, every CRL number, and the CA
hierarchy it belongs to.

SQLAlchemy 2 Core. SQLite (WAL) in the home by default; PostgreSQL when
``FLEETPKI_DATABASE_URL`` names one. Callers group writes in ``transaction()`` so a
certificate becomes visible in the same commit that records it. The schema is the
migrations' (``pki.storage.migrate``): opening an inventory never changes it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.backends import RevokedEntry
from pki.clock import as_utc
from pki.errors import NotFound
from pki.model import CertificateRecord, RevocationReason, Status, serial_hex
from pki.storage.audit import AuditEvent, AuditLog
from pki.storage.database import (
    dialect_insert,
    insert_params,
    open_engine,
    reading,
    redact_url,
    writing,
)
from pki.storage.ledgers import Ledgers
from pki.storage.pending import PendingDeliveries
from pki.storage.schema import (
    HIERARCHY_KEY,
    audit_events,
    certificates,
    crls,
    meta,
)


@dataclass(frozen=True)
class NewCertificate:
    """A row to insert: the record plus the public certificate PEM."""

    record: CertificateRecord
    pem: str
    key_id: str | None = None  # SHA-256 of the SubjectPublicKeyInfo (pki.issue.keyreuse)


class Inventory(AuditLog, Ledgers, PendingDeliveries):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, check: bool = True) -> Inventory:
        """The inventory at ``url``. With ``check`` its schema must be this fleetpki's
        (``fleetpki db upgrade`` makes it so); nothing is created here."""
        inventory = cls(open_engine(url))
        if check:
            from pki.storage.migrate import require_current

            try:
                require_current(inventory.engine)
            except BaseException:
                inventory.close()
                raise
        return inventory

    @classmethod
    def create(cls, url: str) -> Inventory:
        """For ``ca init``: the inventory at ``url``, its schema made at head when the
        database is empty (any other schema than this fleetpki's is refused)."""
        from pki.storage import migrate

        inventory = cls(open_engine(url))
        try:
            if migrate.state(inventory.engine).empty:
                migrate.upgrade(inventory.engine)
            migrate.require_current(inventory.engine)
        except BaseException:
            inventory.close()
            raise
        return inventory

    def close(self) -> None:
        self.engine.dispose()

    @property
    def url(self) -> str:
        return redact_url(str(self.engine.url))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with writing(self.engine) as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with reading(self.engine) as conn:
            yield conn

    # -- writes (inside a caller's transaction) -----------------------------------------

    def add_certificates(
        self,
        conn: Connection,
        rows: Sequence[NewCertificate],
        events: Iterable[AuditEvent] = (),
    ) -> None:
        """Insert certificate rows and, with ``events``, their audit rows. Every value is
        converted before the first INSERT: on SQLite that is when the write lock is
        taken, and forked batch workers wait on each other for it."""
        sql, params = insert_params(conn, certificates, [_row(r) for r in rows])
        if params:
            conn.exec_driver_sql(sql, params)
        self.audit(conn, events)

    def mark_revoked(
        self, conn: Connection, serial: int, at: dt.datetime, reason: RevocationReason
    ) -> bool:
        """Revoke an active (or quarantined) certificate. False if it was already revoked."""
        result = conn.execute(
            certificates.update()
            .where(certificates.c.serial == serial_hex(serial))
            .where(certificates.c.status != Status.REVOKED.value)
            .values(status=Status.REVOKED.value, revoked_at=at, revocation_reason=reason.value)
        )
        return bool(result.rowcount)

    def next_crl_number(self, conn: Connection, issuer: str) -> int:
        """One more than the highest number ever used for ``issuer`` (the row lock, or
        SQLite's write lock, keeps two writers from taking the same number)."""
        query = sa.select(sa.func.max(crls.c.number)).where(crls.c.issuer == issuer)
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("LOCK TABLE crls IN SHARE ROW EXCLUSIVE MODE"))
        else:
            conn.execute(
                sa.text("UPDATE fleetpki_meta SET value = value WHERE key = 'schema_version'")
            )
        current = conn.execute(query).scalar()
        return int(current or 0) + 1

    def latest_crl_number(self, issuer: str) -> int:
        """The highest CRL number recorded for ``issuer`` (0 for none)."""
        query = sa.select(sa.func.max(crls.c.number)).where(crls.c.issuer == issuer)
        with self._reading() as conn:
            return int(conn.execute(query).scalar() or 0)

    def record_crl(
        self,
        conn: Connection,
        issuer: str,
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
        entries: int,
        now: dt.datetime,
    ) -> None:
        conn.execute(
            crls.insert().values(
                issuer=issuer,
                number=number,
                this_update=this_update,
                next_update=next_update,
                entries=entries,
                created_at=now,
            )
        )

    # -- the CA hierarchy this inventory belongs to ------------------------------------

    def hierarchy(self) -> str | None:
        """The id of the CA hierarchy whose records this inventory holds (None: unclaimed)."""
        with self._reading() as conn:
            value = conn.execute(
                sa.select(meta.c.value).where(meta.c.key == HIERARCHY_KEY)
            ).scalar()
        return None if value is None else str(value)

    def claim_hierarchy(self, conn: Connection, hierarchy_id: str) -> str:
        """Record ``hierarchy_id`` as this inventory's, unless it already has one; returns
        the id it has now (the caller compares)."""
        insert = dialect_insert(conn, meta).values(key=HIERARCHY_KEY, value=hierarchy_id)
        conn.execute(insert.on_conflict_do_nothing(index_elements=[meta.c.key]))
        return str(
            conn.execute(sa.select(meta.c.value).where(meta.c.key == HIERARCHY_KEY)).scalar()
        )

    def forget_init(self, chain: Sequence[Any], after_audit: int) -> None:
        """Undo a ``ca init`` that failed half way on an inventory that was empty before it:
        the CA rows of ``chain`` (certificates), their CRL numbers, the audit events after
        ``after_audit`` and the hierarchy claim. Best effort: a failure here leaves the
        original error to be reported."""
        serials = [serial_hex(c.serial_number) for c in chain]
        issuers = [c.subject.rfc4514_string() for c in chain]
        try:
            with self.engine.begin() as conn:
                conn.execute(certificates.delete().where(certificates.c.serial.in_(serials)))
                conn.execute(crls.delete().where(crls.c.issuer.in_(issuers)))
                conn.execute(audit_events.delete().where(audit_events.c.id > after_audit))
                self.reset_audit_head(conn)
                if conn.execute(sa.select(sa.func.count()).select_from(certificates)).scalar() == 0:
                    conn.execute(meta.delete().where(meta.c.key == HIERARCHY_KEY))
        except sa.exc.SQLAlchemyError:
            pass

    def ca_inits(self) -> list[dict[str, Any]]:
        """The details of every ``ca-init`` event (root serial, backend, CA ARN...)."""
        query = sa.select(audit_events.c.detail).where(audit_events.c.action == "ca-init")
        with self._reading() as conn:
            return [dict(json.loads(row)) for row in conn.execute(query).scalars()]

    def has_certificates(self) -> bool:
        with self._reading() as conn:
            return conn.execute(sa.select(certificates.c.id).limit(1)).first() is not None

    def has_ca_fingerprint(self, fingerprint: str) -> bool:
        """Whether this CA certificate (SHA-256 of DER, hex) is recorded here."""
        c = certificates.c
        with self._reading() as conn:
            found = conn.execute(
                sa.select(c.id).where(
                    c.fingerprint_sha256 == fingerprint,
                    c.profile.in_(("root-ca", "issuing-ca")),
                )
            ).first()
        return found is not None

    # -- reads ------------------------------------------------------------------------------

    def get(self, serial: int) -> CertificateRecord:
        with self._reading() as conn:
            row = conn.execute(
                sa.select(certificates).where(certificates.c.serial == serial_hex(serial))
            ).first()
        if row is None:
            raise NotFound(f"no certificate with serial {serial_hex(serial)} in the inventory")
        return _record(row)

    def active_with_keys(
        self, key_ids: Sequence[str], now: dt.datetime
    ) -> dict[str, list[CertificateRecord]]:
        """The active, unexpired certificates of each of ``key_ids`` (their public keys'
        SHA-256), oldest first; keys without one are left out."""
        c = certificates.c
        found: dict[str, list[CertificateRecord]] = {}
        unique = sorted(set(key_ids))
        with self._reading() as conn:
            for start in range(0, len(unique), 500):
                query = (
                    sa.select(certificates)
                    .where(
                        c.spki_sha256.in_(unique[start : start + 500]),
                        c.status == Status.ACTIVE.value,
                        c.not_after > now,
                    )
                    .order_by(c.id)
                )
                for row in conn.execute(query):
                    found.setdefault(row.spki_sha256, []).append(_record(row))
        return found

    def get_pem(self, serial: int) -> str:
        with self._reading() as conn:
            pem = conn.execute(
                sa.select(certificates.c.pem).where(certificates.c.serial == serial_hex(serial))
            ).scalar()
        if pem is None:
            raise NotFound(f"no certificate with serial {serial_hex(serial)} in the inventory")
        return str(pem)

    def find(
        self,
        *,
        now: dt.datetime,
        status: Status | None = None,
        expiring_within: dt.timedelta | None = None,
        thing: str | None = None,
        profile: str | None = None,
        limit: int | None = None,
        include_ca: bool = False,
    ) -> list[CertificateRecord]:
        query = sa.select(certificates).order_by(certificates.c.not_after, certificates.c.id)
        c = certificates.c
        if status is Status.ACTIVE:
            query = query.where(c.status == Status.ACTIVE.value, c.not_after > now)
        elif status is Status.EXPIRED:
            query = query.where(c.status == Status.ACTIVE.value, c.not_after <= now)
        elif status is not None:
            query = query.where(c.status == status.value)
        if expiring_within is not None:
            query = query.where(
                c.status == Status.ACTIVE.value,
                c.not_after > now,
                c.not_after <= now + expiring_within,
            )
        if thing is not None:
            query = query.where(c.thing == thing)
        if profile is not None:
            query = query.where(c.profile == profile)
        elif not include_ca:
            query = query.where(c.profile.not_in(("root-ca", "issuing-ca")))
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as conn:
            return [_record(row) for row in conn.execute(query)]

    def revoked_entries(
        self, issuer: str, now: dt.datetime, conn: Connection | None = None
    ) -> list[RevokedEntry]:
        """Revoked, unexpired certificates of ``issuer``, for the CRL (read on ``conn``
        when given: inside the transaction that takes the CRL number)."""
        c = certificates.c
        query = (
            sa.select(c.serial, c.revoked_at, c.revocation_reason)
            .where(c.issuer == issuer, c.status == Status.REVOKED.value, c.not_after > now)
            .order_by(c.revoked_at, c.serial)
        )

        def read(on: Connection) -> list[RevokedEntry]:
            return [
                RevokedEntry(
                    serial=int(row.serial, 16),
                    revoked_at=as_utc(row.revoked_at),
                    reason=RevocationReason(row.revocation_reason or "unspecified"),
                )
                for row in on.execute(query)
            ]

        if conn is not None:
            return read(conn)
        with self._reading() as reading:
            return read(reading)


def _row(new: NewCertificate) -> dict[str, Any]:
    r = new.record
    return {
        "serial": r.serial_hex,
        "fingerprint_sha256": r.fingerprint_sha256,
        "thing": r.thing,
        "common_name": r.common_name,
        "profile": r.profile,
        "status": r.status.value,
        "backend": r.backend,
        "issuer": r.issuer,
        "not_before": r.not_before,
        "not_after": r.not_after,
        "sans": json.dumps(list(r.sans)),
        "pem": new.pem,
        "created_at": r.created_at,
        "revoked_at": r.revoked_at,
        "revocation_reason": r.revocation_reason.value if r.revocation_reason else None,
        "spki_sha256": new.key_id,
        "issuer_key_id": r.issuer_key_id,
    }


def _record(row: Any) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row.serial, 16),
        thing=row.thing,
        common_name=row.common_name,
        profile=row.profile,
        status=Status(row.status),
        not_before=as_utc(row.not_before),
        not_after=as_utc(row.not_after),
        fingerprint_sha256=row.fingerprint_sha256,
        issuer=row.issuer,
        backend=row.backend,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at) if row.revoked_at else None,
        revocation_reason=(
            RevocationReason(row.revocation_reason) if row.revocation_reason else None
        ),
        sans=tuple(json.loads(row.sans)),
        issuer_key_id=row.issuer_key_id,
    )
