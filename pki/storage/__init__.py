"""Storage: the inventory (certificates, audit log, CRL numbers, ledgers) on SQLite or
PostgreSQL, one schema made and upgraded by Alembic migrations."""

from pki.storage.audit import AuditEvent
from pki.storage.database import dialect_insert, open_engine, redact_url, why
from pki.storage.inventory import Inventory, NewCertificate
from pki.storage.ledgers import BundleVersion
from pki.storage.schema import (
    HIERARCHY_KEY,
    UtcDateTime,
    audit_events,
    bundle_versions,
    certificates,
    crls,
    meta,
    metadata,
    pca_requests,
)

__all__ = [
    "HIERARCHY_KEY",
    "AuditEvent",
    "BundleVersion",
    "Inventory",
    "NewCertificate",
    "UtcDateTime",
    "audit_events",
    "bundle_versions",
    "certificates",
    "crls",
    "dialect_insert",
    "meta",
    "metadata",
    "open_engine",
    "pca_requests",
    "redact_url",
    "why",
]
