"""The parent of a simulation: make the fleet (each device its own key and CSR, the
certificates through pki's batch issuance, some already expired), start the worker
processes, and while they run, start the rotation wave, run the impostors and revoke the
victims mid-run; then add up what the workers report."""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devices import standins
from devices.simulator.config import Shard, SimConfig
from devices.simulator.summary import (
    DeviceReport,
    FleetSummary,
    OldCertificate,
    RunFacts,
    summarise,
)
from devices.simulator.wave import RotationWave
from devices.simulator.worker import worker_main
from pki.files import atomic_write, ensure_dir
from pki.issue.delivery import FolderPerThing, OutputFolder, make_key_and_csr
from pki.model import IssueRequest, KeyType

if TYPE_CHECKING:
    from devices.standins import DevState
    from pki.app import App

Progress = Callable[[str, dict[str, Any]], None]
CUT_SEEN_AFTER = 3.0  # seconds for the workers to see a revoked device cut


@dataclass(frozen=True)
class Fleet:
    """The devices made for one run, and which of them play which part."""

    folder: Path
    names: tuple[str, ...]
    serials: dict[str, str]  # thing -> serial (hex) first issued
    expired: tuple[str, ...]
    victims: tuple[str, ...]
    sdk: frozenset[str]
    issued: int
    issue_seconds: float

    @property
    def valid(self) -> list[str]:
        return [n for n in self.names if n not in self.expired]


def issue_fleet(config: SimConfig, app: App) -> Fleet:
    """Keys and CSRs per device, certificates through the batch path (the CA sees only
    the CSRs); with the expiry scenario, some devices whose certificates ran out."""
    run_id = secrets.token_hex(3)
    folder = standins.dev_dir(app.home) / "fleet" / run_id
    ensure_dir(folder, 0o700)
    names = tuple(f"sim{run_id}-{i:04d}" for i in range(1, config.devices + 1))
    actor = app.home.actor()
    requests = []
    for name in names:
        key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, name)
        (folder / name).mkdir(mode=0o700)
        atomic_write(folder / name / "key.pem", key_pem, 0o600)
        requests.append(IssueRequest("device", name, csr_pem, days=7, actor=actor))

    started = time.monotonic()
    report = app.issuer().issue_batch(requests, FolderPerThing(folder, True), actor=actor)
    issue_seconds = time.monotonic() - started
    expired = _expire(app, folder, names[: max(1, config.devices // 100)]) if config.has(
        "expiry"
    ) else ()  # fmt: skip
    valid = [n for n in names if n not in expired]
    victims = valid[-config.revoke :] if config.has("revocation") and config.revoke > 0 else []
    sdk_count = round(len(valid) * config.sdk_share)
    sdk = set(valid[:: max(1, len(valid) // sdk_count)][:sdk_count]) if sdk_count else set()
    return Fleet(
        folder=folder,
        names=names,
        serials={i.record.common_name: i.record.serial_hex for i in report.issued},
        expired=expired,
        victims=tuple(victims),
        sdk=frozenset(sdk),
        issued=len(report.issued),
        issue_seconds=issue_seconds,
    )


def _expire(app: App, folder: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """New keys and certificates for ``names`` issued 3 days ago for 1 day: expired."""
    from pki.clock import FixedClock

    past = app.issuer()
    past.clock = FixedClock(app.clock.now() - dt.timedelta(days=3))
    actor = app.home.actor()
    for name in names:
        key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, name)
        atomic_write(folder / name / "key.pem", key_pem, 0o600)
        past.issue(
            IssueRequest("device", name, csr_pem, days=1, actor=actor),
            OutputFolder(folder / name, force=True).deliver(None),
        )
    return names


def shards_for(config: SimConfig, fleet: Fleet, stand: DevState) -> list[Shard]:
    workers = config.workers or min(4, max(1, os.cpu_count() or 1))
    workers = max(1, min(workers, len(fleet.names)))
    start_at = time.time() + 1.5  # spawned workers import paho/awscrt meanwhile
    return [
        Shard(
            index=i,
            names=fleet.names[i::workers],
            sdk=fleet.sdk,
            victims=frozenset(fleet.victims),
            folder=str(fleet.folder),
            ca_file=str(stand.ca_file),
            mqtt_port=stand.mqtt_port,
            https_port=stand.https_port,
            topic_prefix=stand.topic_prefix,
            start_at=start_at,
            stop_at=config.duration,  # counted by each worker from when it is connected
            connect_interval=workers / config.connect_rate if config.connect_rate else 0.0,
            rate=config.rate,
            hard_stop=config.duration + 60 + config.devices * 0.05,
        )
        for i in range(workers)
    ]


class Conductor:
    """The parent's loop while the workers run: progress, the wave, the impostors, the
    revocation, and when the workers may stop; a hung or dead worker ends the run."""

    def __init__(
        self, config: SimConfig, app: App, stand: DevState, fleet: Fleet, on_progress: Progress
    ) -> None:
        self.config, self.app, self.stand, self.fleet = config, app, stand, fleet
        self.on_progress = on_progress
        self.shards = shards_for(config, fleet, stand)
        ctx = multiprocessing.get_context("spawn")
        self.progress, self.results, self.may_stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(s, self.progress, self.results, self.may_stop),
                daemon=True,
            )
            for s in self.shards
        ]
        self.connected: dict[int, int] = {}
        self.counters: dict[int, tuple[int, int]] = {}
        self.collected: dict[int, list[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.revoked_at: dict[str, float] = {}
        self.impostors: list[dict[str, Any]] = []
        self.impostors_done = not config.has("impostors")
        self.revoke_at = math.inf  # set once every worker has connected its devices
        self.cut_seen_by = math.inf
        # the devices that are online (an expired device also has the valid certificate it
        # was first issued in the inventory, but it cannot connect to answer)
        self.wave = (
            RotationWave(app.home.path, fleet.valid, config.wave_in_flight)
            if config.has("rotation")
            else None
        )
        # a worker that hangs must not hang the run: connect, steady phase, drains, margins
        self.deadline = time.monotonic() + config.duration + 120 + config.devices * 0.1

    @property
    def workers(self) -> int:
        return len(self.shards)

    def _drain_progress(self, timeout: float) -> None:
        try:
            event = self.progress.get(timeout=timeout)
        except Exception:  # queue.Empty, or a queue torn down
            return
        if event[0] == "connected":
            self.connected[event[1]] = event[2]
        else:
            self.counters[event[1]] = (event[2], event[3])
        self.on_progress(
            "progress",
            {
                "connected": sum(self.connected.values()),
                "sent": sum(c[0] for c in self.counters.values()),
                "acked": sum(c[1] for c in self.counters.values()),
                "devices": len(self.fleet.names),
            },
        )

    def _collect(self) -> None:
        while not self.results.empty():
            index, stats, error = self.results.get()
            self.collected[index] = stats
            if error:
                self.errors.append(error)

    def _all_connected(self) -> bool:
        return len(self.connected) == self.workers

    def _advance(self) -> None:
        """The wave once everyone is connected, the impostors, then the revocation."""
        wave = self.wave
        if self._all_connected() and self.revoke_at == math.inf:
            self.revoke_at = time.time() + self.config.duration * 0.4
            if wave is not None:
                wave.start()
        if wave is not None and wave.running:
            wave.poll()
            self.revoke_at = max(self.revoke_at, time.time() + 0.5)  # after the wave
        if not self.impostors_done and self._all_connected():
            from devices.impostors import run_impostors

            valid = self.fleet.valid
            self.impostors = run_impostors(self.app, self.stand, self.fleet.folder,
                                           valid[0] if valid else None)  # fmt: skip
            self.impostors_done = True
        # with a wave, only once it has finished (the impostors above can take longer than
        # the time revoke_at leaves: the victims' new certificates must be in use first)
        wave_busy = wave is not None and wave.busy
        due = time.time() >= self.revoke_at
        if self.fleet.victims and not self.revoked_at and not wave_busy and due:
            self._revoke_victims()
        waiting_on_revocation = bool(self.fleet.victims) and (
            not self.revoked_at or time.time() < self.cut_seen_by
        )
        if not self.may_stop.is_set() and not wave_busy and not waiting_on_revocation:
            self.may_stop.set()

    def _revoke_victims(self) -> None:
        """What 'fleetpki revoke' does: inventory, one CRL for all, hooks (IoT status,
        broker CRL reload, live sessions cut)."""
        from pki.model import RevocationReason
        from pki.revocation.revoke import revoke_and_publish

        started = time.time()
        self.cut_seen_by = started + CUT_SEEN_AFTER
        victims = self.fleet.victims
        self.revoked_at.update(dict.fromkeys(victims, started))
        app = self.app
        serials = [_current_serial(app, name, self.fleet.serials[name]) for name in victims]
        revoke_and_publish(app.home, app.inventory(), app.ca(), app.clock, serials,
                           RevocationReason.KEY_COMPROMISE, app.home.actor())  # fmt: skip
        self.on_progress("revoked", {"things": list(victims)})

    def _should_end(self) -> bool:
        if time.monotonic() > self.deadline:
            self.errors.append("the simulation did not finish in time; workers stopped")
            for p in self.procs:
                p.terminate()
            return True
        dead = all(not p.is_alive() for p in self.procs) and self.results.empty()
        if dead and len(self.collected) < self.workers:
            self.errors.append("a worker process died")
            return True
        return False

    def run(self) -> list[dict[str, Any]]:
        """Every worker's device stats, in shard order."""
        for p in self.procs:
            p.start()
        while len(self.collected) < self.workers:
            self._drain_progress(0.1)
            self._collect()
            self._advance()
            if self._should_end():
                break
        for p in self.procs:
            p.join(5)
        if self.wave is not None and self.wave.running:
            self.wave.stop()
        return [s for index in sorted(self.collected) for s in self.collected[index]]


def simulate(
    config: SimConfig,
    app: App,
    stand: DevState,
    on_progress: Progress = lambda _e, _d: None,
) -> FleetSummary:
    """Run the fleet against running stand-ins (``stand``)."""
    started = time.monotonic()
    fleet = issue_fleet(config, app)
    access_before = sum(1 for _ in standins.read_access_log(stand))
    conductor = Conductor(config, app, stand, fleet, on_progress)
    stats = conductor.run()
    rotation = None
    if conductor.wave is not None:
        devices = [DeviceReport.from_json(s) for s in stats]
        rotated = [d for d in devices if d.rotated_serial and d.name not in fleet.victims]
        old = _old_certificates_refused(fleet.folder, stand, rotated[:5])
        rotation = conductor.wave.report(devices, old)
    facts = RunFacts(
        expired=fleet.expired,
        victims=fleet.victims,
        revoked_at=conductor.revoked_at,
        impostors=conductor.impostors,
        access=_settled_access_log(stand, access_before),
        errors=conductor.errors,
        wall_seconds=time.monotonic() - started,
        issue_seconds=fleet.issue_seconds,
        workers=conductor.workers,
        issued=fleet.issued,
    )
    return summarise(config, stats, facts, rotation)


def _current_serial(app: App, thing: str, issued: str) -> int:
    """The thing's newest active certificate (a rotation may have replaced ``issued``)."""
    from pki.model import Status

    active = app.inventory().find(now=app.clock.now(), status=Status.ACTIVE, thing=thing)
    return active[-1].serial if active else int(issued, 16)


def _old_certificates_refused(
    folder: Path, stand: DevState, rotated: list[DeviceReport]
) -> list[OldCertificate]:
    """Each sampled device's replaced certificate (kept in ``previous/``) tried again on
    MQTT and HTTPS: both must refuse it (revoked as superseded)."""
    from devices.device import Credentials
    from devices.impostors import try_https, try_mqtt

    tried = []
    for d in rotated:
        old = Credentials.in_folder(d.name, folder / d.name / "previous", stand.ca_file)
        tried.append(OldCertificate(d.name, try_mqtt(old, stand), try_https(old, stand)))
    return tried


def _settled_access_log(stand: DevState, skip: int, quiet: float = 0.3) -> list[dict[str, Any]]:
    """The access log's entries after the first ``skip``, once it has stopped growing: a
    client sees a refused handshake a moment before the endpoint writes its line."""
    deadline = time.monotonic() + 5.0
    entries = list(standins.read_access_log(stand))
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = list(standins.read_access_log(stand))
        if len(again) == len(entries):
            break
        entries = again
    return entries[skip:]
