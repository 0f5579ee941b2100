"""Leases carry an epoch, raised on every takeover: a daemon that lost its lease (paused,
cut off) and comes back finds another epoch in every write transaction and stops, instead
of working the same devices beside the new holder. Rotations count how often their
request was sent and when it is sent again (per-device backoff).

Revision ID: rot_0003
"""

import sqlalchemy as sa
from alembic import op

from pki.storage import UtcDateTime

revision = "rot_0003"
down_revision = "rot_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("next_attempt_at", UtcDateTime, nullable=True))
    # rotations waiting for their device now are asked again by the next sweep
    op.execute(
        "UPDATE rotations SET next_attempt_at = updated_at "
        "WHERE state IN ('requested', 'issued')"
    )


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("attempts")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("epoch")
