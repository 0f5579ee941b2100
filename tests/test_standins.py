"""The local stand-ins with real clients: mosquitto_pub/mosquitto_sub against Mosquitto
with TLS client-certificate auth, curl against the mTLS HTTPS endpoint."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.device_fixtures import (
    Stand,
    curl,
    dev_up,
    fleetpki,
    make_home,
    mosquitto_pub,
    mqtt_args,
    ok,
    running_stand,
    wait_for,
)

DEVICES = ("dev-1", "dev-2", "victim-1", "revoked-1")


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    root = tmp_path_factory.mktemp("standins")
    home = make_home(root, DEVICES, expired=("old-1",))
    with running_stand(home, root) as s:
        ok(home, "revoke", s.serial("revoked-1"), "--reason", "key-compromise")
        foreign = trustme.CA()
        leaf = foreign.issue_cert("dev-1", common_name="dev-1")
        (root / "foreign").mkdir()
        leaf.private_key_pem.write_to_path(str(root / "foreign" / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(root / "foreign" / "fullchain.pem"))
        yield s


def _pid_running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_ports_file_and_processes(stand: Stand) -> None:
    ports = json.loads((stand.home / "dev" / "ports.json").read_text())
    assert ports == stand.ports
    assert all(_pid_running(int(p)) for p in ports["pids"].values())
    assert ports["aws_endpoint_url"].startswith("http://127.0.0.1:")
    conf = (Path(ports["run_dir"]) / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf
    assert "use_identity_as_username true" in conf
    assert "crlfile" in conf
    # no acl_file (it never checks SUBSCRIBE): dynsec authorizes every thing for its topics
    assert "acl_file" not in conf
    dynsec = json.loads((Path(ports["run_dir"]) / "dynsec.json").read_text())
    roles = {r["rolename"]: r for r in dynsec["roles"]}
    assert {a["topic"] for a in roles["thing:dev-1"]["acls"]} == {"things/dev-1/#"}
    assert dynsec["defaultACLAccess"]["subscribe"] is False


def test_mosquitto_pub_publishes_to_its_own_topic(stand: Stand) -> None:
    device = stand.device("dev-1")
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            *mqtt_args(stand, device),
            "-t",
            "things/dev-1/#",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: "u'dev-1'" in stand.mosquitto_log.read_text())
        result = mosquitto_pub(stand, device, "things/dev-1/telemetry", "t=21")
        assert result.returncode == 0, result.stderr
        assert "Not authorized" not in result.stderr
        out, _ = sub.communicate(timeout=25)
    finally:
        sub.kill()
        sub.wait()
    assert out.strip() == "things/dev-1/telemetry t=21"


def test_mosquitto_pub_is_refused_on_another_things_topic(stand: Stand) -> None:
    result = mosquitto_pub(stand, stand.device("dev-2"), "things/dev-1/cmd", "evil")
    assert "Publish 1 failed: Not authorized." in result.stderr


def _subscribe(stand: Stand, device: Path, topic: str, protocol: int) -> list[int]:
    """SUBSCRIBE ``topic`` as ``device`` with paho; the SUBACK's reason codes."""
    import ssl
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    granted: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.tls_set(
        ca_certs=str(stand.ca_file),
        certfile=str(device / "fullchain.pem"),
        keyfile=str(device / "key.pem"),
        cert_reqs=ssl.CERT_REQUIRED,
    )

    def subscribed(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        granted.extend(int(c.value) for c in codes)
        done.set()

    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.on_subscribe = subscribed
    client.connect("127.0.0.1", stand.mqtt_port)
    deadline = time.monotonic() + 20  # the loop runs here: no thread to race with
    while not done.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    assert done.is_set(), "no SUBACK"
    return granted


@pytest.mark.parametrize(
    ("protocol", "refused"), [(4, 0x80), (5, 0x87)], ids=["mqtt311", "mqtt5"]
)  # fmt: skip
def test_a_subscription_to_another_things_topic_is_refused_visibly(
    stand: Stand, protocol: int, refused: int
) -> None:
    """As IoT Core under the least-privilege policy: SUBACK failure (0x80) on MQTT 3.1.1,
    Not authorized (0x87) on MQTT 5; its own topics are granted."""
    device = stand.device("dev-2")
    assert _subscribe(stand, device, "things/dev-1/#", protocol) == [refused]
    assert _subscribe(stand, device, "#", protocol) == [refused]
    assert _subscribe(stand, device, "things/+/cmd", protocol) == [refused]
    assert _subscribe(stand, device, "things/dev-2/#", protocol) == [1]


def test_a_device_issued_while_the_stand_ins_run_may_use_its_own_topics(stand: Stand) -> None:
    ok(stand.home, "issue", "device", "late-1", "--generate-key", "--out", stand.root / "late-1")
    own = mosquitto_pub(stand, stand.device("late-1"), "things/late-1/telemetry", "t=1")
    assert own.returncode == 0, own.stderr
    other = mosquitto_pub(stand, stand.device("late-1"), "things/dev-1/telemetry", "t=1")
    assert "Publish 1 failed: Not authorized." in other.stderr


def test_curl_with_a_device_certificate_gets_its_identity(stand: Stand) -> None:
    result = curl(stand, stand.device("dev-2"))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["identity"] == "dev-2"
    assert body["serial"] == stand.serial("dev-2")
    entries = stand.access_entries()
    assert any(e["result"] == "accepted" and e["identity"] == "dev-2" for e in entries)


IMPOSTORS = {
    # name: (device folder or None, access-log reason)
    "foreign-ca": ("foreign", "unknown-ca"),
    "expired": ("old-1", "expired"),
    "revoked": ("revoked-1", "revoked"),
    "no-certificate": (None, "no-certificate"),
}


@pytest.mark.parametrize("kind", sorted(IMPOSTORS))
def test_impostor_is_refused_by_the_broker(stand: Stand, kind: str) -> None:
    folder, _ = IMPOSTORS[kind]
    device = stand.device(folder) if folder else None
    result = mosquitto_pub(stand, device, "things/dev-1/telemetry")
    assert result.returncode != 0
    assert "Error" in result.stderr


@pytest.mark.parametrize("kind", sorted(IMPOSTORS))
def test_impostor_is_refused_by_https_with_the_reason_logged(stand: Stand, kind: str) -> None:
    folder, reason = IMPOSTORS[kind]
    before = len(stand.access_entries())
    result = curl(stand, stand.device(folder) if folder else None)
    assert result.returncode != 0
    assert result.stdout == ""
    assert wait_for(lambda: len(stand.access_entries()) > before)
    entry = stand.access_entries()[before]
    assert (entry["result"], entry["reason"]) == ("refused", reason)


def test_revocation_cuts_the_live_session_and_refuses_reconnects(stand: Stand) -> None:
    device = stand.device("victim-1")
    sub = subprocess.Popen(
        ["mosquitto_sub", *mqtt_args(stand, device), "-V", "mqttv5", "-t", "things/victim-1/cmd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: "u'victim-1'" in stand.mosquitto_log.read_text())
        assert sub.poll() is None
        ok(stand.home, "revoke", stand.serial("victim-1"), "--reason", "key-compromise")
        assert wait_for(lambda: sub.poll() is not None), "the session was not cut"
    finally:
        sub.kill()
        sub.wait()
    assert "disconnected by administrative action" in stand.mosquitto_log.read_text()
    again = mosquitto_pub(stand, device, "things/victim-1/telemetry")
    assert again.returncode != 0
    before = len(stand.access_entries())
    assert curl(stand, device).returncode != 0
    assert stand.access_entries()[before]["reason"] == "revoked"
    # the other devices are not affected
    assert mosquitto_pub(stand, stand.device("dev-1"), "things/dev-1/x").returncode == 0


def test_dev_up_refuses_a_second_start_and_down_is_idempotent(stand: Stand) -> None:
    code, _, err = fleetpki(stand.home, "dev", "up")
    assert code == 2
    assert "already running" in err


def test_dev_up_without_a_ca_is_an_operator_error(tmp_path: Path) -> None:
    code, out, err = fleetpki(tmp_path / "empty", "dev", "up")
    assert (code, out) == (2, "")
    assert "run 'fleetpki ca init' first" in err
    assert not (tmp_path / "empty").exists()


def test_dev_down_stops_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # no moto this time
    home = make_home(tmp_path, ())
    s = dev_up(home, tmp_path)
    try:
        assert s.ports["pids"]["moto"] is None
        assert s.ports["aws_endpoint_url"] == "http://127.0.0.1:9"
        pids = [p for p in s.ports["pids"].values() if p]
        assert fleetpki(home, "dev", "status")[0] == 0
        _, _, err = fleetpki(home, "dev", "down")
        assert "stopped https stand-in" in err
        assert not any(_pid_running(p) for p in pids)
        assert not (home / "dev" / "ports.json").exists()
        assert not Path(s.ports["run_dir"]).exists()
        assert fleetpki(home, "dev", "down")[2].strip() == "no stand-ins were running"
        assert fleetpki(home, "dev", "status")[0] == 2
    finally:
        fleetpki(home, "dev", "down")  # idempotent: nothing left running if an assert failed


def test_the_stand_ins_get_none_of_the_secrets_of_dev_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They outlive 'dev up': any process of the same user could read their environment."""
    home = make_home(tmp_path, ())
    passphrase = (home / "ca-passphrase").read_text().strip()
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", passphrase)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws-secret")
    with running_stand(home, tmp_path) as s:  # stopped again whatever the asserts say
        pids = [int(p) for p in s.ports["pids"].values()]
        assert len(pids) == 3  # mosquitto, the HTTPS stand-in and moto_server
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"PATH=" in environ
            assert passphrase.encode() not in environ
            assert b"canary-aws-secret" not in environ


def test_dynsec_init_takes_the_admin_password_on_stdin_not_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess as sp

    from devices import standins
    from devices.standins import broker

    seen: list[list[str]] = []
    real = sp.run

    def spy(args: list[str], **kwargs: Any) -> Any:
        seen.append(list(args))
        return real(args, **kwargs)

    monkeypatch.setattr(broker.subprocess, "run", spy)
    path = tmp_path / "dynsec.json"
    broker.dynsec_init(path, "pw-not-on-argv-123")
    assert seen and all("pw-not-on-argv-123" not in arg for args in seen for arg in args)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "pw-not-on-argv-123" not in text  # stored as a salted hash
    assert json.loads(text)["clients"][0]["username"] == standins.ADMIN_USER
