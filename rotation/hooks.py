"""Reactions of the rotation package to pki events (entry points in pyproject.toml)."""

from __future__ import annotations

from pki.hooks import StatusQuery
from pki.storage import Inventory


def status_warnings(query: StatusQuery) -> list[str]:
    """For ``ca show``: rotation paused, or certificates to keep current and no daemon
    doing it."""
    from rotation import store
    from rotation.daemon import LEASE
    from rotation.planner import expiry_summary

    assert isinstance(query.inventory, Inventory)
    engine = query.inventory.engine
    with store.transaction(engine) as conn:
        held = store.paused(conn)
    found = []
    if held is not None:
        found.append(f"{store.describe_pause(held)} ('fleetpki rotation resume')")
    if store.lease_holder(engine, LEASE, query.now) is None and any(
        row.active for row in expiry_summary(query.inventory, query.now)
    ):
        found.append(
            "no rotation daemon is running: device and server certificates are not renewed "
            "('fleetpki rotation run')"
        )
    return found
