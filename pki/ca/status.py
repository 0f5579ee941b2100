"""What ``ca show`` (and ``ca init --json``) report: the CA certificates, the
configuration, and how each CA's published CRL stands — one shape for both."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pki.home import Home
from pki.issue.profiles import ISSUING_CA_PROFILE, ROOT_CA_PROFILE
from pki.model import CertificateRecord, isoformat
from pki.revocation.crl import CrlHealth, crl_health
from pki.storage import Inventory


@dataclass(frozen=True)
class CaStatus:
    home: Home
    certificates: tuple[CertificateRecord, ...]
    crls: tuple[CrlHealth, ...]  # empty for a backend that publishes its own
    now: dt.datetime
    others: tuple[str, ...] = ()  # the status hooks' warnings (stand-ins, rotation daemon)

    @property
    def warnings(self) -> list[str]:
        return [m for m in (h.message(self.now) for h in self.crls) if m] + list(self.others)

    def to_json(self) -> dict[str, Any]:
        files = self.home.crl_files
        return {
            "home": str(self.home.path),
            "config": self.home.config().to_json(),
            "certificates": [r.to_json(self.now) for r in self.certificates],
            "crls": [
                {
                    "ca": h.ca,
                    "state": h.state,
                    "number": h.number,
                    "this_update": isoformat(h.this_update),
                    "next_update": isoformat(h.next_update),
                    "refresh_at": isoformat(h.refresh_at),
                    "path": str(files.pem(h.ca)),
                }
                for h in self.crls
            ],
            "combined_crl": str(files.combined) if self.crls else None,
            "warnings": self.warnings,
        }


def ca_status(
    home: Home, inventory: Inventory, now: dt.datetime, *, hooks: bool = True
) -> CaStatus:
    records = inventory.find(now=now, include_ca=True, profile=ROOT_CA_PROFILE)
    records += inventory.find(now=now, include_ca=True, profile=ISSUING_CA_PROFILE)
    crls: tuple[CrlHealth, ...] = ()
    if home.config().backend == "local":
        files = home.crl_files
        crls = tuple(crl_health(ca, files.load(ca), now) for ca in ("issuing", "root"))
    others: tuple[str, ...] = ()
    if hooks:
        from pki.hooks import StatusQuery, status_warnings

        others = tuple(status_warnings(StatusQuery(home.path, inventory, now)))
    return CaStatus(home, tuple(records), crls, now, others)
