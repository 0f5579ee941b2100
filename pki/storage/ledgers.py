"""The inventory's ledgers: which trust bundle each endpoint was pointed at (history,
rollback), and which certificate an AWS Private CA request returned (safe retries)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.clock import as_utc
from pki.errors import NotFound
from pki.model import serial_hex
from pki.storage.database import dialect_insert, reading, writing
from pki.storage.schema import bundle_versions, certificates, pca_requests


@dataclass(frozen=True)
class BundleVersion:
    """One ledger row: which bundle (hash, S3 version) an endpoint was pointed at, and when."""

    target: str
    endpoint: str | None
    bucket: str
    key: str
    version_id: str
    sha256: str
    certificates: int
    action: str  # publish | rollback | upload
    uploaded: bool  # a new S3 object version was written
    applied_at: dt.datetime
    actor: str
    revocation_id: int | None = None  # ALB trust-store revocation list (target alb-crl)
    id: int | None = None
    cas: tuple[str, ...] | None = None  # SHA-256 of each CA certificate in it (None: unknown)

    def to_json(self) -> dict[str, Any]:
        from pki.model import iso_event

        return {
            "id": self.id,
            "target": self.target,
            "endpoint": self.endpoint,
            "s3_uri": f"s3://{self.bucket}/{self.key}",
            "version_id": self.version_id,
            "sha256": self.sha256,
            "certificates": self.certificates,
            "action": self.action,
            "uploaded": self.uploaded,
            "applied_at": iso_event(self.applied_at),
            "actor": self.actor,
            "revocation_id": self.revocation_id,
            "cas": list(self.cas) if self.cas is not None else None,
        }


class Ledgers:
    """Mixed into ``Inventory``: the ledger tables on its engine."""

    engine: Engine

    def record_bundle_version(self, conn: Connection, version: BundleVersion) -> int:
        values = {k: v for k, v in version.__dict__.items() if k != "id"}
        values["cas"] = None if version.cas is None else json.dumps(list(version.cas))
        result = conn.execute(bundle_versions.insert().values(**values))
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    def bundle_history(self, limit: int | None = None) -> list[BundleVersion]:
        """Ledger rows, oldest first (the last ``limit`` when given)."""
        query = sa.select(bundle_versions).order_by(bundle_versions.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            rows = list(conn.execute(query))
        return [_bundle_version(r) for r in reversed(rows)]

    def find_bundle_version(self, ref: str) -> BundleVersion:
        """A ledger row by its number or by S3 VersionId (the newest row with it)."""
        c = bundle_versions.c
        query = sa.select(bundle_versions).order_by(c.id.desc()).limit(1)
        if ref.isdigit() and len(ref) < 10:
            query = query.where(sa.or_(c.id == int(ref), c.version_id == ref))
        else:
            query = query.where(c.version_id == ref)
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(
                f"no bundle version {ref!r} in the ledger (see 'fleetpki bundle history')"
            )
        return _bundle_version(row)

    def revocation_ids(self, trust_store_arn: str) -> list[int]:
        """Every ALB revocation-list ID fleetpki ever added to this trust store."""
        c = bundle_versions.c
        query = sa.select(c.revocation_id).where(
            c.endpoint == trust_store_arn, c.revocation_id.is_not(None)
        )
        with reading(self.engine) as conn:
            return [int(v) for v in conn.execute(query).scalars()]

    # -- AWS Private CA request ledger ----------------------------------------------------

    def pca_request(self, token: str, since: dt.datetime | None = None) -> str | None:
        """The certificate ARN an earlier IssueCertificate with this token returned (only a
        request made at or after ``since``, when given)."""
        c = pca_requests.c
        query = sa.select(c.certificate_arn).where(c.token == token)
        if since is not None:
            query = query.where(c.requested_at >= since)
        with reading(self.engine) as conn:
            value = conn.execute(query).scalar()
        return None if value is None else str(value)

    def has_certificate(self, serial: int) -> bool:
        with reading(self.engine) as conn:
            found = conn.execute(
                sa.select(certificates.c.id).where(certificates.c.serial == serial_hex(serial))
            ).first()
        return found is not None

    def record_pca_request(
        self, token: str, ca_arn: str, certificate_arn: str, at: dt.datetime
    ) -> None:
        """Remember a token's certificate; a later request with the same token (a new
        certificate once the window has passed, or a concurrent retry) replaces the row
        instead of failing on the primary key."""
        values = {
            "token": token,
            "ca_arn": ca_arn,
            "certificate_arn": certificate_arn,
            "requested_at": at,
        }
        with writing(self.engine) as conn:
            insert = dialect_insert(conn, pca_requests).values(**values)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[pca_requests.c.token],
                    set_={k: insert.excluded[k] for k in values if k != "token"},
                )
            )


def _bundle_version(row: Any) -> BundleVersion:
    return BundleVersion(
        target=row.target,
        endpoint=row.endpoint,
        bucket=row.bucket,
        key=row.key,
        version_id=row.version_id,
        sha256=row.sha256,
        certificates=int(row.certificates),
        action=row.action,
        uploaded=bool(row.uploaded),
        applied_at=as_utc(row.applied_at),
        actor=row.actor,
        revocation_id=None if row.revocation_id is None else int(row.revocation_id),
        id=int(row.id),
        cas=None if row.cas is None else tuple(json.loads(row.cas)),
    )
