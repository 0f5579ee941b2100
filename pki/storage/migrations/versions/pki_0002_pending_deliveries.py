"""Deliveries recorded before they happen: a certificate's files are staged under
temporary names, its row is committed with a ``pending_deliveries`` row naming them, then
the files are renamed into place and the pending row deleted. A row left here after a
crash is a recorded certificate not yet delivered: the next run delivers or withdraws it.

Revision ID: pki_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "pki_0002"
down_revision = "pki_0001"
branch_labels = None
depends_on = None

UTC_TIME = sa.String(32).with_variant(sa.DateTime(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "pending_deliveries",
        sa.Column("serial", sa.String(42), primary_key=True),
        sa.Column("staged_at", UTC_TIME, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pending_deliveries")
