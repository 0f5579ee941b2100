"""Reactions of the device side to pki events (registered as entry points in pyproject.toml)."""

from __future__ import annotations

from pki.hooks import RevocationEvent


def on_revoked(event: RevocationEvent) -> None:
    """Called after ``fleetpki revoke``. Nothing is registered in IoT Core yet in this
    version, so there is nothing further to revoke."""
    del event
