"""Proof of use on IoT Core: the `connected` lifecycle events routed to an SQS queue
(moto_server for IoT Core and SQS; the events are what IoT Core's rule would deliver, since
moto runs no rules), the rule `iot lifecycle-rule` makes, and the HTTPS stand-in's access
log read on from where the last sweep stopped."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import iot_events as ev
from devices import rotation_protocol as rp
from devices import store as iot_store
from devices.standins.served import UsedSerials
from pki.app import App
from pki.clock import FixedClock
from pki.home import Home
from pki.issue.delivery import make_key_and_csr
from pki.model import KeyType
from rotation import store
from rotation.planner import active_devices
from rotation.runtime import proof_of_use
from rotation.service import RotationService, RotationSettings
from tests.device_fixtures import ok

ROLE = "arn:aws:iam::123456789012:role/fleetpki-iot-to-sqs"
CERT_ID = "ab" * 32


def _event(certificate_id: str, kind: str = "connected", **extra: Any) -> str:
    return json.dumps({
        "clientId": "pump-9", "timestamp": 1_573_002_230_757, "eventType": kind,
        "sessionIdentifier": "a4666d2a7d844ae4ac5d7b38c9cb7967",
        "principalIdentifier": certificate_id, "ipAddress": "192.0.2.0", "versionNumber": 0,
        **extra,
    })  # fmt: skip


def test_a_connected_event_names_its_certificate_and_nothing_else_does() -> None:
    assert ev.connected_certificate(_event(CERT_ID)) == (CERT_ID, "pump-9")
    assert ev.connected_certificate(_event(CERT_ID, clientId="")) is None
    assert ev.connected_certificate(_event(CERT_ID, clientId=7)) is None
    assert ev.connected_certificate(_event(CERT_ID, "disconnected")) is None
    assert ev.connected_certificate(_event("us-east-1:1234-cognito")) is None
    assert ev.connected_certificate(_event(CERT_ID.upper())) is None
    assert ev.connected_certificate(_event(CERT_ID + "0")) is None
    assert ev.connected_certificate(_event(CERT_ID, padding="x" * ev.MAX_BODY)) is None
    assert ev.connected_certificate("[" * 5000 + "]" * 5000) is None
    assert ev.connected_certificate('{"eventType": "connected"}') is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_hostile_event_bodies_are_ignored_never_raised(body: str) -> None:
    found = ev.connected_certificate(body)
    assert found is None or len(found[0]) == 64


def test_the_queue_url_and_role_are_checked_before_anything_is_called() -> None:
    from pki.errors import InvalidInput

    ev.check_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/fleet-events")
    for bad in ("sqs://x/1/2", "https://sqs.eu-west-1.amazonaws.com/fleet", "file:///etc/passwd"):
        with pytest.raises(InvalidInput, match="not an SQS queue URL"):
            ev.check_queue_url(bad)
    with pytest.raises(InvalidInput, match="cannot send to a FIFO queue"):
        ev.check_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/events.fifo")
    ev.check_role_arn(ROLE)
    for bad in ("arn:aws:iam::12:role/x", "arn:aws:iam::123456789012:user/x", ROLE + "\n"):
        with pytest.raises(InvalidInput, match="not an IAM role ARN"):
            ev.check_role_arn(bad)


def _queue(name: str = "fleet-events") -> str:
    import boto3

    return str(boto3.client("sqs").create_queue(QueueName=name)["QueueUrl"])


def test_lifecycle_rule_is_made_once_corrected_and_removed(
    cli: Any, ca_home: Path, aws: str
) -> None:
    import boto3

    queue = _queue()
    made = cli.ok("iot", "lifecycle-rule", "--queue-url", queue, "--role-arn", ROLE, "--json")
    assert json.loads(made.out)["outcome"] == "created"
    rule = boto3.client("iot").get_topic_rule(ruleName=ev.RULE_NAME)["rule"]
    assert rule["sql"] == ev.RULE_SQL
    assert rule["actions"] == [{"sqs": {"roleArn": ROLE, "queueUrl": queue, "useBase64": False}}]
    app = App(ca_home, FixedClock(dt.datetime.now(dt.UTC)))
    assert iot_store.lifecycle_queue(app.inventory().engine) == queue
    again = cli.ok("iot", "lifecycle-rule", "--queue-url", queue, "--role-arn", ROLE)
    assert "unchanged" in again.err
    other = ROLE + "-2"
    cli.ok("iot", "lifecycle-rule", "--queue-url", queue, "--role-arn", other)
    rule = boto3.client("iot").get_topic_rule(ruleName=ev.RULE_NAME)["rule"]
    assert rule["actions"][0]["sqs"]["roleArn"] == other
    assert "removed" in cli.ok("iot", "lifecycle-rule", "--remove").err
    assert iot_store.lifecycle_queue(app.inventory().engine) is None
    assert ev.RULE_NAME not in [
        r["ruleName"] for r in boto3.client("iot").list_topic_rules()["rules"]
    ]
    assert "absent" in cli.ok("iot", "lifecycle-rule", "--remove").err
    app.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--queue-url", "http://x\x1b[31m/1", "--role-arn", ROLE], "not an SQS queue URL"),
        (["--queue-url", "QUEUE", "--role-arn", "arn:aws:iam::1:role/x"], "not an IAM role ARN"),
        (["--queue-url", "QUEUE"], "give --queue-url and --role-arn"),
        (["--remove", "--role-arn", ROLE], "--remove takes neither"),
        (["--queue-url", "MISSING", "--role-arn", ROLE], "no SQS queue"),
    ],
)
def test_a_bad_lifecycle_rule_request_says_why_and_changes_nothing(
    cli: Any, ca_home: Path, aws: str, args: list[str], says: str
) -> None:
    import boto3

    queue = _queue()
    missing = queue.rsplit("/", 1)[0] + "/no-such-queue"
    argv = [queue if a == "QUEUE" else missing if a == "MISSING" else a for a in args]
    result = cli("iot", "lifecycle-rule", *argv)
    assert result.code == 2, result.err
    (line,) = result.err.strip().splitlines()
    assert says in line and "\x1b" not in line
    assert boto3.client("iot").list_topic_rules()["rules"] == []
    app = App(ca_home, FixedClock(dt.datetime.now(dt.UTC)))
    assert iot_store.lifecycle_queue(app.inventory().engine) is None
    app.close()


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, rp.Message]] = []

    def send(self, thing: str, message: rp.Message) -> None:
        self.sent.append((thing, message))

    def clear(self, thing: str) -> None:
        pass


def _issued_rotation(tmp_path: Path) -> tuple[App, RotationService, store.Rotation]:
    """pump-9 provisioned in IoT Core, asked to rotate, sent its new certificate; its
    confirmation never arrives."""
    from rotation.runtime import iot_register

    home = tmp_path / "home"
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ok(home, "ca", "init", clock=clock)
    ok(home, "iot", "provision", "pump-9", "--generate-key", "--out", tmp_path / "p9", clock=clock)
    app = App(home, clock)
    recorder = _Recorder()
    service = RotationService(
        home=app.home, inventory=app.inventory(), issuer=app.issuer(), sender=recorder,
        clock=clock, settings=RotationSettings(grace=dt.timedelta(0)),
        register=iot_register(app), proof_of_use=proof_of_use(app),
    )  # fmt: skip
    (rotation,) = service.request(active_devices(app.inventory(), clock.now(), things=["pump-9"]))
    _key, csr = make_key_and_csr(KeyType.EC_P256, "pump-9")
    service.handle("pump-9", "csr", rp.encode(rp.CsrMessage(rotation.id, csr)))
    service.process(wait=0)
    (issued,) = service.open_rotations([rotation.id])
    assert issued.state is store.State.ISSUED and issued.new_serial
    return app, service, issued


def test_a_connected_event_with_the_new_certificate_confirms_a_lost_confirmation(
    tmp_path: Path, aws: str
) -> None:
    import boto3

    app, service, issued = _issued_rotation(tmp_path)
    queue = _queue()
    ok(app.home.path, "iot", "lifecycle-rule", "--queue-url", queue, "--role-arn", ROLE)
    engine = app.inventory().engine
    assert issued.new_serial is not None
    new = iot_store.certificate(engine, issued.new_serial)
    old = iot_store.certificate(engine, issued.old_serial)
    assert new is not None and old is not None
    sqs = boto3.client("sqs")
    # the device reconnects with its old certificate first, then noise: nothing proven
    for body in (_event(old.certificate_id), "not json", _event(new.certificate_id, "subscribed")):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    # the new certificate's id is public (a hash of the certificate): an event naming it
    # for another client id is not this device connecting (its policy lets it connect only
    # as its own thing name)
    sqs.send_message(QueueUrl=queue, MessageBody=_event(new.certificate_id, clientId="pump-1"))
    service.sweep()
    assert service.open_rotations([issued.id])[0].state is store.State.ISSUED
    assert _left(queue) == 0  # drained, the noise too
    # the real event, then a forged one for the same certificate: the real one still counts
    sqs.send_message(QueueUrl=queue, MessageBody=_event(new.certificate_id))
    sqs.send_message(QueueUrl=queue, MessageBody=_event(new.certificate_id, clientId="pump-1"))
    service.sweep()
    (row,) = service.open_rotations([issued.id])
    assert row.state is store.State.COMPLETED  # confirmed by use, then (no grace) completed
    assert row.error is not None and row.error.startswith("confirmed by use")
    assert service.metrics.confirmed_by_use._value.get() == 1
    status = iot_store.certificate(engine, issued.old_serial)
    assert status is not None and status.status == "REVOKED"
    assert _left(queue) == 0
    app.close()


def _left(queue: str) -> int:
    import boto3

    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


class _Heard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("failure", ["queue deleted", "no region", "source raises"])
def test_a_failing_proof_of_use_is_a_warning_and_the_sweep_goes_on(
    tmp_path: Path, aws: str, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Whatever goes wrong with a proof-of-use source, the sweep still completes what is
    due: pump-9's confirmed rotation completes (its old certificate revoked)."""
    import boto3

    from devices.standins.served import UsedSerials

    app, service, issued = _issued_rotation(tmp_path)
    queue = _queue()
    ok(app.home.path, "iot", "lifecycle-rule", "--queue-url", queue, "--role-arn", ROLE)
    if failure == "queue deleted":
        boto3.client("sqs").delete_queue(QueueUrl=queue)
    elif failure == "no region":
        import devices.iot_events
        from pki.errors import OperatorError

        def no_region() -> None:
            raise OperatorError("no AWS region configured; set AWS_REGION")

        monkeypatch.setattr(devices.iot_events, "_events_client", no_region)
    else:
        def broken(self: UsedSerials, serials: set[str]) -> set[str]:
            raise PermissionError("access.log: permission denied")

        monkeypatch.setattr(UsedSerials, "__call__", broken)
    assert issued.new_serial is not None
    service.handle("pump-9", "confirm", rp.encode(rp.Confirm(issued.id, issued.new_serial)))
    service.process(wait=0)
    heard = _Heard()
    logger = logging.getLogger("fleetpki.rotation")
    logger.addHandler(heard)  # (the CLI run in-process stops propagation at "fleetpki")
    try:
        result = service.sweep()
    finally:
        logger.removeHandler(heard)
    assert any("proof of use" in m for m in heard.messages), heard.messages
    assert [r.id for r in result.completed] == [issued.id]
    old = app.inventory().get(int(issued.old_serial, 16))
    assert old.status.value == "revoked"
    app.close()


def test_the_access_log_is_read_on_from_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    reader = UsedSerials(Home(tmp_path / "home"))

    def line(serial: str, result: str = "accepted") -> str:
        return json.dumps({"result": result, "serial": serial}) + "\n"

    log.write_text(line("0a") + line("0b", "refused") + "garbage\n" + '{"result": "acc')
    reader.scan(log)
    assert reader.seen(0x0A) and not reader.seen(0x0B)
    offset = reader.offset
    with log.open("a") as f:
        f.write('epted", "serial": "0c"}\n')  # the half-written line, finished
    reader.scan(log)
    assert reader.seen(0x0C) and reader.offset > offset
    log.unlink()
    log.write_text(line("0d"))  # a new file (the stand-ins restarted): read from its start
    reader.scan(log)
    assert reader.seen(0x0D)
    # rewritten in place, already longer than where the reader stopped: its first bytes
    # changed, so it is read from its start (an inode number may be reused)
    log.write_text(line("0e") + line("0f") * 3)
    reader.scan(log)
    assert reader.seen(0x0E) and reader.seen(0x0F)
    # a line longer than a chunk is skipped, the next ones are read
    big = UsedSerials(Home(tmp_path / "home"))
    big.CHUNK = 64
    log.write_text('{"result": "accepted", "serial": "' + "1" * 200 + '"}\n' + line("aa"))
    big.scan(log)
    assert big.seen(0xAA) and not big.seen(int("1" * 200, 16))
    small = UsedSerials(Home(tmp_path / "home"), memory=2)
    log.write_text(line("01") + line("02") + line("03"))
    small.scan(log)
    assert not small.seen(1) and small.seen(2) and small.seen(3)
