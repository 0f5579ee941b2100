"""Server rotation on disk: a key and certificate made here, written as a new version,
``current`` swapped in one rename, the server's reload command run; a failed reload is
run again on each pass (the old certificate stays valid until it works); an interrupted
rotation is settled from what ``current`` points to."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from pki import faults
from pki.errors import (
    FleetPkiError,
    OperatorError,
)
from pki.model import RevocationReason, serial_hex
from rotation import store
from rotation.context import (
    Workflow,
)
from rotation.planner import PlanItem
from rotation.store import Rotation, State

if TYPE_CHECKING:
    from rotation import servers as servers_mod

log = logging.getLogger("fleetpki.rotation")


class ServerFlow(Workflow):
    def rotate_servers(
        self, items: Sequence[PlanItem], *, names: Sequence[str] = ()
    ) -> list[Rotation]:
        """Replace the certificates of the server targets that are due (or ``names``): a
        key and certificate made here, swapped in on disk, the server reloaded; the old
        certificate is revoked as superseded after the grace period (``sweep``). Also runs
        again the reload commands that failed last time."""
        from rotation import servers

        with self.ctx.server_lock:  # not the devices' lock: a reload may take a minute
            engine = self.inventory.engine
            self._retry_reloads()
            due = {serial_hex(i.serial) for i in items if i.profile == "server"}
            now = self.clock.now()
            with self._writing() as conn:
                busy = {r.thing: r for r in store.select(conn, store.OPEN)}
                recently_failed = store.failed_since(conn, now - self.settings.retry_after)
                if store.paused(conn) is not None:
                    due = set()  # paused: only a server named by the operator is rotated
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
            if done:
                self._gauge_open()
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
        with self._writing() as conn:
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
            with self._writing() as conn:
                servers.record_serial(conn, target.name, new, now)
                store.advance(conn, rotation.id, State.REQUESTED, State.ISSUED, new_serial=new)
        except BaseException:
            self._withdraw([(issued, rotation)])
            raise
        faults.reach(faults.ROTATION_RECORDED)
        try:
            servers.install(target.directory, key_pem, issued, target.group)
        except BaseException as exc:
            # not in use anywhere: withdrawn, the old one stays (a crash here is put right
            # by the sweep, which looks at what 'current' points to)
            with self._writing() as conn:
                servers.record_serial(conn, target.name, target.serial, now)
            self._fail(rotation, State.ISSUED, "server-install", str(exc), now)
            self._withdraw([(issued, rotation)])
            if not isinstance(exc, FleetPkiError):
                raise
            return replace(rotation, new_serial=new, state=State.FAILED, error=str(exc))
        faults.reach(faults.ROTATION_INSTALLED)
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
        with self._writing() as conn:
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
        with self._writing() as conn:
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

    def _server_targets(self) -> dict[str, servers_mod.ServerTarget]:
        from rotation import servers

        return {t.name: t for t in servers.targets(self.inventory.engine)}

    def settle(
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
            self._fail(rotation, rotation.state, "reload", "interrupted before the reload", now,
                       counted_as="interrupted")  # fmt: skip
            return
        self._fail(rotation, rotation.state, "server-install", "interrupted", now,
                   counted_as="interrupted")  # fmt: skip
        if on_disk and on_disk != target.serial:
            with self._writing() as conn:
                servers.record_serial(conn, target.name, on_disk, now)
        if rotation.new_serial and self._active(rotation.new_serial):
            from pki.revocation.revoke import revoke_and_publish

            revoke_and_publish(self.home, self.inventory, self.issuer.ca, self.clock,
                               [int(rotation.new_serial, 16)],
                               RevocationReason.CESSATION_OF_OPERATION, self.actor,
                               raise_failures=False)  # fmt: skip
