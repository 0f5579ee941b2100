"""The inventory's tables, on one ``MetaData`` that the other packages add theirs to
(``rotation`` and ``devices`` import it; ``pki`` never imports them). The schema itself is
made and changed only by the Alembic migrations (``pki/storage/migrations``), never by
``create_all`` at start-up."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from pki.clock import as_utc

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


UTC = UtcDateTime()

metadata = sa.MetaData()  # shared: every package adds its tables

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
    # SHA-256 of the SubjectPublicKeyInfo: which certificates a key is bound to
    sa.Column("spki_sha256", sa.String(64), nullable=True, index=True),
    # the key identifier of the CA that signed it (hex): which CA generation it chains to
    sa.Column("issuer_key_id", sa.String(64), nullable=True, index=True),
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
    # the tamper-evident chain (pki.storage.audit): the previous event's hash, this one's
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=True),
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

# A certificate committed whose files are staged but not yet renamed into place (a crash
# in between leaves the row here: the next run delivers or withdraws it). ``files``: JSON
# {"overwrite": bool, "files": [[temporary path, final path], ...]}.
pending_deliveries = sa.Table(
    "pending_deliveries",
    metadata,
    sa.Column("serial", sa.String(42), primary_key=True),
    sa.Column("staged_at", UtcDateTime, nullable=False),
    sa.Column("files", sa.Text, nullable=False),
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
    # the CA certificates in the bundle: a JSON list of SHA-256 fingerprints (pki_0005)
    sa.Column("cas", sa.Text, nullable=True),
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
