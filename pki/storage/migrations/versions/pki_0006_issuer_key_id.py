"""Certificates say which CA key signed them: ``issuer_key_id`` (the issuing CA's key
identifier, hex; indexed), so that a home with several CA generations (rollover) knows
each record's. Existing rows get theirs from their PEM: the authorityKeyIdentifier, or for
a self-signed root its own subjectKeyIdentifier.

Revision ID: pki_0006
"""

import sqlalchemy as sa
from alembic import op
from cryptography import x509

revision = "pki_0006"
down_revision = "pki_0005"
branch_labels = None
depends_on = None


def _key_id(pem: str) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            if aki.key_identifier:
                return aki.key_identifier.hex()
        except x509.ExtensionNotFound:
            pass
        if cert.issuer == cert.subject:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            return ski.digest.hex()
    except (ValueError, x509.ExtensionNotFound):
        pass
    return None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("issuer_key_id", sa.String(64), nullable=True))
        batch.create_index("ix_certificates_issuer_key_id", ["issuer_key_id"])
    bind = op.get_bind()
    table = sa.table(
        "certificates", sa.column("id", sa.Integer), sa.column("pem", sa.Text),
        sa.column("issuer_key_id", sa.String),
    )  # fmt: skip
    update = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"))
        .values(issuer_key_id=sa.bindparam("key_id"))
    )
    last = 0
    while True:  # in slices: a million rows are never all in memory at once
        rows = bind.execute(
            sa.select(table.c.id, table.c.pem).where(table.c.id > last).order_by(table.c.id)
            .limit(5000)
        ).all()  # fmt: skip
        if not rows:
            break
        last = rows[-1].id
        updates = [{"row_id": r.id, "key_id": k} for r in rows if (k := _key_id(r.pem))]
        if updates:
            bind.execute(update, updates)


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_issuer_key_id")
        batch.drop_column("issuer_key_id")
