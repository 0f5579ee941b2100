"""Keeping the CRLs fresh: each CA's re-signed once two thirds of its validity have
passed (a stale CRL makes the broker refuse every device), the root's only when its key is
at hand (else a warning), and the new file handed to the running stand-ins."""

from __future__ import annotations

import logging

from rotation.context import Workflow

log = logging.getLogger("fleetpki.rotation")


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
            return bool(done.signed)
