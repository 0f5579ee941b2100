"""Command groups of the device side, added to ``fleetpki`` through entry points."""

from __future__ import annotations

import click


@click.group()
def iot() -> None:
    """AWS IoT Core: register the CA, provision and deprovision things."""


@click.group()
def dev() -> None:
    """Local stand-ins for IoT Core, the mTLS API and the AWS control plane."""


@click.group()
def fleet() -> None:
    """The device fleet simulator."""
