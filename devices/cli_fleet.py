"""The ``fleetpki fleet`` command group (the device fleet simulator), added to ``fleetpki``
through an entry point. Imports stay inside the command: ``fleetpki --help`` must not pay
for paho or the simulator's workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from devices.simulator import SCENARIOS
from pki.cli.options import FiniteFloatRange, err, print_json

# ------------------------------------------------------------------------------ fleet


@click.group()
def fleet() -> None:
    """The device fleet simulator."""


@fleet.command("simulate")
@click.option(
    "--devices",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Simulated devices, each with its own key, CSR and certificate.",
)
@click.option(
    "--duration",
    type=FiniteFloatRange(1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds of steady telemetry after the fleet has connected.",
)
@click.option(
    "--rate",
    type=FiniteFloatRange(0, 100),
    default=1.0,
    show_default=True,
    help="QoS 1 telemetry messages per device per second.",
)
@click.option(
    "--scenario",
    type=click.Choice(list(SCENARIOS)),
    default="steady",
    show_default=True,
    help="steady: telemetry only; revocation: devices revoked mid-run and cut; impostors: "
    "foreign CA, expired, no certificate, another thing's topic; expiry: 1% with expired "
    "certificates; rotation: a rotation wave over MQTT ('fleetpki rotation rotate "
    "--grace 0'), old certificates refused afterwards; all: everything.",
)
@click.option(
    "--revoke",
    "revoke_count",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Devices revoked mid-run (revocation scenario).",
)
@click.option(
    "--sdk-share",
    type=FiniteFloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of devices on the AWS IoT Device SDK (the rest use paho-mqtt).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    help="Worker processes (default: one per CPU, at most 4).",
)
@click.option(
    "--wave-in-flight",
    type=click.IntRange(0, None),
    default=0,
    help="Rotation scenario: pace the wave with 'rotation rotate --max-in-flight N' "
    "(0: every device asked at once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def fleet_simulate(
    devices: int,
    duration: float,
    rate: float,
    scenario: str,
    revoke_count: int,
    sdk_share: float,
    workers: int,
    wave_in_flight: int,
    as_json: bool,
) -> int:
    """Simulate a fleet against the local stand-ins (started for the run when they are
    not running): keys and CSRs made per device, certificates through the batch path,
    mTLS MQTT with QoS 1 telemetry and mTLS HTTPS calls. Exit 1 when a check fails
    (a valid device not connected, a lost message, a revoked device not cut, an
    impostor let in).

    The simulated devices never land in your inventory: the run uses a home of its own
    (a new CA and SQLite inventory in a temporary folder, removed afterwards), unless
    'fleetpki --home DIR fleet simulate' names one on the command line.
    """
    import contextlib

    from devices.simulator import SimConfig, session
    from pki.cli.root import current_app

    app = current_app()
    root = click.get_current_context().find_root()
    explicit = root.get_parameter_source("home") is click.core.ParameterSource.COMMANDLINE
    config = SimConfig(devices=devices, duration=duration, rate=rate, scenario=scenario,
                       sdk_share=sdk_share, revoke=revoke_count, workers=workers,
                       wave_in_flight=wave_in_flight)  # fmt: skip
    with contextlib.ExitStack() as stack:
        if explicit:
            app.home.config()  # the named home must hold a CA
        else:
            app = stack.enter_context(session.own_home(app, err))
        with _progress_display(not as_json) as show:
            summary = session.run(app, config, show)
    data = summary.to_json()
    if as_json:
        print_json(data)
    else:
        _print_summary(data)
    return 0 if summary.ok else 1


@contextlib.contextmanager
def _progress_display(wanted: bool) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """A live line on a terminal (connected, sent, acknowledged) and the revocations."""
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    live_enabled = console.is_terminal and wanted
    with Live(console=console, transient=True, auto_refresh=False) as live:

        def show(event: str, data: dict[str, Any]) -> None:
            if event == "revoked":
                console.print(f"revoked {', '.join(data['things'])}")
            elif live_enabled:
                live.update(
                    f"connected {data['connected']}/{data['devices']}  "
                    f"sent {data['sent']}  acked {data['acked']}",
                    refresh=True,
                )

        yield show


def _print_summary(data: dict[str, Any]) -> None:
    m, lat = data["messages"], data["connect_latency_ms"]
    click.echo(
        f"devices {data['devices']} ({', '.join(f'{k} {v}' for k, v in data['clients'].items())})"
        f", connected {data['connected']}, workers {data['workers']}"
    )
    refused = ", ".join(f"{why} {n}" for why, n in sorted(data["refused"].items()))
    click.echo(f"refused at connect: {refused or 'none'}")
    click.echo(f"messages: sent {m['sent']}, acknowledged {m['acked']}, lost {m['lost']}")
    click.echo(f"connect latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    for cut in data["revoked"]:
        click.echo(
            f"revoked {cut['thing']}: MQTT session cut after {cut['mqtt_cut_seconds']} s, "
            f"HTTPS refused after {cut['https_refused_seconds']} s ({cut['https_reason']}), "
            f"reconnect {cut['reconnect']}"
        )
    rotation = data.get("rotation")
    if rotation:
        each = rotation["per_device_seconds"]
        old = sorted(
            {f"MQTT {o['mqtt']}, HTTPS {o['https']}" for o in rotation["old_certificates"]}
        )
        click.echo(
            f"rotation wave: {rotation['devices_asked']} devices asked, "
            f"{rotation['devices_confirmed']} on their new certificate in "
            f"{rotation['wave_seconds']} s (per device p50 {each['p50']} s, p99 {each['p99']} s); "
            f"old certificates: {'; '.join(old) or 'not tried'}"
        )
        if rotation["service_error"]:
            click.echo(f"rotation service: {rotation['service_error']}")
    for imp in data["impostors"]:
        click.echo(f"impostor {imp['kind']}: MQTT {imp['mqtt']}, HTTPS {imp['https']}")
    access = data["access_log"]
    refused_log = ", ".join(f"{why} {n}" for why, n in sorted(access["refused"].items()))
    click.echo(f"access log: accepted {access['accepted']}, refused {refused_log or 'none'}")
    click.echo(f"wall time {data['timing']['wall_seconds']} s")
    failed = [k for k, v in data["checks"].items() if not v and k != "passed"]
    click.echo("checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}")
