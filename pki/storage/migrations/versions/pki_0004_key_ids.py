"""Certificates say which key they are for: ``spki_sha256`` (SHA-256 of the
SubjectPublicKeyInfo, indexed), so that a retried request finds its certificate and one
key never serves two identities unawares. Existing rows get theirs from their PEM.

Revision ID: pki_0004
"""

import hashlib

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives import serialization

revision = "pki_0004"
down_revision = "pki_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("spki_sha256", sa.String(64), nullable=True))
        batch.create_index("ix_certificates_spki_sha256", ["spki_sha256"])
    bind = op.get_bind()
    table = sa.table(
        "certificates", sa.column("id", sa.Integer), sa.column("pem", sa.Text),
        sa.column("spki_sha256", sa.String),
    )  # fmt: skip
    updates = []
    for row in bind.execute(sa.select(table.c.id, table.c.pem)):
        try:
            key = x509.load_pem_x509_certificate(row.pem.encode()).public_key()
        except ValueError:
            continue
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        updates.append({"row_id": row.id, "key_id": hashlib.sha256(der).hexdigest()})
    if updates:
        bind.execute(
            table.update()
            .where(table.c.id == sa.bindparam("row_id"))
            .values(spki_sha256=sa.bindparam("key_id")),
            updates,
        )


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_spki_sha256")
        batch.drop_column("spki_sha256")
