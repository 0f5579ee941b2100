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

import sqlalchemy as sa

from devices import rotation_protocol as rp
from pki.clock import Clock
from pki.errors import (
    BackendError,
    FleetPkiError,
    IssuedCertificateMismatch,
    NotFound,
    OperatorError,
    PolicyViolation,
    StorageError,
)
from pki.home import Home
from pki.issue.issuer import Issuer
from pki.issue.policy import BACKDATE
from pki.issue.profiles import get_profile
from pki.model import IssuedCertificate, IssueRequest, RevocationReason, Status, serial_hex
from pki.storage import Inventory
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


def _nothing() -> None:
    return None


MAX_ATTEMPTS = 3  # tries of one device message before it is dropped
INFRA_ATTEMPTS = 30  # the same when the inventory or the CA failed (about 30 s of backoff)
# how long a rotation waits for failing revocation hooks once its old certificate is revoked
HOOK_RETRIES_FOR = dt.timedelta(days=1)


@dataclass(frozen=True)
class Inbound:
    """A device's message waiting to be worked; ``ack`` tells the broker it was."""

    thing: str
    kind: str
    payload: bytes
    ack: Callable[[], None]
    attempts: int = 0  # failures while worked alone
    alone: bool = False  # in a batch that failed: worked on its own next time


@dataclass(frozen=True)
class RotationSettings:
    grace: dt.timedelta = dt.timedelta(hours=1)  # old certificate still valid after confirm
    answer_timeout: dt.timedelta = dt.timedelta(minutes=15)  # for the CSR, then the confirm
    retry_after: dt.timedelta = dt.timedelta(hours=1)  # after a failed rotation of a thing
    max_open: int = 10_000  # rotations in flight at once; the rest wait for the next plan

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
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.failures_in_a_row = 0  # of process(): the daemon's loop backs off on them
        self._lock = threading.RLock()

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise AssertionError("this service has no MQTT channel to the devices")
        return self._sender

    # -- requests -------------------------------------------------------------------------

    def request(self, items: Sequence[PlanItem], *, force: bool = False) -> list[Rotation]:
        """Ask the devices behind ``items`` to rotate. Skips things with a rotation in
        progress (in any process: the inventory allows one per thing) and, unless
        ``force``, things whose rotation failed within ``retry_after``; at most
        ``max_open`` rotations are in flight."""
        with self._lock:
            now = self.clock.now()
            newest: dict[str, PlanItem] = {}
            for item in items:
                if item.profile != "device" or not item.thing:
                    continue  # server certificates are not rotated over MQTT
                seen = newest.get(item.thing)
                if seen is None or item.not_after > seen.not_after:
                    newest[item.thing] = item
            if not newest:
                return []
            ceiling = self._days_ceiling(now)
            if ceiling < 1:
                self.metrics.failed.labels("ca-expiring").inc(len(newest))
                raise OperatorError(
                    f"cannot rotate {len(newest)} device certificate(s): the issuing CA "
                    f"expires {self.issuer.issuing_not_after:%Y-%m-%d %H:%M} UTC, within a "
                    "day; renew the CA first"
                )
            grace = int(self.settings.grace.total_seconds())
            with store.transaction(self.inventory.engine) as conn:
                busy = store.open_things(conn)
                room = self.settings.max_open - len(busy)
                if not force:
                    busy |= store.failed_since(conn, now - self.settings.retry_after)
                wanted = [
                    Rotation(
                        id=secrets.token_hex(16),
                        thing=thing,
                        old_serial=serial_hex(item.serial),
                        new_serial=None,
                        state=State.REQUESTED,
                        days=min(lifetime_days(item), ceiling),
                        requested_at=now,
                        updated_at=now,
                        deadline=now + self.settings.answer_timeout,
                        grace_seconds=grace,
                    )
                    for thing, item in newest.items()
                    if thing not in busy
                ][: max(0, room)]
                new = store.insert(conn, wanted)
            # the rows are committed before a device can answer
            for rotation in new:
                self.sender.send(rotation.thing, rp.Request(rotation.id, rotation.old_serial))
            self.metrics.requested.inc(len(new))
            return new

    def _days_ceiling(self, now: dt.datetime) -> int:
        """The longest lifetime a replacement may have: the device profile's maximum, and
        never beyond the issuing CA (the old lifetime may no longer fit)."""
        remaining = (self.issuer.issuing_not_after - now - BACKDATE).total_seconds() // 86_400
        return int(min(get_profile("device").max_days, remaining))

    # -- messages from devices ------------------------------------------------------------

    def handle(
        self, thing: str, kind: str, payload: bytes, ack: Callable[[], None] = _nothing
    ) -> None:
        """Called on the MQTT thread: queue only. ``ack`` acknowledges the message to the
        broker; it is called once the message has been acted on (committed), so a message
        in the queue when the process stops is delivered again."""
        self.inbox.put(Inbound(thing, kind, payload, ack))

    def process(self, wait: float = 0.2, max_batch: int = 1000) -> int:
        """Take up to ``max_batch`` queued messages (waiting up to ``wait`` s for the
        first) and act on them. Returns how many were taken. On a storage or CA failure
        (raised) the batch goes back into the queue, unacknowledged, to be tried again; a
        message that failed ``MAX_ATTEMPTS`` times is dropped (acknowledged) and logged, so
        that one poison message cannot hold up the rest."""
        try:
            first = self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return 0
        taken = [first]
        while not first.alone and len(taken) < max_batch:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item.alone:
                self.inbox.put(item)  # worked on its own, later
                break
            taken.append(item)
        csrs: dict[str, tuple[str, rp.CsrMessage]] = {}
        confirms: dict[str, tuple[str, rp.Confirm]] = {}
        for item in taken:
            thing, kind = item.thing, item.kind
            try:
                message = rp.decode(kind, item.payload)
            except OperatorError as exc:
                self._bad(thing, str(exc))
                continue
            if isinstance(message, rp.CsrMessage):
                csrs[message.rotation_id] = (thing, message)  # a redelivery counts once
            elif isinstance(message, rp.Confirm):
                confirms[message.rotation_id] = (thing, message)
            else:
                self._bad(thing, f"devices do not send rotation {kind} messages")
        try:
            with self._lock:
                if csrs:
                    self._issue(list(csrs.values()))
                if confirms:
                    self._confirm(list(confirms.values()))
        except BaseException as exc:
            # handling a message again is harmless (compare-and-set). Storage down: all
            # wait, nothing counted. Else a failed batch is split into single messages,
            # and only a message that fails on its own counts towards being dropped.
            # the inventory or the CA being down is given much longer than a bad message
            limit = INFRA_ATTEMPTS if isinstance(exc, StorageError | BackendError) else MAX_ATTEMPTS
            for item in taken:
                if len(taken) > 1:
                    self.inbox.put(replace(item, alone=True))
                elif item.attempts + 1 < limit:
                    self.inbox.put(replace(item, attempts=item.attempts + 1, alone=True))
                else:
                    log.error("dropped a rotation %s from %s after %d failed attempts",
                              item.kind, item.thing, limit)  # fmt: skip
                    item.ack()
            raise
        for item in taken:
            item.ack()
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
            days = min(rotation.days, self._days_ceiling(self.clock.now()))
            requests.append(
                IssueRequest("device", thing, message.csr_pem, days=max(1, days), actor=self.actor)
            )
            waiting[thing] = rotation
        if not requests:
            return
        issued: list[IssuedCertificate] = []

        def collect(item: IssuedCertificate) -> Callable[[], None]:
            issued.append(item)
            return lambda: None

        # storage or CA failure: raised, nothing committed for them; the rotations stay
        # requested until the CSRs come again or the answer timeout ends them
        report = self.issuer.issue_batch(requests, collect, actor=self.actor)
        now = self.clock.now()
        for failure in report.failed:
            rotation = waiting[failure.name]
            if isinstance(failure.error, PolicyViolation):
                reason = failure.error.reason
            elif isinstance(failure.error, IssuedCertificateMismatch):
                reason = "ca-error"  # the CA returned something else: quarantined
            else:
                reason = "invalid-csr"
            self._fail(rotation, State.REQUESTED, reason, str(failure.error), now)
            self.sender.send(
                rotation.thing,
                rp.CertificateMessage(rotation.id, error=reason, message=str(failure.error)),
            )
        registered: list[tuple[Rotation, IssuedCertificate]] = []
        unused: list[tuple[IssuedCertificate, Rotation]] = []
        try:
            for item in issued:
                rotation = waiting[item.record.thing or item.record.common_name]
                if self.register is not None:
                    try:
                        self.register(item)
                    except Exception as exc:
                        why = str(exc) if isinstance(exc, FleetPkiError) else repr(exc)
                        self._fail(rotation, State.REQUESTED, "registration", why, now,
                                   new_serial=item.record.serial_hex)  # fmt: skip
                        self.sender.send(
                            rotation.thing,
                            rp.CertificateMessage(rotation.id, error="registration", message=why),
                        )
                        unused.append((item, rotation))
                        continue
                registered.append((rotation, item))
            sent: list[tuple[Rotation, IssuedCertificate]] = []
            with store.transaction(self.inventory.engine) as conn:
                for rotation, item in registered:
                    if store.advance(
                        conn,
                        rotation.id,
                        State.REQUESTED,
                        State.ISSUED,
                        new_serial=item.record.serial_hex,
                        updated_at=now,
                        deadline=now + self.settings.answer_timeout,
                    ):
                        sent.append((rotation, item))
        except BaseException:
            # issued, but no rotation will hand them out: withdrawn, never left ownerless
            done = {id(item) for item, _rotation in unused}
            unused += [(i, waiting[i.record.thing or i.record.common_name]) for i in issued
                       if id(i) not in done]  # fmt: skip
            self._withdraw(unused)
            raise
        moved = {rotation.id for rotation, _item in sent}
        unused += [(item, rotation) for rotation, item in registered if rotation.id not in moved]
        self._withdraw(unused)  # the rotations that ended meanwhile (a timeout) among them
        for rotation, item in sent:
            self.sender.send(
                rotation.thing,
                rp.CertificateMessage(rotation.id, item.record.serial_hex, item.fullchain_pem),
            )
        self.metrics.issued.inc(len(sent))

    def _withdraw(self, unused: Sequence[tuple[IssuedCertificate, Rotation]]) -> None:
        """Revoke certificates issued for rotations that will not use them (never sent or
        installed), in one CRL: no certificate stays active without an owner."""
        from pki.revocation.revoke import revoke_and_publish

        if not unused:
            return
        try:
            result = revoke_and_publish(
                self.home,
                self.inventory,
                self.issuer.ca,
                self.clock,
                [item.record.serial for item, _rotation in unused],
                RevocationReason.CESSATION_OF_OPERATION,
                self.actor,
                # the device still runs on its old certificate: no session cut
                replaced_by={i.record.serial: int(r.old_serial, 16) for i, r in unused},
                raise_failures=False,
            )
        except FleetPkiError as exc:  # the CRL could not be signed: the rows say revoked
            log.error("withdrawing %d unused certificates: %s", len(unused), exc)
            return
        for serial, error in result.failures.items():
            log.error("withdrawing unused certificate %s: %s", serial_hex(serial), error)

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
                late = (
                    rotation.state is State.FAILED
                    and rotation.new_serial is not None
                    and self._newest(conn, thing) == rotation.id
                    and self._active(rotation.new_serial)  # not withdrawn or revoked
                )
                if message.serial != rotation.new_serial or not (
                    rotation.state is State.ISSUED or late
                ):
                    self._bad(thing, f"confirmation of serial {message.serial} does not match")
                    continue
                try:
                    # a late confirmation (after the answer timeout) still counts: the
                    # device runs on the certificate it was sent
                    with conn.begin_nested():
                        moved = store.confirm(conn, rotation.id, rotation.state, now)
                except sa.exc.IntegrityError:  # a newer rotation of the thing is open
                    self._bad(thing, "late confirmation: a newer rotation is in progress")
                    continue
                if moved:
                    done.append(rotation)
        for rotation in done:
            self.metrics.duration.observe((now - rotation.requested_at).total_seconds())
        self.metrics.confirmed.inc(len(done))

    def _active(self, serial: str) -> bool:
        try:
            return self.inventory.get(int(serial, 16)).status is Status.ACTIVE
        except NotFound:
            return False

    @staticmethod
    def _newest(conn: sa.Connection, thing: str) -> str | None:
        rows = store.select(conn, things=[thing], limit=1)
        return rows[0].id if rows else None

    def _fail(
        self,
        rotation: Rotation,
        expected: State,
        reason: str,
        message: str,
        now: dt.datetime,
        **values: object,
    ) -> None:
        """``values``: e.g. the ``new_serial`` of a certificate issued but not used, so
        that a later rotation of the thing finds and supersedes it if its withdrawal
        failed."""
        with store.transaction(self.inventory.engine) as conn:
            store.advance(
                conn,
                rotation.id,
                expected,
                State.FAILED,
                error=f"{reason}: {message}",
                updated_at=now,
                **values,
            )
        self.metrics.failed.labels(reason).inc()
        log.warning("rotation of %s failed (%s): %s", rotation.thing, reason, message)

    # -- time-driven work -----------------------------------------------------------------

    def sweep(self) -> SweepResult:
        """Revoke (superseded) the old certificates whose grace period is over, in one CRL;
        fail the rotations whose device did not answer in time. A rotation is completed
        only once its old certificate is revoked and the revocation hooks (IoT Core, the
        broker's CRL) succeeded; otherwise it stays confirmed and the next sweep retries."""
        from pki.revocation.revoke import revoke_and_publish

        result = SweepResult()
        with self._lock:
            now = self.clock.now()
            engine = self.inventory.engine
            with store.transaction(engine) as conn:
                confirmed = store.select(conn, [State.CONFIRMED])
                stale = store.select(conn, [State.REQUESTED, State.ISSUED], deadline_before=now)
            due = [r for r in confirmed if r.revoke_old_at is not None and r.revoke_old_at <= now]
            if due:
                owner: dict[int, Rotation] = {}
                for rotation in due:
                    for serial in self._superseded(rotation):
                        owner[serial] = rotation
                revoked = revoke_and_publish(
                    self.home,
                    self.inventory,
                    self.issuer.ca,
                    self.clock,
                    list(owner),
                    RevocationReason.SUPERSEDED,
                    self.actor,
                    replaced_by={s: int(owner[s].new_serial or "0", 16) for s in owner},
                    raise_failures=False,
                )
                unfinished = {owner[s].id: str(e) for s, e in revoked.failures.items()}
                failing: dict[str, list[int]] = {}
                for serial in revoked.failures:
                    failing.setdefault(owner[serial].id, []).append(serial)
                gave_up: dict[str, str] = {}
                for rotation in due:
                    why = unfinished.get(rotation.id)
                    if why is not None and self._hooks_given_up(
                        rotation, failing[rotation.id], now
                    ):
                        # revoked in the inventory and the CRL: a hook that keeps failing
                        # (the certificate deleted in IoT Core...) must not block the thing
                        log.error("%s: completing despite %s", rotation.thing, why)
                        self.metrics.failed.labels("hook").inc()
                        gave_up[rotation.id] = why
                        del unfinished[rotation.id]
                with store.transaction(engine) as conn:
                    for rotation in due:
                        if rotation.id in unfinished:
                            why = unfinished[rotation.id]
                            result.errors.append(f"{rotation.thing}: {why}")
                            store.advance(
                                conn,
                                rotation.id,
                                State.CONFIRMED,
                                State.CONFIRMED,
                                error=f"revoking the old certificate: {why} (retried)",
                                retry_since=rotation.retry_since or now,
                                updated_at=now,
                            )
                        elif store.advance(
                            conn,
                            rotation.id,
                            State.CONFIRMED,
                            State.COMPLETED,
                            completed_at=now,
                            updated_at=now,
                            error=(
                                f"completed, but a revocation hook kept failing since "
                                f"{rotation.retry_since}: {gave_up[rotation.id]}"
                                if rotation.id in gave_up
                                else None
                            ),
                        ):
                            result.completed.append(rotation)
                for error in result.errors:
                    log.error("revoking a superseded certificate: %s", error)
                self.metrics.completed.inc(len(result.completed))
                if result.errors:
                    self.metrics.failed.labels("revoke").inc(len(result.errors))
            targets = self._server_targets()
            for rotation in stale:
                target = targets.get(rotation.thing)
                if target is not None:
                    self._settle_server(rotation, target, now)
                    result.expired.append(rotation)
                    continue
                what = "send its CSR" if rotation.state is State.REQUESTED else "confirm"
                self._fail(
                    rotation,
                    rotation.state,
                    "timeout",
                    # the deadline recorded with the rotation: the process that asked may
                    # have had another --answer-timeout than this one
                    f"the device did not {what} by its deadline "
                    f"{rotation.deadline.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z",
                    now,
                )
                result.expired.append(rotation)
            self._gauge_open()
        return result

    def _server_targets(self) -> dict[str, servers_mod.ServerTarget]:
        from rotation import servers

        return {t.name: t for t in servers.targets(self.inventory.engine)}

    def _settle_server(
        self, rotation: Rotation, target: servers_mod.ServerTarget, now: dt.datetime
    ) -> None:
        """A server rotation interrupted half way (a crash, a storage error): what is on
        disk decides. The new certificate in place: a reload is still owed (retried by
        the next plan). Not in place: the recorded serial follows the disk and the new
        certificate, never used, is withdrawn."""
        from rotation import servers

        try:
            on_disk = target.current.resolve(strict=True).name
        except OSError:
            on_disk = ""
        if rotation.new_serial and on_disk == rotation.new_serial:
            self._fail(rotation, rotation.state, "reload", "interrupted before the reload", now)
            return
        self._fail(rotation, rotation.state, "server-install", "interrupted", now)
        if on_disk and on_disk != target.serial:
            with store.transaction(self.inventory.engine) as conn:
                servers.record_serial(conn, target.name, on_disk, now)
        if rotation.new_serial and self._active(rotation.new_serial):
            from pki.revocation.revoke import revoke_and_publish

            revoke_and_publish(self.home, self.inventory, self.issuer.ca, self.clock,
                               [int(rotation.new_serial, 16)],
                               RevocationReason.CESSATION_OF_OPERATION, self.actor,
                               raise_failures=False)  # fmt: skip

    def _hooks_given_up(self, rotation: Rotation, serials: list[int], now: dt.datetime) -> bool:
        """The hooks have failed for ``HOOK_RETRIES_FOR`` since their first failure, and
        every certificate they failed for is revoked in the inventory (so in the CRL)."""
        if rotation.retry_since is None or now - rotation.retry_since <= HOOK_RETRIES_FOR:
            return False
        return all(self.inventory.get(s).status is Status.REVOKED for s in serials)

    def _superseded(self, rotation: Rotation) -> list[int]:
        """The certificates a completed rotation revokes: the one it replaced and, for a
        device, every other active certificate of the thing issued before the new one (a
        thing ends a rotation with one certificate)."""
        serials = [int(rotation.old_serial, 16)]
        if rotation.new_serial is None:
            return serials
        new = int(rotation.new_serial, 16)
        now = self.clock.now()
        try:
            replacement = self.inventory.get(new)
            profile = self.inventory.get(serials[0]).profile
        except NotFound:
            return serials
        # earlier rotations of the same thing or server that never completed (a failed
        # reload, a late device, an install that failed) left certificates behind: the
        # older ones of the same kind are superseded as well
        with store.transaction(self.inventory.engine) as conn:
            earlier = store.select(conn, [State.FAILED], things=[rotation.thing])
        for row in earlier:
            for text in (row.old_serial, row.new_serial):
                if text and int(text, 16) not in (new, *serials):
                    try:
                        record = self.inventory.get(int(text, 16))
                    except NotFound:
                        continue
                    if (
                        record.status is Status.ACTIVE
                        and record.profile == profile
                        and record.created_at <= replacement.created_at
                    ):
                        serials.append(record.serial)
        active = self.inventory.find(now=now, status=Status.ACTIVE, thing=rotation.thing)
        issued = {r.serial: r.created_at for r in active}
        if new in issued:
            serials += [
                r.serial
                for r in active
                if r.profile == "device" and r.serial not in (new, serials[0])
                and r.created_at <= issued[new]
            ]  # fmt: skip
        return serials

    def _gauge_open(self) -> None:
        with store.transaction(self.inventory.engine) as conn:
            counts = store.counts(conn)
        for state in store.OPEN:
            self.metrics.open.labels(state.value).set(counts[state.value])

    def refresh_crl(self) -> bool:
        """Re-sign each CA's CRL once two thirds of its validity have passed (a stale CRL
        makes the broker refuse every device); the root's only when its key is at hand,
        else a warning in the log. Returns whether anything was re-signed."""
        from pki.revocation.crl import crl_health
        from pki.revocation.signing import refresh_crls

        with self._lock:
            done = refresh_crls(self.home, self.inventory, self.issuer.ca, self.clock, self.actor)
            for warning in done.warnings:
                log.warning("%s", warning)
            now = self.clock.now()
            for ca, crl in self.home.crl_files.current().items():
                health = crl_health(ca, crl, now)
                if health.next_update is not None:
                    self.metrics.crl_next_update.labels(ca).set(health.next_update.timestamp())
            if done.signed and self.on_crl is not None:
                self.on_crl()
            return bool(done.signed)

    # -- server certificates on disk ------------------------------------------------------

    def rotate_servers(
        self, items: Sequence[PlanItem], *, names: Sequence[str] = ()
    ) -> list[Rotation]:
        """Replace the certificates of the server targets that are due (or ``names``): a
        key and certificate made here, swapped in on disk, the server reloaded; the old
        certificate is revoked as superseded after the grace period (``sweep``). Also runs
        again the reload commands that failed last time."""
        from rotation import servers

        with self._lock:
            engine = self.inventory.engine
            self._retry_reloads()
            due = {serial_hex(i.serial) for i in items if i.profile == "server"}
            now = self.clock.now()
            with store.transaction(engine) as conn:
                busy = {r.thing: r for r in store.select(conn, store.OPEN)}
                recently_failed = store.failed_since(conn, now - self.settings.retry_after)
            done = []
            for target in servers.targets(engine):
                if target.name in busy:
                    if target.name in names:
                        pending = busy[target.name]
                        raise OperatorError(
                            f"{target.name} has a rotation in progress ({pending.state.value}; "
                            f"the old certificate is revoked at {pending.revoke_old_at}); "
                            "wait for it, or revoke the current certificate with "
                            "'fleetpki revoke SERIAL --reason key-compromise'"
                        )
                    continue
                if target.name in names or (
                    target.serial in due and target.name not in recently_failed
                ):
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
            grace_seconds=int(self.settings.grace.total_seconds()),
            profile="server",
        )
        engine = self.inventory.engine
        with store.transaction(engine) as conn:
            if not store.insert(conn, [rotation]):
                raise OperatorError(f"{target.name} has a rotation in progress")
        self.metrics.requested.inc()
        try:
            key_pem, issued = servers.issue_for(self.issuer, target, self.actor)
        except FleetPkiError as exc:
            self._fail(rotation, State.REQUESTED, "server-issue", str(exc), now)
            return replace(rotation, state=State.FAILED, error=str(exc))
        new = issued.record.serial_hex
        # recorded first, on the target and the rotation together; install() either swaps
        # 'current' completely or leaves it as it was
        try:
            with store.transaction(engine) as conn:
                servers.record_serial(conn, target.name, new, now)
                store.advance(conn, rotation.id, State.REQUESTED, State.ISSUED, new_serial=new)
        except BaseException:
            self._withdraw([(issued, rotation)])
            raise
        try:
            servers.install(target.directory, key_pem, issued, target.group)
        except BaseException as exc:
            # not in use anywhere: withdrawn, the old one stays (a crash here is put right
            # by the sweep, which looks at what 'current' points to)
            with store.transaction(engine) as conn:
                servers.record_serial(conn, target.name, target.serial, now)
            self._fail(rotation, State.ISSUED, "server-install", str(exc), now)
            self._withdraw([(issued, rotation)])
            if not isinstance(exc, FleetPkiError):
                raise
            return replace(rotation, new_serial=new, state=State.FAILED, error=str(exc))
        self.metrics.issued.inc()
        return self._reloaded(replace(rotation, new_serial=new, state=State.ISSUED), target)

    def _reloaded(self, rotation: Rotation, target: servers_mod.ServerTarget) -> Rotation:
        """Run the reload command; confirmed when it worked, else failed with the reason
        (the old certificate stays valid: the server may still serve it)."""
        from rotation import servers

        now = self.clock.now()
        try:
            servers.reload(target)
        except FleetPkiError as exc:
            message = f"installed {rotation.new_serial} in {target.current}, but {exc}"
            self._fail(rotation, rotation.state, "reload", message, now)
            return replace(rotation, state=State.FAILED, error=f"reload: {message}")
        with store.transaction(self.inventory.engine) as conn:
            store.confirm(conn, rotation.id, rotation.state, now)
        self.metrics.confirmed.inc()
        log.info(
            "server %s: certificate %s installed in %s",
            target.name,
            rotation.new_serial,
            target.current,
        )
        return replace(rotation, state=State.CONFIRMED, confirmed_at=now)

    def _retry_reloads(self) -> None:
        """A server whose reload failed still serves its old certificate: try the reload
        again (the new certificate is in place); once it works, the rotation goes on."""
        from rotation import servers

        engine = self.inventory.engine
        installed = {t.name: t for t in servers.targets(engine)}
        with store.transaction(engine) as conn:
            failed = store.select(conn, [State.FAILED], things=list(installed))
            busy = store.open_things(conn)
        for rotation in failed:
            target = installed.get(rotation.thing)
            if (
                target is not None
                and rotation.thing not in busy
                and rotation.new_serial == target.serial  # the one installed now
                and (rotation.error or "").startswith("reload:")
            ):
                busy.add(rotation.thing)
                self._reloaded(rotation, target)

    def open_rotations(self, ids: Sequence[str]) -> list[Rotation]:
        """The rotations ``ids`` (none for no ids: never every rotation)."""
        if not ids:
            return []
        with store.transaction(self.inventory.engine) as conn:
            return store.select(conn, ids=ids)
