"""One worker process of the simulator: connect its shard's devices (paced), one HTTPS
call each, publish QoS 1 telemetry until told to stop, reconnect rotated devices with
their new certificates, watch the revoked ones being cut, drain the acknowledgements.

Its paho clients are driven from one selector loop (no thread per device); the SDK
devices run on the CRT's own threads.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from devices.device import Credentials, client_context, https_call
from devices.mqtt_clients import PahoDevice, SdkDevice
from devices.simulator.config import Shard

HOST = "127.0.0.1"
CONNECT_PATIENCE = 20.0  # seconds for the shard's devices to get their CONNACKs
DRAIN_PATIENCE = 10.0  # seconds for the PUBACKs still outstanding at the end


class ShardRun:
    """The devices of one shard and the loop that drives them."""

    def __init__(self, shard: Shard, progress: Any, may_stop: Any = None) -> None:
        self.shard = shard
        self.progress = progress
        self.may_stop = may_stop
        self.folder, self.ca = Path(shard.folder), Path(shard.ca_file)
        self.paho: dict[Any, PahoDevice] = {}
        self.sdk: list[SdkDevice] = []
        self.devices: list[Any] = []
        self.selector = selectors.DefaultSelector()
        self.period = 1.0 / shard.rate if shard.rate > 0 else math.inf
        self.next_publish: dict[str, float] = {}
        self.seq = 0
        self.stop_at = self.hard_stop = math.inf

    def creds(self, name: str) -> Credentials:
        return Credentials.in_folder(name, self.folder / name, self.ca)

    # -- the selector loop ------------------------------------------------------------------

    def _register(self, devices: Iterable[PahoDevice]) -> None:
        for d in devices:
            sock = d.client.socket()
            if sock is None:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if d.client.want_write() else 0)
            try:
                self.selector.modify(sock, events, d)
            except (KeyError, ValueError):
                try:
                    self.selector.register(sock, events, d)
                except (ValueError, OSError):
                    continue

    def pump(self, timeout: float, only: Iterable[PahoDevice] | None = None) -> None:
        """Serve the sockets' events; (re)register interest first, for ``only`` these
        devices (the connect phase: the others are current) or for all of them."""
        self._register(self.paho.values() if only is None else only)
        for key, mask in self.selector.select(timeout):
            d = key.data
            if mask & selectors.EVENT_READ:
                d.client.loop_read()
            if mask & selectors.EVENT_WRITE:
                d.client.loop_write()
            if d.client.socket() is None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(key.fileobj)

    def watch(self, p: PahoDevice) -> None:
        """Serve a device's new socket (a first connect, or a reconnect after rotation)."""
        sock = p.client.socket()
        if sock is not None:
            self.paho[sock] = p
            self.pump(0, [p])

    # -- phases -----------------------------------------------------------------------------

    def connect_all(self) -> None:
        """Connect, paced; each new socket is registered as it comes, and every 64
        connects all of them are refreshed (CONNACKs make paho queue SUBSCRIBEs)."""
        shard = self.shard
        for index, name in enumerate(shard.names):
            device: Any
            if name in shard.sdk:
                device = SdkDevice(self.creds(name), HOST, shard.mqtt_port, shard.topic_prefix)
                device.stats.victim = name in shard.victims
                device.start()
                self.sdk.append(device)
            else:
                device = PahoDevice(self.creds(name), HOST, shard.mqtt_port, shard.topic_prefix)
                device.stats.victim = name in shard.victims
                if device.start():
                    self.watch(device)
            self.devices.append(device)
            if index % 64 == 63:
                self.pump(0)
            if shard.connect_interval:
                time.sleep(shard.connect_interval)
        deadline = time.monotonic() + CONNECT_PATIENCE
        while time.monotonic() < deadline:
            self.pump(0.02)
            if all(d.stats.connected or d.stats.refused for d in self.devices if d not in self.sdk):
                break
        for s in self.sdk:
            s.wait_connected(max(0.0, deadline - time.monotonic()))

    def https_round(self) -> None:
        """One HTTPS call per device with its certificate (TLS 1.3, as browsers use)."""
        for d in self.devices:
            context = client_context(self.creds(d.stats.name), tls12=False)
            d.stats.https_ok, _ = https_call(context, self.shard.https_port)

    def keep_going(self) -> bool:
        now = time.time()
        if now >= self.hard_stop:
            return False
        return now < self.stop_at or (self.may_stop is not None and not self.may_stop.is_set())

    def switch_rotated(self, now: float) -> None:
        """Devices holding a new certificate reconnect with it once their telemetry in
        flight is acknowledged."""
        for d in self.devices:
            if not d.ready_to_switch(now):
                continue
            if isinstance(d, PahoDevice):
                old = d.client.socket()
                if old is not None:
                    self.paho.pop(old, None)
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(old)
                if d.switch():
                    self.watch(d)
            else:
                d.switch()

    def publish_due(self, now: float) -> None:
        for d in self.devices:
            st = d.stats
            if not st.connected or st.disconnected_at is not None:
                continue
            if self.next_publish[st.name] <= now:
                self.seq += 1
                d.publish(b'{"seq": %d, "t": %.3f}' % (self.seq, time.time()))
                self.next_publish[st.name] = now + self.period

    def check_cut_victims(self) -> None:
        """A revoked device whose session was cut tries HTTPS once: refused, and why."""
        for d in self.devices:
            st = d.stats
            if st.victim and st.disconnected_at is not None and st.https_refused_at is None:
                # the files now: a rotated victim's context would hold the replaced certificate
                fresh = client_context(self.creds(st.name), tls12=False)
                ok, reason = https_call(fresh, self.shard.https_port)
                if not ok:
                    st.https_refused_at, st.https_reason = time.time(), reason
                else:
                    st.https_refused_at = -1.0  # still accepted: reported as not cut

    def report(self) -> None:
        sent = sum(d.stats.sent for d in self.devices)
        acked = sum(d.stats.acked for d in self.devices)
        self.progress.put(("stats", self.shard.index, sent, acked))

    def steady(self) -> None:
        """Publish at the configured rate until told to stop (and the steady time is up)."""
        now = time.monotonic()
        for i, d in enumerate(self.devices):
            self.next_publish[d.stats.name] = now + (i % 50) * self.period / 50
        reported = last_misc = time.monotonic()
        while self.keep_going():
            now = time.monotonic()
            self.switch_rotated(now)
            self.publish_due(now)
            self.pump(0.01)
            if now - last_misc > 1.0:
                for p in self.paho.values():
                    p.client.loop_misc()
                last_misc = now
            self.check_cut_victims()
            if now - reported > 0.5:
                self.report()
                reported = now

    def drain(self) -> None:
        """Outstanding PUBACKs (and switches under way) finish, within a deadline."""
        deadline = time.monotonic() + DRAIN_PATIENCE
        while time.monotonic() < deadline:
            self.pump(0.02)
            self.switch_rotated(time.monotonic())
            if all(
                d.stats.sent == d.stats.acked and not d.switching
                for d in self.devices
                if d.stats.disconnected_at is None
            ):
                break

    def retry_victims(self) -> None:
        """A revoked device that tries again is refused (and the reason is kept)."""
        for d in self.devices:
            if not (d.stats.victim and d.stats.disconnected_at is not None):
                continue
            shard = self.shard
            again = PahoDevice(self.creds(d.stats.name), HOST, shard.mqtt_port, shard.topic_prefix)
            if again.start():
                again.client.loop_read()
                again.stats.refused = again.stats.refused or (
                    None if again.client.socket() else "connection-closed"
                )
                again.close()
            d.stats.reconnect_reason = again.stats.refused or "accepted"

    def run(self) -> list[dict[str, Any]]:
        while time.time() < self.shard.start_at:
            time.sleep(0.01)
        self.connect_all()
        self.https_round()
        connected = sum(d.stats.connected for d in self.devices)
        self.progress.put(("connected", self.shard.index, connected))
        self.stop_at = time.time() + self.shard.stop_at  # stop_at is the steady duration
        self.hard_stop = time.time() + self.shard.hard_stop
        self.steady()
        self.drain()
        self.retry_victims()
        for d in self.devices:
            d.close()
        self.report()
        return [d.stats.to_json() for d in self.devices]


def run_shard(shard: Shard, progress: Any, may_stop: Any = None) -> list[dict[str, Any]]:
    """One worker: connect its devices, publish until ``stop_at`` and until the parent
    says its work (rotation wave, revocation) is done, drain acks."""
    return ShardRun(shard, progress, may_stop).run()


def worker_main(shard: Shard, progress: Any, results: Any, may_stop: Any) -> None:
    """The worker process's entry point: its devices' stats, or the error, to the parent."""
    try:
        results.put((shard.index, run_shard(shard, progress, may_stop), None))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put((shard.index, [], f"{type(exc).__name__}: {exc}"))
