"""Rotation waves through faults, end to end: a real daemon process (``fleetpki rotation
run``), the stand-ins' real Mosquitto, and a fleet of live paho devices that make their own
keys, switch to their new certificate and reconnect when the broker goes away. Each test
breaks something in the middle of a wave, then checks what must hold whatever happened:

- every device ends with exactly one active certificate, the one it holds, and the broker
  accepts it;
- each old certificate got at most one rotation and one replacement;
- no old certificate was revoked before its replacement was confirmed;
- no rotation is left in a non-terminal state.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from devices.device import Credentials
from devices.mqtt_clients import PahoDevice
from pki.app import App
from pki.clock import SystemClock
from pki.model import Status
from rotation import store
from tests.device_fixtures import (
    Stand,
    fleetpki,
    make_home,
    mosquitto_pub,
    ok,
    running_stand,
    wait_for,
)

FLEET = 24
NAMES = tuple(f"fw-{n:02d}" for n in range(FLEET))


class Fleet:
    """Live paho devices on one thread: each answers rotation requests, switches to its
    new certificate, and reconnects (with whatever certificate it holds) after a drop."""

    def __init__(self, stand: Stand, names: tuple[str, ...]) -> None:
        self.stand = stand
        self.devices = {
            name: PahoDevice(Credentials.in_folder(name, stand.device(name), stand.ca_file),
                             "127.0.0.1", stand.mqtt_port, stand.topic_prefix)
            for name in names
        }  # fmt: skip
        self.offline: set[str] = set()  # names kept off the broker for now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Fleet:
        for device in self.devices.values():
            device.start()
        self._thread.start()
        assert wait_for(lambda: all(d.stats.connected for d in self.devices.values()), 30)
        return self

    def _run(self) -> None:
        tried: dict[str, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            for name, device in self.devices.items():
                if name in self.offline:
                    continue
                client = device.client
                try:
                    if client.socket() is None:
                        if now - tried.get(name, 0.0) < 0.5:
                            continue
                        tried[name] = now  # the broker is away: tried again in a while
                        client.connect(device.host, device.port, keepalive=60)
                    client.loop(timeout=0.001)
                except (OSError, ValueError):
                    continue
                if device.ready_to_switch(now):
                    device.switch()
            time.sleep(0.01)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                device.close()


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    home = make_home(tmp_path, NAMES)
    with running_stand(home, tmp_path) as s:
        yield s


@contextlib.contextmanager
def daemon(stand: Stand, log: Path, *more: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_daemon(stand, log, *more)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_daemon(stand: Stand, log: Path, *more: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "--home", str(stand.home), "rotation", "run",
             "--interval", "1h", "--grace", "0", "--sweep-interval", "1s",
             "--resend-after", "2s", "--resend-max", "4s", "--metrics-port", "0", *more],
            stdout=out, stderr=out,
        )  # fmt: skip
    assert wait_for(lambda: "rotation daemon running" in log.read_text(), 30), log.read_text()
    return proc


def counts(stand: Stand) -> dict[str, int]:
    return dict(json.loads(ok(stand.home, "rotation", "status", "--json"))["states"])


def ask_wave(stand: Stand, *more: str) -> None:
    out = ok(stand.home, "rotation", "rotate", "--match", "fw-*", "--grace", "0",
             "--no-wait", "--json", *more)  # fmt: skip
    assert len(json.loads(out)["requested"]) == FLEET


def settled(stand: Stand, timeout: float = 120) -> dict[str, int]:
    def done() -> bool:
        now = counts(stand)
        return now["completed"] + now["failed"] == FLEET and sum(
            now[s] for s in ("requested", "issued", "confirmed")
        ) == 0

    assert wait_for(done, timeout), counts(stand)
    return counts(stand)


def check_invariants(stand: Stand, fleet: Fleet, failed: tuple[str, ...] = ()) -> None:
    """``failed``: devices that never answered; their rotation failed, their old
    certificate is the one active."""
    app = App(stand.home, SystemClock())
    inventory = app.inventory()
    with store.transaction(inventory.engine) as conn:
        rows = store.select(conn, things=list(NAMES))
    # nothing left in a non-terminal state
    assert [r.thing for r in rows if r.state in store.OPEN] == []
    # each old certificate got at most one rotation, and one replacement
    per_old: dict[str, list[store.Rotation]] = {}
    for row in rows:
        per_old.setdefault(row.old_serial, []).append(row)
    assert {s: len(r) for s, r in per_old.items() if len(r) > 1} == {}
    now = app.now()
    for name, device in fleet.devices.items():
        assert device.creds.cert is not None
        held = x509.load_pem_x509_certificates(device.creds.cert.read_bytes())[0]
        active = inventory.find(now=now, thing=name, status=Status.ACTIVE)
        # exactly one active certificate, the one the device holds
        assert [r.serial for r in active] == [held.serial_number], name
        # the broker accepts it
        sent = mosquitto_pub(stand, stand.device(name), f"{stand.topic_prefix}/{name}/t")
        assert sent.returncode == 0, (name, sent.stderr)
    # no old certificate revoked before its replacement was confirmed
    for row in rows:
        old = inventory.get(int(row.old_serial, 16))
        if old.status is Status.REVOKED:
            assert row.confirmed_at is not None and old.revoked_at is not None, row
            assert old.revoked_at >= row.confirmed_at, row
            if row.completed_at is not None:  # completed once revoked, never before
                assert row.completed_at >= old.revoked_at, row
    with store.transaction(inventory.engine) as conn:
        by_thing = {r.thing: r for r in store.select(conn, things=list(NAMES))}
    expected = {name: "failed" if name in failed else "completed" for name in NAMES}
    assert {t: r.state.value for t, r in by_thing.items()} == expected


def _confirmed_at_least(stand: Stand, n: int) -> bool:
    now = counts(stand)
    return now["confirmed"] + now["completed"] >= n


LATE = NAMES[:6]  # away when the wave asks: still in the middle of it at the fault


def _hold_back(fleet: Fleet) -> None:
    for name in LATE:
        fleet.offline.add(name)
        fleet.devices[name].close()


def _mid_wave(stand: Stand) -> None:
    """The devices that are online have confirmed; the late ones are still asked."""
    assert wait_for(lambda: _confirmed_at_least(stand, FLEET - len(LATE)), 60), counts(stand)
    assert counts(stand)["requested"] == len(LATE)


def test_a_daemon_killed_mid_wave_and_restarted_finishes_it(stand: Stand, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with Fleet(stand, NAMES) as fleet:
        _hold_back(fleet)
        first = start_daemon(stand, log)
        try:
            ask_wave(stand)
            _mid_wave(stand)
        finally:
            first.kill()  # SIGKILL: no clean-up, the lease left behind
            first.wait()
        fleet.offline.clear()  # the late devices come back while no daemon runs
        with daemon(stand, log):  # takes the dead holder's lease over at once
            final = settled(stand)
        assert final["completed"] == FLEET, (final, log.read_text()[-3000:])
        check_invariants(stand, fleet)


def test_a_broker_restart_mid_wave_loses_no_confirmation(stand: Stand, tmp_path: Path) -> None:
    """What the broker holds for the wave (the retained requests, the service's session
    and what devices send it meanwhile) survives a clean restart: no re-send comes to the
    rescue here (--resend-after 10m, longer than the test)."""
    log = tmp_path / "daemon.log"
    with Fleet(stand, NAMES) as fleet:
        _hold_back(fleet)
        ask_wave(stand, "--resend-after", "10m")
        with daemon(stand, log, "--resend-after", "10m", "--resend-max", "10m"):
            _mid_wave(stand)
            ok(stand.home, "dev", "restart-broker")
            fleet.offline.clear()  # they come back to the restarted broker
            final = settled(stand)
        assert final["completed"] == FLEET, (final, log.read_text()[-3000:])
        check_invariants(stand, fleet)


@pytest.mark.slow
def test_devices_offline_through_their_request_rotate_when_back(
    stand: Stand, tmp_path: Path
) -> None:
    """A tenth of the fleet is away when the wave asks, and comes back later."""
    log = tmp_path / "daemon.log"
    away = set(NAMES[:3])
    with Fleet(stand, NAMES) as fleet:
        for name in away:
            fleet.offline.add(name)
            fleet.devices[name].close()
        with daemon(stand, log):
            ask_wave(stand)
            assert wait_for(lambda: _confirmed_at_least(stand, FLEET - len(away)), 60)
            time.sleep(3)  # past a re-send or two
            fleet.offline.clear()  # back: they connect again and find the request
            final = settled(stand)
        assert final["completed"] == FLEET, (final, log.read_text()[-3000:])
        check_invariants(stand, fleet)


@pytest.mark.slow
def test_dev_down_and_up_mid_wave(stand: Stand, tmp_path: Path) -> None:
    """The stand-ins come back on other ports: the daemon follows them; the devices are
    pointed at the new port as an operator would re-point a fleet."""
    from tests.device_fixtures import dev_up

    log = tmp_path / "daemon.log"
    with Fleet(stand, NAMES) as fleet, daemon(stand, log):
        ask_wave(stand)
        assert wait_for(lambda: _confirmed_at_least(stand, 4), 60), counts(stand)
        ok(stand.home, "dev", "down")
        moved = dev_up(stand.home, stand.root)
        for device in fleet.devices.values():
            device.port = moved.mqtt_port
        final = settled(moved)
        assert final["completed"] == FLEET, (final, log.read_text()[-3000:])
        fleet.stand = moved
        check_invariants(moved, fleet)


@pytest.mark.slow
def test_never_answering_devices_fail_and_keep_their_certificate(
    stand: Stand, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    with Fleet(stand, NAMES) as fleet:
        _hold_back(fleet)  # and never back
        with daemon(stand, log):
            ok(stand.home, "rotation", "rotate", "--match", "fw-*", "--grace", "0",
               "--answer-timeout", "6s", "--resend-after", "2s", "--no-wait")  # fmt: skip
            final = settled(stand)
        assert (final["completed"], final["failed"]) == (FLEET - len(LATE), len(LATE)), final
        for name in LATE:
            status = json.loads(ok(stand.home, "rotation", "status", name, "--json"))
            assert status["rotations"][0]["attempts"] >= 2  # asked again before giving up
            assert "did not send its CSR" in status["last_error"]
        check_invariants(stand, fleet, failed=LATE)


@pytest.mark.slow
def test_a_daemon_paused_past_its_lease_stops_when_resumed(stand: Stand, tmp_path: Path) -> None:
    """Two daemons, one SIGSTOPped past its lease and resumed: it writes nothing, leaves,
    exits 1; the other finishes the wave; the broker saw at most a takeover or two of the
    service's session, not a ping-pong."""
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with Fleet(stand, NAMES) as fleet:
        _hold_back(fleet)
        first = start_daemon(stand, first_log, "--lease", "3s")
        try:
            ask_wave(stand)
            _mid_wave(stand)
            first.send_signal(signal.SIGSTOP)
            time.sleep(4.5)  # past its lease
            with daemon(stand, second_log) as second:
                assert wait_for(lambda: "daemon running" in second_log.read_text())
                first.send_signal(signal.SIGCONT)
                assert first.wait(60) == 1
                assert "another rotation daemon took over the lease" in first_log.read_text()
                fleet.offline.clear()
                final = settled(stand)
                assert second.poll() is None
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert final["completed"] == FLEET, (final, second_log.read_text()[-3000:])
        check_invariants(stand, fleet)
    takeovers = stand.mosquitto_log.read_text().count(
        "fleetpki-rotation already connected, closing old connection"
    )
    assert takeovers <= 2, takeovers


def _max_overlap(rows: list[store.Rotation]) -> int:
    """The most rotations asked and not yet confirmed at the same moment."""
    edges = []
    for r in rows:
        assert r.confirmed_at is not None
        edges += [(r.requested_at, 1), (r.confirmed_at, -1)]
    most = now = 0
    for _at, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def test_a_paced_wave_with_canaries_never_has_more_in_flight(stand: Stand) -> None:
    with Fleet(stand, NAMES) as fleet:
        out = ok(stand.home, "rotation", "rotate", "--match", "fw-*", "--grace", "0",
                 "--canary", "2", "--max-in-flight", "5", "--rate", "20", "--abort-above",
                 "10", "--timeout", "2m", "--json")  # fmt: skip
        summary = json.loads(out)
        assert summary["states"]["completed"] == FLEET and summary["aborted"] is None
        check_invariants(stand, fleet)
    with store.transaction(App(stand.home, SystemClock()).inventory().engine) as conn:
        rows = store.select(conn, things=list(NAMES))
    assert _max_overlap(rows) <= 5
    first = sorted(rows, key=lambda r: r.requested_at)
    canaries, rest = first[:2], first[2:]
    assert max(r.confirmed_at for r in canaries if r.confirmed_at) <= min(
        r.requested_at for r in rest
    )


def test_a_wave_whose_canary_fails_asks_nobody_else(stand: Stand) -> None:
    """No device online: the canaries time out, the wave stops there (exit 1)."""
    code, out, err = fleetpki(
        stand.home, "rotation", "rotate", "--match", "fw-*", "--canary", "2",
        "--answer-timeout", "2s", "--timeout", "1m", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 1, err
    assert summary["aborted"] == "2 of 2 canaries failed"
    assert summary["not_asked"] == FLEET - 2 and summary["rotations"] == 2


def test_a_paced_wave_stops_when_rotation_is_paused(stand: Stand) -> None:
    """Found in review: a paced wave that met a pause dropped the rest silently and could
    exit 0. It stops, says why and how many were never asked, exit 1."""
    with Fleet(stand, NAMES):
        wave = subprocess.Popen(
            [sys.executable, "-m", "pki", "--home", str(stand.home), "rotation", "rotate",
             "--match", "fw-*", "--grace", "0", "--rate", "1", "--timeout", "2m", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert wait_for(lambda: _confirmed_at_least(stand, 2), 60), counts(stand)
            ok(stand.home, "rotation", "pause", "--reason", "test")
            out, err = wave.communicate(timeout=120)
        finally:
            if wave.poll() is None:
                wave.kill()
                wave.communicate()
    summary = json.loads(out)
    assert wave.returncode == 1, err
    assert summary["aborted"] == "rotation was paused ('fleetpki rotation resume')"
    asked = summary["rotations"]
    assert 2 <= asked < FLEET and summary["not_asked"] + summary["skipped"] + asked == FLEET
    assert summary["states"]["completed"] == asked  # what was asked still finished
