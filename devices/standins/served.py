"""What the running stand-ins actually serve, as opposed to what the home holds: the CRL
file Mosquitto and the HTTPS endpoint read (``RUN/crl.pem``; Mosquitto exposes no loaded
CRL, so the file it reads is the evidence), checked CA by CA against ``nextUpdate`` and
against the home's combined CRL, and repaired by handing the home's file over again."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from devices.recent import Recent
from devices.standins.broker import reload_crl
from devices.standins.probe import CanaryNotRun, Probe, handshake
from devices.standins.state import DevState, running
from pki.errors import FleetPkiError
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
    refused: str | None = None  # the canary handshake refused: why (None: accepted or not tried)
    canary_error: str | None = None  # the canary could not tell (not a CRL matter)

    @property
    def problems(self) -> list[str]:
        """Warnings for the operator: a CRL served stale, missing or near its nextUpdate,
        or a file that is not the home's."""
        messages = (h.message(self.now) for h in self.crls)
        found = [f"{self.relying_party}: {m}" for m in messages if m]
        if self.refused is not None:
            found.append(
                f"{self.relying_party}: the broker refuses a fresh certificate of fleetpki's "
                f"own ({self.refused}): the CRL it has loaded is stale, or its CA file is wrong"
            )
        if self.canary_error is not None:
            found.append(f"{self.relying_party}: no canary handshake: {self.canary_error}")
        if not self.matches_home:
            found.append(
                f"{self.relying_party}: the CRL file they read ({self.path}) is not the "
                "home's current one"
            )
        return found

    @property
    def healthy(self) -> bool:
        return (
            self.matches_home
            and self.refused is None
            and self.canary_error is None
            and all(h.state in ("fresh", "due") for h in self.crls)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "relying_party": self.relying_party,
            "path": self.path,
            "matches_home": self.matches_home,
            "canary_refused": self.refused,
            "canary_error": self.canary_error,
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


def check_and_repair(
    home: Home, now: dt.datetime, probe: Callable[[], Probe] | None = None
) -> CrlRepair | None:
    """When the stand-ins run: check what they serve — the file they read, and with
    ``probe`` a canary handshake with the broker — and, when the file is not the home's
    current CRL or the broker refuses a fresh certificate, hand them the home's file again
    and make the broker re-read it. None when no stand-ins run. A failure to repair is
    raised (``BackendError``)."""
    state = running(home)
    if state is None:
        return None
    identity: Probe | str | None = None
    if probe is not None:
        try:
            identity = probe()
        except FleetPkiError as exc:  # the file is still checked and repaired
            identity = f"no probe certificate: {exc}"
    before = _judged(home, state, now, identity)
    if before.matches_home and before.refused is None:
        return CrlRepair(before, None)  # (a stale home CRL is re-signed, not repaired here)
    reload_crl(home, state, force=True)
    after = _judged(home, state, now, identity)
    deadline = time.monotonic() + 5  # the broker re-reads on SIGHUP, a moment later
    while after.refused is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _judged(home, state, now, identity)
    return CrlRepair(before, after)


def _judged(
    home: Home, state: DevState, now: dt.datetime, identity: Probe | str | None
) -> ServedCrl:
    served = served_crl(home, state, now)
    if identity is None:
        return served
    if isinstance(identity, str):
        return replace(served, canary_error=identity)
    try:
        return replace(served, refused=handshake(identity, state.mqtt_port, state.ca_file))
    except CanaryNotRun as exc:
        return replace(served, canary_error=str(exc))


class UsedSerials:
    """Proof of use: which of the serials asked about (hex) the running HTTPS stand-in
    accepted in a mutual TLS handshake (its access log names each client certificate's
    serial). The log is read on from where the last call stopped, to its end (within
    ``budget`` seconds; the rest at the next call), whole lines only; a new or truncated
    log (another file, or its first bytes changed) is read from its start, and a line
    longer than ``CHUNK`` is skipped. The serials seen accepted are remembered (the last
    ``memory`` of them). Mosquitto logs a client's name, never its certificate, so it
    proves nothing here."""

    CHUNK = 4 * 1024 * 1024
    HEAD = 256  # the first bytes of the log: a log made anew is noticed by them

    def __init__(self, home: Home, memory: int = 200_000, budget: float = 2.0) -> None:
        self.home = home
        self.budget = budget
        self._file: tuple[int, int, bytes] | None = None  # device, inode, first bytes
        self._offset = 0
        self._seen: Recent[int] = Recent(memory)
        self._lock = threading.Lock()

    def __call__(self, serials: set[str]) -> set[str]:
        state = running(self.home)
        if state is None:
            return set()
        self.scan(state.access_log)
        return {s for s in serials if self.seen(int(s, 16))}

    @property
    def offset(self) -> int:
        return self._offset

    def seen(self, serial: int) -> bool:
        return serial in self._seen

    def scan(self, path: Path) -> None:
        """Read what was appended to the log at ``path`` since the last scan."""
        with self._lock:
            try:
                log = path.open("rb")
            except OSError:  # not there (yet), or not readable: nothing proven
                return
            with log:
                info = os.fstat(log.fileno())
                head = log.read(self.HEAD)
                identity = (info.st_dev, info.st_ino, head)
                known = self._file
                same = known is not None and known[:2] == identity[:2]
                if known is not None and same:  # the first bytes agree as far as both go
                    n = min(len(head), len(known[2]))
                    same = head[:n] == known[2][:n]
                if not same or info.st_size < self._offset:
                    self._offset = 0
                self._file = identity
                log.seek(self._offset)
                ends = time.monotonic() + self.budget
                while time.monotonic() < ends:
                    data = log.read(self.CHUNK)
                    if not data:
                        break
                    cut = data.rfind(b"\n") + 1  # a line still being written waits
                    if cut == 0 and len(data) == self.CHUNK:
                        cut = len(data)  # one line longer than a chunk: skipped
                    self._take(data[:cut])
                    self._offset += cut
                    if len(data) < self.CHUNK:
                        break  # the end of the log (a line still being written waits)
                    log.seek(self._offset)

    def _take(self, lines: bytes) -> None:
        for line in lines.splitlines():
            serial = _accepted_serial(line)
            if serial is not None:
                self._seen.add(serial)


def _accepted_serial(line: bytes) -> int | None:
    try:
        entry = json.loads(line)
        if not isinstance(entry, dict) or entry.get("result") != "accepted":
            return None
        return int(str(entry.get("serial") or ""), 16)
    except (ValueError, RecursionError):
        return None
