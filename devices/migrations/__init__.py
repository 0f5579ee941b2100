"""The device tables' migrations: a branch of the inventory's schema history, found by
``pki.storage.migrate`` through the ``fleetpki.migrations`` entry point."""

from pathlib import Path

from pki.storage.migrate import Branch

BRANCH = Branch(
    name="devices",
    versions=Path(__file__).parent / "versions",
    head="dev_0002",
    baseline="dev_0001",
    legacy_table="iot_certificates",
)
