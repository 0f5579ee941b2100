"""The rotation service: one per process (the daemon's, a wave's), the facade every front
end calls. The work is in the flows it puts together on one context: ``device_flow``
(MQTT), ``server_flow`` (on disk), ``sweep`` (revoking what was superseded, ending what
timed out) and ``crl_refresh``. ``request``, ``process``, ``sweep``, ``refresh_crl`` and
``rotate_servers`` hold one lock: the daemon calls them from the scheduler's threads and
its own loop. The clock is injected; nothing here sleeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pki.clock import Clock
from pki.home import Home
from pki.issue.issuer import Issuer
from pki.storage import Inventory
from rotation import store
from rotation.context import (
    ContextView,
    Register,
    RotationContext,
    RotationSettings,
    Sender,
    SweepResult,
    _nothing,
)
from rotation.crl_refresh import CrlRefresher
from rotation.device_flow import DeviceFlow
from rotation.metrics import Metrics
from rotation.pacing import WavePacer
from rotation.planner import PlanItem
from rotation.server_flow import ServerFlow
from rotation.store import Rotation
from rotation.sweep import Sweeper

if TYPE_CHECKING:
    from devices.standins.served import CrlRepair

__all__ = ["RotationService", "RotationSettings", "SweepResult"]


class RotationService(ContextView):
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
        served_crls: Callable[[dt.datetime], CrlRepair | None] | None = None,
        proof_of_use: Callable[[set[str]], set[str]] | None = None,
        metrics: Metrics | None = None,
        actor: str = "rotation",
    ) -> None:
        super().__init__(
            RotationContext(
                home=home,
                inventory=inventory,
                issuer=issuer,
                clock=clock,
                settings=settings or RotationSettings(),
                metrics=metrics or Metrics(),
                actor=actor,
                sender=sender,
                register=register,
                on_crl=on_crl,
                served_crls=served_crls,
                proof_of_use=proof_of_use,
            )
        )
        self.devices = DeviceFlow(self.ctx)
        self.servers = ServerFlow(self.ctx)
        self.sweeper = Sweeper(self.ctx, self.servers)
        self.crls = CrlRefresher(self.ctx)

    # -- what the flows do ------------------------------------------------------------------

    def request(
        self, items: Sequence[PlanItem], *, force: bool = False, limit: int | None = None
    ) -> list[Rotation]:
        return self.devices.request(items, force=force, limit=limit)

    def ask_next(
        self,
        wave: WavePacer,
        rows: Sequence[Rotation],
        elapsed: float,
        *,
        limit: int | None = None,
        force: bool = False,
    ) -> list[Rotation]:
        """Ask the devices a paced wave offers now (as ``rows``, its rotations so far,
        stand), and tell it which were asked: a wave by hand and the daemon's plans alike."""
        offered = wave.next(rows, elapsed, limit)
        asked = self.request(offered, force=force) if offered else []
        wave.record(asked, len(offered))
        return asked

    def handle(
        self, thing: str, kind: str, payload: bytes, ack: Callable[[], None] = _nothing
    ) -> None:
        self.devices.handle(thing, kind, payload, ack)

    def process(self, wait: float = 0.2, max_batch: int = 1000) -> int:
        return self.devices.process(wait, max_batch)

    def sweep(self) -> SweepResult:
        """Complete and expire what is due, then send again the requests due for it."""
        if self.ctx.sender is not None:
            self.devices.confirm_by_use()  # before the sweep ends them as unconfirmed
        result = self.sweeper.sweep()
        if self.ctx.sender is not None:
            result.resent = self.devices.resend()
        return result

    def refresh_crl(self) -> bool:
        return self.crls.refresh_crl()

    def rotate_servers(
        self, items: Sequence[PlanItem], *, names: Sequence[str] = ()
    ) -> list[Rotation]:
        return self.servers.rotate_servers(items, names=names)

    def open_rotations(self, ids: Sequence[str]) -> list[Rotation]:
        """The rotations ``ids`` (none for no ids: never every rotation)."""
        if not ids:
            return []
        with store.transaction(self.inventory.engine) as conn:
            return store.select(conn, ids=ids)

    # -- the shared context (read through ContextView; these are also set) ----------------

    @property
    def failures_in_a_row(self) -> int:
        return self.ctx.failures_in_a_row

    @failures_in_a_row.setter
    def failures_in_a_row(self, value: int) -> None:
        self.ctx.failures_in_a_row = value

    @property
    def register(self) -> Register | None:
        return self.ctx.register

    @register.setter
    def register(self, value: Register | None) -> None:
        self.ctx.register = value

    @property
    def on_crl(self) -> Callable[[], None] | None:
        return self.ctx.on_crl

    @on_crl.setter
    def on_crl(self, value: Callable[[], None] | None) -> None:
        self.ctx.on_crl = value
