"""The inventory: every certificate, every audit event, every CRL number.

SQLAlchemy 2 Core. SQLite (WAL) in the home by default; PostgreSQL when
``FLEETPKI_DATABASE_URL`` names one. Callers group writes in ``transaction()``
so a certificate becomes visible in the same commit that records it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.backends import RevokedEntry
from pki.clock import as_utc
from pki.errors import NotFound, StorageError
from pki.model import CertificateRecord, RevocationReason, Status, serial_hex

SCHEMA_VERSION = 1
HIERARCHY_KEY = "hierarchy_id"


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite and PostgreSQL alike.

    PostgreSQL stores ``timestamptz``. SQLite stores the text SQLAlchemy's own SQLite
    DATETIME uses (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), which sorts and compares
    correctly as text, but formatted and parsed with the C ``isoformat``/``fromisoformat``
    (several times faster per value: it matters at a million rows).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        return as_utc(value)


_UTC = UtcDateTime()

metadata = sa.MetaData()

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("serial", sa.String(42), nullable=False, unique=True),
    sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("thing", sa.String(128), nullable=True, index=True),
    sa.Column("common_name", sa.String(255), nullable=False),
    sa.Column("profile", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("issuer", sa.Text, nullable=False),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("sans", sa.Text, nullable=False, default="[]"),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("revocation_reason", sa.String(32), nullable=True),
    # Serves list --expiring-within and the rotation plan from the index alone (no table
    # look-ups: at a million rows those dominate the plan).
    sa.Index(
        "ix_certificates_expiry",
        "status",
        "not_after",
        "profile",
        "not_before",
        "serial",
        "thing",
    ),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("serial", sa.String(42), nullable=True, index=True),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
)

crls = sa.Table(
    "crls",
    metadata,
    sa.Column("issuer", sa.String(512), primary_key=True),
    sa.Column("number", sa.BigInteger, primary_key=True),
    sa.Column("this_update", UtcDateTime, nullable=False),
    sa.Column("next_update", UtcDateTime, nullable=False),
    sa.Column("entries", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

bundle_versions = sa.Table(
    "bundle_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("endpoint", sa.String(2048), nullable=True),
    sa.Column("bucket", sa.String(255), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("version_id", sa.String(1024), nullable=False, index=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("certificates", sa.Integer, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("uploaded", sa.Boolean, nullable=False),
    sa.Column("revocation_id", sa.BigInteger, nullable=True),
    sa.Column("applied_at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
)

pca_requests = sa.Table(
    "pca_requests",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("ca_arn", sa.String(2048), nullable=False),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("requested_at", UtcDateTime, nullable=False),
)

meta = sa.Table(
    "fleetpki_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class NewCertificate:
    """A row to insert: the record plus the public certificate PEM."""

    record: CertificateRecord
    pem: str


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


@dataclass(frozen=True)
class BundleVersion:
    """One ledger row: which bundle (hash, S3 version) an endpoint was pointed at, and when."""

    target: str
    endpoint: str | None
    bucket: str
    key: str
    version_id: str
    sha256: str
    certificates: int
    action: str  # publish | rollback | upload
    uploaded: bool  # a new S3 object version was written
    applied_at: dt.datetime
    actor: str
    revocation_id: int | None = None  # ALB trust-store revocation list (target alb-crl)
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        from pki.model import iso_event

        return {
            "id": self.id,
            "target": self.target,
            "endpoint": self.endpoint,
            "s3_uri": f"s3://{self.bucket}/{self.key}",
            "version_id": self.version_id,
            "sha256": self.sha256,
            "certificates": self.certificates,
            "action": self.action,
            "uploaded": self.uploaded,
            "applied_at": iso_event(self.applied_at),
            "actor": self.actor,
            "revocation_id": self.revocation_id,
        }


def normalise_url(url: str) -> str:
    """``postgresql://`` without a driver means psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _private_sqlite_file(database: str | None) -> None:
    """Create a new SQLite inventory file 0600 (its -wal and -shm files get the same mode
    from SQLite): it names every device of the fleet, which is nobody else's business."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        fd = os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # a missing folder and the like: SQLite's own error says it better
    os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Inventory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Inventory:
        url = normalise_url(url)
        try:
            engine = sa.create_engine(url, future=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StorageError(f"cannot use database URL {redact_url(url)}: {exc}") from None
        if engine.dialect.name == "sqlite":
            _private_sqlite_file(engine.url.database)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        inventory = cls(engine)
        inventory._create_schema()
        return inventory

    def close(self) -> None:
        self.engine.dispose()

    def _create_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                found = conn.execute(
                    sa.select(meta.c.value).where(meta.c.key == "schema_version")
                ).scalar()
                if found is None:
                    conn.execute(
                        meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                elif int(found) > SCHEMA_VERSION:
                    raise StorageError(
                        f"the inventory has schema version {found}, newer than this fleetpki "
                        f"understands ({SCHEMA_VERSION}); upgrade fleetpki"
                    )
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(
                f"cannot open the inventory at {redact_url(str(self.engine.url))}: {_why(exc)}"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError as exc:
            raise StorageError(f"inventory refused the write: {_why(exc)}") from None
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"inventory write failed: {_why(exc)}") from None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"inventory read failed: {_why(exc)}") from None

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
        inserts = [
            _insert_params(conn, certificates, [_row(r) for r in rows]),
            _insert_params(conn, audit_events, _audit_rows(events)),
        ]
        for sql, params in inserts:
            if params:
                conn.exec_driver_sql(sql, params)

    def audit(
        self,
        conn: Connection,
        events: Iterable[AuditEvent],
    ) -> None:
        sql, params = _insert_params(conn, audit_events, _audit_rows(events))
        if params:
            conn.exec_driver_sql(sql, params)

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

    def audit_mark(self) -> int:
        """The id of the newest audit event (0 for none): what a failed ``ca init`` undoes
        is what came after it."""
        with self._reading() as conn:
            return int(conn.execute(sa.select(sa.func.max(audit_events.c.id))).scalar() or 0)

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

    def audit_log(self, limit: int = 100, serial: int | None = None) -> list[AuditEvent]:
        query = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if serial is not None:
            query = query.where(audit_events.c.serial == serial_hex(serial))
        with self._reading() as conn:
            rows = list(conn.execute(query))
        return [
            AuditEvent(
                at=as_utc(r.at),
                actor=r.actor,
                action=r.action,
                serial=r.serial,
                detail=json.loads(r.detail),
            )
            for r in reversed(rows)
        ]

    def record_bundle_version(self, conn: Connection, version: BundleVersion) -> int:
        values = {k: v for k, v in version.__dict__.items() if k != "id"}
        result = conn.execute(bundle_versions.insert().values(**values))
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    def bundle_history(self, limit: int | None = None) -> list[BundleVersion]:
        """Ledger rows, oldest first (the last ``limit`` when given)."""
        query = sa.select(bundle_versions).order_by(bundle_versions.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as conn:
            rows = list(conn.execute(query))
        return [_bundle_version(r) for r in reversed(rows)]

    def find_bundle_version(self, ref: str) -> BundleVersion:
        """A ledger row by its number or by S3 VersionId (the newest row with it)."""
        c = bundle_versions.c
        query = sa.select(bundle_versions).order_by(c.id.desc()).limit(1)
        if ref.isdigit() and len(ref) < 10:
            query = query.where(sa.or_(c.id == int(ref), c.version_id == ref))
        else:
            query = query.where(c.version_id == ref)
        with self._reading() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(
                f"no bundle version {ref!r} in the ledger (see 'fleetpki bundle history')"
            )
        return _bundle_version(row)

    def revocation_ids(self, trust_store_arn: str) -> list[int]:
        """Every ALB revocation-list ID fleetpki ever added to this trust store."""
        c = bundle_versions.c
        query = sa.select(c.revocation_id).where(
            c.endpoint == trust_store_arn, c.revocation_id.is_not(None)
        )
        with self._reading() as conn:
            return [int(v) for v in conn.execute(query).scalars()]

    # -- AWS Private CA request ledger ----------------------------------------------------

    def pca_request(self, token: str, since: dt.datetime | None = None) -> str | None:
        """The certificate ARN an earlier IssueCertificate with this token returned (only a
        request made at or after ``since``, when given)."""
        c = pca_requests.c
        query = sa.select(c.certificate_arn).where(c.token == token)
        if since is not None:
            query = query.where(c.requested_at >= since)
        with self._reading() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else str(value)

    def has_certificate(self, serial: int) -> bool:
        with self._reading() as conn:
            found = conn.execute(
                sa.select(certificates.c.id).where(certificates.c.serial == serial_hex(serial))
            ).first()
        return found is not None

    def record_pca_request(
        self, token: str, ca_arn: str, certificate_arn: str, at: dt.datetime
    ) -> None:
        """Remember a token's certificate; a later request with the same token (a new
        certificate once the window has passed, or a concurrent retry) replaces the row
        instead of failing on the primary key."""
        values = {
            "token": token,
            "ca_arn": ca_arn,
            "certificate_arn": certificate_arn,
            "requested_at": at,
        }
        with self.transaction() as conn:
            insert = dialect_insert(conn, pca_requests).values(**values)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[pca_requests.c.token],
                    set_={k: insert.excluded[k] for k in values if k != "token"},
                )
            )


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT with ``on_conflict_do_*`` for the connection's dialect (SQLite, PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise StorageError(f"unsupported database {conn.dialect.name!r}: use SQLite or PostgreSQL")


def _insert_params(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
) -> tuple[str, list[tuple[Any, ...]]]:
    """The SQL and parameters of one driver-level ``executemany`` INSERT of ``rows``.

    The hot path of batch issuance: SQLAlchemy's per-row parameter processing costs more
    than the insert itself. Values are converted here the way the column types would
    convert them (see ``UtcDateTime``), so rows read back identically.
    """
    if not rows:
        return "", []
    names = list(rows[0])
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    # Our own column names, each checked against the table: never input.
    to_db = functools.partial(_UTC.process_bind_param, dialect=conn.dialect)
    converters = [to_db if isinstance(table.c[name].type, UtcDateTime) else None for name in names]
    columns = ", ".join(names)
    values = ", ".join([placeholder] * len(names))
    sql = f"INSERT INTO {table.name} ({columns}) VALUES ({values})"  # noqa: S608
    params = [
        tuple(
            value if conv is None or value is None else conv(value)
            for value, conv in zip(row.values(), converters, strict=True)
        )
        for row in rows
    ]
    return sql, params


def _audit_rows(events: Iterable[AuditEvent]) -> list[dict[str, Any]]:
    return [
        {
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "serial": e.serial,
            "detail": json.dumps(e.detail, sort_keys=True),
        }
        for e in events
    ]


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
    )


def _bundle_version(row: Any) -> BundleVersion:
    return BundleVersion(
        target=row.target,
        endpoint=row.endpoint,
        bucket=row.bucket,
        key=row.key,
        version_id=row.version_id,
        sha256=row.sha256,
        certificates=int(row.certificates),
        action=row.action,
        uploaded=bool(row.uploaded),
        applied_at=as_utc(row.applied_at),
        actor=row.actor,
        revocation_id=None if row.revocation_id is None else int(row.revocation_id),
        id=int(row.id),
    )


def _why(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    """A database URL fit for a message: the password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"
