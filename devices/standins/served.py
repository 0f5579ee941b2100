"""What the running stand-ins actually serve, as opposed to what the home holds: the CRL
file Mosquitto and the HTTPS endpoint read (``RUN/crl.pem``; Mosquitto exposes no loaded
CRL, so the file it reads is the evidence), checked CA by CA against ``nextUpdate`` and
against the home's combined CRL, and repaired by handing the home's file over again."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from devices.standins.broker import reload_crl
from devices.standins.state import DevState, alive, load_state
from pki.home import Home
from pki.model import isoformat
from pki.revocation.crl import CrlHealth, crl_health

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\n?", re.DOTALL)
RELYING_PARTY = "the stand-ins (Mosquitto, HTTPS)"  # both read the same file


@dataclass(frozen=True)
class ServedCrl:
    """The CRLs one relying party serves, CA by CA, and whether they are the home's."""

    relying_party: str
    path: str
    matches_home: bool
    crls: tuple[CrlHealth, ...]
    now: dt.datetime

    @property
    def problems(self) -> list[str]:
        """Warnings for the operator: a CRL served stale, missing or near its nextUpdate,
        or a file that is not the home's."""
        messages = (h.message(self.now) for h in self.crls)
        found = [f"{self.relying_party}: {m}" for m in messages if m]
        if not self.matches_home:
            found.append(
                f"{self.relying_party}: the CRL file they read ({self.path}) is not the "
                "home's current one"
            )
        return found

    @property
    def healthy(self) -> bool:
        return self.matches_home and all(h.state in ("fresh", "due") for h in self.crls)

    def to_json(self) -> dict[str, Any]:
        return {
            "relying_party": self.relying_party,
            "path": self.path,
            "matches_home": self.matches_home,
            "crls": [
                {
                    "ca": h.ca,
                    "state": h.state,
                    "number": h.number,
                    "next_update": isoformat(h.next_update),
                }
                for h in self.crls
            ],
            "problems": self.problems,
        }


def served_crl(home: Home, state: DevState, now: dt.datetime) -> ServedCrl:
    """Read the CRL file the stand-ins read and judge it as a relying party would."""
    try:
        data = state.crl_file.read_bytes()
    except OSError:
        data = b""
    served = []
    for block in _PEM_CRL.findall(data):
        try:
            served.append(x509.load_pem_x509_crl(block))
        except ValueError:
            continue  # damaged: that CA counts as serving no CRL
    by_issuer = {crl.issuer: crl for crl in served}
    healths = []
    for ca, mine in home.crl_files.current().items():
        healths.append(crl_health(ca, by_issuer.get(mine.issuer), now))
    try:
        matches = data == home.combined_crl_path.read_bytes()
    except OSError:
        matches = not data
    return ServedCrl(RELYING_PARTY, str(state.crl_file), matches, tuple(healths), now)


@dataclass(frozen=True)
class CrlRepair:
    before: ServedCrl
    after: ServedCrl | None  # None: nothing to repair

    @property
    def repaired(self) -> bool:
        return self.after is not None


def check_and_repair(home: Home, now: dt.datetime) -> CrlRepair | None:
    """When the stand-ins run: check what they serve and, when it is not the home's
    current CRL file or is stale, hand them the home's file again (the broker re-reads
    it on SIGHUP). None when no stand-ins run. A failure to repair is raised
    (``BackendError``)."""
    state = load_state(home)
    if state is None or not alive(state):
        return None
    before = served_crl(home, state, now)
    if before.matches_home:  # nothing to hand over (a stale home CRL is re-signed, not here)
        return CrlRepair(before, None)
    reload_crl(home, state)
    return CrlRepair(before, served_crl(home, state, now))
