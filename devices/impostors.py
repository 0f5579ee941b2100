"""The impostors of the simulator: each must be refused, with the reason visible."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.device import Credentials, client_context, https_call
from devices.mqtt_clients import NodelayClient, PahoDevice


def try_mqtt(creds: Credentials, stand: Any) -> str | None:
    """None when the broker accepted the connection, else the refusal reason."""
    device = PahoDevice(creds, "127.0.0.1", stand.mqtt_port, stand.topic_prefix)
    if not device.start():
        return device.stats.refused
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (device.stats.connected or device.stats.refused):
        if device.client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
            break
    refused = device.stats.refused or (None if device.stats.connected else "connection-closed")
    device.close()
    return refused


def try_https(creds: Credentials, stand: Any) -> str | None:
    ok, reason = https_call(client_context(creds), stand.https_port)
    return None if ok else reason


def _other_topic(creds: Credentials, stand: Any, victim: str) -> str | None:
    """A valid certificate publishing on another thing's topic (MQTT 5: the PUBACK says
    'Not authorized'). None when the publish was accepted."""
    client = NodelayClient(CallbackAPIVersion.VERSION2, client_id=creds.name, protocol=mqtt.MQTTv5)
    client.tls_set_context(client_context(creds))
    acked = threading.Event()
    outcome: dict[str, str] = {}

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        outcome["reason"] = str(reason)
        acked.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", stand.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        client.publish(f"{stand.topic_prefix}/{victim}/cmd", b"reboot", qos=1)
        acked.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    reason = outcome.get("reason", "no PUBACK")
    return None if reason in ("Success", "No matching subscribers") else reason


def run_impostors(state: Any, stand: Any, folder: Path, victim: str | None) -> list[dict[str, Any]]:
    import secrets

    from pki.backends.local import LocalCA
    from pki.clock import FixedClock
    from pki.issue.delivery import OutputFolder, make_key_and_csr
    from pki.issue.issuer import Issuer
    from pki.model import IssueRequest, KeyType
    from pki.storage import Inventory

    base = folder / "impostors"
    base.mkdir(mode=0o700, exist_ok=True)
    ca = Path(stand.ca_file)
    results: list[dict[str, Any]] = []
    target = victim or "nobody"

    # 1. a certificate from a foreign CA (made here, thrown away with the run folder),
    # claiming a real device's name
    foreign_ca = LocalCA.create(
        base / "foreign-ca",
        key_type=KeyType.EC_P256,
        common_name="Impostor",
        passphrase=secrets.token_bytes(32),
        now=state.clock.now(),
    )
    scratch = Inventory.create("sqlite://")  # in memory: the foreign CA has no inventory
    try:
        key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, target)
        Issuer(foreign_ca, scratch, state.clock).issue(
            IssueRequest("device", target, csr_pem, actor="impostor"),
            OutputFolder(base / "foreign", with_key=True, force=True).deliver(key_pem),
        )
    finally:
        scratch.close()
    # 2. an expired certificate from our CA; 3. a valid one for the topic thief
    actor = state.home.actor()
    for kind, clock in (
        ("expired", FixedClock(state.clock.now() - dt.timedelta(days=3))),
        ("thief", state.clock),
    ):
        issuer = state.issuer()
        issuer.clock = clock
        name = f"{folder.name}-{kind}"
        key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, f"sim{name}")
        issuer.issue(
            IssueRequest("device", f"sim{name}", csr_pem, days=1, actor=actor),
            OutputFolder(base / kind, with_key=True, force=True).deliver(key_pem),
        )
    creds = {
        "foreign-ca": Credentials.in_folder(target, base / "foreign", ca),
        "expired": Credentials.in_folder(f"sim{folder.name}-expired", base / "expired", ca),
        "no-certificate": Credentials(f"sim{folder.name}-nocert", None, None, ca),
    }
    for kind, cred in creds.items():
        mqtt_reason = try_mqtt(cred, stand)
        https_reason = try_https(cred, stand)
        results.append(
            {
                "kind": kind,
                "mqtt": mqtt_reason or "accepted",
                "https": https_reason or "accepted",
                "refused": mqtt_reason is not None and https_reason is not None,
            }
        )
    thief = Credentials.in_folder(f"sim{folder.name}-thief", base / "thief", ca)
    refusal = _other_topic(thief, stand, target)
    results.append(
        {
            "kind": "other-things-topic",
            "mqtt": refusal or "accepted",
            "https": "n/a",
            "refused": refusal is not None,
        }
    )
    return results
