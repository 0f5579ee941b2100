"""``fleetpki rotation …``: plan, rotate now, run the daemon, status (an entry point).

Imports stay inside the commands: ``fleetpki --help`` must not pay for paho or APScheduler.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
from typing import TYPE_CHECKING, Any

import click

from pki.cli.options import err, print_json
from pki.text import escape_controls
from rotation.cli_common import answer_option, grace_option, retry_options
from rotation.cli_common import current_app as _state
from rotation.cli_common import duration as _duration
from rotation.cli_common import settings as _settings
from rotation.cli_server import server_group
from rotation.cli_status import pause_command, resume_command, status_command

if TYPE_CHECKING:
    from rotation.runtime import Pass


@click.group()
def rotation() -> None:
    """Certificate rotation: which certificates are due, rotate device certificates over
    MQTT now, or run the rotation daemon.

    A device rotates like this: the service asks it on <prefix>/<thing>/rotation/request;
    it makes a new key and sends a CSR on .../rotation/csr; the service issues (and
    registers the certificate with IoT Core when the thing is provisioned there) and
    returns it on .../rotation/certificate; the device reconnects with it and confirms on
    .../rotation/confirm; after the grace period the old certificate is revoked as
    superseded.
    """


# ------------------------------------------------------------------------------- plan


@rotation.command("plan")
@click.option(
    "--horizon",
    default="0",
    show_default=True,
    metavar="DURATION",
    help="Also list certificates due within DURATION from now (e.g. 7d).",
)
@click.option(
    "--limit", type=click.IntRange(min=1, max=1_000_000_000), help="At most this many rows."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plan_command(horizon: str, limit: int | None, as_json: bool) -> None:
    """Certificates past their renewal time (two thirds of the lifetime, with a jitter
    derived from the serial), soonest expiry first."""
    from pki.model import isoformat, serial_hex
    from pki.text import escape_controls
    from rotation.planner import plan_inventory

    state = _state()
    inventory = state.inventory()
    items = plan_inventory(inventory, state.clock.now(), horizon=_duration(horizon))
    shown = items[:limit] if limit else items
    # a server certificate has no thing: its name is its common name (few are due at once)
    names = {i.serial: i.thing or inventory.get(i.serial).common_name for i in shown}
    rows = [
        {
            "serial": serial_hex(i.serial),
            "name": names[i.serial],
            "thing": i.thing,
            "profile": i.profile,
            "renew_at": isoformat(i.renew_at),
            "not_after": isoformat(i.not_after),
        }
        for i in shown
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("nothing is due")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("serial", "name", "profile", "renew at", "not after"):
        table.add_column(column, no_wrap=True)
    for i in shown:
        table.add_row(
            serial_hex(i.serial),
            escape_controls(names[i.serial]),
            i.profile,
            f"{i.renew_at:%Y-%m-%d %H:%M}",
            f"{i.not_after:%Y-%m-%d %H:%M}",
        )
    Console(width=200).print(table)
    click.echo(f"{len(items)} due" + (f" ({len(rows)} shown)" if len(rows) < len(items) else ""))


# -------------------------------------------------------------------------- the service


# ------------------------------------------------------------------------------ rotate


@rotation.command("rotate")
@click.argument("things", nargs=-1)
@click.option("--match", metavar="GLOB", help="Every thing whose name matches (e.g. 'line7-*').")
@grace_option
@answer_option
@retry_options
@click.option("--wait/--no-wait", default=True, show_default=True, help="Stay until done.")
@click.option(
    "--timeout",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="With --wait: give up waiting after DURATION (the rotations go on with the daemon).",
)
@click.option("--force", is_flag=True, help="Also things whose rotation failed recently.")
@click.option("--max-in-flight", type=int, metavar="N",
              help="Pace the wave: at most N devices asked and not yet confirmed at once.")
@click.option("--rate", type=float, metavar="N",
              help="Pace the wave: ask at most N devices per second.")
@click.option("--canary", type=int, default=0, metavar="N",
              help="Ask N devices first; the rest only once all N rotated (a failed canary "
              "stops the wave).")
@click.option("--abort-above", type=float, metavar="PERCENT",
              help="Stop asking once more than PERCENT of the finished rotations failed.")
@click.option("--dry-run", is_flag=True,
              help="Print which devices would be asked, ask nobody.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def rotate_command(
    things: tuple[str, ...],
    match: str | None,
    grace: str,
    answer_timeout: str,
    wait: bool,
    timeout: str,
    force: bool,
    max_in_flight: int | None,
    rate: float | None,
    canary: int,
    abort_above: float | None,
    dry_run: bool,
    as_json: bool,
) -> int:
    """Rotate the device certificates of THINGS (or of things matching --match) now,
    whatever their renewal time: a rotation wave. The devices must be online; with
    --wait this command works their answers until every rotation is confirmed (and, with
    --grace 0, the old certificates revoked) or failed. Exit 1 when one failed."""
    from pki.errors import InvalidInput
    from rotation.pacing import Pacing
    from rotation.runtime import rotate_now, wave_preview

    settings = _settings(grace, answer_timeout)
    try:
        pacing = Pacing(max_in_flight, rate, canary, abort_above)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if dry_run:
        _print_preview(wave_preview(_state(), things, match, settings, force=force), as_json)
        return 0

    def asked(count: int, daemon: str | None) -> None:
        if not as_json:
            by = f" (the running daemon {daemon} works their answers)" if daemon else ""
            err(f"asked {count} devices to rotate{by}")

    wave = rotate_now(
        _state(), things, match, settings, wait=wait, timeout=_duration(timeout).total_seconds(),
        force=force, pacing=pacing, on_asked=asked,
        on_progress=(lambda _counts: None) if as_json else _progress_printer(),
    )  # fmt: skip
    if not wait:
        if as_json:
            print_json({"requested": [r.to_json() for r in wave.requested], "unsent": wave.unsent})
        return 0 if wave.ok else 1
    summary = wave.summary()
    if as_json:
        print_json(summary)
    else:
        click.echo(
            f"{summary['rotations']} rotations in {summary['seconds']} s: "
            + ", ".join(f"{k} {v}" for k, v in wave.counts.items() if v)
        )
        for failed in summary["failed"][:20]:
            click.echo(f"failed {escape_controls(failed['thing'])}: "
                       f"{escape_controls(str(failed['error']))}")  # fmt: skip
        if wave.aborted or wave.not_asked:
            click.echo(f"wave stopped: {wave.aborted or 'out of time'}; "
                       f"{wave.not_asked} devices not asked")  # fmt: skip
        if settings.grace > dt.timedelta(0) and wave.counts.get("confirmed"):
            click.echo(
                f"old certificates are revoked {grace} after confirmation by "
                "'fleetpki rotation run' (the daemon, or '--once')"
            )
    return 0 if wave.ok else 1


def _print_preview(preview: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(preview)
    else:
        for item in preview["would_ask"]:
            click.echo(f"would ask {escape_controls(item['thing'])} (certificate {item['serial']})")
        for item in preview["skipped"]:
            click.echo(f"would skip {escape_controls(item['thing'])}: {item['why']}")
    err(f"dry run: {len(preview['would_ask'])} devices would be asked, nobody was")


def _progress_printer() -> Any:
    last: list[str] = []

    def show(counts: dict[str, int]) -> None:
        total = sum(counts.values())
        line = f"{total} rotations: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        if not last or last[0] != line:
            err(line)
            last[:] = [line]

    return show


# --------------------------------------------------------------------------------- run


@rotation.command("run")
@click.option(
    "--interval",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="How often to plan and request rotations.",
)
@click.option(
    "--horizon",
    default="0",
    show_default=True,
    metavar="DURATION",
    help="Request rotations that fall due within DURATION (spreads a wave out early).",
)
@grace_option
@answer_option
@retry_options
@click.option(
    "--sweep-interval",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How often the sweep revokes what is past its grace period, ends what timed out "
    "and asks again the devices that have not answered.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, None),
    default=10_000,
    show_default=True,
    metavar="N",
    help="At most N device rotations in progress at once; the rest of what is due is asked "
    "as they finish (checked on every sweep).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True, max=1e6),
    default=None,
    metavar="N",
    help="Ask at most N devices per second (the rest of what is due follows as the rate "
    "allows).",
)
@click.option("--canary", type=click.IntRange(0, None), default=0, metavar="N",
              help="Each plan asks N devices first, the rest only once all N rotated (a failed "
              "canary stops that plan's asking).")  # fmt: skip
@click.option("--abort-above", type=float, metavar="PERCENT",
              help="Stop asking a plan's devices once more than PERCENT of its finished "
              "rotations failed.")  # fmt: skip
@click.option(
    "--lease",
    "lease",
    default="1m",
    show_default=True,
    metavar="DURATION",
    help="How long the daemon's hold on the inventory lasts unrenewed: a daemon on "
    "another host takes over this long after this one stopped renewing.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Prometheus metrics on http://HOST:PORT/metrics (0: off).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics listener binds (loopback by default).",
)
@click.option(
    "--once",
    is_flag=True,
    help="One pass: re-sign the CRL if due, revoke superseded certificates, request what "
    "is due, wait for the devices (--timeout), then exit.",
)
@click.option(
    "--timeout",
    default=None,
    metavar="DURATION",
    help="With --once: how long to wait for the devices asked in this pass (default 10m).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what one pass would do now (CRLs to re-sign, rotations to complete or end, "
    "devices to ask, servers to replace) as JSON; change nothing.",
)
def run_command(
    interval: str,
    horizon: str,
    grace: str,
    answer_timeout: str,
    sweep_interval: str,
    max_in_flight: int,
    rate: float | None,
    canary: int,
    abort_above: float | None,
    lease: str,
    metrics_port: int,
    metrics_host: str,
    once: bool,
    timeout: str | None,
    dry_run: bool,
) -> int:
    """The rotation daemon: plans every --interval, asks the devices whose certificates
    are past their renewal time to rotate, works their CSRs and confirmations, revokes
    the replaced certificates after --grace, and re-signs the CRL well before its
    nextUpdate. Stops cleanly on SIGTERM or Ctrl-C."""
    from pki import logs
    from pki.errors import InvalidInput
    from rotation.daemon import Daemon
    from rotation.planner import plan_inventory
    from rotation.runtime import run_once

    logs.for_daemon()
    state = _state()
    settings = dataclasses.replace(_settings(grace, answer_timeout), max_open=max_in_flight)
    every = _seconds(interval, "--interval", 1)
    sweep_every = _seconds(sweep_interval, "--sweep-interval", 1)
    lease_seconds = _seconds(lease, "--lease", 3)
    from rotation.pacing import Pacing

    try:  # the same limits as a wave's (not a number: refused); in flight: max_open
        pacing = Pacing(None, rate, canary, abort_above)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if timeout is not None and not once:
        raise InvalidInput("--timeout goes with --once (the daemon runs until stopped)")
    wait_seconds = _duration(timeout or "10m").total_seconds()
    ahead = _duration(horizon)
    if dry_run:
        from rotation.runtime import pass_preview

        print_json(pass_preview(state, settings, ahead))
        return 0
    from rotation.runtime import open_service

    service, channel = open_service(state, settings)

    def plan() -> list[Any]:
        return plan_inventory(state.inventory(), state.clock.now(), horizon=ahead)

    daemon = Daemon(service, plan, interval=every, sweep_interval=sweep_every,
                    lease=lease_seconds, pacing=pacing)  # fmt: skip
    if once:
        return _serve(state, service, channel, daemon, lambda: _report_pass(
            run_once(service, daemon, plan, wait_seconds)), metrics=None)  # fmt: skip
    where = f", metrics on http://{metrics_host}:{metrics_port}/metrics" if metrics_port else ""
    announce = f"rotation daemon running (plan every {interval}, grace {grace}{where})"
    return _serve(state, service, channel, daemon, lambda: _until_stopped(daemon, announce),
                  metrics=(metrics_host, metrics_port) if metrics_port else None)  # fmt: skip


def _serve(
    state: Any, service: Any, channel: Any, daemon: Any, work: Any,
    metrics: tuple[str, int] | None,
) -> int:
    """Hold the lease, serve the metrics, connect to the broker, ``work``; then let go of
    all of it (a daemon that lost its lease leaves the broker at once)."""
    from pki.errors import InvalidInput
    from rotation import store

    metrics_server: Any = None
    try:
        daemon.acquire()
        if metrics is not None:
            from prometheus_client import start_http_server

            try:
                metrics_server, _thread = start_http_server(
                    metrics[1], metrics[0], registry=service.metrics.registry
                )
            except OSError as exc:
                raise InvalidInput(
                    f"cannot serve metrics on {metrics[0]}:{metrics[1]}: {exc.strerror}"
                ) from None
        channel.start()
        code = int(work())
        if daemon.lost:  # another process holds the lease now: whatever was done, not all
            err("fleetpki: error: another rotation daemon took over the lease; stopped")
            return 1
        return code
    finally:
        if metrics_server is not None:  # the port is free for a restart at once
            metrics_server.shutdown()
            metrics_server.server_close()
        # the broker session is the new holder's (the same client id) once the lease is
        channel.close(drain=0 if daemon.lost else 30)
        store.release_lease(state.inventory().engine, "rotation-daemon", daemon.holder)


def _until_stopped(daemon: Any, announce: str) -> int:
    """Run the daemon until SIGTERM (exit 0), Ctrl-C (130) or a lost lease (1)."""
    interrupted: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        daemon.stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    err(announce)
    daemon.run()
    if daemon.lost:  # said by _serve
        return 1
    if signal.SIGINT in interrupted:  # Ctrl-C: stopped cleanly, as interrupted
        err("fleetpki: interrupted")
        return 130
    return 0


def _seconds(text: str, option: str, least: float) -> float:
    from pki.errors import InvalidInput

    seconds = _duration(text).total_seconds()
    if seconds < least:
        raise InvalidInput(f"{option} must be at least {least:g}s")
    return seconds


def _report_pass(done: Pass) -> int:
    """Exit 1 only when one of the pass's own rotations failed or did not finish; asking
    nothing is a success, said so."""
    print_json(done.to_json())
    if not done.requested and not done.servers:
        err("nothing is due: no rotation requested")
    elif not done.ok:
        err(
            f"{done.counts.get('failed', 0)} of {done.requested} device rotations failed, "
            f"{done.unfinished} unfinished, {len(done.failed_servers)} server rotations failed "
            "(see 'fleetpki rotation status')"
        )
        return 1
    return 0


rotation.add_command(server_group)
rotation.add_command(status_command)
rotation.add_command(pause_command)
rotation.add_command(resume_command)
