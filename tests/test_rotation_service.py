"""The rotation service's decisions over time (FixedClock), on SQLite and PostgreSQL: the
answer timeout, the grace period, redelivered and stray messages, the daemon lease, CRL
re-signing, IoT Core registration of the new certificate (moto). The messages the service
sends are recorded; the MQTT path itself is tested end to end in test_rotation.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from devices import rotation_protocol as rp
from pki.app import App
from pki.clock import FixedClock
from pki.errors import OperatorError
from pki.issue.delivery import make_key_and_csr
from pki.model import KeyType, Status, serial_hex
from rotation import store
from rotation.daemon import Daemon
from rotation.planner import active_devices
from rotation.service import RotationService, RotationSettings
from tests.device_fixtures import fleetpki, ok, wait_for
from tests.helpers import NOW

T0 = NOW - dt.timedelta(days=20)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, rp.Message]] = []
        self.cleared: list[str] = []

    def send(self, thing: str, message: rp.Message) -> None:
        self.sent.append((thing, message))

    def clear(self, thing: str) -> None:
        self.cleared.append(thing)

    def last(self, thing: str, kind: type[Any]) -> Any:
        return [m for t, m in self.sent if t == thing and isinstance(m, kind)][-1]


@pytest.fixture
def world(tmp_path: Path, db_url: str | None) -> dict[str, Any]:
    """A CA and two devices on SQLite and on PostgreSQL (FLEETPKI_DATABASE_URL)."""
    home = tmp_path / "home"
    clock = FixedClock(T0)
    ok(home, "ca", "init", clock=clock)
    for thing in ("t-1", "t-2"):
        ok(home, "issue", "device", thing, "--generate-key", "--out", tmp_path / thing, clock=clock)
    return _world(home, clock, dt.timedelta(hours=1))


def _world(
    home: Path, clock: FixedClock, grace: dt.timedelta, *, iot: bool = False
) -> dict[str, Any]:
    """A service on HOME whose messages to devices are recorded."""
    from rotation.runtime import iot_register

    state = App(home, clock)
    recorder = Recorder()
    service = RotationService(
        home=state.home,
        inventory=state.inventory(),
        issuer=state.issuer(),
        sender=recorder,
        clock=clock,
        settings=RotationSettings(grace=grace),
        register=iot_register(state) if iot else None,
    )
    return {"home": home, "clock": clock, "state": state, "sent": recorder, "service": service}


def _request(world: dict[str, Any], *things: str) -> list[store.Rotation]:
    state, service = world["state"], world["service"]
    items = active_devices(state.inventory(), world["clock"].now(), things=things)
    return list(service.request(items))


def _answer_csr(world: dict[str, Any], thing: str, name: str | None = None) -> bytes:
    request = world["sent"].last(thing, rp.Request)
    key, csr = make_key_and_csr(KeyType.EC_P256, name or thing)
    world["service"].handle(thing, "csr", rp.encode(rp.CsrMessage(request.rotation_id, csr)))
    world["service"].process(wait=0)
    return key


def _rows(world: dict[str, Any]) -> dict[str, store.Rotation]:
    with store.transaction(world["state"].inventory().engine) as conn:
        return {r.thing: r for r in store.select(conn)}


def test_full_rotation_with_grace_then_superseded(world: dict[str, Any]) -> None:
    service, clock, sent = world["service"], world["clock"], world["sent"]
    (rotation,) = _request(world, "t-1")
    assert sent.last("t-1", rp.Request).serial == rotation.old_serial
    _answer_csr(world, "t-1")
    reply = sent.last("t-1", rp.CertificateMessage)
    assert reply.ok
    leaf = x509.load_pem_x509_certificates(reply.fullchain_pem)
    assert len(leaf) == 2  # the certificate, then the issuing CA
    assert _rows(world)["t-1"].state is store.State.ISSUED
    # a redelivered CSR gets the same certificate again, nothing new is issued
    before = len(world["state"].inventory().find(now=clock.now(), thing="t-1"))
    service.handle("t-1", "csr", rp.encode(rp.CsrMessage(rotation.id, b"-----BEGIN x")))
    service.process(wait=0)
    assert sent.last("t-1", rp.CertificateMessage).serial == reply.serial
    assert len(world["state"].inventory().find(now=clock.now(), thing="t-1")) == before
    # confirmation; the old certificate stays valid through the grace period
    service.handle("t-1", "confirm", rp.encode(rp.Confirm(rotation.id, reply.serial)))
    service.process(wait=0)
    assert _rows(world)["t-1"].state is store.State.CONFIRMED
    clock.advance(dt.timedelta(minutes=59))
    assert service.sweep().completed == []
    old = world["state"].inventory().get(int(rotation.old_serial, 16))
    assert old.status.value == "active"
    clock.advance(dt.timedelta(minutes=2))
    result = service.sweep()
    assert [r.id for r in result.completed] == [rotation.id]
    old = world["state"].inventory().get(int(rotation.old_serial, 16))
    assert old.status.value == "revoked"
    assert old.revocation_reason is not None and old.revocation_reason.value == "superseded"
    crl = x509.load_pem_x509_crl(world["state"].home.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(rotation.old_serial, 16))
    assert _rows(world)["t-1"].state is store.State.COMPLETED
    assert service.metrics.completed._value.get() == 1


def test_unanswered_rotations_time_out_and_are_retried_later(world: dict[str, Any]) -> None:
    service, clock = world["service"], world["clock"]
    (first,) = _request(world, "t-2")
    clock.advance(dt.timedelta(minutes=16))
    result = service.sweep()
    assert [r.id for r in result.expired] == [first.id]
    row = _rows(world)["t-2"]
    assert row.state is store.State.FAILED
    deadline = first.deadline.astimezone(dt.UTC)
    assert (
        row.error
        == f"timeout: the device did not send its CSR by its deadline {deadline:%Y-%m-%d %H:%M:%S}Z"
    )
    # within retry_after the thing is left alone, unless forced; later it is asked again
    assert _request(world, "t-2") == []
    clock.advance(dt.timedelta(hours=1, seconds=1))
    (again,) = _request(world, "t-2")
    assert again.id != first.id
    # the old certificate was never touched
    assert world["state"].inventory().get(int(first.old_serial, 16)).status.value == "active"


def test_stray_and_mismatched_messages_change_nothing(world: dict[str, Any]) -> None:
    service, sent = world["service"], world["sent"]
    (rotation,) = _request(world, "t-1")
    # a CSR naming t-1's rotation, arriving on t-2's topic; garbage; an unknown id
    _key, csr = make_key_and_csr(KeyType.EC_P256, "t-2")
    service.handle("t-2", "csr", rp.encode(rp.CsrMessage(rotation.id, csr)))
    service.handle("t-1", "csr", b"{not json")
    service.handle("t-1", "confirm", rp.encode(rp.Confirm("f" * 32, "0a")))
    service.process(wait=0)
    assert service.metrics.bad_messages._value.get() == 3
    assert _rows(world)["t-1"].state is store.State.REQUESTED
    assert [m for _t, m in sent.sent if isinstance(m, rp.CertificateMessage)] == []
    # a CSR for another name: refused by the policy, the device is told why
    _answer_csr(world, "t-1", name="t-2")
    refusal = sent.last("t-1", rp.CertificateMessage)
    assert (refusal.ok, refusal.error) == (False, "cn-mismatch")
    assert _rows(world)["t-1"].state is store.State.FAILED
    # a confirmation of a serial that was never sent is not a confirmation
    (second,) = _request(world, "t-2")
    _answer_csr(world, "t-2")
    service.handle("t-2", "confirm", rp.encode(rp.Confirm(second.id, "0bad")))
    service.process(wait=0)
    assert _rows(world)["t-2"].state is store.State.ISSUED


def test_the_lease_keeps_a_second_daemon_out(world: dict[str, Any]) -> None:
    service, clock = world["service"], world["clock"]
    first = Daemon(service, list, interval=60, holder="host-a:1")
    second = Daemon(service, list, interval=60, holder="host-b:2")
    first.acquire()
    with pytest.raises(OperatorError, match=r"another rotation daemon \(host-a:1\)"):
        second.acquire()
    # a crashed holder's lease runs out
    clock.advance(first.lease_ttl + dt.timedelta(seconds=1))
    second.acquire()
    assert not first._renew()
    assert first.stop.is_set()


def test_crl_is_resigned_before_next_update_only(world: dict[str, Any]) -> None:
    service, clock = world["service"], world["clock"]
    called: list[bool] = []
    service.on_crl = lambda: called.append(True)
    path = world["state"].home.crl_path
    first = x509.load_pem_x509_crl(path.read_bytes())  # signed by ca init
    assert not service.refresh_crl()  # 7 days left
    # due at two thirds of its validity: thisUpdate (5 minutes back) + 2/3 x (7 days + 5 min)
    due = first.last_update_utc + (first.next_update_utc - first.last_update_utc) * 2 / 3
    clock.set(due - dt.timedelta(minutes=1))
    assert not service.refresh_crl()
    clock.set(due)
    assert service.refresh_crl()
    second = x509.load_pem_x509_crl(path.read_bytes())
    assert second.next_update_utc is not None and first.next_update_utc is not None
    assert second.next_update_utc > first.next_update_utc
    number = x509.CRLNumber
    assert (
        second.extensions.get_extension_for_class(number).value.crl_number
        > first.extensions.get_extension_for_class(number).value.crl_number
    )
    assert called == [True]


def test_a_provisioned_thing_gets_its_new_certificate_registered_with_iot_core(
    tmp_path: Path, aws: str
) -> None:
    home = tmp_path / "home"
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ok(home, "ca", "init", clock=clock)
    ok(home, "iot", "provision", "pump-9", "--generate-key", "--out", tmp_path / "p9", clock=clock)
    world = _world(home, clock, dt.timedelta(0), iot=True)
    service, recorder = world["service"], world["sent"]
    (rotation,) = _request(world, "pump-9")
    _answer_csr(world, "pump-9")
    reply = recorder.last("pump-9", rp.CertificateMessage)
    assert reply.ok
    service.handle("pump-9", "confirm", rp.encode(rp.Confirm(rotation.id, reply.serial)))
    service.process(wait=0)
    assert [r.id for r in service.sweep().completed] == [rotation.id]

    import boto3

    iot = boto3.client("iot")
    principals = iot.list_thing_principals(thingName="pump-9")["principals"]
    assert len(principals) == 2
    by_status: dict[str, list[str]] = {}
    for arn in principals:
        described = iot.describe_certificate(certificateId=arn.split("/")[-1])
        pem = described["certificateDescription"]["certificatePem"]
        serial = format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")
        by_status.setdefault(described["certificateDescription"]["status"], []).append(serial)
    assert by_status["ACTIVE"] == [reply.serial.lstrip("0")]
    assert by_status["REVOKED"] == [rotation.old_serial.lstrip("0")]


def _confirm(world: dict[str, Any], thing: str) -> rp.CertificateMessage:
    reply: rp.CertificateMessage = world["sent"].last(thing, rp.CertificateMessage)
    request = world["sent"].last(thing, rp.Request)
    world["service"].handle(thing, "confirm", rp.encode(rp.Confirm(request.rotation_id,
                                                                     reply.serial)))  # fmt: skip
    world["service"].process(wait=0)
    return reply


def test_hostile_payloads_are_counted_and_every_message_is_acknowledged(
    world: dict[str, Any],
) -> None:
    service = world["service"]
    (rotation,) = _request(world, "t-1")
    acked: list[int] = []
    nested = b"[" * 8000 + b"]" * 8000  # json.loads would exhaust the recursion limit
    service.handle("t-1", "csr", nested, lambda: acked.append(1))
    service.handle("t-1", "csr", b"\xff\xfe", lambda: acked.append(2))
    _key, csr = make_key_and_csr(KeyType.EC_P256, "t-1")
    service.handle(
        "t-1", "csr", rp.encode(rp.CsrMessage(rotation.id, csr)), lambda: acked.append(3)
    )
    assert service.process(wait=0) == 3
    assert sorted(acked) == [1, 2, 3]
    assert service.metrics.bad_messages._value.get() == 2
    assert _rows(world)["t-1"].state is store.State.ISSUED  # the good one went through


def test_the_grace_period_is_the_requesters_whoever_sweeps(world: dict[str, Any]) -> None:
    clock = world["clock"]
    (rotation,) = _request(world, "t-1")  # this service: 1 h of grace
    _answer_csr(world, "t-1")
    _confirm(world, "t-1")
    impatient = _world(world["home"], clock, dt.timedelta(0))["service"]
    assert impatient.sweep().completed == []  # not its rotation's grace
    clock.advance(dt.timedelta(hours=1, seconds=1))
    assert [r.id for r in impatient.sweep().completed] == [rotation.id]


def _due_with_failing_hook(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, why: str
) -> store.Rotation:
    """t-1 rotated and confirmed two hours ago (past its grace); the IoT hook now fails."""
    import pki.hooks
    from pki.errors import BackendError

    (rotation,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    _confirm(world, "t-1")
    world["clock"].advance(dt.timedelta(hours=2))

    def broken(_event: Any) -> None:
        raise BackendError("finish the revocation", "iot", why)

    monkeypatch.setattr(pki.hooks, "revocation_hooks", lambda: [("iot", broken)])
    return rotation


def test_a_failed_revocation_hook_keeps_the_rotation_open_until_it_works(
    world: dict[str, Any],
) -> None:
    service = world["service"]
    # a patch of its own: undoing it must not undo the test's database setting
    with pytest.MonkeyPatch.context() as failing:
        rotation = _due_with_failing_hook(world, failing, "IoT Core unreachable")
        result = service.sweep()
        assert result.completed == [] and "IoT Core unreachable" in result.errors[0]
        row = _rows(world)["t-1"]
        assert row.state is store.State.CONFIRMED
        assert row.error is not None and "retried" in row.error
    assert [r.id for r in service.sweep().completed] == [rotation.id]
    assert _rows(world)["t-1"].error is None


def test_a_late_confirmation_still_completes_the_rotation(world: dict[str, Any]) -> None:
    service, clock = world["service"], world["clock"]
    (rotation,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    clock.advance(dt.timedelta(minutes=16))
    assert [r.id for r in service.sweep().expired] == [rotation.id]
    assert _rows(world)["t-1"].state is store.State.FAILED
    reply = _confirm(world, "t-1")  # the device did switch; its confirmation came late
    row = _rows(world)["t-1"]
    assert (row.state, row.new_serial) == (store.State.CONFIRMED, reply.serial)
    # and the record says so: the failure counted then, the late success counted apart
    assert (row.error or "").startswith("confirmed late, after it had failed (timeout:")
    assert service.metrics.late_confirmed._value.get() == 1
    clock.advance(dt.timedelta(hours=2))
    assert [r.id for r in service.sweep().completed] == [rotation.id]
    assert (_rows(world)["t-1"].error or "").startswith("confirmed late")


def test_a_failed_registration_withdraws_the_new_certificate(world: dict[str, Any]) -> None:
    from pki.errors import BackendError

    service, clock = world["service"], world["clock"]

    def refuse(_issued: Any) -> None:
        raise BackendError("register the certificate", "iot", "LimitExceededException")

    service.register = refuse
    (rotation,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    refusal = world["sent"].last("t-1", rp.CertificateMessage)
    assert (refusal.ok, refusal.error) == (False, "registration")
    records = world["state"].inventory().find(now=clock.now(), thing="t-1")
    statuses = {r.serial_hex: (r.status.value, r.revocation_reason) for r in records}
    assert statuses.pop(rotation.old_serial)[0] == "active"
    ((status, reason),) = statuses.values()  # the one issued for the rotation
    assert status == "revoked" and reason is not None
    assert reason.value == "cessation-of-operation"


def test_completion_leaves_the_thing_with_one_active_certificate(
    world: dict[str, Any], tmp_path: Path
) -> None:
    clock, state = world["clock"], world["state"]
    ok(world["home"], "issue", "device", "t-2", "--generate-key", "--out", tmp_path / "again",
       clock=clock)  # fmt: skip
    assert len(state.inventory().find(now=clock.now(), thing="t-2")) == 2
    (rotation,) = _request(world, "t-2")
    _answer_csr(world, "t-2")
    _confirm(world, "t-2")
    clock.advance(dt.timedelta(hours=2))
    assert [r.id for r in world["service"].sweep().completed] == [rotation.id]
    active = state.inventory().find(now=clock.now(), thing="t-2", status=Status.ACTIVE)
    assert [r.serial_hex for r in active] == [rotation_new(world, rotation.id)]


def rotation_new(world: dict[str, Any], rotation_id: str) -> str:
    with store.transaction(world["state"].inventory().engine) as conn:
        (row,) = store.select(conn, ids=[rotation_id])
    assert row.new_serial is not None
    return row.new_serial


def test_one_rotation_per_thing_across_services(world: dict[str, Any]) -> None:
    other = _world(world["home"], world["clock"], dt.timedelta(hours=1))
    assert len(_request(world, "t-1")) == 1
    assert _request(other, "t-1") == []
    assert other["sent"].sent == []


def test_replacements_never_outlive_the_issuing_ca(tmp_path: Path) -> None:
    home = tmp_path / "home"
    clock = FixedClock(T0)
    ok(home, "ca", "init", "--issuing-days", "30", clock=clock)
    ok(home, "issue", "device", "short-1", "--generate-key", "--days", "20", "--out",
       tmp_path / "s1", clock=clock)  # fmt: skip
    clock.advance(dt.timedelta(days=14))  # the CA has 16 days left; the old lifetime is 20
    world = _world(home, clock, dt.timedelta(hours=1))
    (rotation,) = _request(world, "short-1")
    assert rotation.days == 15  # whole days left, less the 5-minute backdate
    _answer_csr(world, "short-1")
    assert world["sent"].last("short-1", rp.CertificateMessage).ok


def test_the_daemons_own_jobs_renewing_at_once_keep_the_lease(world: dict[str, Any]) -> None:
    import threading

    daemon = Daemon(world["service"], list, interval=60, holder="host-a:1:1")
    daemon.acquire()
    results: list[bool] = []

    def renew() -> None:
        results.extend(daemon._renew() for _ in range(30))

    threads = [threading.Thread(target=renew) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 90
    assert not daemon.stop.is_set()


def test_a_failed_batch_is_retried_then_dropped_not_left_unacknowledged(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pki.errors import StorageError
    from rotation.context import MAX_ATTEMPTS

    service = world["service"]
    (rotation,) = _request(world, "t-1")
    _key, csr = make_key_and_csr(KeyType.EC_P256, "t-1")
    acked: list[str] = []
    first = rp.encode(rp.CsrMessage(rotation.id, csr))
    service.handle("t-1", "csr", first, lambda: acked.append("t-1"))
    real = service.issuer.issue_batch

    def locked(*_a: Any, **_k: Any) -> Any:
        raise StorageError("inventory write failed: database is locked")

    # the inventory is down: the message waits, unacknowledged, however often it fails
    monkeypatch.setattr(service.issuer, "issue_batch", locked)
    for _ in range(MAX_ATTEMPTS + 1):
        with pytest.raises(StorageError):
            service.process(wait=0)
    assert acked == [] and service.inbox.qsize() == 1
    monkeypatch.setattr(service.issuer, "issue_batch", real)
    service.process(wait=0)
    assert acked == ["t-1"]
    assert _rows(world)["t-1"].state is store.State.ISSUED

    # one poison message in a batch: the batch is split, the good message goes through,
    # the poison one is dropped (acknowledged) after failing MAX_ATTEMPTS times on its own
    (other,) = _request(world, "t-2")
    _key, csr2 = make_key_and_csr(KeyType.EC_P256, "t-2")

    def poison(requests: Any, *a: Any, **k: Any) -> Any:
        if any(r.name == "t-2" for r in requests):
            raise RuntimeError("a bug that this one request triggers")
        return real(requests, *a, **k)

    monkeypatch.setattr(service.issuer, "issue_batch", poison)
    second = rp.encode(rp.CsrMessage(other.id, csr2))
    service.handle("t-2", "csr", second, lambda: acked.append("t-2"))
    service.handle("t-1", "csr", first, lambda: acked.append("t-1 again"))  # a repeat
    with pytest.raises(RuntimeError):
        service.process(wait=0)  # the batch of two fails
    assert service.inbox.qsize() == 2
    outcomes = []
    for _ in range(MAX_ATTEMPTS + 2):
        try:
            outcomes.append(service.process(wait=0))
        except RuntimeError:
            outcomes.append(-1)
    assert "t-1 again" in acked and "t-2" in acked  # both acknowledged in the end
    assert service.inbox.qsize() == 0
    assert outcomes.count(-1) == MAX_ATTEMPTS


def test_failing_hooks_stop_blocking_the_thing_after_a_day(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, clock = world["service"], world["clock"]
    rotation = _due_with_failing_hook(world, monkeypatch, "ResourceNotFoundException")
    assert service.sweep().completed == []  # the first failure starts the day
    clock.advance(dt.timedelta(hours=23))
    assert service.sweep().completed == []
    clock.advance(dt.timedelta(hours=1, seconds=1))
    assert [r.id for r in service.sweep().completed] == [rotation.id]
    kept = _rows(world)["t-1"].error
    assert kept is not None and "kept failing" in kept and "ResourceNotFoundException" in kept
    # the thing is free again: a new rotation can be opened
    assert [r.thing for r in _request(world, "t-1")] == ["t-1"]


def test_a_late_confirmation_of_an_older_rotation_never_revokes_the_newer_certificate(
    world: dict[str, Any],
) -> None:
    service, clock, state = world["service"], world["clock"], world["state"]
    (r1,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    n1 = world["sent"].last("t-1", rp.CertificateMessage).serial
    clock.advance(dt.timedelta(minutes=16))
    service.sweep()  # r1 timed out after its certificate was sent
    clock.advance(dt.timedelta(seconds=1))
    items = active_devices(state.inventory(), clock.now(), things=["t-1"])
    (r2,) = service.request(items, force=True)
    _answer_csr(world, "t-1")
    n2 = world["sent"].last("t-1", rp.CertificateMessage).serial
    clock.advance(dt.timedelta(minutes=16))
    service.sweep()  # r2 timed out too
    # both confirmations arrive together (a redelivery): only the newest rotation counts
    service.handle("t-1", "confirm", rp.encode(rp.Confirm(r1.id, n1)))
    service.handle("t-1", "confirm", rp.encode(rp.Confirm(r2.id, n2)))
    service.process(wait=0)
    clock.advance(dt.timedelta(hours=2))
    assert [r.id for r in service.sweep().completed] == [r2.id]
    active = state.inventory().find(now=clock.now(), thing="t-1", status=Status.ACTIVE)
    assert [r.serial_hex for r in active] == [n2]


def test_a_plan_read_before_a_sweep_never_rotates_a_certificate_twice(
    world: dict[str, Any],
) -> None:
    """Defect: the plan was read outside the lock; a sweep completed those rotations
    meanwhile, and the stale plan asked the same devices again for certificates already
    revoked (every wave at a short interval, most of a fleet after a long downtime)."""
    service, clock, sent = world["service"], world["clock"], world["sent"]
    (rotation,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    _confirm(world, "t-1")
    clock.advance(dt.timedelta(hours=2))
    # the daemon's plan job reads what is due, then its sweep job completes the rotation
    # (due: the certificate the rotation replaces, not its replacement)
    active = active_devices(world["state"].inventory(), clock.now(), things=["t-1"])
    stale_plan = [i for i in active if serial_hex(i.serial) == rotation.old_serial]
    assert len(stale_plan) == 1
    assert [r.id for r in service.sweep().completed] == [rotation.id]
    assert service.request(stale_plan) == []  # revoked meanwhile: not asked again
    assert len([m for t, m in sent.sent if t == "t-1" and isinstance(m, rp.Request)]) == 1
    with store.transaction(world["state"].inventory().engine) as conn:
        assert [r.id for r in store.select(conn, things=["t-1"])] == [rotation.id]


def test_a_daemon_paused_past_its_lease_writes_nothing_when_it_resumes(
    world: dict[str, Any],
) -> None:
    """Defect: a daemon resumed after losing its lease kept working for up to one
    interval beside the new holder. Every write transaction now checks the lease's epoch."""
    from pki.errors import LeaseLost

    clock = world["clock"]
    other = _world(world["home"], clock, dt.timedelta(hours=1))
    paused = Daemon(world["service"], list, interval=60, holder="host-a:1:1")
    paused.acquire()
    assert paused.epoch == 1
    clock.advance(paused.lease_ttl + dt.timedelta(seconds=1))  # paused (SIGSTOP) meanwhile
    current = Daemon(other["service"], list, interval=60, holder="host-b:2:2")
    current.acquire()  # the takeover raises the epoch
    assert current.epoch == 2
    # the old daemon comes back: its first write is refused, and it stops
    with pytest.raises(LeaseLost, match="host-b:2:2"):
        _request(world, "t-1")
    assert paused.lost and paused.stop.is_set()
    assert world["sent"].sent == []  # nothing asked
    with store.transaction(world["state"].inventory().engine) as conn:
        assert store.select(conn) == []
    # even after the new holder's lease ran out, the old epoch stays fenced off
    clock.advance(current.lease_ttl + dt.timedelta(seconds=1))
    assert not paused._renew()
    # while the new holder works as before
    other["clock"] = clock
    assert current._renew()
    assert [r.thing for r in _request(other, "t-1")] == ["t-1"]


def test_a_slow_server_reload_does_not_hold_up_device_rotation(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Defect: server rotation ran its reload command under the lock device rotation and
    the sweep need; a 50-second reload stalled a wave of devices as long."""
    import threading

    service = world["service"]
    release = tmp_path / "reload-may-finish"
    ok(world["home"], "rotation", "server", "add", "slow.example.test", "--dir",
       tmp_path / "srv", "--dns", "slow.example.test", "--no-reload", "--reload-command",
       f"sh -c 'until [ -e {release} ]; do sleep 0.05; done'", clock=world["clock"])  # fmt: skip
    rotated: list[store.Rotation] = []
    server = threading.Thread(
        target=lambda: rotated.extend(service.rotate_servers([], names=["slow.example.test"]))
    )
    server.start()
    try:
        # the reload is running (and cannot end before the file exists)
        assert wait_for(
            lambda: any(r.state is store.State.ISSUED for r in _rows(world).values()), 30
        )
        devices = threading.Thread(target=lambda: _request(world, "t-1"))
        devices.start()
        devices.join(30)
        swept = threading.Thread(target=service.sweep)
        swept.start()
        swept.join(30)
        blocked = devices.is_alive() or swept.is_alive()
        assert server.is_alive() and not release.exists()  # the reload still runs
    finally:
        release.touch()
        server.join(60)
    assert not blocked, "device rotation or the sweep waited for the server's reload"
    assert _rows(world)["t-1"].state is store.State.REQUESTED
    assert [r.state for r in rotated] == [store.State.CONFIRMED]


def test_an_unanswered_request_is_sent_again_on_a_backoff_then_cleared(
    world: dict[str, Any],
) -> None:
    """Defect: a device that missed its request was not asked again for the answer timeout
    plus a fixed hour. Now the same rotation is asked again on a per-device exponential
    backoff, the next time is recorded, and the retained request is cleared at the end."""
    service, clock, sent = world["service"], world["clock"], world["sent"]

    def requests() -> list[str]:
        return [m.rotation_id for t, m in sent.sent if t == "t-1" and isinstance(m, rp.Request)]

    (rotation,) = _request(world, "t-1")
    assert _rows(world)["t-1"].next_attempt_at == clock.now() + dt.timedelta(minutes=1)
    for wait, asked in ((59, 1), (2, 2), (60, 2), (61, 3), (239, 3), (2, 4)):
        clock.advance(dt.timedelta(seconds=wait))
        service.sweep()
        assert requests() == [rotation.id] * asked, (wait, asked)
    row = _rows(world)["t-1"]
    assert (row.state, row.attempts) == (store.State.REQUESTED, 4)
    assert row.next_attempt_at == clock.now() + dt.timedelta(minutes=8)  # 1, 2, 4, 8 ...
    assert service.metrics.resent._value.get() == 3
    # the device answers at last: one rotation, one certificate, and the request cleared
    _answer_csr(world, "t-1")
    _confirm(world, "t-1")
    assert _rows(world)["t-1"].state is store.State.CONFIRMED
    assert sent.cleared == ["t-1"]
    clock.advance(dt.timedelta(minutes=20))
    service.sweep()
    assert requests() == [rotation.id] * 4  # never asked again once answered


def test_the_backoff_is_capped_and_the_answer_timeout_still_ends_the_rotation(
    world: dict[str, Any],
) -> None:
    service, clock, sent = world["service"], world["clock"], world["sent"]
    settings = RotationSettings(answer_timeout=dt.timedelta(hours=2),
                                resend_max=dt.timedelta(minutes=5))  # fmt: skip
    service.ctx.settings = settings
    assert [settings.resend_delay(n).total_seconds() for n in (1, 2, 3, 4, 9)] == [
        60, 120, 240, 300, 300]  # fmt: skip
    (rotation,) = _request(world, "t-2")
    for _ in range(30):
        clock.advance(dt.timedelta(minutes=5))
        service.sweep()
    rows = _rows(world)
    assert rows["t-2"].state is store.State.FAILED and "deadline" in (rows["t-2"].error or "")
    asked = [m for t, m in sent.sent if t == "t-2" and isinstance(m, rp.Request)]
    assert 20 <= len(asked) <= 25 and {m.rotation_id for m in asked} == {rotation.id}
    assert sent.cleared == ["t-2"]


def test_rotation_status_of_a_thing_shows_its_history_next_retry_and_last_error(
    world: dict[str, Any],
) -> None:
    import json

    service, clock = world["service"], world["clock"]
    (first,) = _request(world, "t-2")
    clock.advance(dt.timedelta(minutes=16))
    service.sweep()  # never answered: failed by the deadline
    clock.advance(dt.timedelta(hours=2))
    (second,) = _request(world, "t-2")
    clock.advance(dt.timedelta(seconds=61))
    service.sweep()  # asked again
    data = json.loads(ok(world["home"], "rotation", "status", "t-2", "--json", clock=clock))
    assert [r["id"] for r in data["rotations"]] == [second.id, first.id]
    assert data["state"] == "requested" and data["rotations"][0]["attempts"] == 2
    expected = clock.now() + dt.timedelta(minutes=2)
    assert data["next_attempt_at"] == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert "did not send its CSR" in data["last_error"]
    text = ok(world["home"], "rotation", "status", "t-2", clock=clock)
    assert "t-2: requested" in text and "asked again at:" in text and "(asked 2x)" in text
    code, _out, err = fleetpki(world["home"], "rotation", "status", "nobody", clock=clock)
    assert code == 2 and "no certificate and no rotation of 'nobody'" in err


def test_a_paused_rotation_asks_nothing_new_or_again_until_resumed(
    world: dict[str, Any],
) -> None:
    import json

    service, clock, sent, home = world["service"], world["clock"], world["sent"], world["home"]
    (asked,) = _request(world, "t-1")
    ok(home, "rotation", "pause", "--reason", "change freeze", clock=clock)
    status = json.loads(ok(home, "rotation", "status", "--json", clock=clock))
    assert status["paused"]["reason"] == "change freeze"
    assert status["warnings"][0].startswith("rotation is paused since")
    # the daemon's plan asks nothing, a wave is refused, nobody is asked again
    daemon = Daemon(service, lambda: active_devices(world["state"].inventory(), clock.now()),
                    interval=60, holder="host-a:1:1")  # fmt: skip
    daemon.acquire()
    assert daemon.plan_and_request() == 0 and service.metrics.paused._value.get() == 1
    code, _out, err = fleetpki(home, "rotation", "rotate", "t-2", "--no-wait", clock=clock)
    assert code == 2 and "rotation is paused" in err and "change freeze" in err
    clock.advance(dt.timedelta(minutes=2))
    assert daemon._renew()
    assert service.sweep().resent == 0
    # what was asked before is still worked
    _answer_csr(world, "t-1")
    assert _rows(world)["t-1"].state is store.State.ISSUED
    ok(home, "rotation", "resume", clock=clock)
    assert daemon.plan_and_request() == 1  # t-2 now (t-1 has its rotation in progress)
    assert {t for t, m in sent.sent if isinstance(m, rp.Request)} == {"t-1", "t-2"}
    assert [r.id for r in _request(world, "t-1")] == []  # still one rotation for t-1
    actions = [e.action for e in world["state"].inventory().audit_log()]
    assert "rotation-pause" in actions and "rotation-resume" in actions
    assert asked.id == _rows(world)["t-1"].id


def test_dry_runs_say_what_would_happen_and_change_nothing(world: dict[str, Any]) -> None:
    import json

    clock, home = world["clock"], world["home"]
    out = ok(home, "rotation", "rotate", "t-1", "t-2", "--dry-run", "--json", clock=clock)
    assert [w["thing"] for w in json.loads(out)["would_ask"]] == ["t-1", "t-2"]
    assert _rows(world) == {}  # nobody asked
    (rotation,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    _confirm(world, "t-1")
    clock.advance(dt.timedelta(hours=2))
    before = _rows(world)
    out = ok(home, "rotation", "run", "--dry-run", "--horizon", "3650d", clock=clock)
    preview = json.loads(out)
    assert preview["would_complete"] == ["t-1"]
    assert [w["thing"] for w in preview["would_ask"]] == ["t-2"]
    assert preview["skipped"] == [{"thing": "t-1", "why": "a rotation in progress"}]
    assert _rows(world) == before  # nothing completed, nobody asked
    old = world["state"].inventory().get(int(rotation.old_serial, 16))
    assert old.status is Status.ACTIVE
    text = ok(home, "rotation", "rotate", "t-1", "t-2", "--dry-run", clock=clock)
    assert "would ask t-2" in text and "would skip t-1: a rotation in progress" in text


def test_the_numbers_tell_the_truth(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 12 of the rotation issue: the in-progress gauge lagged until the next sweep,
    the due gauge counted rotations already under way, completion was stamped before the
    revocation, and every job logged under one name."""
    import logging

    service, clock = world["service"], world["clock"]
    gauge = service.metrics.open
    (rotation,) = _request(world, "t-1")
    assert gauge.labels("requested")._value.get() == 1  # at once, not at the next sweep
    _answer_csr(world, "t-1")
    assert (gauge.labels("requested")._value.get(), gauge.labels("issued")._value.get()) == (0, 1)
    everything = lambda: active_devices(world["state"].inventory(), clock.now())  # noqa: E731
    daemon = Daemon(service, everything, interval=60, holder="host-a:1:1")
    daemon.acquire()
    daemon.plan_and_request()  # t-1 is under way: only t-2 is due and waiting
    assert service.metrics.due._value.get() == 1
    _confirm(world, "t-1")
    clock.advance(dt.timedelta(hours=2))
    daemon._renew()
    ticking = clock.now

    def tick() -> dt.datetime:  # every reading a second later: the revocation takes time
        clock.advance(dt.timedelta(seconds=1))
        return ticking()

    clock.now = tick  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="fleetpki.rotation"):
        daemon.sweep()
    clock.now = ticking  # type: ignore[method-assign]
    row = _rows(world)["t-1"]
    old = world["state"].inventory().get(int(rotation.old_serial, 16))
    assert old.revoked_at is not None and row.completed_at is not None
    assert row.completed_at >= old.revoked_at
    assert "fleetpki.rotation.sweep" in {r.name for r in caplog.records}


def test_the_fleet_expiry_metrics_and_the_documented_alerts(world: dict[str, Any]) -> None:
    """The fleet's expiry as aggregates per profile; every metric the example alert rules
    and the rotation docs name exists."""
    import re

    import yaml

    service, clock = world["service"], world["clock"]
    daemon = Daemon(service, list, interval=60, holder="host-a:1:1")
    daemon.acquire()
    daemon.plan_and_request()
    m = service.metrics
    assert m.active.labels("device")._value.get() == 2
    issued = world["state"].inventory().find(now=clock.now(), thing="t-1")[0]
    assert m.earliest_expiry.labels("device")._value.get() <= issued.not_after.timestamp()
    for window, days in (("7d", 7), ("90d", 90)):
        inside = issued.not_after <= clock.now() + dt.timedelta(days=days)
        assert m.expiring.labels("device", window)._value.get() == (2 if inside else 0)
    ca_expires = service.issuer.issuing_not_after.timestamp()
    assert m.ca_expiry.labels("issuing")._value.get() == ca_expires
    # the issuing CA's scheduled rollover: at 1/2 and 5/6 of its life by default
    born = service.issuer.issuing_not_before.timestamp()
    prepare = m.ca_rollover_prepare.labels("issuing")._value.get()
    activate = m.ca_rollover_activate.labels("issuing")._value.get()
    assert prepare == pytest.approx(born + (ca_expires - born) / 2)
    assert activate == pytest.approx(born + (ca_expires - born) * 5 / 6)
    families = {family.name for family in m.registry.collect()}  # counters without _total
    docs = Path(__file__).resolve().parent.parent / "docs"
    rules = yaml.safe_load((docs / "prometheus-alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    prose = (docs / "rotation.md").read_text()
    for named in set(re.findall(r"fleetpki_[a-z_]+[a-z]", exprs + prose)):
        base = named.removesuffix("_total")
        for suffix in ("_bucket", "_count", "_sum"):  # a histogram's series
            base = base.removesuffix(suffix) if base.removesuffix(suffix) in families else base
        assert base in families, named


def test_a_lost_confirmation_is_recovered_by_asking_the_device_again(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Defect 3: a confirmation lost with the broker left the device on its new
    certificate and the rotation unconfirmed until it failed. The service asks again; a
    device that already rotated answers with its confirmation again."""
    from devices.device import Credentials, DeviceRotation, DeviceStats

    service, clock, sent = world["service"], world["clock"], world["sent"]
    creds = Credentials.in_folder("t-1", tmp_path / "t-1", tmp_path / "unused-ca.pem")
    device = DeviceRotation(creds, DeviceStats("t-1"), "things")

    def deliver(message: rp.Message) -> tuple[str, bytes] | None:
        kind = "request" if isinstance(message, rp.Request) else "certificate"
        return device.on_message(f"things/t-1/rotation/{kind}", rp.encode(message))

    def to_service(answer: tuple[str, bytes] | None) -> None:
        assert answer is not None
        service.handle("t-1", answer[0].rsplit("/", 1)[1], answer[1])
        service.process(wait=0)

    (rotation,) = _request(world, "t-1")
    to_service(deliver(sent.last("t-1", rp.Request)))  # the CSR, for a key made there
    assert deliver(sent.last("t-1", rp.CertificateMessage)) is None  # stored, switching
    device.switched()  # reconnected with it; its confirmation is lost with the broker
    assert _rows(world)["t-1"].state is store.State.ISSUED
    clock.advance(dt.timedelta(seconds=61))
    assert service.sweep().resent == 1  # asked again
    to_service(deliver(sent.last("t-1", rp.Request)))  # the device confirms again
    row = _rows(world)["t-1"]
    assert (row.id, row.state) == (rotation.id, store.State.CONFIRMED)
    assert row.new_serial == device.stats.rotated_serial
    assert sent.cleared == ["t-1"]  # the acknowledgement: the request is gone


@pytest.mark.parametrize("whose", ["t-1", "t-2"])
def test_a_rotation_csr_on_a_key_already_bound_is_refused_as_key_reused(
    world: dict[str, Any], whose: str
) -> None:
    """Defect 6: rotation accepted a CSR for the device's current key, or for another
    thing's key. A rotation needs a new key, bound to no active certificate."""
    from cryptography.hazmat.primitives import serialization

    from tests.helpers import make_csr

    service, clock, sent = world["service"], world["clock"], world["sent"]
    key_file = Path(world["home"]).parent / whose / "key.pem"
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    (rotation,) = _request(world, "t-1")
    csr, _key = make_csr("t-1", key)
    before = len(world["state"].inventory().find(now=clock.now()))
    service.handle("t-1", "csr", rp.encode(rp.CsrMessage(rotation.id, csr)))
    service.process(wait=0)
    refusal = sent.last("t-1", rp.CertificateMessage)
    assert (refusal.ok, refusal.error) == (False, "key-reused")
    row = _rows(world)["t-1"]
    assert row.state is store.State.FAILED and (row.error or "").startswith("key-reused")
    assert len(world["state"].inventory().find(now=clock.now())) == before  # nothing issued


def test_ca_show_warns_when_no_daemon_keeps_the_fleet_current(world: dict[str, Any]) -> None:
    import json

    clock, home = world["clock"], world["home"]
    shown = json.loads(ok(home, "ca", "show", "--json", clock=clock))
    assert any("no rotation daemon is running" in w for w in shown["warnings"]), shown
    daemon = Daemon(world["service"], list, interval=60, holder="host-a:1:1")
    daemon.acquire()
    ok(home, "rotation", "pause", clock=clock)
    shown = json.loads(ok(home, "ca", "show", "--json", clock=clock))
    assert not [w for w in shown["warnings"] if "daemon" in w], shown
    assert any("rotation is paused" in w for w in shown["warnings"]), shown


def test_the_daemon_keeps_at_most_n_in_flight_and_asks_the_rest_as_they_finish(
    world: dict[str, Any],
) -> None:
    service, clock, sent = world["service"], world["clock"], world["sent"]
    service.ctx.settings = RotationSettings(max_open=1)
    everything = lambda: active_devices(world["state"].inventory(), clock.now())  # noqa: E731
    daemon = Daemon(service, everything, interval=60, holder="host-a:1:1")
    daemon.acquire()
    assert daemon.plan_and_request() == 1
    (first,) = [t for t, m in sent.sent if isinstance(m, rp.Request)]
    daemon.sweep()
    assert len([m for _t, m in sent.sent if isinstance(m, rp.Request)]) == 1  # still full
    _answer_csr(world, first)
    _confirm(world, first)
    clock.advance(dt.timedelta(hours=2))
    daemon._renew()
    daemon.sweep()  # completes the first, then asks the other: room freed up
    asked = {t for t, m in sent.sent if isinstance(m, rp.Request)}
    assert asked == {"t-1", "t-2"}
    assert _rows(world)[first].state is store.State.COMPLETED


def test_the_daemon_paces_each_plan_with_a_rate_and_canaries(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from rotation.pacing import Pacing

    clock, sent = world["clock"], world["sent"]
    for n in range(3, 9):
        ok(world["home"], "issue", "device", f"t-{n}", "--generate-key", "--out",
           tmp_path / f"t-{n}", clock=clock)  # fmt: skip
    everything = lambda: active_devices(world["state"].inventory(), clock.now())  # noqa: E731
    daemon = Daemon(world["service"], everything, interval=60, holder="host-a:1:1",
                    pacing=Pacing(per_second=2, canary=1))  # fmt: skip

    def asked() -> list[str]:
        return [t for t, m in sent.sent if isinstance(m, rp.Request)]

    daemon.acquire()
    assert daemon.plan_and_request() == 1  # the canary alone
    (canary,) = asked()
    daemon._wave_started -= 5.0  # seconds later (monotonic time)
    daemon.top_up()
    assert len(asked()) == 1  # the rest waits for the canary to rotate
    _answer_csr(world, canary)
    _confirm(world, canary)
    daemon.top_up()
    assert len(asked()) == 3  # then two a second, a second's worth at once
    daemon._wave_started -= 10.0
    daemon.top_up()
    assert len(asked()) == 5 and len(set(asked())) == 5


def test_a_pass_waiting_longer_than_its_lease_keeps_it_and_goes_on_recording(
    world: dict[str, Any],
) -> None:
    """Found in review: 'rotation run --once' waits up to --timeout (10m) on a 1-minute
    lease that nothing renewed: every answer after a minute was refused as LeaseLost."""
    from rotation.daemon import wait_for

    service, clock = world["service"], world["clock"]
    daemon = Daemon(service, list, interval=60, holder="host-a:1:1", lease=60)
    daemon.acquire()
    (rotation,) = _request(world, "t-1")
    clock.advance(dt.timedelta(seconds=90))  # the pass has been waiting 90 s
    daemon._renewed -= 90
    request = world["sent"].last("t-1", rp.Request)
    _key, csr = make_key_and_csr(KeyType.EC_P256, "t-1")
    service.handle("t-1", "csr", rp.encode(rp.CsrMessage(request.rotation_id, csr)))
    counts = wait_for(service, [rotation.id], timeout=2, until_completed=False, holder=daemon)
    assert counts["issued"] == 1 and not daemon.lost


def test_a_repeat_for_a_finished_rotation_never_clears_a_newer_ones_request(
    world: dict[str, Any],
) -> None:
    service, clock, sent = world["service"], world["clock"], world["sent"]
    (first,) = _request(world, "t-1")
    _answer_csr(world, "t-1")
    reply = _confirm(world, "t-1")
    clock.advance(dt.timedelta(hours=2))
    service.sweep()  # completed
    assert sent.cleared == ["t-1"]
    (second,) = _request(world, "t-1")  # the next rotation of t-1: its request is retained
    service.handle("t-1", "confirm", rp.encode(rp.Confirm(first.id, reply.serial)))
    service.process(wait=0)  # a late repeat of the first one's confirmation
    assert sent.cleared == ["t-1"]  # not cleared: that would remove the second's request
    with store.transaction(world["state"].inventory().engine) as conn:
        newest = store.select(conn, things=["t-1"])[0]
    assert (newest.id, newest.state) == (second.id, store.State.REQUESTED)


def test_a_daemon_plan_whose_canary_fails_asks_nobody_else(world: dict[str, Any]) -> None:
    from rotation.pacing import Pacing

    service, clock, sent = world["service"], world["clock"], world["sent"]
    everything = lambda: active_devices(world["state"].inventory(), clock.now())  # noqa: E731
    daemon = Daemon(service, everything, interval=60, holder="host-a:1:1",
                    pacing=Pacing(canary=1))  # fmt: skip
    daemon.acquire()
    assert daemon.plan_and_request() == 1
    clock.advance(dt.timedelta(minutes=16))  # the canary never answers
    daemon._renew()
    daemon.sweep()  # fails it, and the plan stops there
    assert len([m for _t, m in sent.sent if isinstance(m, rp.Request)]) == 1
    assert service.metrics.waves_stopped._value.get() == 1
