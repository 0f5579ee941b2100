"""The pki tables as fleetpki made them before migrations (create_all at start-up):
certificates, the audit log, CRL numbers, the bundle and Private CA ledgers, and
fleetpki_meta. A database from before migrations is stamped here, not run through it.

Revision ID: pki_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "pki_0001"
down_revision = None
branch_labels = ("pki",)
depends_on = None

# frozen copies of the table definitions of that time (never the live schema module):
# UTC times are text on SQLite ('YYYY-MM-DD HH:MM:SS.ffffff'), timestamptz on PostgreSQL
UTC_TIME = sa.String(32).with_variant(sa.DateTime(timezone=True), "postgresql")
tables = sa.MetaData()

certificates = sa.Table(
    "certificates",
    tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("serial", sa.String(42), nullable=False, unique=True),
    sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("thing", sa.String(128), nullable=True, index=True),
    sa.Column("common_name", sa.String(255), nullable=False),
    sa.Column("profile", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("issuer", sa.Text, nullable=False),
    sa.Column("not_before", UTC_TIME, nullable=False),
    sa.Column("not_after", UTC_TIME, nullable=False),
    sa.Column("sans", sa.Text, nullable=False, default="[]"),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("revoked_at", UTC_TIME, nullable=True),
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
    tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTC_TIME, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("serial", sa.String(42), nullable=True, index=True),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
)

crls = sa.Table(
    "crls",
    tables,
    sa.Column("issuer", sa.String(512), primary_key=True),
    sa.Column("number", sa.BigInteger, primary_key=True),
    sa.Column("this_update", UTC_TIME, nullable=False),
    sa.Column("next_update", UTC_TIME, nullable=False),
    sa.Column("entries", sa.Integer, nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
)

bundle_versions = sa.Table(
    "bundle_versions",
    tables,
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
    sa.Column("applied_at", UTC_TIME, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
)

pca_requests = sa.Table(
    "pca_requests",
    tables,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("ca_arn", sa.String(2048), nullable=False),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("requested_at", UTC_TIME, nullable=False),
)

meta = sa.Table(
    "fleetpki_meta",
    tables,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    tables.create_all(bind)
    bind.execute(meta.insert().values(key="schema_version", value="1"))


def downgrade() -> None:
    tables.drop_all(op.get_bind())
