"""The sweep: revoke (superseded, one CRL) the old certificates whose grace period is over,
and fail the rotations whose device did not answer in time (an interrupted server
rotation is settled from the disk). A rotation completes only once its old certificate is
revoked and the revocation hooks (IoT Core, the broker's CRL) succeeded."""

from __future__ import annotations

import datetime as dt
import logging

from pki.errors import NotFound
from pki.model import RevocationReason, Status
from rotation import store
from rotation.context import (
    HOOK_RETRIES_FOR,
    RotationContext,
    SweepResult,
    Workflow,
)
from rotation.device_flow import BY_USE, LATE
from rotation.server_flow import ServerFlow
from rotation.store import Rotation, State

log = logging.getLogger("fleetpki.rotation")


class Sweeper(Workflow):
    def __init__(self, ctx: RotationContext, servers: ServerFlow) -> None:
        super().__init__(ctx)
        self.servers = servers

    def sweep(self) -> SweepResult:
        """Revoke (superseded) the old certificates whose grace period is over, in one CRL;
        fail the rotations whose device did not answer in time. A rotation is completed
        only once its old certificate is revoked and the revocation hooks (IoT Core, the
        broker's CRL) succeeded; otherwise it stays confirmed and the next sweep retries."""
        result = SweepResult()
        with self._lock:
            now = self.clock.now()
            with self._writing() as conn:
                confirmed = store.select(conn, [State.CONFIRMED])
                stale = store.select(conn, [State.REQUESTED, State.ISSUED], deadline_before=now)
            due = [r for r in confirmed if r.grace_over(now)]
            if due:
                self._complete(due, now, result)
            self._expire(stale, now, result)
            self._gauge_open()
        return result

    def _complete(self, due: list[Rotation], now: dt.datetime, result: SweepResult) -> None:
        """Revoke the certificates the ``due`` rotations superseded, in one CRL, and
        complete the rotations whose revocation (and its hooks) worked."""
        from pki.revocation.revoke import revoke_and_publish

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
            if why is not None and self._hooks_given_up(rotation, failing[rotation.id], now):
                # revoked in the inventory and the CRL: a hook that keeps failing (the
                # certificate deleted in IoT Core...) must not block the thing
                log.error("%s: completing despite %s", rotation.thing, why)
                self.metrics.failed.labels("hook").inc()
                gave_up[rotation.id] = why
                del unfinished[rotation.id]
        # completed when the revocation is done: never before it
        self._record(due, unfinished, gave_up, max(now, self.clock.now()), result)
        for error in result.errors:
            log.error("revoking a superseded certificate: %s", error)
        self.metrics.completed.inc(len(result.completed))
        if result.errors:
            self.metrics.failed.labels("revoke").inc(len(result.errors))

    def _record(
        self,
        due: list[Rotation],
        unfinished: dict[str, str],
        gave_up: dict[str, str],
        now: dt.datetime,
        result: SweepResult,
    ) -> None:
        """Completed, or still confirmed with the error kept (retried next sweep)."""
        with self._writing() as conn:
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
                    continue
                # how it was confirmed (late, by use) stays on the record
                how = rotation.error if (rotation.error or "").startswith((LATE, BY_USE)) else None
                error = (
                    f"completed, but a revocation hook kept failing since "
                    f"{rotation.retry_since}: {gave_up[rotation.id]}"
                    if rotation.id in gave_up
                    else how
                )
                if store.advance(conn, rotation.id, State.CONFIRMED, State.COMPLETED,
                                 completed_at=now, updated_at=now, error=error):  # fmt: skip
                    result.completed.append(rotation)

    def _expire(self, stale: list[Rotation], now: dt.datetime, result: SweepResult) -> None:
        """Rotations past their deadline: a server's is settled from the disk, a device
        that did not answer fails its rotation."""
        targets = self.servers._server_targets()
        for rotation in stale:
            target = targets.get(rotation.thing)
            if target is not None:
                # a server rotation running now (a slow reload) is not interrupted: the
                # next sweep settles it if it still needs settling
                if self.ctx.server_lock.acquire(blocking=False):
                    try:
                        self.servers.settle(rotation, target, now)
                    finally:
                        self.ctx.server_lock.release()
                    result.expired.append(rotation)
                continue
            what = "send its CSR" if rotation.state is State.REQUESTED else "confirm"
            self._fail(
                rotation,
                rotation.state,
                "timeout",
                # the deadline recorded with the rotation: the process that asked may have
                # had another --answer-timeout than this one
                f"the device did not {what} by its deadline "
                f"{rotation.deadline.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z",
                now,
            )
            result.expired.append(rotation)

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
        with self._writing() as conn:
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
