"""Device rotation over MQTT: ask the devices that are due, issue from the CSRs they send
(through the batch path: one inventory commit for a wave), register the new certificate
with IoT Core, send it, and record the confirmation once the device reconnected with it.

Messages arrive on the MQTT thread and are queued (``handle``); ``process`` takes them in
batches. A message is acknowledged to the broker only once acted on (committed).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace

import sqlalchemy as sa

from devices import rotation_protocol as rp
from pki.errors import (
    BackendError,
    FleetPkiError,
    IssuedCertificateMismatch,
    OperatorError,
    PolicyViolation,
    StorageError,
)
from pki.issue.results import Failure
from pki.model import IssuedCertificate, IssueRequest, serial_hex
from rotation import store
from rotation.context import (
    INFRA_ATTEMPTS,
    MAX_ATTEMPTS,
    Inbound,
    Workflow,
    _nothing,
    lifetime_days,
)
from rotation.planner import PlanItem, newest_per_device
from rotation.store import Rotation, State

log = logging.getLogger("fleetpki.rotation")
LATE = "confirmed late"  # the start of the note a late confirmation leaves on its rotation
BY_USE = "confirmed by use"  # ... and of the note of one a relying party saw in use


class DeviceFlow(Workflow):
    def request(
        self, items: Sequence[PlanItem], *, force: bool = False, limit: int | None = None
    ) -> list[Rotation]:
        """Ask the devices behind ``items`` to rotate (at most ``limit`` of them). Skips
        things with a rotation in progress (in any process: the inventory allows one per
        thing) and, unless ``force``, things whose rotation failed within ``retry_after``; at most
        ``max_open`` rotations are in flight."""
        with self._lock:
            now = self.clock.now()
            newest = newest_per_device(items)
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
            with self._writing() as conn:
                if store.paused(conn) is not None:
                    return []  # 'rotation pause': nothing new is asked
                busy = store.open_things(conn)
                room = self.settings.max_open - len(busy)
                if not force:
                    busy |= store.failed_since(conn, now - self.settings.retry_after)
                # the plan was read before this lock: a sweep may have completed (revoked)
                # some of these since; a certificate gets one rotation, never a second
                active = store.still_active(
                    conn, [serial_hex(i.serial) for t, i in newest.items() if t not in busy]
                )
                busy |= {t for t, i in newest.items() if serial_hex(i.serial) not in active}
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
                        next_attempt_at=now + self.settings.resend_delay(1),
                    )
                    for thing, item in newest.items()
                    if thing not in busy
                ][: max(0, room if limit is None else min(room, limit))]
                new = store.insert(conn, wanted)
            # the rows are committed before a device can answer
            for rotation in new:
                self.sender.send(rotation.thing, rp.Request(rotation.id, rotation.old_serial))
            if new:
                self._gauge_open()
            return new

    def confirm_by_use(self) -> int:
        """Rotations whose device was sent its certificate and never confirmed (its
        confirmation lost), but which a relying party saw in use: confirmed from that
        proof, with a note. Returns how many."""
        if self.ctx.proof_of_use is None:
            return 0
        with self._lock, self._writing() as conn:
            waiting = store.select(conn, [State.ISSUED])
        serials = {r.new_serial for r in waiting if r.new_serial}
        # outside the lock (reading a queue may take seconds), also with nothing waiting:
        # a source may drain a queue; the confirmation below is conditional on the state
        seen = self.ctx.proof_of_use(serials)
        with self._lock:
            now = self.clock.now()
            done = []
            with self._writing() as conn:
                for rotation in waiting:
                    if rotation.new_serial in seen and store.confirm(
                        conn, rotation.id, State.ISSUED, now,
                        f"{BY_USE}: a relying party accepted the new certificate",
                    ):  # fmt: skip
                        done.append(rotation)
            for rotation in done:
                self.sender.clear(rotation.thing)
            self.metrics.confirmed.inc(len(done))
            self.metrics.confirmed_by_use.inc(len(done))
            if done:
                self._gauge_open()
            return len(done)

    def resend(self) -> int:
        """Send the request again (the same rotation) to the devices that did not answer by
        their next attempt time, each on its own exponential backoff, until the answer
        timeout ends the rotation: a device that was offline picks it up when it is back
        (the request is also retained at the broker). A device waiting for its
        certificate gets it again when it answers with its CSR. Returns how many."""
        with self._lock:
            now = self.clock.now()
            again: list[Rotation] = []
            with self._writing() as conn:
                if store.paused(conn) is not None:
                    return 0  # paused: nobody is asked again either
                due = store.select(conn, [State.REQUESTED, State.ISSUED], attempt_due_by=now)
                for rotation in due:
                    if rotation.profile != "device" or rotation.deadline <= now:
                        continue  # the sweep fails it
                    attempts = rotation.attempts + 1
                    if store.advance(conn, rotation.id, rotation.state, rotation.state,
                                     attempts=attempts,
                                     next_attempt_at=now + self.settings.resend_delay(attempts)):
                        again.append(rotation)  # fmt: skip
            for rotation in again:
                self.sender.send(rotation.thing, rp.Request(rotation.id, rotation.old_serial))
            self.metrics.resent.inc(len(again))
            return len(again)

    def handle(
        self, thing: str, kind: str, payload: bytes, ack: Callable[[], None] = _nothing
    ) -> None:
        """Called on the MQTT thread: queue only. ``ack`` acknowledges the message to the
        broker; it is called once the message has been acted on (committed), so a message
        in the queue when the process stops is delivered again."""
        self.ctx.inbox.put(Inbound(thing, kind, payload, ack))

    def process(self, wait: float = 0.2, max_batch: int = 1000) -> int:
        """Take up to ``max_batch`` queued messages (waiting up to ``wait`` s for the
        first) and act on them. Returns how many were taken. On a storage or CA failure
        (raised) the batch goes back into the queue, unacknowledged, to be tried again; a
        message that failed ``MAX_ATTEMPTS`` times is dropped (acknowledged) and logged, so
        that one poison message cannot hold up the rest."""
        try:
            first = self.ctx.inbox.get(timeout=wait) if wait > 0 else self.ctx.inbox.get_nowait()
        except queue.Empty:
            return 0
        taken = [first]
        while not first.alone and len(taken) < max_batch:
            try:
                item = self.ctx.inbox.get_nowait()
            except queue.Empty:
                break
            if item.alone:
                self.ctx.inbox.put(item)  # worked on its own, later
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
                    self.ctx.inbox.put(replace(item, alone=True))
                elif item.attempts + 1 < limit:
                    self.ctx.inbox.put(replace(item, attempts=item.attempts + 1, alone=True))
                else:
                    log.error("dropped a rotation %s from %s after %d failed attempts",
                              item.kind, item.thing, limit)  # fmt: skip
                    item.ack()
            raise
        for item in taken:
            item.ack()
        return len(taken)

    def _issue(self, csrs: list[tuple[str, rp.CsrMessage]]) -> None:
        requests, waiting = self._issuable(csrs)
        if not requests:
            return
        # storage or CA failure: raised, nothing committed for them; the rotations stay
        # requested until the CSRs come again or the answer timeout ends them
        report = self.issuer.issue_batch(requests, actor=self.actor)
        issued = report.issued
        now = self.clock.now()
        unused: list[tuple[IssuedCertificate, Rotation]] = []
        try:
            self._refused(report.failed, waiting, now)
            registered = self._registered(issued, waiting, unused, now)
            sent = self._advance(registered, now)
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
        self._gauge_open()

    def _issuable(
        self, csrs: list[tuple[str, rp.CsrMessage]]
    ) -> tuple[list[IssueRequest], dict[str, Rotation]]:
        """The requests to issue for these CSRs, and the rotation each one is for; a CSR
        for no open rotation is told, one for a certificate already sent is answered with
        it again."""
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
            if rotation.state in (State.CONFIRMED, State.COMPLETED):
                self._clear_if_idle(thing)  # it saw its retained request again: done already
                continue
            if rotation.state is not State.REQUESTED:
                self._bad(thing, f"CSR for a rotation that is {rotation.state.value}")
                continue
            days = min(rotation.days, self._days_ceiling(self.clock.now()))
            requests.append(
                IssueRequest(
                    "device",
                    thing,
                    message.csr_pem,
                    days=max(1, days),
                    actor=self.actor,
                    replacing=int(rotation.old_serial, 16),
                )
            )
            waiting[thing] = rotation
        return requests, waiting

    def _clear_if_idle(self, thing: str) -> None:
        """Clear the thing's retained request again, unless a newer rotation of it is open
        (the retained request is that one's now)."""
        with store.transaction(self.inventory.engine) as conn:
            if store.select(conn, store.OPEN, things=[thing]):
                return
        self.sender.clear(thing)

    def _refused(
        self, failed: Sequence[Failure], waiting: dict[str, Rotation], now: dt.datetime
    ) -> None:
        """Fail the rotations whose CSR the policy refused, and tell their devices why."""
        for failure in failed:
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

    def _registered(
        self,
        issued: list[IssuedCertificate],
        waiting: dict[str, Rotation],
        unused: list[tuple[IssuedCertificate, Rotation]],
        now: dt.datetime,
    ) -> list[tuple[Rotation, IssuedCertificate]]:
        """The new certificates registered with IoT Core (when the thing is provisioned
        there); one that fails fails its rotation and goes to ``unused``."""
        registered: list[tuple[Rotation, IssuedCertificate]] = []
        for item in issued:
            rotation = waiting[item.record.thing or item.record.common_name]
            if self.ctx.register is not None:
                try:
                    self.ctx.register(item)
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
        return registered

    def _advance(
        self, registered: list[tuple[Rotation, IssuedCertificate]], now: dt.datetime
    ) -> list[tuple[Rotation, IssuedCertificate]]:
        """Record the new certificates on their rotations (still requested: compare and
        set); the ones recorded are the ones to send."""
        sent: list[tuple[Rotation, IssuedCertificate]] = []
        with self._writing() as conn:
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
        return sent

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
        repeats: set[str] = set()
        with self._writing() as conn:
            for thing, message in confirms:
                rotation = known.get(message.rotation_id)
                if rotation is None or rotation.thing != thing:
                    self._bad(thing, "confirmation for no rotation of this thing")
                    continue
                if rotation.state in (State.CONFIRMED, State.COMPLETED):
                    repeats.add(thing)  # a repeat: the first clearing may be lost
                    continue
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
                    note = f"{LATE}, after it had failed ({rotation.error})" if late else None
                    with conn.begin_nested():
                        moved = store.confirm(conn, rotation.id, rotation.state, now, note)
                except sa.exc.IntegrityError:  # a newer rotation of the thing is open
                    self._bad(thing, "late confirmation: a newer rotation is in progress")
                    continue
                if moved:
                    done.append(rotation)
                    if late:  # counted apart: its failure was counted when it failed
                        self.metrics.late_confirmed.inc()
        for thing in sorted(repeats):
            self._clear_if_idle(thing)
        for rotation in done:
            self.sender.clear(rotation.thing)
            self.metrics.duration.observe((now - rotation.requested_at).total_seconds())
        self.metrics.confirmed.inc(len(done))
        self._gauge_open()
