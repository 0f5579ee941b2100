"""Factory batches: every ``THING.csr`` in a folder as one request each, a bad file skipped
(the rest go on), and how many workers a batch gets. Shared by ``issue device --batch``
and ``iot provision --batch``; what they print is ``pki.cli.batch``'s."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pki.errors import AlreadyExists, InvalidInput, OperatorError
from pki.issue.delivery import FolderPerThing, OutputFolder, read_csr
from pki.issue.results import BatchReport, Failure
from pki.model import IssueRequest

if TYPE_CHECKING:
    from pki.app import App

# Below this many CSRs, forking workers costs more than it saves.
PARALLEL_THRESHOLD = 200
# Requests in flight to a remote CA (AWS Private CA): enough to reach its 25/s quota when
# each certificate takes three calls of 50-150 ms (issue, the waiter, get: about 0.3 s, so
# 8 would cap the rate at about 26/s); the backend's rate limiter paces them.
REMOTE_IN_FLIGHT = 16


def default_workers(count: int, *, remote: bool = False) -> int:
    if remote:
        return min(REMOTE_IN_FLIGHT, count)
    return min(os.cpu_count() or 1, 8) if count >= PARALLEL_THRESHOLD else 1


def csr_files(batch_dir: Path) -> list[Path]:
    """The ``*.csr`` files of a batch folder, sorted; refuses a missing or empty folder."""
    if not batch_dir.is_dir():
        raise InvalidInput(f"--batch {batch_dir} is not a folder")
    files = sorted(batch_dir.glob("*.csr"))
    if not files:
        raise InvalidInput(f"no *.csr files in {batch_dir}")
    return files


Delivered = Callable[[str, Path, bytes], bool]


def read_requests(
    files: Sequence[Path],
    out_dir: Path,
    *,
    days: int | None,
    force: bool,
    actor: str,
    skipped: list[Failure],
    advance: Callable[[], None],
    delivered: Delivered | None = None,
    done: list[str] | None = None,
) -> Iterator[IssueRequest]:
    """One device request per file (the thing name is the file name without ``.csr``).

    A file that cannot be read, or whose output folder is taken, is added to ``skipped``
    and the rest go on — except a folder that already holds the certificate recorded
    for this very CSR (``delivered``: a re-run after a crash), added to ``done``.
    """
    for file in files:
        thing = file.stem
        try:
            csr_pem = read_csr(file)
            try:
                OutputFolder(out_dir / thing, force=force).check_free()
            except AlreadyExists:
                if (
                    delivered is None
                    or done is None
                    or not delivered(thing, out_dir / thing, csr_pem)
                ):
                    raise
                done.append(thing)
                advance()
                continue
            yield IssueRequest("device", thing, csr_pem, days=days, actor=actor)
        except OperatorError as exc:
            skipped.append(Failure(thing, exc))
            advance()


def delivered_for(app: App) -> Delivered:
    """Whether ``folder`` holds the certificate fleetpki recorded for this CSR: the
    thing's, active, for the same public key."""
    from pki.issue.adopt import load_delivered
    from pki.issue.check import spki
    from pki.issue.csr import load_csr
    from pki.model import Status

    def check(thing: str, folder: Path, csr_pem: bytes) -> bool:
        cert = load_delivered(folder)
        if cert is None:
            return False
        try:
            csr = load_csr(csr_pem)
            record = app.inventory().get(cert.serial_number)
        except (ValueError, OperatorError):
            return False
        return (
            record.thing == thing
            and record.profile == "device"
            and record.status is Status.ACTIVE
            and record.not_after > app.now()
            and spki(cert.public_key()) == spki(csr.public_key())
        )

    return check


def deliver_into(out_dir: Path, force: bool) -> FolderPerThing:
    """Deliver each certificate into ``out_dir/THING/`` (a chunk's files at once)."""
    return FolderPerThing(out_dir, force)


def issue_folder(
    app: App,
    files: Sequence[Path],
    out_dir: Path,
    *,
    days: int | None,
    force: bool,
    workers: int | None,
    keep: bool,
    advance: Callable[[], None],
) -> tuple[BatchReport, list[Failure]]:
    """Issue every CSR file into ``out_dir/THING/`` (a chunk's files at once) on as many
    workers as the backend wants; returns the report (``already``: the things whose
    certificate for this CSR was delivered by an earlier run) and the files skipped
    before signing (unreadable, their folder taken). ``keep``: the certificates come
    back in the report (else only the count: nobody reads them)."""
    issuer = app.issuer()
    skipped: list[Failure] = []
    done: list[str] = []
    requests = read_requests(
        files, out_dir, days=days, force=force, actor=app.actor, skipped=skipped,
        advance=advance, delivered=delivered_for(app), done=done,
    )  # fmt: skip
    result = issuer.issue_batch(
        requests,
        deliver_into(out_dir, force),
        lambda _name, _error: advance(),
        workers=workers or default_workers(len(files), remote=not issuer.signs_in_process),
        actor=app.actor,
        keep=keep,
    )
    result.already = done
    return result, skipped
