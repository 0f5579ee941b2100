"""The fleet simulator end to end: real Mosquitto, real HTTPS stand-in, paho and the AWS
IoT Device SDK, worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pki.stats import percentile
from tests.device_fixtures import fleetpki, ok


def test_one_percentile_for_every_summary() -> None:
    """Inclusive quantiles (the rotation wave and the simulator used to disagree for
    n = 50, 150, 1050: one took the nearest rank, the other interpolated)."""
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.99) == 4.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(100, 0, -1)], 0.99) == pytest.approx(99.01)
    assert percentile([float(i) for i in range(1, 51)], 0.99) == pytest.approx(49.51)
    assert percentile([float(i) for i in range(1, 151)], 0.99) == pytest.approx(148.51)
    assert percentile([float(i) for i in range(1, 1051)], 0.99) == pytest.approx(1039.51)
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            percentile([1.0, 2.0], share)


def test_simulated_fleet_of_250_with_rotation_revocation_impostors_and_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # no moto needed here
    home = tmp_path / "home"
    ok(home, "ca", "init")
    code, out, err = fleetpki(
        home,
        "fleet",
        "simulate",
        "--devices",
        "250",
        "--duration",
        "3",
        "--scenario",
        "all",
        "--revoke",
        "2",
        "--json",
    )
    data = json.loads(out)
    assert code == 0, (err, [k for k, v in data["checks"].items() if not v], data.get("rotation"))
    assert data["devices"] == 250
    assert data["clients"]["awsiotsdk"] == 25
    expired = 2  # 1% of the fleet has an expired certificate
    assert data["connected"] == 250 - expired
    assert data["refused"] == {"expired": expired}
    assert data["messages"]["sent"] > 0
    assert data["messages"]["lost"] == 0
    assert data["messages"]["acked"] == data["messages"]["sent"]
    assert data["connect_phase"]["connects_per_s"] > 0
    assert [c["reconnect"] for c in data["revoked"]] == ["revoked", "revoked"]
    assert all(c["mqtt_cut_seconds"] is not None for c in data["revoked"])
    assert [c["https_reason"] for c in data["revoked"]] == ["revoked", "revoked"]
    assert {i["kind"]: (i["mqtt"], i["https"]) for i in data["impostors"]} == {
        "foreign-ca": ("unknown-ca", "unknown-ca"),
        "expired": ("expired", "expired"),
        "no-certificate": ("no-certificate", "no-certificate"),
        "other-things-topic": ("Not authorized", "n/a"),
    }
    # the rotation wave: every connected device got a new certificate over MQTT, confirmed
    # it, and its old one is refused by the broker and the HTTPS endpoint
    rotation = data["rotation"]
    assert rotation["service_error"] is None
    assert rotation["service"]["states"]["completed"] == 250 - expired
    assert rotation["devices_confirmed"] == 250 - expired
    assert rotation["wave_seconds"] > 0
    sampled = rotation["old_certificates"]
    assert len(sampled) == 5
    assert {(o["mqtt"], o["https"]) for o in sampled} == {("revoked", "revoked")}
    assert data["access_log"]["refused"] == {
        "unknown-ca": 1,
        "no-certificate": 1,
        "expired": 1 + expired,
        "revoked": 2 + len(sampled),  # the victims, then the superseded certificates
    }
    # the stand-ins started for the run are stopped again
    assert not (home / "dev" / "state.json").exists()
    # every private key the run wrote (devices, impostors, the foreign CA) is 0600
    keys = [p for p in home.rglob("*") if p.is_file() and "KEY-----" in p.read_text("latin-1")]
    assert any("impostors" in p.parts for p in keys)
    assert {oct(p.stat().st_mode & 0o777) for p in keys} == {"0o600"}


def test_connect_phase_rate() -> None:
    from devices.simulator.summary import DeviceReport, connect_phase

    stats = [
        DeviceReport("a", started_at=100.0, connected_at=100.5),
        DeviceReport("b", started_at=100.2, connected_at=102.0),
        DeviceReport("c", started_at=100.4, connected_at=None),
    ]
    assert connect_phase(stats) == {"seconds": 2.0, "connects_per_s": 1.0}
    assert connect_phase([]) == {"seconds": None, "connects_per_s": None}
