"""Rotation as the front ends run it, on an ``App``: the service wired to the broker (its
MQTT channel, the IoT Core registration, the stand-ins' CRL reload), a wave asked now
(``rotation rotate``), one pass for cron (``rotation run --once``) and a server's
certificate replaced now. Commands only parse, call these and print."""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pki.errors import NotFound, OperatorError
from pki.stats import percentile
from rotation import store
from rotation.pacing import Pacing
from rotation.service import RotationService, RotationSettings
from rotation.store import Rotation

if TYPE_CHECKING:
    from pki.app import App
    from pki.model import IssuedCertificate
    from rotation.channel import ServiceChannel

log = logging.getLogger("fleetpki.rotation")


def open_service(
    app: App, settings: RotationSettings, *, listen: bool = True
) -> tuple[RotationService, ServiceChannel]:
    """The service and its MQTT channel to the stand-ins' broker (not started). Without
    ``listen`` the channel only sends requests: a running daemon works the answers."""
    from devices import standins
    from devices.standins import probe, served
    from rotation.channel import ServiceChannel, stand_in_access

    home = app.home
    access = stand_in_access(home)
    service: RotationService | None = None

    def on_message(thing: str, kind: str, payload: bytes, ack: Any) -> None:
        assert service is not None
        service.handle(thing, kind, payload, ack)

    def on_delivered(kind: str) -> None:
        assert service is not None
        service.metrics.sent.labels(kind).inc()
        if kind == "request":
            service.metrics.requested.inc()

    def on_connection(connected: bool) -> None:
        if service is not None:
            service.metrics.broker_connected.set(1 if connected else 0)

    channel = ServiceChannel(
        access,
        on_message,
        listen=listen,
        on_bad_message=lambda topic, why: log.warning("ignored a message on %s: %s", topic, why),
        source=lambda: stand_in_access(home),
        on_delivered=on_delivered,
        on_connection=on_connection,
    )

    def reload_crl() -> None:
        running = standins.running(home)
        if running is not None:
            standins.reload_crl(home, running)

    service = RotationService(
        home=home,
        inventory=app.inventory(),
        issuer=app.issuer(),
        sender=channel,
        clock=app.clock,
        settings=settings,
        register=iot_register(app),
        on_crl=reload_crl,
        served_crls=lambda now: served.check_and_repair(
            home, now, probe=lambda: probe.current(app)
        ),
        proof_of_use=proof_of_use(app),
    )
    return service, channel


def proof_of_use(app: App) -> Callable[[set[str]], set[str]]:
    """Which new certificates a relying party saw in use: the HTTPS stand-in's access log
    and, when ``iot lifecycle-rule`` set it up, IoT Core's ``connected`` events."""
    from devices.iot_events import IotProofOfUse
    from devices.standins.served import UsedSerials

    sources = (UsedSerials(app.home), IotProofOfUse(app.inventory().engine, log.warning))

    def used(serials: set[str]) -> set[str]:
        found: set[str] = set()
        for source in sources:
            try:
                found |= source(serials)
            except Exception as exc:  # proof of use is extra: the sweep goes on without it
                log.warning("proof of use: %s: %s", type(exc).__name__, exc)
        return found

    return used


def iot_register(app: App) -> Callable[[IssuedCertificate], None]:
    """Register a rotated certificate with IoT Core when fleetpki provisioned the thing
    there (the thing, policy and attachments as ``iot provision`` makes them)."""
    from devices import store as iot_store

    engine = app.inventory().engine
    cores: list[Any] = []

    def register(issued: IssuedCertificate) -> None:
        thing = issued.record.thing or issued.record.common_name
        if not iot_store.certificates_of(engine, thing):
            return
        if not cores:
            from devices.iot import IotCore

            cores.append(IotCore(engine, app.clock))
        cores[0].provision(issued)

    return register


@dataclass(frozen=True)
class Wave:
    """A wave asked now: what was requested, who works the answers, how it ended."""

    requested: tuple[Rotation, ...]
    daemon: str | None  # the running daemon that works the answers, if any
    rows: tuple[Rotation, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    unsent: int = 0  # with --no-wait: requests the channel could not send
    aborted: str | None = None  # a paced wave stopped asking: why
    not_asked: int = 0  # a paced wave's devices never asked (aborted, or out of time)
    skipped: int = 0  # offered but not asked: a rotation in progress, or failed recently

    @property
    def ok(self) -> bool:
        unfinished = sum(self.counts.get(s, 0) for s in ("requested", "issued"))
        return (
            not self.counts.get("failed")
            and not unfinished
            and not self.unsent
            and self.aborted is None
            and not self.not_asked
        )

    def summary(self) -> dict[str, Any]:
        took = sorted(
            (r.confirmed_at - r.requested_at).total_seconds()
            for r in self.rows
            if r.confirmed_at is not None
        )
        return {
            "rotations": len(self.rows),
            "states": self.counts,
            "seconds": round(self.seconds, 3),
            "request_to_confirm_s": {
                "p50": round(statistics.median(took), 3) if took else None,
                "p99": round(percentile(took, 0.99) or 0.0, 3) if took else None,
                "max": round(took[-1], 3) if took else None,
            },
            "failed": [
                {"thing": r.thing, "error": r.error}
                for r in self.rows
                if r.state is store.State.FAILED
            ],
            "aborted": self.aborted,
            "not_asked": self.not_asked,
            "skipped": self.skipped,
        }


def wave_items(app: App, things: Sequence[str], match: str | None) -> list[Any]:
    """The active device certificates of THINGS (or of the things matching ``match``), as
    plan items due now; every named thing must have one."""
    from pki.errors import InvalidInput
    from rotation.planner import active_devices

    if not things and match is None:
        raise InvalidInput("name the things to rotate, or give --match GLOB")
    if things and match is not None:
        raise InvalidInput("give THINGS or --match GLOB, not both")
    items = active_devices(app.inventory(), app.now(), things=things, match=match)
    missing = sorted(set(things) - {i.thing for i in items})
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise NotFound(f"no active device certificate for {', '.join(missing[:5])}{more}")
    if not items:
        raise NotFound(f"no active device certificate of a thing matching {match!r}")
    held = paused(app)
    if held is not None:
        raise OperatorError(f"{store.describe_pause(held)}; 'fleetpki rotation resume' first")
    return items


def wave_preview(
    app: App, things: Sequence[str], match: str | None, settings: RotationSettings,
    *, force: bool,
) -> dict[str, Any]:
    """``rotate --dry-run``: who would be asked and who skipped (and why); asks nobody."""
    return _ask_preview(app, wave_items(app, things, match), settings, force=force)


def _ask_preview(
    app: App, items: Sequence[Any], settings: RotationSettings, *, force: bool
) -> dict[str, Any]:
    from pki.model import serial_hex
    from rotation.planner import newest_per_device

    newest = newest_per_device(items)
    since = app.now() - settings.retry_after
    with store.transaction(app.inventory().engine) as conn:
        busy = store.open_things(conn)
        failed = set() if force else store.failed_since(conn, since)
    would, skipped = [], []
    for thing, item in sorted(newest.items()):
        why = ("a rotation in progress" if thing in busy else
               "failed recently (--force asks it anyway)" if thing in failed else None)  # fmt: skip
        if why is None:
            would.append({"thing": thing, "serial": serial_hex(item.serial)})
        else:
            skipped.append({"thing": thing, "why": why})
    return {"would_ask": would, "skipped": skipped}


def pass_preview(app: App, settings: RotationSettings, horizon: dt.timedelta) -> dict[str, Any]:
    """``rotation run --dry-run``: what one pass would do now — the CRLs it would re-sign,
    the rotations its sweep would complete or end, the devices it would ask and the
    server certificates it would replace; changes nothing and needs no broker."""
    from pki.ca.status import ca_status
    from pki.model import serial_hex
    from rotation import servers
    from rotation.planner import plan_inventory

    now = app.now()
    crls = ca_status(app.home, app.inventory(), now, hooks=False).crls
    with store.transaction(app.inventory().engine) as conn:
        held = store.paused(conn)
        confirmed = store.select(conn, [store.State.CONFIRMED])
        stale = store.select(conn, [store.State.REQUESTED, store.State.ISSUED],
                             deadline_before=now)  # fmt: skip
        busy = store.open_things(conn)
    items = plan_inventory(app.inventory(), now, horizon=horizon)
    due_servers = {serial_hex(i.serial) for i in items if i.profile == "server"}
    replace = [t.name for t in servers.targets(app.inventory().engine)
               if t.serial in due_servers and t.name not in busy]  # fmt: skip
    asks = _ask_preview(app, items, settings, force=False)
    if held is not None:
        asks, replace = {"would_ask": [], "skipped": asks["would_ask"] + asks["skipped"]}, []
    return {
        "paused": held,
        "crls_to_sign": [h.ca for h in crls if h.needs_signing],
        "would_complete": sorted(r.thing for r in confirmed if r.grace_over(now)),
        "would_end": sorted(r.thing for r in stale),
        **asks,
        "would_replace_servers": sorted(replace),
    }  # fmt: skip


def rotate_now(
    app: App,
    things: Sequence[str],
    match: str | None,
    settings: RotationSettings,
    *,
    wait: bool,
    timeout: float,
    force: bool,
    pacing: Pacing | None = None,
    on_asked: Callable[[int, str | None], None] = lambda _n, _daemon: None,
    on_progress: Callable[[dict[str, int]], None] = lambda _counts: None,
) -> Wave:
    """Ask THINGS (or the things matching ``match``) to rotate now, whatever their renewal
    time. With a daemon running it works the answers and this only asks; otherwise this
    holds the daemon's lease meanwhile and, with ``wait``, works the answers until every
    rotation is confirmed (with grace 0: completed) or failed, or ``timeout`` s. With
    ``pacing`` (which needs ``wait``) the devices are asked a few at a time."""
    from pki.errors import InvalidInput
    from rotation.daemon import LEASE, Daemon, wait_for
    from rotation.pacing import WavePacer

    pacing = pacing or Pacing()
    if pacing.paced and not wait:
        raise InvalidInput(
            "a paced wave (--max-in-flight, --rate, --canary, --abort-above) needs --wait: "
            "this command asks the devices as the wave goes"
        )
    items = wave_items(app, things, match)
    engine = app.inventory().engine
    daemon = store.lease_holder(engine, LEASE, app.now())
    service, channel = open_service(app, settings, listen=daemon is None)
    holder = None
    if daemon is None:  # keep a daemon from starting meanwhile
        holder = Daemon(service, list, interval=max(60.0, timeout))
        holder.acquire()
    started = time.monotonic()
    pacer = WavePacer(items, pacing)
    try:
        channel.start()
        requested = service.ask_next(pacer, [], 0.0, force=force)
        if not requested:
            raise OperatorError(
                "nothing requested: every thing already has a rotation in progress or "
                "failed recently (--force retries those)"
            )
        on_asked(len(requested), daemon)
        if not wait:
            return Wave(tuple(requested), daemon, unsent=channel.close())

        def feed(rows: list[Rotation]) -> list[str]:
            before = len(pacer.remaining)
            more = service.ask_next(pacer, rows, time.monotonic() - started, force=force)
            if len(pacer.remaining) < before and not more and paused(app) is not None:
                pacer.aborted = "rotation was paused ('fleetpki rotation resume')"
            requested.extend(more)
            return [r.id for r in more]

        ids = [r.id for r in requested]
        counts = wait_for(
            service, ids, timeout=timeout, until_completed=settings.grace == dt.timedelta(0),
            work=daemon is None, on_progress=on_progress,
            feed=feed if pacing.paced else None, fed=lambda: pacer.exhausted,
        )  # fmt: skip
        rows = service.open_rotations([r.id for r in requested])
    finally:
        channel.close()
        if holder is not None:
            store.release_lease(engine, LEASE, holder.holder)
    return Wave(tuple(requested), daemon, tuple(rows), counts, time.monotonic() - started,
                aborted=pacer.aborted, not_asked=len(pacer.remaining),
                skipped=pacer.skipped)  # fmt: skip


@dataclass(frozen=True)
class Pass:
    """What one ``rotation run --once`` pass did."""

    requested: int
    servers: tuple[Rotation, ...]
    counts: dict[str, int]

    @property
    def failed_servers(self) -> list[Rotation]:
        return [r for r in self.servers if r.state is store.State.FAILED]

    @property
    def unfinished(self) -> int:
        return self.counts.get("requested", 0) + self.counts.get("issued", 0)

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed") and not self.unfinished and not self.failed_servers

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "servers": len(self.servers),
            "states": self.counts,
            "failed_servers": [{"name": r.thing, "error": r.error} for r in self.failed_servers],
        }


def run_once(
    service: RotationService, daemon: Any, plan: Callable[[], list[Any]], timeout: float
) -> Pass:
    """One pass for cron: re-sign the CRLs if due, revoke what is past its grace period,
    ask what is due, replace due server certificates, then wait (at most ``timeout``) only
    for the rotations this pass started."""
    from rotation.daemon import wait_for

    daemon._guarded(daemon.refresh_crl, "crl")()  # a failure of one never skips the others
    daemon._guarded(daemon.sweep, "sweep")()
    items = plan()
    requested = service.request(items)
    servers = service.rotate_servers(items)
    counts = wait_for(
        service,
        [r.id for r in requested],
        timeout=timeout,
        until_completed=service.settings.grace == dt.timedelta(0),
        holder=daemon,
    )
    return Pass(len(requested), tuple(servers), counts)


def rotate_server_now(app: App, name: str, settings: RotationSettings) -> Rotation:
    """Replace NAME's certificate now (after a key compromise, say), reload the server,
    and with grace 0 revoke the old certificate at once; the rotation as it ended."""
    from pki import logs
    from rotation import servers

    servers.target(app.inventory().engine, name)  # NotFound names the problem
    service = RotationService(
        home=app.home, inventory=app.inventory(), issuer=app.issuer(), sender=None,
        clock=app.clock, settings=settings,
    )  # fmt: skip
    with logs.quiet("fleetpki.rotation"):  # the caller reports the one outcome itself
        service.sweep()  # finish what is due first (a rotation whose grace period is over)
        (done,) = service.rotate_servers([], names=[name])
        if settings.grace == dt.timedelta(0) and done.state is store.State.CONFIRMED:
            service.sweep()
    (row,) = service.open_rotations([done.id])
    return row


def status(app: App) -> dict[str, Any]:
    """``rotation status``: rotations by state, the latest failures, the daemon holding the
    lease, and warnings an operator must see: no daemon, a CRL stale or near its
    nextUpdate in the home or as the stand-ins serve it."""
    from devices import standins
    from devices.standins import served
    from pki.ca.status import ca_status
    from rotation.daemon import LEASE

    engine = app.inventory().engine
    now = app.now()
    with store.transaction(engine) as conn:
        counts = store.counts(conn)
        failed = store.select(conn, [store.State.FAILED], limit=10)
        held = store.paused(conn)
    daemon = store.lease_holder(engine, LEASE, now)
    warnings = [] if daemon else [
        "no rotation daemon is running: nothing is renewed and no CRL re-signed until one "
        "runs ('fleetpki rotation run')"
    ]  # fmt: skip
    warnings += ca_status(app.home, app.inventory(), now, hooks=False).warnings
    running = standins.running(app.home)
    serving = None
    if running is not None:
        serving = served.served_crl(app.home, running, now)
        warnings += serving.problems
    if held is not None:
        warnings.insert(0, store.describe_pause(held))
    return {
        "states": counts,
        "paused": held,
        "daemon": daemon,
        "recent_failures": [r.to_json() for r in failed],
        "served_crl": serving.to_json() if serving is not None else None,
        "warnings": warnings,
    }


def thing_status(app: App, thing: str) -> dict[str, Any]:
    """``rotation status THING``: the thing's rotations, newest first (state, next retry
    time, last error), and its active certificates."""
    from pki.model import Status

    now = app.now()
    active = app.inventory().find(now=now, thing=thing, status=Status.ACTIVE)
    with store.transaction(app.inventory().engine) as conn:
        rows = store.select(conn, things=[thing], limit=20)
    if not rows and not app.inventory().find(now=now, thing=thing):
        raise NotFound(f"no certificate and no rotation of {thing!r}")
    current = rows[0] if rows else None
    return {
        "thing": thing,
        "state": current.state.value if current else None,
        "next_attempt_at": current.to_json()["next_attempt_at"] if current else None,
        "last_error": next((r.error for r in rows if r.error), None),
        "active_certificates": [r.serial_hex for r in active],
        "rotations": [r.to_json() for r in rows],
    }


def set_paused(app: App, pause: bool, reason: str | None = None) -> bool:
    """``rotation pause`` / ``resume``: persisted in the inventory (every daemon and wave on
    it obeys), audited. Paused, nothing new is asked and nobody is asked again; answers to
    what was already asked are still worked. Returns whether it changed anything."""
    from pki.model import iso_event
    from pki.storage import AuditEvent

    now = app.now()
    inventory = app.inventory()
    info = {"since": iso_event(now), "by": app.actor, "reason": reason or ""} if pause else None
    with store.transaction(inventory.engine) as conn:
        changed = store.set_paused(conn, info)
        if changed:
            action = "rotation-pause" if pause else "rotation-resume"
            inventory.audit(conn, [AuditEvent(now, app.actor, action, None,
                                              {"reason": reason or ""})])  # fmt: skip
    return changed


def paused(app: App) -> dict[str, Any] | None:
    with store.transaction(app.inventory().engine) as conn:
        return store.paused(conn)
