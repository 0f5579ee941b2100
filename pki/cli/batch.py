"""What a factory batch prints: a progress bar on a terminal, a report of what was issued
and skipped (names and errors escaped: they came from files), exit 2 when any was
skipped. Shared by ``issue device --batch`` and ``iot provision --batch``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.issue.batch import csr_files, issue_folder
from pki.issue.results import Failure
from pki.text import escape_controls

if TYPE_CHECKING:
    from pki.app import App


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
    from pki.cli.output import report_settled

    files = csr_files(batch_dir)
    report_settled(app.complete_interrupted(out_dir, per_thing=True))
    with progress_bar("issuing", len(files), quiet=as_json) as advance:
        result, skipped = issue_folder(
            app, files, out_dir, days=days, force=force, workers=workers, keep=as_json,
            advance=advance,
        )  # fmt: skip
    return report(
        [i.record.to_json(app.now()) for i in result.issued],
        skipped + result.failed,
        as_json=as_json,
        done_key="issued",
        summary=f"issued {result.issued_count} device certificate(s) into {out_dir}"
        + (f" ({len(result.already)} more issued by an earlier run)" if result.already else ""),
    )
