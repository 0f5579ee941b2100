"""Command groups of the device side, added to ``fleetpki`` through entry points.

Imports stay inside the commands: ``fleetpki --help`` must not pay for boto3 or paho.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.cli.options import (
    batch_option,
    csr_option,
    days_option,
    err,
    generate_key_option,
    out_option,
    print_json,
)
from pki.text import escape_controls

if TYPE_CHECKING:
    from pki.app import App


def _state() -> App:
    from pki.cli.root import current_app

    return current_app()


# -------------------------------------------------------------------------------- iot


@click.group()
def iot() -> None:
    """AWS IoT Core: register the CA, provision and deprovision things.

    Region, endpoint and credentials come from the usual AWS settings (AWS_REGION,
    AWS_ENDPOINT_URL, AWS_PROFILE...).
    """


def _iot_core() -> Any:
    from devices.iot import IotCore

    state = _state()
    return IotCore(state.inventory().engine, state.clock)


@iot.command("register-ca")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def iot_register_ca(as_json: bool) -> None:
    """Register the issuing CA with IoT Core (registration code, verification certificate
    signed by the CA, register_ca_certificate). Idempotent."""
    state = _state()
    certificate_id, created = _iot_core().register_ca(state.issuer(), state.home.actor())
    if as_json:
        print_json({"certificate_id": certificate_id, "registered": created})
        return
    click.echo(certificate_id)
    err("registered the issuing CA" if created else "the issuing CA was already registered")


@iot.command("provision")
@click.argument("thing", required=False)
@csr_option("device")
@generate_key_option
@batch_option("Provision")
@out_option
@days_option
@click.option(
    "--force", is_flag=True, help="Replace output files (e.g. after a failed provisioning)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def iot_provision(
    thing: str | None,
    csr_file: Path | None,
    generate_key: bool,
    batch_dir: Path | None,
    out_dir: Path,
    days: int | None,
    force: bool,
    as_json: bool,
) -> int:
    """Issue a device certificate for THING and provision it in IoT Core: thing (reused
    when it exists), certificate registration (with the CA when registered), the
    least-privilege policy 'fleetpki-device', and both attachments.

    A failure on AWS rolls back what was created there; the issued certificate stays in
    the inventory and the error names it.
    """
    from pki.cli.output import report_settled
    from pki.errors import InvalidInput
    from pki.issue.delivery import single_request
    from pki.model import KeyType

    state = _state()
    actor = state.home.actor()
    if batch_dir is not None:
        if thing or csr_file or generate_key:
            raise InvalidInput("--batch takes no THING, --csr or --generate-key")
        return _provision_batch(batch_dir, out_dir, days, force, as_json)
    if not thing:
        raise InvalidInput("give a THING (or --batch DIR)")
    report_settled(state.complete_interrupted(out_dir))
    request, deliver = single_request(
        profile="device",
        name=thing,
        csr_file=csr_file,
        generate_key=generate_key,
        key_type=KeyType.EC_P256,
        out_dir=out_dir,
        days=days,
        force=force,
        actor=actor,
    )
    issuer = state.issuer()
    issuer.prepare(request)  # policy first: a refused CSR touches nothing on AWS
    iot_core = _iot_core()
    iot_core.client  # noqa: B018 (fail on AWS settings before issuing)
    issued = issuer.issue(request, deliver)
    try:
        result = iot_core.provision(issued)
    except Exception as exc:
        from pki.errors import BackendError, FleetPkiError

        if isinstance(exc, FleetPkiError):
            raise BackendError(
                "provision " + thing,
                "IoT Core",
                f"{exc} (certificate {issued.record.serial_hex} was issued into {out_dir} "
                "but is not registered; AWS changes were rolled back; rerun with --force to retry)",
            ) from None
        raise
    if as_json:
        print_json(result.to_json())
        return 0
    err(
        f"provisioned {thing}: certificate {result.certificate_id[:16]}… "
        f"(serial {result.serial_hex}), policy fleetpki-device -> {out_dir}"
    )
    return 0


def _provision_batch(
    batch_dir: Path, out_dir: Path, days: int | None, force: bool, as_json: bool
) -> int:
    from devices.iot import provision_many
    from pki.cli.batch import progress_bar, report
    from pki.cli.output import report_settled
    from pki.issue.batch import csr_files, deliver_into, read_requests
    from pki.issue.results import Failure

    files = csr_files(batch_dir)
    state = _state()
    actor = state.home.actor()
    iot_core = _iot_core()
    iot_core.client  # noqa: B018  (fail on AWS settings before issuing anything)
    report_settled(state.complete_interrupted(out_dir, per_thing=True))
    skipped: list[Failure] = []
    with progress_bar("provisioning", len(files), quiet=as_json) as advance:
        requests = list(
            read_requests(
                files,
                out_dir,
                days=days,
                force=False,
                actor=actor,
                skipped=skipped,
                advance=advance,
            )
        )
        done, failed = provision_many(
            iot_core,
            state.issuer(),
            requests,
            deliver_into(out_dir, force),
            lambda _thing, _error: advance(),
            actor=actor,
        )
    return report(
        [p.to_json() for p in done],
        skipped + failed,
        as_json=as_json,
        done_key="provisioned",
        summary=f"provisioned {len(done)} thing(s) into {out_dir}",
    )


@iot.command("deprovision")
@click.argument("thing")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def iot_deprovision(thing: str, as_json: bool) -> None:
    """Deactivate THING's certificates (revoked ones stay revoked), detach them from the
    policy and the thing, delete them, then delete the thing."""
    removed = _iot_core().deprovision(thing)
    if as_json:
        print_json({"thing": thing, "certificates_deleted": removed})
        return
    err(f"deprovisioned {thing}: {len(removed)} certificate(s) deleted, thing deleted")


@iot.command("set-status")
@click.argument("serial")
@click.argument("status", type=click.Choice(["ACTIVE", "INACTIVE", "REVOKED"]))
def iot_set_status(serial: str, status: str) -> None:
    """Set the IoT Core status of a registered certificate (REVOKED is final)."""
    from devices.iot import IotStatus
    from pki.model import parse_serial, serial_hex

    number = serial_hex(parse_serial(serial))
    changed = _iot_core().set_status(number, IotStatus(status))
    err(f"{number}: {status}" + ("" if changed else " (unchanged)"))


@iot.command("lifecycle-rule")
@click.option("--queue-url", metavar="URL", help="The SQS queue the events go to.")
@click.option(
    "--role-arn", metavar="ARN", help="The IAM role IoT Core sends to the queue with."
)
@click.option("--remove", is_flag=True, help="Delete the rule and forget the queue.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def iot_lifecycle_rule(
    queue_url: str | None, role_arn: str | None, remove: bool, as_json: bool
) -> None:
    """Route IoT Core's `connected` lifecycle events to an SQS queue, as proof of use.

    The rule `FleetpkiConnected` sends every `connected` event to the queue; before every
    sweep the rotation daemon reads it, and a device seen connecting with its new
    certificate confirms its rotation even when its confirmation was lost. The queue must
    exist and the role must allow `sqs:SendMessage` on it. Idempotent.
    """
    from devices.iot_events import RULE_NAME, remove_lifecycle_rule, set_lifecycle_rule
    from pki.errors import InvalidInput

    if remove:
        if queue_url or role_arn:
            raise InvalidInput("--remove takes neither --queue-url nor --role-arn")
        outcome = "removed" if remove_lifecycle_rule(_iot_core()) else "absent"
    else:
        if not queue_url or not role_arn:
            raise InvalidInput("give --queue-url and --role-arn (or --remove)")
        outcome = set_lifecycle_rule(_iot_core(), queue_url, role_arn)
    if as_json:
        print_json({"rule": RULE_NAME, "outcome": outcome, "queue_url": queue_url})
        return
    err(f"lifecycle rule {RULE_NAME}: {outcome}")


@iot.command("endpoint")
def iot_endpoint() -> None:
    """Print the IoT Core data endpoint (iot:Data-ATS)."""
    click.echo(_iot_core().endpoint())


# -------------------------------------------------------------------------------- dev


@click.group()
def dev() -> None:
    """Local stand-ins for IoT Core, the mTLS API and the AWS control plane."""


@dev.command("up")
@click.option("--json", "as_json", is_flag=True, help="Print the ports and files as JSON.")
def dev_up(as_json: bool) -> None:
    """Start Mosquitto (mTLS, CRL, per-thing ACL), the mTLS HTTPS endpoint and, when
    AWS_ENDPOINT_URL is unset, moto_server, on free loopback ports.

    The ports are written to HOME/dev/ports.json; 'fleetpki dev down' stops everything.
    """
    from devices import standins

    state = _state()
    started = standins.up(state.home, state.clock, state)
    info = started.public()
    if as_json:
        print_json(info)
        return
    click.echo(
        f"mqtt   mqtts://127.0.0.1:{started.mqtt_port}  (topics {started.topic_prefix}/THING/#)"
    )
    click.echo(f"https  {started.https_url}")
    click.echo(f"aws    {started.aws_endpoint_url}" + ("" if started.moto_pid else " (from env)"))
    click.echo(f"ca     {started.ca_file}")
    if started.pki_port:
        click.echo(f"crl    http://127.0.0.1:{started.pki_port}/  (CRLs and CA certificates)")
    click.echo(f"log    {started.access_log}")
    err(
        f"stand-ins running; ports in {standins.ports_path(state.home)}; "
        "stop them with 'fleetpki dev down'"
    )


@dev.command("down")
def dev_down() -> None:
    """Stop the stand-ins started by 'fleetpki dev up' (nothing to do is not an error)."""
    from devices import standins

    stopped = standins.down(_state().home)
    err("stopped " + ", ".join(stopped) if stopped else "no stand-ins were running")


@dev.command("restart-broker")
def dev_restart_broker() -> None:
    """Restart the stand-ins' Mosquitto on the same ports, as an operator's broker restart:
    SIGTERM (it saves its sessions and the messages queued for them), then start it again.
    Connected clients are cut and reconnect."""
    from devices import standins

    state = standins.restart_broker(_state().home)
    err(f"mosquitto restarted (pid {state.mosquitto_pid}) on 127.0.0.1:{state.mqtt_port}")


@dev.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dev_status(as_json: bool) -> int:
    """Show whether the stand-ins run and where, and the CRL they serve (a warning when it
    is stale, near its nextUpdate or not the home's); exit 2 when they do not run."""
    from devices import standins
    from devices.standins import served

    app = _state()
    current = standins.load_state(app.home)
    running = current is not None and standins.alive(current)
    serving = served.served_crl(app.home, current, app.now()) if current and running else None
    if as_json:
        print_json({
            "running": running,
            **(current.public() if current else {}),
            "served_crl": serving.to_json() if serving else None,
        })  # fmt: skip
    elif current is not None and running:
        click.echo(json.dumps(current.public(), indent=2))
    else:
        err("the stand-ins are not running")
    for problem in serving.problems if serving else []:
        err(f"fleetpki: warning: {escape_controls(problem)}")
    return 0 if running else 2
