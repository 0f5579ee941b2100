"""What every rotation workflow shares: the settings, the values that cross them, and a
``RotationContext`` (the home, inventory, issuer, clock, metrics, the lock they all hold,
the inbox of device messages) with the helpers every flow uses (fail a rotation, withdraw
certificates nobody will use, tell a bad message). The flows are ``device_flow`` (MQTT),
``server_flow`` (on disk), ``sweep`` and ``crl_refresh``; ``service`` puts them together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from devices import rotation_protocol as rp
from pki.clock import Clock
from pki.errors import (
    FleetPkiError,
    NotFound,
)
from pki.home import Home
from pki.issue.issuer import Issuer
from pki.issue.policy import BACKDATE
from pki.issue.profiles import get_profile
from pki.model import IssuedCertificate, RevocationReason, Status, serial_hex
from pki.storage import Inventory
from rotation import store
from rotation.metrics import Metrics
from rotation.planner import PlanItem
from rotation.store import Rotation, State

if TYPE_CHECKING:
    from devices.standins.served import CrlRepair

log = logging.getLogger("fleetpki.rotation")


class Sender(Protocol):
    def send(self, thing: str, message: rp.Message) -> None:
        """A request goes out retained: a device that connects later still finds it."""

    def clear(self, thing: str) -> None:
        """The thing's rotation ended: its retained request is removed."""


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
    # an unanswered request is sent again after resend_after, then twice as long each time
    # up to resend_max, until the answer timeout ends the rotation
    resend_after: dt.timedelta = dt.timedelta(minutes=1)
    resend_max: dt.timedelta = dt.timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.grace < dt.timedelta(0) or self.answer_timeout <= dt.timedelta(0):
            raise ValueError("grace must be >= 0 and the answer timeout > 0")
        if self.max_open < 1:
            raise ValueError("max_open must be at least 1")
        if self.retry_after < dt.timedelta(0):
            raise ValueError("the retry delay must be >= 0")
        if not dt.timedelta(seconds=1) <= self.resend_after <= self.resend_max:
            raise ValueError("the resend delay must be at least 1s and at most its maximum")

    def resend_delay(self, attempts: int) -> dt.timedelta:
        """After the request went out ``attempts`` times: exponential, capped."""
        return min(self.resend_max, self.resend_after * (1 << min(max(attempts - 1, 0), 30)))


@dataclass
class SweepResult:
    completed: list[Rotation] = field(default_factory=list)
    expired: list[Rotation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resent: int = 0  # requests sent again to devices that had not answered


def lifetime_days(item: PlanItem) -> int:
    """The replacement gets the lifetime the old certificate had (whole days, at least 1)."""
    seconds = (item.not_after - item.not_before - BACKDATE).total_seconds()
    return max(1, round(seconds / 86_400))


@dataclass
class RotationContext:
    """One per process (the daemon's, a wave's): what the flows work with."""

    home: Home
    inventory: Inventory
    issuer: Issuer
    clock: Clock
    settings: RotationSettings
    metrics: Metrics
    actor: str = "rotation"
    sender: Sender | None = None  # None: server certificates only
    register: Register | None = None  # IoT Core registration of a new device certificate
    on_crl: Callable[[], None] | None = None  # a CRL was re-signed: tell the stand-ins
    # what the relying parties serve, checked and repaired (``devices.standins.served``)
    served_crls: Callable[[dt.datetime], CrlRepair | None] | None = None
    # proof of use: which of these new certificates (hex serials) a relying party accepted
    proof_of_use: Callable[[set[str]], set[str]] | None = None
    # in a daemon: checks its lease inside every write transaction (rotation.daemon)
    fence: Callable[[sa.Connection], None] | None = None
    inbox: queue.Queue[Inbound] = field(default_factory=queue.Queue)
    failures_in_a_row: int = 0  # of process(): the daemon's loop backs off on them
    lock: threading.RLock = field(default_factory=threading.RLock)
    # server rotation's own: a reload command may take a minute, and device rotation and
    # the sweep must not wait for it
    server_lock: threading.RLock = field(default_factory=threading.RLock)


class ContextView:
    """Read access to a shared ``RotationContext`` (the service and every workflow)."""

    def __init__(self, ctx: RotationContext) -> None:
        self.ctx = ctx

    @property
    def home(self) -> Home:
        return self.ctx.home

    @property
    def inventory(self) -> Inventory:
        return self.ctx.inventory

    @property
    def issuer(self) -> Issuer:
        return self.ctx.issuer

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @property
    def settings(self) -> RotationSettings:
        return self.ctx.settings

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def actor(self) -> str:
        return self.ctx.actor

    @property
    def inbox(self) -> queue.Queue[Inbound]:
        return self.ctx.inbox

    @property
    def _lock(self) -> threading.RLock:
        return self.ctx.lock

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """A transaction on the rotation tables, fenced: in a daemon, the lease is checked
        in the same transaction (``LeaseLost`` when another process holds it now)."""
        with store.transaction(self.inventory.engine) as conn:
            if self.ctx.fence is not None:
                self.ctx.fence(conn)
            yield conn

    @property
    def sender(self) -> Sender:
        if self.ctx.sender is None:
            raise AssertionError("this service has no MQTT channel to the devices")
        return self.ctx.sender


class Workflow(ContextView):
    """A rotation workflow on a shared context, with the helpers they all use."""

    def _days_ceiling(self, now: dt.datetime) -> int:
        """The longest lifetime a replacement may have: the device profile's maximum, and
        never beyond the issuing CA (the old lifetime may no longer fit)."""
        remaining = (self.issuer.issuing_not_after - now - BACKDATE).total_seconds() // 86_400
        return int(min(get_profile("device").max_days, remaining))

    def _bad(self, thing: str, why: str) -> None:
        self.metrics.bad_messages.inc()
        log.warning("ignored a rotation message from %s: %s", thing, why)

    def _rotations(self, ids: Sequence[str]) -> dict[str, Rotation]:
        with self._writing() as conn:
            return {r.id: r for r in store.select(conn, ids=ids)}

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
        *,
        counted_as: str | None = None,
        **values: object,
    ) -> None:
        """``values``: e.g. the ``new_serial`` of a certificate issued but not used, so
        that a later rotation of the thing finds and supersedes it if its withdrawal
        failed. ``counted_as``: the metric's reason when it is not ``reason`` (a rotation
        interrupted by a crash is settled as owing a reload, but it is no reload failure)."""
        with self._writing() as conn:
            moved = store.advance(
                conn,
                rotation.id,
                expected,
                State.FAILED,
                error=f"{reason}: {message}",
                updated_at=now,
                next_attempt_at=None,
                **values,
            )
        if moved and rotation.profile == "device" and self.ctx.sender is not None:
            self.ctx.sender.clear(rotation.thing)
        self.metrics.failed.labels(counted_as or reason).inc()
        log.warning("rotation of %s failed (%s): %s", rotation.thing, reason, message)

    def _gauge_open(self) -> None:
        """The in-progress gauge, refreshed at the end of whatever changed rotations (once
        per batch or sweep, not once per rotation: a sweep may end a thousand)."""
        with store.transaction(self.inventory.engine) as conn:
            counts = store.counts(conn)
        for state in store.OPEN:
            self.metrics.open.labels(state.value).set(counts[state.value])
