"""The bundle ledger records which CA certificates each published bundle holds (SHA-256
fingerprints, JSON), so that ``doctor`` can tell, offline, which active certificates no
published trust store covers. Rows from before stay without (NULL: unknown).

Revision ID: pki_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "pki_0005"
down_revision = "pki_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundle_versions") as batch:
        batch.add_column(sa.Column("cas", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bundle_versions") as batch:
        batch.drop_column("cas")
