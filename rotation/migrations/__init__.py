"""The rotation tables' migrations: a branch of the inventory's schema history, found by
``pki.storage.migrate`` through the ``fleetpki.migrations`` entry point."""

from pathlib import Path

from pki.storage.migrate import Branch

BRANCH = Branch(
    name="rotation",
    versions=Path(__file__).parent / "versions",
    head="rot_0003",
    baseline="rot_0001",
    legacy_table="rotations",
)
