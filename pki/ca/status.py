"""What ``ca show`` (and ``ca init --json``) report: the CA certificates, the
configuration, and how each CA's published CRL stands — one shape for both."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pki.ca.rollover import Schedule
from pki.home import Home, HomeConfig
from pki.issue.profiles import ISSUING_CA_PROFILE, ROOT_CA_PROFILE
from pki.model import CertificateRecord, Status, isoformat
from pki.revocation.crl import CrlHealth, crl_health
from pki.storage import Inventory


@dataclass(frozen=True)
class CaStatus:
    home: Home
    certificates: tuple[CertificateRecord, ...]
    crls: tuple[CrlHealth, ...]  # empty for a backend that publishes its own
    now: dt.datetime
    others: tuple[str, ...] = ()  # the status hooks' warnings (stand-ins, rotation daemon)
    rollover: RolloverView | None = None  # the issuing CA's scheduled rollover

    @property
    def warnings(self) -> list[str]:
        crl = [m for m in (h.message(self.now) for h in self.crls) if m]
        rollover = list(self.rollover.warnings(self.now)) if self.rollover else []
        return crl + rollover + list(self.others)

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
            "rollover": self.rollover.to_json(self.now) if self.rollover else None,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class RolloverView:
    """Where the issuing CA stands against its scheduled rollover. No rollover is under
    way yet (``phase`` None): fleetpki does not run one yet, it says when one is due and
    whether the settings can work."""

    issuing_serial: str
    not_after: dt.datetime
    planned: Schedule
    leaf_lifetime: dt.timedelta  # the longest default leaf lifetime of the profiles
    problems: tuple[str, ...]

    def warnings(self, now: dt.datetime) -> Iterator[str]:
        yield from self.problems
        if now >= self.planned.prepare:
            yield (
                f"the issuing CA {self.issuing_serial} is past its scheduled rollover "
                f"preparation ({isoformat(self.planned.prepare)}; its successor should issue "
                f"from {isoformat(self.planned.activate)}, it expires "
                f"{isoformat(self.not_after)}): plan its replacement"
            )

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "issuing_ca": self.issuing_serial,
            "not_after": isoformat(self.not_after),
            "phase": None,
            "prepare_at": isoformat(self.planned.prepare),
            "activate_at": isoformat(self.planned.activate),
            "due": now >= self.planned.prepare,
            "leaf_lifetime_days": self.leaf_lifetime.days,
            "problems": list(self.problems),
        }


def rollover_view(
    config: HomeConfig, issuing: CertificateRecord | None
) -> RolloverView | None:
    """The scheduled rollover of ``issuing`` under the home's settings."""
    if issuing is None:
        return None
    from pki.ca.rollover import schedule, settings_problems
    from pki.issue.profiles import PROFILES

    policy = config.rollover_policy()
    leaf = dt.timedelta(days=max(p.default_days for p in PROFILES.values()))
    planned = schedule(issuing.not_before, issuing.not_after, policy)
    problems = settings_problems(issuing.not_before, issuing.not_after, leaf, policy)
    return RolloverView(issuing.serial_hex, issuing.not_after, planned, leaf, tuple(problems))


def ca_status(
    home: Home, inventory: Inventory, now: dt.datetime, *, hooks: bool = True
) -> CaStatus:
    records = inventory.find(now=now, include_ca=True, profile=ROOT_CA_PROFILE)
    issuing = inventory.find(now=now, include_ca=True, profile=ISSUING_CA_PROFILE)
    records += issuing
    active = [r for r in issuing if r.effective_status(now) is Status.ACTIVE]
    current = max(active, key=lambda r: r.not_after, default=None)
    config = home.config()
    crls: tuple[CrlHealth, ...] = ()
    if config.backend == "local":
        files = home.crl_files
        crls = tuple(crl_health(ca, files.load(ca), now) for ca in ("issuing", "root"))
    others: tuple[str, ...] = ()
    if hooks:
        from pki.hooks import StatusQuery, status_warnings

        others = tuple(status_warnings(StatusQuery(home.path, inventory, now)))
    return CaStatus(home, tuple(records), crls, now, others, rollover_view(config, current))
