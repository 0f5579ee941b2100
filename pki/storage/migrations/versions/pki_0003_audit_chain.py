"""The audit log becomes tamper-evident: each event carries the previous event's hash and
its own (SHA-256 over the previous hash and the event), ``fleetpki_meta.audit_head`` the
newest. The events already there are chained in their order.

Revision ID: pki_0003
"""

import datetime as dt
import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "pki_0003"
down_revision = "pki_0002"
branch_labels = None
depends_on = None


def _hash(prev: str, at: object, actor: str, action: str, serial: str | None, detail: str) -> str:
    # a frozen copy of pki.storage.audit.event_hash
    if isinstance(at, str):
        moment = dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC)
    else:
        assert isinstance(at, dt.datetime)
        moment = at.astimezone(dt.UTC) if at.tzinfo else at.replace(tzinfo=dt.UTC)
    text = json.dumps(
        [prev, moment.isoformat(timespec="microseconds"), actor, action, serial, detail],
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id", sa.Integer),
        sa.column("at"),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("serial", sa.String),
        sa.column("detail", sa.Text),
        sa.column("prev_hash", sa.String),
        sa.column("hash", sa.String),
    )
    head = ""
    rows = bind.execute(sa.select(events).order_by(events.c.id)).fetchall()
    updates = []
    for r in rows:
        new = _hash(head, r.at, r.actor, r.action, r.serial, r.detail)
        updates.append({"row_id": r.id, "prev": head, "new": new})
        head = new
    if updates:
        bind.execute(
            events.update()
            .where(events.c.id == sa.bindparam("row_id"))
            .values(prev_hash=sa.bindparam("prev"), hash=sa.bindparam("new")),
            updates,
        )
    meta = sa.table("fleetpki_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    bind.execute(meta.insert().values(key="audit_head", value=head))


def downgrade() -> None:
    op.execute("DELETE FROM fleetpki_meta WHERE key = 'audit_head'")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
