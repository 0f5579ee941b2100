"""Carry out rotations: request, issue from the device's CSR, register, return, confirm,
and after the grace period revoke the old certificate as superseded.

One ``RotationService`` per process. Messages from devices arrive on the MQTT thread and
are queued (``handle``); ``process`` takes them in batches so that a wave of CSRs is
issued through the batch path (one inventory commit for many certificates). ``request``,
``process``, ``sweep`` and ``refresh_crl`` hold one lock: the daemon calls them from the
scheduler's threads and its own loop. The clock is injected; nothing here sleeps.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from devices import rotation_protocol as rp
from pki.clock import Clock
from pki.errors import FleetPkiError, OperatorError, PolicyViolation
from pki.home import Home
from pki.inventory import Inventory
from pki.issuance import Issuer
from pki.model import IssuedCertificate, IssueRequest, RevocationReason, serial_hex
from pki.policy import BACKDATE
from rotation import store
from rotation.metrics import Metrics
from rotation.planner import PlanItem
from rotation.store import Rotation, State

if TYPE_CHECKING:
    from rotation import servers as servers_mod

log = logging.getLogger("fleetpki.rotation")


class Sender(Protocol):
    def send(self, thing: str, message: rp.Message) -> None: ...


Register = Callable[[IssuedCertificate], None]  # IoT Core registration of a new certificate


@dataclass(frozen=True)
class RotationSettings:
    grace: dt.timedelta = dt.timedelta(hours=1)  # old certificate still valid after confirm
    answer_timeout: dt.timedelta = dt.timedelta(minutes=15)  # for the CSR, then the confirm
    retry_after: dt.timedelta = dt.timedelta(hours=1)  # after a failed rotation of a thing
    max_open: int = 10_000  # rotations in flight at once; the rest wait for the next plan
    crl_refresh_before: dt.timedelta = dt.timedelta(days=3)  # re-sign when nextUpdate is closer

    def __post_init__(self) -> None:
        if self.grace < dt.timedelta(0) or self.answer_timeout <= dt.timedelta(0):
            raise ValueError("grace must be >= 0 and the answer timeout > 0")
        if self.max_open < 1:
            raise ValueError("max_open must be at least 1")


@dataclass
class SweepResult:
    completed: list[Rotation] = field(default_factory=list)
    expired: list[Rotation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def lifetime_days(item: PlanItem) -> int:
    """The replacement gets the lifetime the old certificate had (whole days, at least 1)."""
    seconds = (item.not_after - item.not_before - BACKDATE).total_seconds()
    return max(1, round(seconds / 86_400))


class RotationService:
    def __init__(
        self,
        *,
        home: Home,
        inventory: Inventory,
        issuer: Issuer,
        sender: Sender | None,  # None: server certificates only
        clock: Clock,
        settings: RotationSettings | None = None,
        register: Register | None = None,
        on_crl: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        actor: str = "rotation",
    ) -> None:
        self.home = home
        self.inventory = inventory
        self.issuer = issuer
        self._sender = sender
        self.clock = clock
        self.settings = settings or RotationSettings()
        self.register = register
        self.on_crl = on_crl
        self.metrics = metrics or Metrics()
        self.actor = actor
        self.inbox: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self._lock = threading.RLock()
        store.create(inventory.engine)

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise AssertionError("this service has no MQTT channel to the devices")
        return self._sender

    # -- requests -------------------------------------------------------------------------

    def request(self, items: Sequence[PlanItem], *, force: bool = False) -> list[Rotation]:
        """Ask the devices behind ``items`` to rotate. Skips things with a rotation in
        progress and (unless ``force``) things whose rotation failed within
        ``retry_after``; at most ``max_open`` rotations are in flight."""
        with self._lock:
            now = self.clock.now()
            newest: dict[str, PlanItem] = {}
            for item in items:
                if item.profile != "device" or not item.thing:
                    continue  # server certificates are not rotated over MQTT
                seen = newest.get(item.thing)
                if seen is None or item.not_after > seen.not_after:
                    newest[item.thing] = item
            with store.transaction(self.inventory.engine) as conn:
                busy = store.open_things(conn)
                room = self.settings.max_open - len(busy)
                if not force:
                    busy |= store.failed_since(conn, now - self.settings.retry_after)
                new = [
                    Rotation(
                        id=secrets.token_hex(16),
                        thing=thing,
                        old_serial=serial_hex(item.serial),
                        new_serial=None,
                        state=State.REQUESTED,
                        days=lifetime_days(item),
                        requested_at=now,
                        updated_at=now,
                        deadline=now + self.settings.answer_timeout,
                    )
                    for thing, item in newest.items()
                    if thing not in busy
                ][: max(0, room)]
                store.insert(conn, new)
            # the rows are committed before a device can answer
            for rotation in new:
                self.sender.send(rotation.thing, rp.Request(rotation.id, rotation.old_serial))
            self.metrics.requested.inc(len(new))
            return new

    # -- messages from devices ------------------------------------------------------------

    def handle(self, thing: str, kind: str, payload: bytes) -> None:
        """Called on the MQTT thread: queue only."""
        self.inbox.put((thing, kind, payload))

    def process(self, wait: float = 0.2, max_batch: int = 1000) -> int:
        """Take up to ``max_batch`` queued messages (waiting up to ``wait`` s for the
        first) and act on them. Returns how many were taken."""
        try:
            first = self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return 0
        taken = [first]
        while len(taken) < max_batch:
            try:
                taken.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        csrs: dict[str, tuple[str, rp.CsrMessage]] = {}
        confirms: dict[str, tuple[str, rp.Confirm]] = {}
        for thing, kind, payload in taken:
            try:
                message = rp.decode(kind, payload)
            except OperatorError as exc:
                self._bad(thing, str(exc))
                continue
            if isinstance(message, rp.CsrMessage):
                csrs[message.rotation_id] = (thing, message)  # a redelivery counts once
            elif isinstance(message, rp.Confirm):
                confirms[message.rotation_id] = (thing, message)
            else:
                self._bad(thing, f"devices do not send rotation {kind} messages")
        with self._lock:
            if csrs:
                self._issue(list(csrs.values()))
            if confirms:
                self._confirm(list(confirms.values()))
        return len(taken)

    def _bad(self, thing: str, why: str) -> None:
        self.metrics.bad_messages.inc()
        log.warning("ignored a rotation message from %s: %s", thing, why)

    def _rotations(self, ids: Sequence[str]) -> dict[str, Rotation]:
        with store.transaction(self.inventory.engine) as conn:
            return {r.id: r for r in store.select(conn, ids=ids)}

    def _issue(self, csrs: list[tuple[str, rp.CsrMessage]]) -> None:
        known = self._rotations([m.rotation_id for _, m in csrs])
        requests: list[IssueRequest] = []
        waiting: dict[str, Rotation] = {}
        for thing, message in csrs:
            rotation = known.get(message.rotation_id)
            if rotation is None or rotation.thing != thing:
                self._bad(thing, "CSR for no rotation of this thing")
                continue
            if rotation.state is State.ISSUED and rotation.new_serial:
                self._resend(rotation)  # the device did not get the certificate
                continue
            if rotation.state is not State.REQUESTED:
                self._bad(thing, f"CSR for a rotation that is {rotation.state.value}")
                continue
            requests.append(
                IssueRequest("device", thing, message.csr_pem, days=rotation.days, actor=self.actor)
            )
            waiting[thing] = rotation
        if not requests:
            return
        issued: list[IssuedCertificate] = []

        def collect(item: IssuedCertificate) -> Callable[[], None]:
            issued.append(item)
            return lambda: None

        try:
            report = self.issuer.issue_batch(requests, collect, actor=self.actor)
        except FleetPkiError as exc:  # storage or backend: nothing was committed for them
            log.error("rotation issuance failed: %s", exc)
            return  # the rotations stay requested; a redelivered CSR or the timeout ends them
        now = self.clock.now()
        for failure in report.failed:
            rotation = waiting[failure.name]
            reason = (
                failure.error.reason
                if isinstance(failure.error, PolicyViolation)
                else "invalid-csr"
            )
            self._fail(rotation, State.REQUESTED, reason, str(failure.error), now)
            self.sender.send(
                rotation.thing,
                rp.CertificateMessage(rotation.id, error=reason, message=str(failure.error)),
            )
        registered: list[tuple[Rotation, IssuedCertificate]] = []
        for item in issued:
            rotation = waiting[item.record.thing or item.record.common_name]
            if self.register is not None:
                try:
                    self.register(item)
                except FleetPkiError as exc:
                    self._fail(rotation, State.REQUESTED, "registration", str(exc), now)
                    self.sender.send(
                        rotation.thing,
                        rp.CertificateMessage(rotation.id, error="registration", message=str(exc)),
                    )
                    continue
            registered.append((rotation, item))
        with store.transaction(self.inventory.engine) as conn:
            sent = [
                (rotation, item)
                for rotation, item in registered
                if store.advance(
                    conn,
                    rotation.id,
                    State.REQUESTED,
                    State.ISSUED,
                    new_serial=item.record.serial_hex,
                    updated_at=now,
                    deadline=now + self.settings.answer_timeout,
                )
            ]
        for rotation, item in sent:
            self.sender.send(
                rotation.thing,
                rp.CertificateMessage(rotation.id, item.record.serial_hex, item.fullchain_pem),
            )
        self.metrics.issued.inc(len(sent))

    def _resend(self, rotation: Rotation) -> None:
        assert rotation.new_serial is not None
        pem = self.inventory.get_pem(int(rotation.new_serial, 16)).encode()
        self.sender.send(
            rotation.thing,
            rp.CertificateMessage(rotation.id, rotation.new_serial, pem + self.issuer.issuing_pem),
        )

    def _confirm(self, confirms: list[tuple[str, rp.Confirm]]) -> None:
        known = self._rotations([m.rotation_id for _, m in confirms])
        now = self.clock.now()
        done: list[Rotation] = []
        with store.transaction(self.inventory.engine) as conn:
            for thing, message in confirms:
                rotation = known.get(message.rotation_id)
                if rotation is None or rotation.thing != thing:
                    self._bad(thing, "confirmation for no rotation of this thing")
                    continue
                if rotation.state in (State.CONFIRMED, State.COMPLETED):
                    continue  # a repeat
                if rotation.state is not State.ISSUED or message.serial != rotation.new_serial:
                    self._bad(thing, f"confirmation of serial {message.serial} does not match")
                    continue
                if store.advance(
                    conn,
                    rotation.id,
                    State.ISSUED,
                    State.CONFIRMED,
                    confirmed_at=now,
                    updated_at=now,
                ):
                    done.append(rotation)
        for rotation in done:
            self.metrics.duration.observe((now - rotation.requested_at).total_seconds())
        self.metrics.confirmed.inc(len(done))

    def _fail(
        self, rotation: Rotation, expected: State, reason: str, message: str, now: dt.datetime
    ) -> None:
        with store.transaction(self.inventory.engine) as conn:
            store.advance(
                conn,
                rotation.id,
                expected,
                State.FAILED,
                error=f"{reason}: {message}",
                updated_at=now,
            )
        self.metrics.failed.labels(reason).inc()
        log.warning("rotation of %s failed (%s): %s", rotation.thing, reason, message)

    # -- time-driven work -----------------------------------------------------------------

    def sweep(self) -> SweepResult:
        """Revoke (superseded) the old certificates whose grace period is over, in one CRL;
        fail the rotations whose device did not answer in time."""
        from pki.revocation import revoke_and_publish

        result = SweepResult()
        with self._lock:
            now = self.clock.now()
            engine = self.inventory.engine
            with store.transaction(engine) as conn:
                due = store.select(
                    conn, [State.CONFIRMED], confirmed_before=now - self.settings.grace
                )
                stale = store.select(conn, [State.REQUESTED, State.ISSUED], deadline_before=now)
            if due:
                try:
                    revoke_and_publish(
                        self.home,
                        self.inventory,
                        self.issuer.ca,
                        self.clock,
                        [int(r.old_serial, 16) for r in due],
                        RevocationReason.SUPERSEDED,
                        self.actor,
                    )
                except FleetPkiError as exc:
                    # the inventory is right; what failed (a hook) is retried next sweep
                    result.errors.append(str(exc))
                    log.error("revoking superseded certificates: %s", exc)
                with store.transaction(engine) as conn:
                    for rotation in due:
                        if store.advance(
                            conn,
                            rotation.id,
                            State.CONFIRMED,
                            State.COMPLETED,
                            completed_at=now,
                            updated_at=now,
                        ):
                            result.completed.append(rotation)
                self.metrics.completed.inc(len(result.completed))
            for rotation in stale:
                what = "send its CSR" if rotation.state is State.REQUESTED else "confirm"
                self._fail(
                    rotation,
                    rotation.state,
                    "timeout",
                    f"the device did not {what} within {self.settings.answer_timeout}",
                    now,
                )
                result.expired.append(rotation)
            self._gauge_open()
        return result

    def _gauge_open(self) -> None:
        with store.transaction(self.inventory.engine) as conn:
            counts = store.counts(conn)
        for state in store.OPEN:
            self.metrics.open.labels(state.value).set(counts[state.value])

    def refresh_crl(self) -> bool:
        """Re-sign the home CRL when its nextUpdate is within ``crl_refresh_before`` (a stale
        CRL makes the broker refuse every device). Returns whether it was re-signed."""
        from pki.backends import CrlSigner
        from pki.revocation import refresh_home_crl

        if not isinstance(self.issuer.ca, CrlSigner):
            return False  # the CA (AWS Private CA) publishes its own CRLs
        with self._lock:
            now = self.clock.now()
            next_update = _next_update(self.home)
            if next_update is not None and next_update - now > self.settings.crl_refresh_before:
                self.metrics.crl_next_update.set(next_update.timestamp())
                return False
            result = refresh_home_crl(
                self.home, self.inventory, self.issuer.ca, self.clock, self.actor
            )
            if result.crl.next_update_utc is not None:
                self.metrics.crl_next_update.set(result.crl.next_update_utc.timestamp())
            if self.on_crl is not None:
                self.on_crl()
            return True

    # -- server certificates on disk ------------------------------------------------------

    def rotate_servers(
        self, items: Sequence[PlanItem], *, names: Sequence[str] = ()
    ) -> list[Rotation]:
        """Replace the certificates of the server targets that are due (or named): a key
        and certificate made here, swapped in on disk, the server reloaded; the old
        certificate is revoked as superseded after the grace period (``sweep``)."""
        from rotation import servers

        with self._lock:
            engine = self.inventory.engine
            due = {serial_hex(i.serial) for i in items if i.profile == "server"}
            with store.transaction(engine) as conn:
                busy = store.open_things(conn)
            done = []
            for target in servers.targets(engine):
                if target.name in busy or not (target.serial in due or target.name in names):
                    continue
                done.append(self._rotate_server(target))
            return done

    def _rotate_server(self, target: servers_mod.ServerTarget) -> Rotation:
        from rotation import servers

        now = self.clock.now()
        rotation = Rotation(
            id=secrets.token_hex(16),
            thing=target.name,
            old_serial=target.serial,
            new_serial=None,
            state=State.REQUESTED,
            days=target.days,
            requested_at=now,
            updated_at=now,
            deadline=now + self.settings.answer_timeout,
        )
        engine = self.inventory.engine
        with store.transaction(engine) as conn:
            store.insert(conn, [rotation])
        self.metrics.requested.inc()
        try:
            key_pem, issued = servers.issue_for(self.issuer, target, self.actor)
            servers.install(target.directory, key_pem, issued)
        except FleetPkiError as exc:
            self._fail(rotation, State.REQUESTED, "server-issue", str(exc), now)
            return replace(rotation, state=State.FAILED, error=str(exc))
        new = issued.record.serial_hex
        servers.record_serial(engine, target.name, new, now)
        self.metrics.issued.inc()
        try:
            servers.reload(target)
        except FleetPkiError as exc:
            # installed, but the server may still serve the old one: keep that valid
            with store.transaction(engine) as conn:
                store.advance(conn, rotation.id, State.REQUESTED, State.ISSUED, new_serial=new)
            message = f"installed {new} in {target.current}, but {exc}"
            self._fail(rotation, State.ISSUED, "reload", message, now)
            return replace(rotation, new_serial=new, state=State.FAILED, error=message)
        with store.transaction(engine) as conn:
            store.advance(
                conn,
                rotation.id,
                State.REQUESTED,
                State.CONFIRMED,
                new_serial=new,
                confirmed_at=now,
                updated_at=now,
            )
        self.metrics.confirmed.inc()
        log.info("server %s: certificate %s installed in %s", target.name, new, target.current)
        return replace(rotation, new_serial=new, state=State.CONFIRMED, confirmed_at=now)

    def open_rotations(self, ids: Sequence[str]) -> list[Rotation]:
        with store.transaction(self.inventory.engine) as conn:
            return store.select(conn, ids=ids)


def _next_update(home: Home) -> dt.datetime | None:
    try:
        crl = x509.load_pem_x509_crl(home.crl_path.read_bytes())
    except (OSError, ValueError):
        return None
    return crl.next_update_utc
