"""The fleet simulator: N devices with their own keys, certificates from CSRs through
pki's batch issuance, connected to the stand-ins over mTLS, publishing QoS 1 telemetry.

The parent issues the certificates, starts worker *processes* (TLS handshakes are CPU:
threads would share one core), revokes the victims mid-run and runs the impostors;
each worker drives its devices' paho clients from one selector loop (no thread per
device) and the SDK devices through the CRT's own threads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import multiprocessing
import os
import selectors
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCENARIOS = ("steady", "revocation", "impostors", "expiry", "rotation", "all")


@dataclass(frozen=True)
class SimConfig:
    devices: int = 100
    duration: float = 10.0
    rate: float = 1.0  # telemetry messages per device per second
    scenario: str = "steady"
    sdk_share: float = 0.1
    revoke: int = 1
    workers: int = 0  # 0: one per CPU, at most 4
    connect_rate: float = 0.0  # new connections per second across the fleet; 0: as fast as possible

    def has(self, scenario: str) -> bool:
        return self.scenario in (scenario, "all")


@dataclass(frozen=True)
class Shard:
    index: int
    names: tuple[str, ...]
    sdk: frozenset[str]
    victims: frozenset[str]
    folder: str
    ca_file: str
    mqtt_port: int
    https_port: int
    topic_prefix: str
    start_at: float  # wall clock
    stop_at: float  # seconds of steady telemetry once connected
    connect_interval: float
    rate: float
    hard_stop: float  # seconds after connecting: stop even if the parent is still busy


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------- worker


def run_shard(shard: Shard, progress: Any, may_stop: Any = None) -> list[dict[str, Any]]:
    """One worker process: connect its devices, publish until ``stop_at`` and until the
    parent says its work (rotation wave, revocation) is done, drain acks."""
    from devices.device import Credentials, PahoDevice, SdkDevice, client_context, https_call

    folder, ca = Path(shard.folder), Path(shard.ca_file)
    paho: dict[Any, PahoDevice] = {}
    sdk: list[SdkDevice] = []
    devices: list[Any] = []
    selector = selectors.DefaultSelector()
    contexts: dict[str, ssl.SSLContext] = {}

    def creds(name: str) -> Credentials:
        return Credentials.in_folder(name, folder / name, ca)

    while time.time() < shard.start_at:
        time.sleep(0.01)
    next_publish: dict[str, float] = {}
    period = 1.0 / shard.rate if shard.rate > 0 else math.inf

    def pump(timeout: float, only: Iterable[PahoDevice] | None = None) -> None:
        """Serve the sockets' events; (re)register interest first, for ``only`` these
        devices (the connect phase: the others are current) or for all of them."""
        for d in paho.values() if only is None else only:
            sock = d.client.socket()
            if sock is None:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if d.client.want_write() else 0)
            try:
                selector.modify(sock, events, d)
            except (KeyError, ValueError):
                try:
                    selector.register(sock, events, d)
                except (ValueError, OSError):
                    continue
        for key, mask in selector.select(timeout):
            d = key.data
            if mask & selectors.EVENT_READ:
                d.client.loop_read()
            if mask & selectors.EVENT_WRITE:
                d.client.loop_write()
            if d.client.socket() is None:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(key.fileobj)

    def watch(p: PahoDevice) -> None:
        """Serve a device's new socket (a first connect, or a reconnect after rotation)."""
        sock = p.client.socket()
        if sock is not None:
            paho[sock] = p
            pump(0, [p])

    # connect, paced; each new socket is registered as it comes, and every 64 connects
    # all of them are refreshed (CONNACKs make paho queue SUBSCRIBEs to write)
    last_misc = time.monotonic()
    for index, name in enumerate(shard.names):
        c = creds(name)
        if name in shard.sdk:
            s = SdkDevice(c, "127.0.0.1", shard.mqtt_port, shard.topic_prefix)
            s.stats.victim = name in shard.victims
            s.start()
            sdk.append(s)
            devices.append(s)
        else:
            p = PahoDevice(c, "127.0.0.1", shard.mqtt_port, shard.topic_prefix)
            p.stats.victim = name in shard.victims
            devices.append(p)
            if p.start():
                watch(p)
        if index % 64 == 63:
            pump(0)
        if shard.connect_interval:
            time.sleep(shard.connect_interval)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pump(0.02)
        if all(d.stats.connected or d.stats.refused for d in devices if d not in sdk):
            break
    for s in sdk:
        s.wait_connected(max(0.0, deadline - time.monotonic()))
    # one HTTPS call per device with its certificate (TLS 1.3, as browsers and SDKs use)
    for name in shard.names:
        contexts[name] = client_context(creds(name), tls12=False)
    for d in devices:
        ok, _ = https_call(contexts[d.stats.name], shard.https_port)
        d.stats.https_ok = ok
    progress.put(("connected", shard.index, sum(d.stats.connected for d in devices)))
    stop_at = time.time() + shard.stop_at  # stop_at is the steady duration
    hard_stop = time.time() + shard.hard_stop

    def keep_going() -> bool:
        now = time.time()
        if now >= hard_stop:
            return False
        return now < stop_at or (may_stop is not None and not may_stop.is_set())

    def switch_rotated(now: float) -> None:
        """Devices holding a new certificate reconnect with it once their telemetry in
        flight is acknowledged."""
        for d in devices:
            if not d.ready_to_switch(now):
                continue
            if isinstance(d, PahoDevice):
                old = d.client.socket()
                if old is not None:
                    paho.pop(old, None)
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(old)
                if d.switch():
                    watch(d)
            else:
                d.switch()

    # steady publishing
    now = time.monotonic()
    for i, d in enumerate(devices):
        next_publish[d.stats.name] = now + (i % 50) * period / 50
    seq = 0
    reported = time.monotonic()
    while keep_going():
        now = time.monotonic()
        switch_rotated(now)
        for d in devices:
            st = d.stats
            if not st.connected or st.disconnected_at is not None:
                continue
            if next_publish[st.name] <= now:
                seq += 1
                d.publish(b'{"seq": %d, "t": %.3f}' % (seq, time.time()))
                next_publish[st.name] = now + period
        pump(0.01)
        if now - last_misc > 1.0:
            for p in paho.values():
                p.client.loop_misc()
            last_misc = now
        for d in devices:
            st = d.stats
            if st.victim and st.disconnected_at is not None and st.https_refused_at is None:
                # the files now: a rotated victim's context would hold the replaced certificate
                fresh = client_context(creds(st.name), tls12=False)
                ok, reason = https_call(fresh, shard.https_port)
                if not ok:
                    st.https_refused_at, st.https_reason = time.time(), reason
                else:
                    st.https_refused_at = -1.0  # still accepted: reported as not cut
        if now - reported > 0.5:
            progress.put(
                (
                    "stats",
                    shard.index,
                    sum(d.stats.sent for d in devices),
                    sum(d.stats.acked for d in devices),
                )
            )
            reported = now
    # drain outstanding PUBACKs (and finish switches under way)
    drain = time.monotonic() + 10
    while time.monotonic() < drain:
        pump(0.02)
        switch_rotated(time.monotonic())
        if all(
            d.stats.sent == d.stats.acked and not d.switching
            for d in devices
            if d.stats.disconnected_at is None
        ):
            break
    # a revoked device that tries again is refused
    for d in devices:
        if d.stats.victim and d.stats.disconnected_at is not None:
            from devices.device import PahoDevice as Retry

            again = Retry(creds(d.stats.name), "127.0.0.1", shard.mqtt_port, shard.topic_prefix)
            if again.start():
                again.client.loop_read()
                again.stats.refused = again.stats.refused or (
                    None if again.client.socket() else "connection-closed"
                )
                again.close()
            d.stats.reconnect_reason = again.stats.refused or "accepted"
    for d in devices:
        d.close()
    progress.put(
        (
            "stats",
            shard.index,
            sum(d.stats.sent for d in devices),
            sum(d.stats.acked for d in devices),
        )
    )
    return [d.stats.to_json() for d in devices]


def _worker(shard: Shard, progress: Any, results: Any, may_stop: Any) -> None:
    try:
        results.put((shard.index, run_shard(shard, progress, may_stop), None))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put((shard.index, [], f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class Summary:
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.data["checks"]["passed"])


def simulate(
    config: SimConfig,
    state: Any,
    stand: Any,
    on_progress: Callable[[str, dict[str, Any]], None] = lambda _e, _d: None,
) -> Summary:
    """Run the fleet against running stand-ins (``stand``: a ``DevState``)."""
    import secrets

    from devices import standins
    from devices.impostors import run_impostors
    from pki.clock import FixedClock
    from pki.files import atomic_write
    from pki.issue.delivery import OutputFolder, make_key_and_csr
    from pki.model import IssueRequest, KeyType

    t_start = time.monotonic()
    home = state.home
    run_id = secrets.token_hex(3)
    folder = standins.dev_dir(home) / "fleet" / run_id
    folder.mkdir(parents=True, mode=0o700)
    names = [f"sim{run_id}-{i:04d}" for i in range(1, config.devices + 1)]
    actor = home.actor()
    # each device makes its own key and CSR; the CA only sees the CSRs
    requests = []
    for name in names:
        key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, name)
        (folder / name).mkdir(mode=0o700)
        atomic_write(folder / name / "key.pem", key_pem, 0o600)
        requests.append(IssueRequest("device", name, csr_pem, days=7, actor=actor))

    def deliver(issued: Any) -> Any:
        return OutputFolder(folder / issued.record.common_name, force=True).deliver(None)(issued)

    issuer = state.issuer()
    t_issue = time.monotonic()
    report = issuer.issue_batch(requests, deliver, actor=actor)
    issue_seconds = time.monotonic() - t_issue
    serials = {i.record.common_name: i.record.serial_hex for i in report.issued}
    expired: list[str] = []
    if config.has("expiry"):
        # devices whose certificates ran out: issued 3 days ago for 1 day
        past = state.issuer()
        past.clock = FixedClock(state.clock.now() - dt.timedelta(days=3))
        for name in names[: max(1, config.devices // 100)]:
            key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, name)
            atomic_write(folder / name / "key.pem", key_pem, 0o600)
            past.issue(
                IssueRequest("device", name, csr_pem, days=1, actor=actor),
                OutputFolder(folder / name, force=True).deliver(None),
            )
            expired.append(name)
    valid = [n for n in names if n not in expired]
    victims = valid[-config.revoke :] if config.has("revocation") and config.revoke > 0 else []
    sdk_count = round(len(valid) * config.sdk_share)
    sdk = set(valid[:: max(1, len(valid) // sdk_count)][:sdk_count]) if sdk_count else set()

    workers = config.workers or min(4, max(1, os.cpu_count() or 1))
    workers = max(1, min(workers, len(names)))
    connect_interval = workers / config.connect_rate if config.connect_rate else 0.0
    start_at = time.time() + 1.5  # spawned workers import paho/awscrt meanwhile
    stop_at = config.duration  # counted by each worker from when its devices are connected
    ctx = multiprocessing.get_context("spawn")
    progress, results = ctx.Queue(), ctx.Queue()
    shards = [
        Shard(
            index=i,
            names=tuple(names[i::workers]),
            sdk=frozenset(sdk),
            victims=frozenset(victims),
            folder=str(folder),
            ca_file=str(stand.ca_file),
            mqtt_port=stand.mqtt_port,
            https_port=stand.https_port,
            topic_prefix=stand.topic_prefix,
            start_at=start_at,
            stop_at=stop_at,
            connect_interval=connect_interval,
            rate=config.rate,
            hard_stop=config.duration + 60 + config.devices * 0.05,
        )
        for i in range(workers)
    ]
    access_before = sum(1 for _ in standins.read_access_log(stand))
    may_stop = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(s, progress, results, may_stop), daemon=True)
        for s in shards
    ]
    for p in procs:
        p.start()
    connected: dict[int, int] = {}
    counters: dict[int, tuple[int, int]] = {}
    revoked_at: dict[str, float] = {}
    impostors: list[dict[str, Any]] = []
    collected: dict[int, list[dict[str, Any]]] = {}
    errors: list[str] = []
    revoke_at = math.inf  # set once every worker has connected its devices
    impostors_done = not config.has("impostors")
    # the devices that are online (an expired device also has the valid certificate it
    # was first issued in the inventory, but it cannot connect to answer)
    wave = RotationWave(home.path, valid) if config.has("rotation") else None
    cut_seen_by = math.inf  # after a revocation, time for the workers to see the cut
    from pki.model import RevocationReason
    from pki.revocation.revoke import revoke_and_publish

    # a worker that hangs must not hang the run: connect, steady phase, drains, margins
    hard_deadline = time.monotonic() + config.duration + 120 + config.devices * 0.1

    def drain_progress(timeout: float) -> None:
        try:
            event = progress.get(timeout=timeout)
        except Exception:
            return
        if event[0] == "connected":
            connected[event[1]] = event[2]
        else:
            counters[event[1]] = (event[2], event[3])
        on_progress(
            "progress",
            {
                "connected": sum(connected.values()),
                "sent": sum(c[0] for c in counters.values()),
                "acked": sum(c[1] for c in counters.values()),
                "devices": len(names),
            },
        )

    while len(collected) < workers:
        drain_progress(0.1)
        while not results.empty():
            index, stats, error = results.get()
            collected[index] = stats
            if error:
                errors.append(error)
        if len(connected) == workers and revoke_at == math.inf:
            revoke_at = time.time() + config.duration * 0.4
            if wave is not None:
                wave.start()
        if wave is not None and wave.running:
            wave.poll()
            revoke_at = max(revoke_at, time.time() + 0.5)  # after the wave
        if not impostors_done and len(connected) == workers:
            impostors = run_impostors(state, stand, folder, valid[0] if valid else None)
            impostors_done = True
        wave_busy = wave is not None and (wave.running or not wave.started)
        # with a wave, only once it has finished (the impostors above can take longer than
        # the time revoke_at leaves: the victims' new certificates must be in use first)
        if victims and not revoked_at and not wave_busy and time.time() >= revoke_at:
            started = time.time()
            cut_seen_by = started + 3.0
            revoked_at.update(dict.fromkeys(victims, started))
            # what 'fleetpki revoke' does: inventory, one CRL for all, hooks (IoT status,
            # broker CRL reload, live sessions cut)
            revoke_and_publish(
                home,
                state.inventory(),
                state.ca(),
                state.clock,
                [_current_serial(state, name, serials[name]) for name in victims],
                RevocationReason.KEY_COMPROMISE,
                actor,
            )
            on_progress("revoked", {"things": victims})
        waiting_on_wave = wave is not None and (wave.running or not wave.started)
        waiting_on_revocation = bool(victims) and (not revoked_at or time.time() < cut_seen_by)
        if not may_stop.is_set() and not waiting_on_wave and not waiting_on_revocation:
            may_stop.set()
        if time.monotonic() > hard_deadline:
            errors.append("the simulation did not finish in time; workers stopped")
            for p in procs:
                p.terminate()
            break
        if all(not p.is_alive() for p in procs) and results.empty() and len(collected) < workers:
            errors.append("a worker process died")
            break
    for p in procs:
        p.join(5)
    if wave is not None and wave.running:
        wave.stop()
    stats = [s for index in sorted(collected) for s in collected[index]]
    rotation = None
    if wave is not None:
        rotated = [s for s in stats if s.get("rotated_serial") and s["name"] not in victims]
        rotation = wave.summary(stats, _old_certificates_refused(folder, stand, rotated[:5]))
    access = _settled_access_log(stand, access_before)
    wall = time.monotonic() - t_start
    return Summary(
        _summarise(
            config,
            stats,
            expired,
            victims,
            revoked_at,
            impostors,
            access,
            errors,
            wall,
            issue_seconds,
            workers,
            len(report.issued),
            rotation,
        )
    )


def _current_serial(state: Any, thing: str, issued: str) -> int:
    """The thing's newest active certificate (a rotation may have replaced ``issued``)."""
    from pki.model import Status

    active = state.inventory().find(now=state.clock.now(), status=Status.ACTIVE, thing=thing)
    return active[-1].serial if active else int(issued, 16)


def _old_certificates_refused(
    folder: Path, stand: Any, rotated: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each sampled device's replaced certificate (kept in ``previous/``) tried again on
    MQTT and HTTPS: both must refuse it (revoked as superseded)."""
    from devices.device import Credentials
    from devices.impostors import try_https, try_mqtt

    tried = []
    for s in rotated:
        old = Credentials.in_folder(s["name"], folder / s["name"] / "previous", stand.ca_file)
        tried.append(
            {"thing": s["name"], "mqtt": try_mqtt(old, stand), "https": try_https(old, stand)}
        )
    return tried


def _settled_access_log(stand: Any, skip: int, quiet: float = 0.3) -> list[dict[str, Any]]:
    """The access log's entries after the first ``skip``, once it has stopped growing: a
    client sees a refused handshake a moment before the endpoint writes its line."""
    from devices import standins

    deadline = time.monotonic() + 5.0
    entries = list(standins.read_access_log(stand))
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = list(standins.read_access_log(stand))
        if len(again) == len(entries):
            break
        entries = again
    return entries[skip:]


class RotationWave:
    """``fleetpki rotation rotate THING... --grace 0`` run beside the fleet, the way an
    operator would start a wave (the simulator does not import ``rotation``)."""

    def __init__(self, home: Path, things: list[str]) -> None:
        self.home = home
        self.things = things
        self.started = False
        self.proc: Any = None
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self._out: Any = None
        self._err: Any = None
        self.stderr = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.result is None and self.error is None

    def start(self) -> None:
        import subprocess
        import sys
        import tempfile

        self.started = True
        # files, not pipes: a full pipe would block the command
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (outlives this call; closed by poll)
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "--home", str(self.home), "rotation", "rotate",
             *self.things, "--grace", "0", "--timeout", "5m", "--json"],
            stdout=self._out,
            stderr=self._err,
        )  # fmt: skip

    def poll(self) -> None:
        import json

        if self.proc is None or self.proc.poll() is None:
            return
        self._out.seek(0)
        self._err.seek(0)
        text = self._out.read().decode()
        stderr = self._err.read().decode()
        self._out.close()
        self._err.close()
        self.stderr = stderr
        try:
            self.result = json.loads(text)
        except json.JSONDecodeError:
            lines = stderr.strip().splitlines()
            self.error = lines[-1] if lines else f"exit {self.proc.returncode}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.poll()
        if self.result is None and self.error is None:
            self.error = "the rotation wave did not finish"

    def summary(self, stats: list[dict[str, Any]], old: list[dict[str, Any]]) -> dict[str, Any]:
        asked = [s["rotation_requested_at"] for s in stats if s.get("rotation_requested_at")]
        done = [s["rotation_confirmed_at"] for s in stats if s.get("rotation_confirmed_at")]
        each = sorted(
            s["rotation_confirmed_at"] - s["rotation_requested_at"]
            for s in stats
            if s.get("rotation_confirmed_at") and s.get("rotation_requested_at")
        )
        return {
            "devices_asked": len(asked),
            "devices_confirmed": len(done),
            "device_errors": dict(
                Counter(s["rotation_error"] for s in stats if s.get("rotation_error"))
            ),
            "wave_seconds": round(max(done) - min(asked), 3) if asked and done else None,
            "per_device_seconds": {
                "p50": round(statistics.median(each), 3) if each else None,
                "p99": round(percentile(each, 0.99) or 0.0, 3) if each else None,
            },
            "service": self.result,
            "service_error": self.error,
            "service_log": self.stderr.strip().splitlines()[-5:] if self.error else [],
            "old_certificates": old,
        }


def _summarise(
    config: SimConfig,
    stats: list[dict[str, Any]],
    expired: list[str],
    victims: list[str],
    revoked_at: dict[str, float],
    impostors: list[dict[str, Any]],
    access: list[dict[str, Any]],
    errors: list[str],
    wall: float,
    issue_seconds: float,
    workers: int,
    issued: int,
    rotation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    valid = [s for s in stats if s["name"] not in expired and s["name"] not in victims]
    latencies = [s["connect_latency"] for s in stats if s["connect_latency"] is not None]
    refused = Counter(s["refused"] for s in stats if s["refused"])
    cuts = []
    for s in stats:
        if s["name"] in victims:
            at = revoked_at.get(s["name"])
            cut = s["disconnected_at"]
            https_at = s["https_refused_at"]
            cuts.append(
                {
                    "thing": s["name"],
                    "mqtt_cut_seconds": round(cut - at, 3) if cut and at else None,
                    "https_refused_seconds": round(https_at - at, 3)
                    if https_at and https_at > 0 and at
                    else None,
                    "https_reason": s["https_reason"],
                    "reconnect": s["reconnect_reason"],
                }
            )
    sent = sum(s["sent"] for s in valid)
    acked = sum(s["acked"] for s in valid)
    access_refused = Counter(e.get("reason") for e in access if e.get("result") == "refused")
    checks = {
        "all_valid_connected": all(s["connected"] for s in valid),
        "no_lost_messages": sent == acked,
        "valid_https_accepted": all(s["https_ok"] for s in valid),
        "revoked_cut": all(
            c["mqtt_cut_seconds"] is not None and c["reconnect"] == "revoked" for c in cuts
        ),
        "revoked_refused_by_https": all(c["https_reason"] == "revoked" for c in cuts),
        "expired_refused": all(s["refused"] == "expired" for s in stats if s["name"] in expired),
        "impostors_refused": all(i["refused"] for i in impostors),
        "no_worker_errors": not errors,
    }
    if rotation is not None:
        service = rotation["service"] or {}
        states = service.get("states", {})
        rotating = [s for s in stats if s["name"] not in expired]
        checks["rotation_completed"] = (
            rotation["service_error"] is None
            and states.get("completed", 0) == len(rotating)
            and service.get("rotations") == len(rotating)
            and all(s.get("rotation_confirmed_at") for s in rotating)
        )
        checks["superseded_refused"] = bool(rotation["old_certificates"]) and all(
            o["mqtt"] == "revoked" and o["https"] == "revoked" for o in rotation["old_certificates"]
        )
    checks["passed"] = all(checks.values())
    connected = sum(1 for s in stats if s["connected"])
    return {
        "scenario": config.scenario,
        "config": asdict(config),
        "devices": len(stats),
        "issued": issued,
        "workers": workers,
        "clients": dict(Counter(s["client"] for s in stats)),
        "connected": connected,
        "refused": dict(refused),
        "messages": {"sent": sent, "acked": acked, "lost": sent - acked},
        "connect_latency_ms": {
            "p50": _ms(statistics.median(latencies) if latencies else None),
            "p99": _ms(percentile(latencies, 0.99)),
        },
        "connect_phase": connect_phase(stats),
        "revoked": cuts,
        "impostors": impostors,
        "access_log": {
            "accepted": sum(1 for e in access if e.get("result") == "accepted"),
            "refused": dict(access_refused),
        },
        "timing": {
            "wall_seconds": round(wall, 2),
            "issue_seconds": round(issue_seconds, 3),
        },
        "rotation": rotation,
        "errors": errors,
        "checks": checks,
    }


def connect_phase(stats: list[dict[str, Any]]) -> dict[str, float | None]:
    """How fast the fleet got on: first connect attempt to last CONNACK, and the rate."""
    started = [s["started_at"] for s in stats if s.get("started_at") is not None]
    done = [s["connected_at"] for s in stats if s.get("connected_at") is not None]
    if not started or not done:
        return {"seconds": None, "connects_per_s": None}
    seconds = max(done) - min(started)
    return {
        "seconds": round(seconds, 3),
        "connects_per_s": round(len(done) / seconds, 1) if seconds > 0 else None,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)
