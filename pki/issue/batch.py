"""Factory batches: every ``THING.csr`` in a folder as one request each, a bad file skipped
(the rest go on), and how many workers a batch gets. Shared by ``issue device --batch``
and ``iot provision --batch``; what they print is ``pki.cli.batch``'s."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pki.errors import InvalidInput, OperatorError
from pki.issue.delivery import FolderPerThing, OutputFolder, read_csr
from pki.issue.results import BatchReport, Failure
from pki.model import IssueRequest

if TYPE_CHECKING:
    from pki.app import App

# Below this many CSRs, forking workers costs more than it saves.
PARALLEL_THRESHOLD = 200
# Requests in flight to a remote CA (AWS Private CA): enough to reach its quota despite
# round trips of tens of milliseconds; the backend's rate limiter paces them.
REMOTE_IN_FLIGHT = 8


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


def read_requests(
    files: Sequence[Path],
    out_dir: Path,
    *,
    days: int | None,
    force: bool,
    actor: str,
    skipped: list[Failure],
    advance: Callable[[], None],
) -> Iterator[IssueRequest]:
    """One device request per file (the thing name is the file name without ``.csr``).

    A file that cannot be read, or whose output folder is taken, is added to ``skipped``
    and the rest go on.
    """
    for file in files:
        thing = file.stem
        try:
            OutputFolder(out_dir / thing, force=force).check_free()
            yield IssueRequest("device", thing, read_csr(file), days=days, actor=actor)
        except OperatorError as exc:
            skipped.append(Failure(thing, exc))
            advance()


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
    workers as the backend wants; returns the report and the files skipped before
    signing (unreadable, their folder taken). ``keep``: the certificates come back in
    the report (else only the count: nobody reads them)."""
    issuer = app.issuer()
    skipped: list[Failure] = []
    requests = read_requests(
        files, out_dir, days=days, force=force, actor=app.actor, skipped=skipped, advance=advance
    )
    result = issuer.issue_batch(
        requests,
        deliver_into(out_dir, force),
        lambda _name, _error: advance(),
        workers=workers or default_workers(len(files), remote=not issuer.signs_in_process),
        actor=app.actor,
        keep=keep,
    )
    return result, skipped
