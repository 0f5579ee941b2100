"""The device side's tables as fleetpki made them before migrations: the certificates
registered with IoT Core and the CA registration.

Revision ID: dev_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "dev_0001"
down_revision = None
branch_labels = ("devices",)
depends_on = None  # an independent branch: no table of another package is touched

tables = sa.MetaData()

iot_certificates = sa.Table(
    "iot_certificates",
    tables,
    sa.Column("serial", sa.String(42), primary_key=True),
    sa.Column("thing", sa.String(128), nullable=False, index=True),
    sa.Column("certificate_id", sa.String(128), nullable=False),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("registered_at", sa.String(32), nullable=False),
)

iot_ca = sa.Table(
    "iot_ca",
    tables,
    sa.Column("certificate_id", sa.String(128), primary_key=True),
    sa.Column("certificate_arn", sa.String(2048), nullable=False),
    sa.Column("registered_at", sa.String(32), nullable=False),
)


def upgrade() -> None:
    tables.create_all(op.get_bind())


def downgrade() -> None:
    tables.drop_all(op.get_bind())
