"""The rotation daemon: APScheduler wiring only.

Jobs: plan and request (every ``interval``), sweep (revoke superseded certificates after
their grace, fail unanswered rotations), CRL re-signing before nextUpdate. The main
thread works the devices' messages. A lease in the inventory keeps a second daemon off
the same inventory (and off the broker under the same client id).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from pki.errors import FleetPkiError, LeaseLost, OperatorError
from rotation import store
from rotation.pacing import Pacing, WavePacer
from rotation.planner import PlanItem
from rotation.service import RotationService

log = logging.getLogger("fleetpki.rotation")
LEASE = "rotation-daemon"
_PLAN = logging.getLogger("fleetpki.rotation.plan")
_SWEEP = logging.getLogger("fleetpki.rotation.sweep")
_CRL = logging.getLogger("fleetpki.rotation.crl")


class Daemon:
    def __init__(
        self,
        service: RotationService,
        plan: Callable[[], list[PlanItem]],
        *,
        interval: float = 300.0,
        sweep_interval: float = 30.0,
        crl_interval: float = 60.0,
        holder: str | None = None,
        lease: float | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self.service = service
        self.plan = plan
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.crl_interval = crl_interval
        self.holder = holder or store.holder_id()
        self._lease_lock = threading.Lock()
        # renewed by a job of its own every third of it, and before the main loop works
        self.lease_ttl = dt.timedelta(
            seconds=lease if lease is not None else max(3 * interval, 3 * sweep_interval, 60)
        )
        self.stop = threading.Event()
        self.pacing = pacing or Pacing()  # how each plan's devices are asked
        self._asking = threading.Lock()  # the plan's wave: main loop and jobs
        self._wave: WavePacer | None = None
        self._wave_ids: list[str] = []
        self._wave_started = 0.0
        self._wave_reported = False
        self._topped = 0.0
        self.epoch: int | None = None
        self.lost = False  # the lease went to another process: stopped, exit 1
        self._renewed = 0.0  # time.monotonic() of the last renewal (it runs on while paused)

    # -- the lease ------------------------------------------------------------------------

    def acquire(self) -> None:
        engine = self.service.inventory.engine
        now = self.service.clock.now()
        epoch = store.take_lease(engine, LEASE, self.holder, now, self.lease_ttl)
        if epoch is None:
            other = store.lease_holder(engine, LEASE, now) or "another process"
            raise OperatorError(
                f"another rotation daemon ({other}) is working this inventory; stop it first "
                f"(its lease runs out {self.lease_ttl} after its last renewal)"
            )
        self.epoch = epoch
        self._renewed = time.monotonic()
        self.service.ctx.fence = self._fence

    def _fence(self, conn: Any) -> None:
        """Every write transaction of the service checks the lease first (the epoch of our
        takeover, unexpired): a daemon paused past its lease and resumed writes nothing."""
        assert self.epoch is not None
        try:
            store.check_lease(conn, LEASE, self.holder, self.epoch, self.service.clock.now())
        except LeaseLost:
            self._lost()
            raise

    def _lost(self) -> None:
        if not self.lost:
            log.error("lost the rotation lease to another daemon; stopping")
        self.lost = True
        self.stop.set()

    def _renew(self) -> bool:
        engine = self.service.inventory.engine
        with self._lease_lock:  # the jobs run on several scheduler threads
            epoch = store.take_lease(engine, LEASE, self.holder, self.service.clock.now(),
                                     self.lease_ttl, renewing=self.epoch)  # fmt: skip
            if epoch is not None and epoch == self.epoch:
                self._renewed = time.monotonic()
                return True
        self._lost()
        return False

    def renew_if_old(self) -> bool:
        """Before working messages: renew when a third of the lease has passed since the
        last renewal (monotonic time runs on while the process is paused, so a resumed
        daemon asks the inventory before it does anything)."""
        if time.monotonic() - self._renewed < self.lease_ttl.total_seconds() / 3:
            return not self.stop.is_set()
        return self._renew()

    # -- jobs -----------------------------------------------------------------------------

    def plan_and_request(self) -> int:
        if not self._renew():
            return 0
        self._gauge_fleet()
        with store.transaction(self.service.inventory.engine) as conn:
            held = store.paused(conn)
        self.service.metrics.paused.set(0 if held is None else 1)
        if held is not None:
            _PLAN.info("rotation is paused (since %s): nothing asked", held["since"])
            return 0
        items = self.plan()
        with store.transaction(self.service.inventory.engine) as conn:
            busy = store.open_things(conn)
        # due and waiting to be asked: a certificate whose rotation is under way is not
        self.service.metrics.due.set(sum(1 for i in items if i.thing not in busy))
        self.service.metrics.last_plan.set(time.time())
        requested, servers = [], []
        with self._asking:  # a new plan: its own wave (the last one's rest is in it again)
            self._wave = WavePacer([i for i in items if i.profile == "device"], self.pacing)
            self._wave_ids, self._wave_started = [], time.monotonic()
            self._wave_reported = False
        try:  # each on its own: a failure of one must not skip the other
            requested = self._feed()
        except FleetPkiError as exc:
            _PLAN.error("requesting device rotations: %s", exc)
        try:
            servers = self.service.rotate_servers(items)
        except FleetPkiError as exc:
            _PLAN.error("replacing server certificates: %s", exc)
        if requested or servers:
            _PLAN.info(
                "%d certificates due: %d device rotations requested, %d server certificates "
                "replaced",
                len(items),
                len(requested),
                len(servers),
            )
        return len(requested) + len(servers)

    def _feed(self) -> list[Any]:
        """Ask the next devices of the last plan, as its pacing allows (in flight, rate,
        canaries, abort threshold) and as room is left across every wave (``max_open``)."""
        with self._asking:
            wave = self._wave
            if wave is None or wave.exhausted:
                return []
            rows = self.service.open_rotations(self._wave_ids)
            with store.transaction(self.service.inventory.engine) as conn:
                room = self.service.settings.max_open - len(store.open_things(conn))
            elapsed = time.monotonic() - self._wave_started
            asked = self.service.ask_next(wave, rows, elapsed, limit=room)
            self._wave_ids += [r.id for r in asked]
            if wave.aborted is not None and not self._wave_reported:
                self._wave_reported = True
                _PLAN.error("stopped asking this plan's devices: %s (%d not asked)",
                            wave.aborted, len(wave.remaining))  # fmt: skip
                self.service.metrics.waves_stopped.inc()
            return asked

    def top_up(self) -> None:
        """The rest of the last plan, as its pacing allows: from the sweep and, once a
        second, from the main loop."""
        self._topped = time.monotonic()
        asked = self._feed()
        if asked:
            _PLAN.info("%d more device rotations requested", len(asked))

    def _gauge_fleet(self) -> None:
        from rotation.planner import expiry_summary

        metrics, now = self.service.metrics, self.service.clock.now()
        issuer = self.service.issuer
        metrics.ca_expiry.labels("issuing").set(issuer.issuing_not_after.timestamp())
        try:
            from pki.ca.rollover import schedule

            policy = self.service.home.config().rollover_policy()
            planned = schedule(issuer.issuing_not_before, issuer.issuing_not_after, policy)
        except FleetPkiError as exc:  # a config.json changed under the daemon: said, not fatal
            _PLAN.warning("the CA rollover schedule: %s", exc)
        else:
            metrics.ca_rollover_prepare.labels("issuing").set(planned.prepare.timestamp())
            metrics.ca_rollover_activate.labels("issuing").set(planned.activate.timestamp())
        for row in expiry_summary(self.service.inventory, now):
            metrics.active.labels(row.profile).set(row.active)
            if row.earliest is not None:
                metrics.earliest_expiry.labels(row.profile).set(row.earliest.timestamp())
            for window, count in row.within.items():
                metrics.expiring.labels(row.profile, window).set(count)

    def sweep(self) -> None:
        if self._renew():
            result = self.service.sweep()
            self.top_up()
            if result.completed or result.expired:
                _SWEEP.info(
                    "%d rotations completed (old certificates revoked), %d timed out",
                    len(result.completed),
                    len(result.expired),
                )

    def refresh_crl(self) -> None:
        if self._renew() and self.service.refresh_crl():
            _CRL.info("CRL re-signed before its nextUpdate")

    @staticmethod
    def _guarded(job: Callable[[], object], name: str) -> Callable[[], None]:
        """The job, its failures logged under its own name (fleetpki.rotation.plan...)."""
        job_log = logging.getLogger(f"fleetpki.rotation.{name}")

        def run() -> None:
            try:
                job()
            except FleetPkiError as exc:
                job_log.error("%s", exc)
            except Exception:  # a bug must not end the job for good
                job_log.exception("%s failed", name)

        return run

    # -- running --------------------------------------------------------------------------

    def run(self) -> None:
        """Until ``stop`` is set (signal handler or a lost lease)."""
        self.acquire()
        scheduler = BackgroundScheduler(timezone=dt.UTC)
        now = dt.datetime.now(dt.UTC)
        for job, seconds, name in (
            (self._renew, max(1.0, self.lease_ttl.total_seconds() / 3), "lease"),
            (self.refresh_crl, self.crl_interval, "crl"),
            (self.plan_and_request, self.interval, "plan"),
            (self.sweep, self.sweep_interval, "sweep"),
        ):
            scheduler.add_job(
                self._guarded(job, name),
                "interval",
                seconds=seconds,
                id=name,
                next_run_time=now,
                max_instances=1,
                coalesce=True,
            )
        scheduler.start()
        try:
            while not self.stop.is_set() and _renewed(self):
                _guarded_process(self.service, wait=0.2, stop=self.stop)
                if self.pacing.paced and time.monotonic() - self._topped >= 1.0:
                    self._guarded(self.top_up, "plan")()
        finally:
            scheduler.shutdown(wait=True)
            store.release_lease(self.service.inventory.engine, LEASE, self.holder)


def wait_for(
    service: RotationService,
    ids: list[str],
    *,
    timeout: float,
    until_completed: bool,
    work: bool = True,
    sweep_every: float = 1.0,
    on_progress: Callable[[dict[str, int]], None] = lambda _counts: None,
    feed: Callable[[list[store.Rotation]], list[str]] | None = None,
    fed: Callable[[], bool] = lambda: True,
    holder: Daemon | None = None,
) -> dict[str, int]:
    """Until the rotations ``ids`` are confirmed (or, with ``until_completed``, their old
    certificates revoked), failed, or ``timeout`` s pass: work the devices' messages and
    sweep (``work``), or only watch while a running daemon does. Returns how many are in
    each state."""
    if not ids and feed is None:  # nothing was asked: nothing to wait for
        return {s.value: 0 for s in store.State}
    done_states = {store.State.FAILED, store.State.COMPLETED}
    if not until_completed:
        done_states.add(store.State.CONFIRMED)
    deadline = time.monotonic() + timeout
    next_sweep = 0.0
    counts: dict[str, int] = {}
    while True:
        # the lease is held while waiting: renewed, and a lost one ends the wait
        if holder is not None and not _renewed(holder):
            return counts or {s.value: 0 for s in store.State}
        if work:
            _guarded_process(service, wait=0.1)
        else:
            time.sleep(0.2)
        now = time.monotonic()
        if now >= next_sweep:
            if work:
                Daemon._guarded(service.sweep, "sweep")()
            next_sweep = now + sweep_every
            rows = service.open_rotations(ids)
            if feed is not None:  # a paced wave: ask the next devices, as rows stand
                ids = [*ids, *feed(rows)]
                rows = service.open_rotations(ids)
            counts = {s.value: 0 for s in store.State}
            for row in rows:
                counts[row.state.value] += 1
            on_progress(counts)
            if (all(row.state in done_states for row in rows) and fed()) or now >= deadline:
                return counts


def _renewed(daemon: Daemon) -> bool:
    """Renew if due; a storage failure is logged and waited out (the lease lasts), a lease
    lost to another process is False."""
    try:
        return daemon.renew_if_old()
    except FleetPkiError as exc:
        log.error("renewing the rotation lease: %s", exc)
        daemon.stop.wait(1.0)
        return not daemon.lost


def _guarded_process(
    service: RotationService, wait: float, stop: threading.Event | None = None
) -> None:
    """One batch of device messages; nothing a device sends, and no failure of ours,
    stops the loop (the batch goes back into the queue). Failures in a row make the pause
    grow, up to 30 s, so a database or CA that is down is not hammered."""
    try:
        service.process(wait=wait)
        service.failures_in_a_row = 0
        return
    except FleetPkiError as exc:
        log.error("processing device messages: %s", exc)
    except Exception:
        log.exception("processing device messages failed")
    service.failures_in_a_row += 1
    pause = min(30.0, 0.5 * 2 ** min(service.failures_in_a_row, 6))
    if stop is not None:
        stop.wait(pause)  # SIGTERM does not wait for the back-off
    else:
        time.sleep(pause)
