"""The device tables' times are stored like every other table's: ``registered_at`` was
ISO text (``2026-12-06T03:17:00.123456+00:00``); now it is the inventory's UTC time
(timestamptz on PostgreSQL; ``YYYY-MM-DD HH:MM:SS.ffffff`` text on SQLite, which sorts and
compares as text).

Revision ID: dev_0002
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "dev_0002"
down_revision = "dev_0001"
branch_labels = None
depends_on = None

TABLES = ("iot_certificates", "iot_ca")


def _sqlite_text(value: str) -> str:
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat(" ", "microseconds")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in TABLES:
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN registered_at TYPE timestamptz "
                "USING registered_at::timestamptz"
            )
        return
    for table in TABLES:
        key = "serial" if table == "iot_certificates" else "certificate_id"
        rows = bind.execute(sa.text(f"SELECT {key}, registered_at FROM {table}")).all()  # noqa: S608
        for ident, value in rows:
            bind.execute(
                sa.text(f"UPDATE {table} SET registered_at = :at WHERE {key} = :id"),  # noqa: S608
                {"at": _sqlite_text(value), "id": ident},
            )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in TABLES:
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN registered_at TYPE varchar(32) "
                "USING to_char(registered_at AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')'
            )
