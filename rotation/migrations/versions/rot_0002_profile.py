"""Rotations say what they replace: ``profile`` (device or server), so that a server's
rotation no longer passes for a thing's. Existing rows: server when a server target of
that name exists, device otherwise.

Revision ID: rot_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "rot_0002"
down_revision = "rot_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(
            sa.Column("profile", sa.String(16), nullable=False, server_default="device")
        )
    op.execute(
        "UPDATE rotations SET profile = 'server' WHERE thing IN (SELECT name FROM server_targets)"
    )


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("profile")
