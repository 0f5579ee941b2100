"""Keeping the CRLs fresh: each CA's re-signed once two thirds of its validity have
passed (a stale CRL makes the broker refuse every device), the root's only when its key is
at hand (else a warning), and the new file handed to the running stand-ins."""

from __future__ import annotations

import datetime as dt
import logging

from pki.errors import FleetPkiError
from rotation.context import Workflow

log = logging.getLogger("fleetpki.rotation")
SERVED_LABEL = "stand-ins"  # the relying_party label of the stand-ins' Mosquitto and HTTPS


class CrlRefresher(Workflow):
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
            if done.signed and self.ctx.on_crl is not None:
                self.ctx.on_crl()
        # outside the lock: handshakes and a probe renewal must not hold up device messages
        self._check_served(now)
        return bool(done.signed)

    def _check_served(self, now: dt.datetime) -> None:
        """What the relying parties actually serve (a broker given an old file, a reload
        that never happened): checked on every tick, repaired from the home's CRLs."""
        if self.ctx.served_crls is None:
            return
        try:
            repair = self.ctx.served_crls(now)
        except FleetPkiError as exc:
            log.error("repairing the CRL the relying parties serve: %s", exc)
            self.metrics.crl_served_ok.labels(SERVED_LABEL).set(0)
            return
        except Exception:  # a bug must not end the CRL job (nor a --once pass)
            log.exception("checking the CRL the relying parties serve failed")
            self.metrics.crl_served_ok.labels(SERVED_LABEL).set(0)
            return
        if repair is None:  # no stand-ins run
            return
        if repair.repaired:
            for problem in repair.before.problems:
                log.warning("repaired: %s", problem)
            self.metrics.crl_repairs.labels(SERVED_LABEL).inc()
        report = repair.after or repair.before
        for problem in report.problems:
            log.error("still after the repair: %s", problem)
        self.metrics.crl_served_ok.labels(SERVED_LABEL).set(1 if report.healthy else 0)
        for health in report.crls:
            if health.next_update is not None:
                self.metrics.crl_served_next_update.labels(SERVED_LABEL, health.ca).set(
                    health.next_update.timestamp()
                )
