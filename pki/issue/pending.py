"""Deliveries that are recorded before they happen.

Issuance writes a certificate's files under temporary names (outside the database's
write lock), commits the certificate's row together with a pending-delivery row naming
those files, then renames them into place — the rename is the delivery — and deletes the
pending row. So a certificate is never outside fleetpki without its row: a crash leaves
either temporary files without a row (removed by the next run) or a recorded certificate
not yet delivered, which :func:`settle` delivers (its staged files are all there, or
already placed) or withdraws (revoked as superseded, audited: it never left fleetpki).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pki import faults
from pki.errors import FleetPkiError
from pki.files import StagedFile, discard_files, place_files, temporary_writer
from pki.model import IssuedCertificate, RevocationReason, serial_hex
from pki.storage import AuditEvent, Inventory


@dataclass(frozen=True)
class PendingDelivery:
    """One certificate's files, staged: where each is now and where it goes."""

    serial: int
    files: tuple[StagedFile, ...]
    overwrite: bool = False
    # a certificate issued (and maybe delivered) before, delivered again: a failed
    # delivery of it is dropped, never withdrawn (the certificate may be in use)
    again: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "overwrite": self.overwrite,
                "again": self.again,
                "files": [[str(f.tmp), str(f.final)] for f in self.files],
            }
        )

    @classmethod
    def from_json(cls, serial: int, text: str) -> PendingDelivery:
        data = json.loads(text)
        files = tuple(StagedFile(Path(tmp), Path(final)) for tmp, final in data["files"])
        return cls(serial, files, bool(data.get("overwrite")), bool(data.get("again")))

    @property
    def folders(self) -> frozenset[Path]:
        return frozenset(f.final.parent for f in self.files)

    def deliverable(self) -> bool:
        """Every file is still staged, or placed already (a run stopped half-way)."""
        return all(os.path.lexists(f.tmp) or os.path.lexists(f.final) for f in self.files)

    def place(self) -> None:
        place_files(
            self.files,
            overwrite=self.overwrite,
            after_first=lambda: faults.reach(faults.ISSUE_PLACED_ONE),
        )

    def discard(self) -> None:
        discard_files(self.files)


class Delivery(Protocol):
    """Where issued certificates go: ``stage`` writes their files under temporary names
    (nothing visible yet) and says where each goes. A delivery that writes nothing
    (the certificate goes back in a message, say) returns an empty list."""

    def stage(self, issued: Sequence[IssuedCertificate]) -> list[PendingDelivery]: ...


class NoDelivery:
    """Nothing written: the caller hands the certificate out after the commit."""

    def stage(self, issued: Sequence[IssuedCertificate]) -> list[PendingDelivery]:
        return []


NO_DELIVERY = NoDelivery()


@dataclass
class Settled:
    """What :func:`settle` did: certificates delivered, and those withdrawn with why."""

    delivered: list[PendingDelivery] = field(default_factory=list)
    withdrawn: list[tuple[PendingDelivery, str]] = field(default_factory=list)
    dropped: list[tuple[PendingDelivery, str]] = field(default_factory=list)  # deliveries again


def settle(
    inventory: Inventory,
    pending: Sequence[PendingDelivery],
    *,
    now: dt.datetime,
    actor: str,
) -> Settled:
    """Place every pending delivery; one that cannot be placed (its folder was taken by
    another run meanwhile, a file is gone, the disk failed) is withdrawn. Then the pending
    rows are cleared, the withdrawn certificates revoked, in one transaction."""
    settled = Settled()
    for item in pending:
        if not item.deliverable():
            item.discard()
            (settled.dropped if item.again else settled.withdrawn).append(
                (item, "its staged files are gone")
            )
            continue
        try:
            item.place()
        except FleetPkiError as exc:
            item.discard()
            (settled.dropped if item.again else settled.withdrawn).append((item, str(exc)))
        else:
            settled.delivered.append(item)
    faults.reach(faults.ISSUE_PLACED)
    with inventory.transaction() as conn:
        inventory.clear_pending(conn, [p.serial for p in pending])
        events = []
        for item, why in settled.withdrawn:
            inventory.mark_revoked(conn, item.serial, now, RevocationReason.SUPERSEDED)
            events.append(
                AuditEvent(now, actor, "withdraw", serial_hex(item.serial), {"reason": why})
            )
        inventory.audit(conn, events)
    return settled


def recorded(inventory: Inventory, under: Path | None = None) -> list[PendingDelivery]:
    """The deliveries recorded and not done (after a crash), those into ``under`` only
    when given."""
    found = [PendingDelivery.from_json(row.serial, row.files) for row in inventory.pending()]
    if under is None:
        return found
    root = under.absolute()
    return [p for p in found if any(root == d or root in d.parents for d in p.folders)]


def stale_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Temporary files fleetpki left in ``folders`` (a crash before their row was
    committed), except those of a process still running (another run writing into the
    same folder). Run after the recorded deliveries are settled: theirs are gone then."""
    found = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            writer = temporary_writer(entry.name)
            if (
                writer is not None
                and not _running(writer)
                and entry.is_file(follow_symlinks=False)
            ):
                found.append(Path(entry.path).absolute())
    return found


def delivery_folders(out: Path, *, per_thing: bool) -> list[Path]:
    """``out`` (when it is a folder) and, with ``per_thing``, the folders in it (a batch's
    ``OUT/THING/``): where a run's temporary files can be."""
    if not out.is_dir():
        return []
    inside = [p for p in sorted(out.iterdir()) if p.is_dir() and not p.is_symlink()]
    return [out, *(inside if per_thing else [])]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie — killed, not yet reaped — is not)."""
    if pid == os.getpid():
        return False  # this run's own leftovers cannot be in flight while it cleans
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave its files alone
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


def complete_interrupted(
    inventory: Inventory,
    folders: Sequence[Path],
    *,
    under: Path | None,
    now: dt.datetime,
    actor: str,
) -> Settled:
    """What a run does first about its predecessors' crashes: deliver or withdraw the
    deliveries recorded into ``under`` (every one when None), then remove the temporary
    files no recorded delivery needs from ``folders`` (written before a crash, never
    committed)."""
    waiting = recorded(inventory, under)
    settled = settle(inventory, waiting, now=now, actor=actor) if waiting else Settled()
    for path in stale_temporaries(folders):
        with contextlib.suppress(OSError):
            path.unlink()
    return settled
