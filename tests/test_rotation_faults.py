"""Rotation when the broker goes away: the service's MQTT channel against a real Mosquitto
(the stand-ins of ``fleetpki dev up``) that is stopped, restarted cleanly, restarted by
hand outside fleetpki, or replaced by ``dev down``/``dev up`` on other ports."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices import rotation_protocol as rp
from devices import standins
from pki.home import Home
from pki.processes import terminate
from rotation.channel import ServiceChannel, stand_in_access
from tests.device_fixtures import (
    Stand,
    dev_up,
    fleetpki,
    make_home,
    mosquitto_pub,
    ok,
    running_stand,
    wait_for,
)

DEVICES = ("bf-1", "bf-2", "bf-3")


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    home = make_home(tmp_path, DEVICES)
    with running_stand(home, tmp_path) as s:
        yield s


class Heard:
    """What a channel delivered (broker acknowledgements) and received (device messages)."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.received: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def on_delivered(self, kind: str) -> None:
        with self.lock:
            self.delivered.append(kind)

    def on_message(self, thing: str, kind: str, payload: bytes, ack: Any) -> None:
        with self.lock:
            self.received.append((thing, kind, payload))
        ack()


def _channel(stand: Stand, heard: Heard, *, listen: bool = False) -> ServiceChannel:
    home = Home(stand.home)
    return ServiceChannel(
        stand_in_access(home),
        heard.on_message,
        listen=listen,
        source=lambda: stand_in_access(home),
        on_delivered=heard.on_delivered,
    )


def _request(thing: str, n: int) -> rp.Request:
    return rp.Request(format(n, "032x"), "01")


def test_messages_sent_while_the_broker_is_down_go_out_after_it_is_back(stand: Stand) -> None:
    """Defect: one message sent while disconnected made every later send raise
    RuntimeError until the process restarted."""
    heard = Heard()
    channel = _channel(stand, heard)
    channel.start()
    try:
        state = standins.load_state(Home(stand.home))
        assert state is not None
        terminate(state.mosquitto_pid)
        assert wait_for(lambda: not channel.connected)
        for n, thing in enumerate(DEVICES):
            channel.send(thing, _request(thing, n))  # queued: nobody to send them to
        assert channel.unsent() == 3 and heard.delivered == []
        ok(stand.home, "dev", "restart-broker")
        for n, thing in enumerate(DEVICES, start=10):
            channel.send(thing, _request(thing, n))  # raised RuntimeError before
        assert wait_for(lambda: channel.unsent() == 0, timeout=30), channel.unsent()
        assert heard.delivered == ["request"] * 6  # counted once the broker acknowledged
    finally:
        assert channel.close(drain=5) == 0


def test_a_clean_broker_restart_keeps_what_devices_sent_for_the_service(stand: Stand) -> None:
    """Defect: the stand-in broker kept no sessions, so a device's confirmation sent after a
    restart and before the service subscribed again was lost."""
    heard = Heard()
    channel = _channel(stand, heard, listen=True)
    channel.start()
    channel.close(drain=5)  # the service is away; its persistent session stays
    ok(stand.home, "dev", "restart-broker")  # SIGTERM: Mosquitto saves the session
    confirm = rp.encode(rp.Confirm("ab" * 16, "0a"))
    sent = mosquitto_pub(stand, stand.device("bf-1"), f"{stand.topic_prefix}/bf-1/rotation/confirm",
                         confirm.decode())  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    again = _channel(stand, heard, listen=True)
    again.start()
    try:
        assert wait_for(lambda: heard.received, timeout=20)
        assert heard.received == [("bf-1", "confirm", confirm)]
    finally:
        again.close(drain=5)


def test_the_channel_follows_the_broker_to_its_new_port_after_dev_down_and_up(
    stand: Stand,
) -> None:
    """Defect: after 'dev down'/'dev up' the service knocked on the old port for ever and
    counted requests that never left."""
    heard = Heard()
    channel = _channel(stand, heard)
    channel.start()
    old_port = channel.access.port
    try:
        ok(stand.home, "dev", "down")
        assert wait_for(lambda: not channel.connected)
        channel.send("bf-2", _request("bf-2", 1))
        assert heard.delivered == []  # never counted while nothing was sent
        dev_up(stand.home, stand.root)
        assert wait_for(lambda: channel.unsent() == 0, timeout=40), channel.unsent()
        assert channel.connected and channel.access.port != old_port
        assert heard.delivered == ["request"]
    finally:
        channel.close(drain=5)


def test_a_broker_restarted_outside_fleetpki_still_gets_the_new_crl(stand: Stand) -> None:
    """Defect: after a restart by hand (another pid), 'revoke' said the revocation was
    done while the broker went on serving the old CRL."""
    home = Home(stand.home)
    state = standins.load_state(home)
    assert state is not None
    mosquitto = subprocess.run(["sh", "-c", "command -v mosquitto"], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    terminate(state.mosquitto_pid)
    by_hand = subprocess.Popen(  # as a supervisor would, not through fleetpki
        [mosquitto, "-c", str(state.run / "mosquitto.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: standins.broker_pid(state) == by_hand.pid)
        before = state.crl_file.read_bytes()
        code, _out, err = fleetpki(stand.home, "revoke", stand.serial("bf-3"))
        assert code == 0, err
        assert state.crl_file.read_bytes() != before
        assert state.crl_file.read_bytes() == home.combined_crl_path.read_bytes()
        # and the broker re-read it: the revoked device is refused
        refused = mosquitto_pub(stand, stand.device("bf-3"), f"{stand.topic_prefix}/bf-3/t")
        assert refused.returncode != 0
        accepted = mosquitto_pub(stand, stand.device("bf-1"), f"{stand.topic_prefix}/bf-1/t")
        assert accepted.returncode == 0, accepted.stderr
    finally:
        os.kill(by_hand.pid, signal.SIGTERM)
        by_hand.wait(10)


def _serve(state: standins.DevState, crl: bytes) -> None:
    """Give the running broker this CRL file, as a restore from an old backup would."""
    state.crl_file.write_bytes(crl)
    pid = standins.broker_pid(state)
    assert pid is not None
    os.kill(pid, signal.SIGHUP)


def test_a_stale_crl_at_the_broker_is_repaired_by_the_daemons_next_tick(stand: Stand) -> None:
    """Defect: the daemon decided from the home's CRL only; a broker serving an expired
    CRL refused every device, silently, for ever."""
    import datetime as dt
    import json

    from pki.app import App
    from pki.clock import FixedClock, SystemClock
    from rotation.runtime import open_service
    from rotation.service import RotationSettings

    home = Home(stand.home)
    state = standins.load_state(home)
    assert state is not None
    ok(stand.home, "crl", clock=FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=30)))
    stale = home.combined_crl_path.read_bytes()  # its nextUpdate is 23 days past
    ok(stand.home, "crl")  # the home is fresh again (and the broker with it)
    _serve(state, stale)
    topic = f"{stand.topic_prefix}/bf-1/t"
    assert wait_for(lambda: mosquitto_pub(stand, stand.device("bf-1"), topic).returncode != 0)
    # before: every status says so
    status = json.loads(ok(stand.home, "rotation", "status", "--json"))
    assert any("expired" in w and "stand-ins" in w for w in status["warnings"]), status
    code, out, err = fleetpki(stand.home, "dev", "status", "--json")
    assert code == 0 and "fleetpki: warning: the stand-ins" in err
    assert json.loads(out)["served_crl"]["matches_home"] is False
    shown = json.loads(ok(stand.home, "ca", "show", "--json"))
    assert any("stand-ins" in w and "expired" in w for w in shown["warnings"]), shown
    # one tick of the daemon's CRL job
    service, _channel = open_service(App(stand.home, SystemClock()), RotationSettings())
    assert service.refresh_crl() is False  # nothing to re-sign: the home's CRL is fresh
    assert service.metrics.crl_repairs.labels("stand-ins")._value.get() == 1
    assert service.metrics.crl_served_ok.labels("stand-ins")._value.get() == 1
    assert state.crl_file.read_bytes() == home.combined_crl_path.read_bytes()
    accepted = mosquitto_pub(stand, stand.device("bf-1"), topic)
    assert accepted.returncode == 0, accepted.stderr
    # after: nothing to say about the CRL, and a second tick repairs nothing
    status = json.loads(ok(stand.home, "rotation", "status", "--json"))
    assert [w for w in status["warnings"] if "CRL #" in w or "stand-ins" in w] == [], status
    assert status["served_crl"]["matches_home"] is True
    shown = json.loads(ok(stand.home, "ca", "show", "--json"))
    assert not [w for w in shown["warnings"] if "stand-ins" in w], shown
    service.refresh_crl()
    assert service.metrics.crl_repairs.labels("stand-ins")._value.get() == 1


def test_a_device_offline_through_its_request_picks_it_up_when_it_connects(
    stand: Stand,
) -> None:
    """Defect: a device that was offline when asked was never asked again in time; the
    request is now retained at the broker (and re-sent on a backoff)."""
    import json
    import sys
    import time

    from tests.test_rotation import LiveDevice

    old = stand.serial("bf-2")
    wave = subprocess.Popen(
        [sys.executable, "-m", "pki", "--home", str(stand.home), "rotation", "rotate", "bf-2",
         "--grace", "0", "--timeout", "60s", "--resend-after", "10m", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # asked while nobody listens for bf-2
        asked = wait_for(lambda: json.loads(ok(stand.home, "rotation", "status", "--json"))
                         ["states"]["requested"] == 1, timeout=30)  # fmt: skip
        assert asked
        time.sleep(1)  # and a moment later the device comes online
        with LiveDevice(stand, "bf-2") as device:
            out, err = wave.communicate(timeout=120)
            assert wave.returncode == 0, err
            assert json.loads(out)["states"]["completed"] == 1
            records = json.loads(ok(stand.home, "list", "--thing", "bf-2", "--json"))
            active = [r["serial"] for r in records if r["status"] == "active"]
            assert active == [device.stats.rotated_serial] and old not in active
    finally:
        if wave.poll() is None:
            wave.kill()
            wave.communicate()


def test_a_failure_to_read_where_the_broker_is_never_kills_the_reconnection() -> None:
    """Found in review: an exception other than fleetpki's own in the reconnect callback
    would end paho's network thread for good."""
    from rotation.channel import BrokerAccess

    def broken() -> BrokerAccess:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a process with a strange name")

    access = BrokerAccess("127.0.0.1", 1, "u", "p", "things")
    channel = ServiceChannel(access, Heard().on_message, listen=False, source=broken)
    channel._ready.set()  # a reconnection, not the first connection
    channel._pre_connect(channel.client, None)  # must not raise
    assert channel.access == access


def test_a_broker_holding_a_stale_crl_behind_a_fresh_file_is_found_by_a_canary(
    stand: Stand,
) -> None:
    """The file the broker reads is the home's current one, but the broker never re-read it
    (a SIGHUP that never arrived): only a handshake of fleetpki's own shows that it refuses
    everyone. The daemon's next tick finds it and repairs it."""
    import datetime as dt
    import json

    from pki.app import App
    from pki.clock import FixedClock, SystemClock
    from rotation.runtime import open_service
    from rotation.service import RotationSettings

    home = Home(stand.home)
    state = standins.load_state(home)
    assert state is not None
    ok(stand.home, "crl", clock=FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=30)))
    stale = home.combined_crl_path.read_bytes()
    ok(stand.home, "crl")
    _serve(state, stale)  # the broker loads the stale CRL...
    topic = f"{stand.topic_prefix}/bf-1/t"
    assert wait_for(lambda: mosquitto_pub(stand, stand.device("bf-1"), topic).returncode != 0)
    state.crl_file.write_bytes(home.combined_crl_path.read_bytes())  # ...the file is fixed
    status = json.loads(ok(stand.home, "rotation", "status", "--json"))
    assert status["served_crl"]["matches_home"] is True  # the file alone looks fine
    assert mosquitto_pub(stand, stand.device("bf-1"), topic).returncode != 0  # still refused
    service, _channel = open_service(App(stand.home, SystemClock()), RotationSettings())
    service.refresh_crl()  # one tick
    assert service.metrics.crl_repairs.labels("stand-ins")._value.get() == 1
    assert service.metrics.crl_served_ok.labels("stand-ins")._value.get() == 1
    accepted = mosquitto_pub(stand, stand.device("bf-1"), topic)
    assert accepted.returncode == 0, accepted.stderr
    # the probe is recorded, and not part of the fleet
    probes = json.loads(ok(stand.home, "list", "--thing", "fleetpki-probe", "--json"))
    assert [p["status"] for p in probes] == ["active"]
    plan = json.loads(ok(stand.home, "rotation", "plan", "--horizon", "3650d", "--json"))
    assert "fleetpki-probe" not in json.dumps(plan)
    service.refresh_crl()  # a second tick: the same probe, nothing to repair
    assert service.metrics.crl_repairs.labels("stand-ins")._value.get() == 1
    assert len(json.loads(ok(stand.home, "list", "--thing", "fleetpki-probe", "--json"))) == 1


def test_only_fleetpki_itself_issues_its_probe_identity(tmp_path: Path) -> None:
    from pki.app import App
    from pki.clock import SystemClock
    from pki.errors import PolicyViolation
    from pki.issue.delivery import make_key_and_csr
    from pki.model import IssueRequest, KeyType

    home = tmp_path / "home"
    ok(home, "ca", "init")
    code, _out, err = fleetpki(home, "issue", "device", "fleetpki-probe", "--generate-key",
                               "--out", tmp_path / "p")  # fmt: skip
    assert code == 2 and "(reserved-thing-name)" in err  # an operator cannot take it
    _key, csr = make_key_and_csr(KeyType.EC_P256, "fleetpki-rotation")
    app = App(home, SystemClock())
    try:
        with pytest.raises(PolicyViolation, match="fleetpki-probe"):  # nor any other name
            app.issuer().issue(IssueRequest("device", "fleetpki-rotation", csr, probe=True))
    finally:
        app.close()


def test_a_lost_confirmation_is_made_good_by_proof_of_use(stand: Stand, tmp_path: Path) -> None:
    """The device got its certificate and uses it, but its confirmation never arrived: the
    HTTPS endpoint accepting the new certificate is proof enough (its access log names the
    serial), and the next sweep confirms the rotation with a note."""
    from pki.app import App
    from pki.clock import SystemClock
    from pki.issue.delivery import make_key_and_csr
    from pki.model import KeyType
    from rotation import store
    from rotation.planner import active_devices
    from rotation.runtime import open_service
    from rotation.service import RotationSettings
    from tests.device_fixtures import curl

    app = App(stand.home, SystemClock())
    service, _channel = open_service(app, RotationSettings())  # not connected: sends queue
    (rotation,) = service.request(active_devices(app.inventory(), app.now(), things=["bf-2"]))
    key, csr = make_key_and_csr(KeyType.EC_P256, "bf-2")
    service.handle("bf-2", "csr", rp.encode(rp.CsrMessage(rotation.id, csr)))
    service.process(wait=0)
    (issued,) = service.open_rotations([rotation.id])
    assert issued.state is store.State.ISSUED and issued.new_serial is not None
    device = tmp_path / "bf-2-new"
    device.mkdir()
    (device / "key.pem").write_bytes(key)
    pem = app.inventory().get_pem(int(issued.new_serial, 16)).encode()
    (device / "fullchain.pem").write_bytes(pem + app.issuer().issuing_pem)
    assert service.sweep().resent == 0 and service.open_rotations([rotation.id])[0].state is (
        store.State.ISSUED
    )  # not seen in use yet
    answer = curl(stand, device)  # the device uses its new certificate
    assert answer.returncode == 0, answer.stderr
    service.sweep()
    (row,) = service.open_rotations([rotation.id])
    assert row.state is store.State.CONFIRMED
    assert row.error == "confirmed by use: a relying party accepted the new certificate"
    assert service.metrics.confirmed_by_use._value.get() == 1
    app.close()


def test_the_canary_says_when_it_cannot_tell_and_renews_a_broken_probe(
    stand: Stand, tmp_path: Path
) -> None:
    import trustme

    from devices.standins import probe
    from pki.app import App
    from pki.clock import SystemClock

    app = App(stand.home, SystemClock())
    try:
        first = probe.current(app)
        assert probe.current(app) == first  # kept while valid
        state = standins.load_state(Home(stand.home))
        assert state is not None
        assert probe.handshake(first, state.mqtt_port, state.ca_file) is None  # accepted
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(trustme.CA().cert_pem.bytes())
        with pytest.raises(probe.CanaryNotRun, match="not trusted"):  # says nothing of the CRL
            probe.handshake(first, state.mqtt_port, other_ca)
        closed = _free_port()
        with pytest.raises(probe.CanaryNotRun):
            probe.handshake(first, closed, state.ca_file)
        # a key that does not go with the certificate (a crash between the two writes)
        probe.folder(app.home).joinpath("key.pem").write_bytes(
            (stand.device("bf-1") / "key.pem").read_bytes()
        )
        second = probe.current(app)
        assert second.serial != first.serial
        assert probe.handshake(second, state.mqtt_port, state.ca_file) is None
        statuses = {r.serial: r.status.value for r in app.inventory().find(
            now=app.now(), thing="fleetpki-probe")}  # fmt: skip
        assert statuses == {first.serial: "revoked", second.serial: "active"}
    finally:
        app.close()


def _free_port() -> int:
    from pki.processes import free_port

    return free_port()


def test_server_names_cannot_take_the_reserved_prefix_either(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(home, "ca", "init")
    code, _out, err = fleetpki(
        home, "issue", "server", "fleetpki-probe", "--dns", "probe.example.test",
        "--generate-key", "--out", tmp_path / "s",
    )  # fmt: skip
    assert code == 2 and "(reserved-thing-name)" in err
