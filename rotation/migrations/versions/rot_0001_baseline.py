"""The rotation tables as fleetpki made them before migrations: rotations (one open per
thing), server targets, the daemon lease.

Revision ID: rot_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "rot_0001"
down_revision = None
branch_labels = ("rotation",)
depends_on = None  # an independent branch: no table of another package is touched

UTC_TIME = sa.String(32).with_variant(sa.DateTime(timezone=True), "postgresql")
tables = sa.MetaData()

rotations = sa.Table(
    "rotations",
    tables,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("thing", sa.String(128), nullable=False, index=True),
    sa.Column("old_serial", sa.String(42), nullable=False),
    sa.Column("new_serial", sa.String(42), nullable=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("days", sa.Integer, nullable=False),
    sa.Column("requested_at", UTC_TIME, nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
    sa.Column("deadline", UTC_TIME, nullable=False),
    sa.Column("confirmed_at", UTC_TIME, nullable=True),
    sa.Column("completed_at", UTC_TIME, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # how long the old certificate stays valid after the confirmation: the requester's
    # setting, whichever process sweeps
    sa.Column("grace_seconds", sa.Integer, nullable=False, default=3600),
    # when revoking the old certificate first failed (its hooks are retried for a while)
    sa.Column("retry_since", UTC_TIME, nullable=True),
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
    tables,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("directory", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: names, key type, days, reload command
    sa.Column("serial", sa.String(42), nullable=False),  # the certificate installed now
    sa.Column("added_at", UTC_TIME, nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
)

leases = sa.Table(
    "leases",
    tables,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", UTC_TIME, nullable=False),
)


def upgrade() -> None:
    tables.create_all(op.get_bind())


def downgrade() -> None:
    tables.drop_all(op.get_bind())
