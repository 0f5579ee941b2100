"""Rotation end to end: real Mosquitto with TLS client certificates, real paho devices that
make their own keys, the real CLI (``fleetpki rotation …``), the inventory and the CRL."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from devices import rotation_protocol as rp
from devices.device import Credentials, client_context
from devices.impostors import try_https, try_mqtt
from devices.mqtt_clients import PahoDevice
from pki.clock import FixedClock
from pki.issue.delivery import make_key_and_csr
from pki.model import KeyType
from tests.device_fixtures import Stand, fleetpki, make_home, ok, running_stand, wait_for

DEVICES = ("rot-1", "rot-2", "rot-3", "rot-bad", "rot-quiet", "rot-due")


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    root = tmp_path_factory.mktemp("rotation")
    home = make_home(root, DEVICES[:-1])
    # rot-due: issued 6 days ago for 7 days, past its renewal time (2/3 of the lifetime)
    six_days_ago = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=6))
    ok(home, "issue", "device", "rot-due", "--generate-key", "--days", "7", "--out",
       root / "rot-due", clock=six_days_ago)  # fmt: skip
    with running_stand(home, root) as s:
        yield s


class LiveDevice:
    """A paho device on its own thread: connected, answering rotation requests, switching
    to its new certificate when one arrives."""

    def __init__(self, stand: Stand, name: str) -> None:
        creds = Credentials.in_folder(name, stand.device(name), stand.ca_file)
        self.device = PahoDevice(creds, "127.0.0.1", stand.mqtt_port, "things")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PahoDevice:
        assert self.device.start()
        self._thread.start()
        assert wait_for(lambda: self.device.stats.connected), self.device.stats.refused
        return self.device

    def _run(self) -> None:
        while not self._stop.is_set():
            self.device.client.loop(timeout=0.05)
            if self.device.ready_to_switch(time.monotonic()):
                self.device.switch()

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.device.close()


def _records(stand: Stand, thing: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(stand.home, "list", "--thing", thing, "--json")))


def _serial_of(path: Path) -> str:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return format(cert.serial_number, "x")


def test_rotate_replaces_the_certificate_and_revokes_the_old_one(stand: Stand) -> None:
    folder = stand.device("rot-1")
    old_serial = stand.serial("rot-1")
    with LiveDevice(stand, "rot-1") as device:
        code, out, err = fleetpki(stand.home, "rotation", "rotate", "rot-1", "--grace", "0",
                                  "--timeout", "60s", "--json")  # fmt: skip
        assert code == 0, err
        summary = json.loads(out)
        assert summary["rotations"] == 1
        assert summary["states"]["completed"] == 1
        # the device moved to its new certificate and was not cut by the revocation
        assert wait_for(lambda: device.stats.rotation_confirmed_at is not None)
        time.sleep(0.5)
        assert device.stats.disconnected_at is None
        assert device.client.is_connected()
    new_serial = _serial_of(folder / "fullchain.pem")
    assert new_serial.lstrip("0") != old_serial.lstrip("0")
    assert _serial_of(folder / "previous" / "fullchain.pem").lstrip("0") == old_serial.lstrip("0")
    rows = {r["serial"].lstrip("0"): r for r in _records(stand, "rot-1")}
    assert rows[old_serial.lstrip("0")]["status"] == "revoked"
    assert rows[old_serial.lstrip("0")]["revocation_reason"] == "superseded"
    new = rows[new_serial.lstrip("0")]
    assert new["status"] == "active"
    # the same lifetime as before (make_home issues for the default 90 days)
    lifetime = dt.datetime.fromisoformat(new["not_after"]) - dt.datetime.fromisoformat(
        new["not_before"]
    )
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, minutes=6)
    # the key never left the device: the inventory holds no private key
    assert "PRIVATE KEY" not in json.dumps(rows)
    # old certificate: refused by the broker and the HTTPS endpoint; new one accepted
    old = Credentials.in_folder("rot-1", folder / "previous", stand.ca_file)
    assert try_mqtt(old, stand) == "revoked"
    assert try_https(old, stand) == "revoked"
    current = Credentials.in_folder("rot-1", folder, stand.ca_file)
    assert try_mqtt(current, stand) is None
    assert try_https(current, stand) is None


def test_a_wave_rotates_several_devices_and_a_repeat_changes_nothing(stand: Stand) -> None:
    with LiveDevice(stand, "rot-2") as d2, LiveDevice(stand, "rot-3") as d3:
        code, out, err = fleetpki(stand.home, "rotation", "rotate", "--match", "rot-[23]",
                                  "--grace", "1h", "--timeout", "60s", "--json")  # fmt: skip
        assert code == 0, err
        summary = json.loads(out)
        # with a grace period the command stops at 'confirmed'; the old ones stay valid
        assert summary["states"]["confirmed"] == 2
        assert d2.stats.rotated_serial and d3.stats.rotated_serial
        # a second wave while these are in their grace period requests nothing
        code, _out, err = fleetpki(stand.home, "rotation", "rotate", "rot-2", "--no-wait")
        assert code == 2
        assert "already has a rotation in progress" in err
    for thing in ("rot-2", "rot-3"):
        statuses = sorted(r["status"] for r in _records(stand, thing))
        assert statuses == ["active", "active"]  # old one valid until the grace ends
    status = json.loads(ok(stand.home, "rotation", "status", "--json"))
    assert status["states"]["confirmed"] >= 2


def test_a_csr_for_another_name_fails_the_rotation_and_issues_nothing(stand: Stand) -> None:
    """A device (here a raw client with rot-bad's certificate) that answers with a CSR for
    another thing gets the policy's refusal; no certificate is issued."""
    folder = stand.device("rot-bad")
    creds = Credentials.in_folder("rot-bad", folder, stand.ca_file)
    refusals: list[rp.CertificateMessage] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rot-bad")
    client.tls_set_context(client_context(creds))

    def on_message(c: Any, _u: Any, message: Any) -> None:
        if not message.payload:
            return  # the service clearing its retained request: the rotation ended
        _thing, kind = rp.parse_topic("things", message.topic)
        decoded = rp.decode(kind, bytes(message.payload))
        if isinstance(decoded, rp.Request):
            _key, csr = make_key_and_csr(KeyType.EC_P256, "rot-1")  # someone else's name
            c.publish(rp.topic("things", "rot-bad", "csr"), rp.encode(rp.CsrMessage(
                decoded.rotation_id, csr)), qos=1)  # fmt: skip
        elif isinstance(decoded, rp.CertificateMessage):
            refusals.append(decoded)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", stand.mqtt_port)
    client.subscribe([(rp.topic("things", "rot-bad", k), 1) for k in ("request", "certificate")])
    client.loop_start()
    try:
        assert subscribed.wait(10)
        before = len(_records(stand, "rot-bad"))
        code, out, _err = fleetpki(stand.home, "rotation", "rotate", "rot-bad", "--grace", "0",
                                   "--timeout", "30s", "--json")  # fmt: skip
        assert code == 1
        summary = json.loads(out)
        assert summary["states"]["failed"] == 1
        assert "cn-mismatch" in summary["failed"][0]["error"]
        assert wait_for(lambda: bool(refusals))
        assert refusals[0].error == "cn-mismatch"
        assert len(_records(stand, "rot-bad")) == before  # nothing issued
    finally:
        client.loop_stop()
        client.disconnect()


def test_rotate_names_what_is_wrong(stand: Stand) -> None:
    code, _out, err = fleetpki(stand.home, "rotation", "rotate")
    assert code == 2
    assert "name the things to rotate" in err
    code, _out, err = fleetpki(stand.home, "rotation", "rotate", "no-such-thing")
    assert code == 2
    assert "no active device certificate for no-such-thing" in err
    code, _out, err = fleetpki(stand.home, "rotation", "rotate", "rot-1", "--grace", "soon")
    assert code == 2
    assert "'soon' is not a duration" in err


def test_rotate_without_the_broker_says_how_to_start_it(tmp_path: Path) -> None:
    home = make_home(tmp_path, ["lonely-1"])
    code, _out, err = fleetpki(home, "rotation", "rotate", "lonely-1")
    assert code == 2
    assert "fleetpki dev up" in err
    assert err.count("\n") == 1


def test_plan_lists_what_is_due_and_run_once_rotates_it(stand: Stand) -> None:
    due = json.loads(ok(stand.home, "rotation", "plan", "--json"))
    assert [d["thing"] for d in due] == ["rot-due"]
    ahead = json.loads(ok(stand.home, "rotation", "plan", "--horizon", "400d", "--json"))
    assert {"rot-due", "rot-quiet"} <= {d["thing"] for d in ahead}
    with LiveDevice(stand, "rot-due") as device:
        code, out, err = fleetpki(stand.home, "rotation", "run", "--once", "--grace", "0",
                                  "--timeout", "60s")  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        assert result["requested"] == 1
        assert result["states"]["completed"] == 1
        assert device.stats.rotated_serial is not None
    # the replacement has the old lifetime (7 days) and nothing is due any more
    assert json.loads(ok(stand.home, "rotation", "plan", "--json")) == []
    active = [r for r in _records(stand, "rot-due") if r["status"] == "active"]
    assert len(active) == 1
    lifetime = dt.datetime.fromisoformat(active[0]["not_after"]) - dt.datetime.fromisoformat(
        active[0]["not_before"]
    )
    assert dt.timedelta(days=7) <= lifetime <= dt.timedelta(days=7, minutes=6)


def test_daemon_serves_metrics_holds_the_lease_and_stops_on_sigterm(stand: Stand) -> None:
    from pki.processes import free_port

    port = free_port()
    exe = Path(sys.executable).parent / "fleetpki"
    daemon = subprocess.Popen(
        [str(exe), "--home", str(stand.home), "rotation", "run", "--interval", "1h",
         "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def metrics() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        def planned() -> float:
            for line in metrics().splitlines():
                if line.startswith("fleetpki_rotation_last_plan_timestamp_seconds "):
                    return float(line.split()[1])
            return 0.0

        assert wait_for(lambda: planned() > 0, 30)  # the plan job ran
        text = metrics()
        assert "fleetpki_rotation_requests_total" in text
        assert "fleetpki_crl_next_update_timestamp_seconds" in text
        # a second daemon on the same inventory is refused while the first holds the lease
        status = json.loads(ok(stand.home, "rotation", "status", "--json"))
        assert status["daemon"] is not None
        code, _out, err = fleetpki(stand.home, "rotation", "run", "--metrics-port", "0")
        assert code == 2
        assert "another rotation daemon" in err
        # with the daemon running, 'rotate' only asks; the daemon works the answers
        with LiveDevice(stand, "rot-quiet") as device:
            code, out, err = fleetpki(stand.home, "rotation", "rotate", "rot-quiet", "--grace",
                                      "1h", "--timeout", "60s")  # fmt: skip
            assert code == 0, err
            assert "the running daemon" in err and "works their answers" in err
            assert "confirmed 1" in out
            assert device.stats.rotated_serial is not None
        assert "fleetpki_rotation_confirmed_total 1.0" in metrics()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""
    # the lease is released: the next daemon may start
    assert json.loads(ok(stand.home, "rotation", "status", "--json"))["daemon"] is None


def test_a_device_name_cannot_take_a_service_identity(tmp_path: Path) -> None:
    home = make_home(tmp_path, [])
    code, _out, err = fleetpki(home, "issue", "device", "fleetpki-rotation", "--generate-key",
                               "--out", tmp_path / "x")  # fmt: skip
    assert code == 2
    assert "reserved-thing-name" in err
    assert not (tmp_path / "x").exists()


# -- defects found trying fleetpki as a new user (the interop issue, §6) -----------------


def _failed_rotation(stand: Stand, thing: str) -> None:
    """An unrelated failed rotation in the inventory (a device that never answered)."""
    import secrets

    from pki.app import App
    from pki.clock import SystemClock
    from rotation import store
    from rotation.store import Rotation
    from rotation.store import State as RotationState

    now = dt.datetime.now(dt.UTC)
    engine = App(stand.home, SystemClock()).inventory().engine
    with store.transaction(engine) as conn:
        store.insert(
            conn,
            [
                Rotation(
                    id=secrets.token_hex(16), thing=thing, old_serial="0a", new_serial=None,
                    state=RotationState.FAILED, days=90, requested_at=now, updated_at=now,
                    deadline=now, error="did not answer",
                )
            ],
        )  # fmt: skip


def test_run_once_with_nothing_due_succeeds_at_once_and_counts_only_its_own(
    tmp_path: Path,
) -> None:
    """Under cron, 'rotation run --once' on a fleet with nothing due used to wait its whole
    --timeout and exit 1, counting an unrelated failed rotation as its own."""
    home = make_home(tmp_path, ["quiet-1"])
    with running_stand(home, tmp_path) as stand:
        _failed_rotation(stand, "someone-else")
        # the subprocess deadline (120 s) is far below --timeout: a wait would fail it
        done = subprocess.run(
            [str(Path(sys.executable).parent / "fleetpki"), "--home", str(home), "rotation",
             "run", "--once", "--timeout", "1h"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requested"] == 0 and result["servers"] == 0
    assert set(result["states"].values()) == {0}
    assert "nothing is due: no rotation requested" in done.stderr


def test_rotation_plan_names_servers_in_a_table_with_a_header(tmp_path: Path) -> None:
    home = make_home(tmp_path, [])
    clock = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=6))
    ok(home, "issue", "server", "api.example", "--generate-key", "--days", "7",
       "--out", tmp_path / "api", clock=clock)  # fmt: skip
    text = ok(home, "rotation", "plan")
    header, row = text.splitlines()[:2]
    assert header.split() == ["serial", "name", "profile", "renew", "at", "not", "after"]
    assert "api.example" in row and "server" in row
    (item,) = json.loads(ok(home, "rotation", "plan", "--json"))
    assert (item["name"], item["thing"], item["profile"]) == ("api.example", None, "server")
    assert item["renew_at"].endswith("Z") and item["not_after"].endswith("Z")


def test_rotate_refuses_things_and_match_together(stand: Stand) -> None:
    code, _out, err = fleetpki(stand.home, "rotation", "rotate", "rot-1", "--match", "rot-*")
    assert (code, err) == (2, "fleetpki: error: give THINGS or --match GLOB, not both\n")


def test_server_add_before_the_server_runs(tmp_path: Path) -> None:
    """'rotation server add ... && start nginx': a first reload that fails (the server is
    not running yet) is a warning, the target stays added; --no-reload skips it."""
    home = make_home(tmp_path, [])
    code, out, err = fleetpki(home, "rotation", "server", "add", "api.example", "--dir",
                              tmp_path / "api", "--reload-command", "false", "--json")  # fmt: skip
    assert code == 0, err
    assert err.startswith("fleetpki: warning: api.example: the first reload failed")
    assert err.count("\n") == 1
    assert json.loads(out)["warning"].startswith("the first reload failed")
    assert (tmp_path / "api" / "current" / "fullchain.pem").exists()
    targets = json.loads(ok(home, "rotation", "server", "list", "--json"))
    assert [t["name"] for t in targets] == ["api.example"]
    marker = tmp_path / "reloaded"
    code, _out, err = fleetpki(home, "rotation", "server", "add", "web.example", "--dir",
                               tmp_path / "web", "--reload-command", f"touch {marker}",
                               "--no-reload")  # fmt: skip
    assert (code, err) == (0, "")
    assert not marker.exists()


def test_server_rotate_prints_its_failure_once(tmp_path: Path) -> None:
    home = make_home(tmp_path, [])
    ok(home, "rotation", "server", "add", "api.example", "--dir", tmp_path / "api",
       "--reload-command", "false")  # fmt: skip
    _failed_rotation_of_a_device(home)
    code, out, err = fleetpki(home, "rotation", "server", "rotate", "api.example")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("fleetpki: error: server backend failed")
    assert "reload" in err and "unrelated-device" not in err + out


def _failed_rotation_of_a_device(home: Path) -> None:
    _failed_rotation(Stand(home, home.parent, {}), "unrelated-device")


def test_ctrl_c_on_the_daemon_stops_it_as_interrupted(stand: Stand) -> None:
    exe = Path(sys.executable).parent / "fleetpki"
    daemon = subprocess.Popen(
        [str(exe), "--home", str(stand.home), "rotation", "run", "--interval", "1h",
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_for(
            lambda: json.loads(ok(stand.home, "rotation", "status", "--json"))["daemon"], 30
        )
        daemon.send_signal(signal.SIGINT)
        _out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 130
    assert err.strip().endswith("fleetpki: interrupted")
    # the daemon's log: timestamped lines of its own, none of APScheduler's job chatter
    assert "apscheduler" not in err.lower() and 'Running job "' not in err
    assert "Traceback" not in err
