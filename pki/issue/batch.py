"""Factory provisioning: every ``THING.csr`` in a folder, with progress, bad ones skipped.

The pieces (listing the folder, reading requests, the progress bar, the report) are shared
with ``fleetpki iot provision --batch``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.errors import InvalidInput, OperatorError
from pki.issue.delivery import FolderPerThing, OutputFolder, read_csr
from pki.issue.issuer import Failure
from pki.model import IssueRequest
from pki.text import escape_controls

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


@contextmanager
def progress_bar(description: str, total: int, *, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (only on a terminal, never with ``--json``); yields
    ``advance()``, which may be called from any thread."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def report(
    done: Sequence[dict[str, Any]],
    failures: Sequence[Failure],
    *,
    as_json: bool,
    done_key: str,
    summary: str,
) -> int:
    """Print a batch's outcome; exit code 2 when anything was skipped."""
    failures = sorted(failures, key=lambda f: f.name)
    if as_json:
        click.echo(
            json.dumps(
                {
                    done_key: list(done),
                    "skipped": [{"thing": f.name, "error": str(f.error)} for f in failures],
                },
                indent=2,
                sort_keys=True,
            )
        )
    for failure in failures:  # names and CSR contents came from outside: escaped
        click.echo(
            f"skipped {escape_controls(failure.name)}: {escape_controls(str(failure.error))}",
            err=True,
        )
    click.echo(f"{summary}, skipped {len(failures)}", err=True)
    return 2 if failures else 0


def issue_device_batch(
    app: App,
    batch_dir: Path,
    out_dir: Path,
    days: int | None,
    force: bool,
    as_json: bool,
    workers: int | None = None,
) -> int:
    files = csr_files(batch_dir)
    issuer = app.issuer()
    actor = app.home.actor()
    skipped: list[Failure] = []
    with progress_bar("issuing", len(files), quiet=as_json) as advance:
        requests = read_requests(
            files, out_dir, days=days, force=force, actor=actor, skipped=skipped, advance=advance
        )
        result = issuer.issue_batch(
            requests,
            deliver_into(out_dir, force),
            lambda _name, _error: advance(),
            workers=workers or default_workers(len(files), remote=not issuer.signs_in_process),
            actor=actor,
            keep=as_json,  # the records are printed only with --json
        )
    return report(
        [i.record.to_json(app.now()) for i in result.issued],
        skipped + result.failed,
        as_json=as_json,
        done_key="issued",
        summary=f"issued {result.issued_count} device certificate(s) into {out_dir}",
    )
