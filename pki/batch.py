"""Factory provisioning: every ``THING.csr`` in a folder, with progress, bad ones skipped."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pki.delivery import OutputFolder, read_csr
from pki.errors import FleetPkiError, InvalidInput, OperatorError
from pki.issuance import Failure
from pki.model import IssuedCertificate, IssueRequest

if TYPE_CHECKING:
    from pki.cli import State

# Below this many CSRs, forking workers costs more than it saves.
PARALLEL_THRESHOLD = 200


def default_workers(count: int) -> int:
    return min(os.cpu_count() or 1, 8) if count >= PARALLEL_THRESHOLD else 1


def issue_device_batch(
    state: State,
    batch_dir: Path,
    out_dir: Path,
    days: int | None,
    force: bool,
    as_json: bool,
    workers: int | None = None,
) -> int:
    if not batch_dir.is_dir():
        raise InvalidInput(f"--batch {batch_dir} is not a folder")
    files = sorted(batch_dir.glob("*.csr"))
    if not files:
        raise InvalidInput(f"no *.csr files in {batch_dir}")
    if workers is not None and workers < 1:
        raise InvalidInput("--workers must be at least 1")
    issuer = state.issuer()
    actor = state.home.actor()
    early_failures: list[Failure] = []

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
        disable=as_json or not console.is_terminal,
    ) as progress:
        task = progress.add_task("issuing", total=len(files))

        def advance(_name: str, _error: FleetPkiError | None) -> None:
            progress.advance(task)

        def requests() -> Iterator[IssueRequest]:
            for file in files:
                thing = file.stem
                try:
                    OutputFolder(out_dir / thing, force=force).check_free()
                    yield IssueRequest("device", thing, read_csr(file), days=days, actor=actor)
                except OperatorError as exc:
                    early_failures.append(Failure(thing, exc))
                    advance(thing, exc)

        def deliver(issued: IssuedCertificate) -> Callable[[], None]:
            thing = issued.record.thing or issued.record.common_name
            return OutputFolder(out_dir / thing, force=force).deliver(None)(issued)

        report = issuer.issue_batch(
            requests(),
            deliver,
            advance,
            workers=workers or default_workers(len(files)),
            actor=actor,
        )
    failures = sorted(early_failures + report.failed, key=lambda f: f.name)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "issued": [i.record.to_json(state.now()) for i in report.issued],
                    "skipped": [{"thing": f.name, "error": str(f.error)} for f in failures],
                },
                indent=2,
                sort_keys=True,
            )
        )
    for failure in failures:
        click.echo(f"skipped {failure.name}: {failure.error}", err=True)
    click.echo(
        f"issued {len(report.issued)} device certificate(s) into {out_dir}, "
        f"skipped {len(failures)}",
        err=True,
    )
    return 2 if failures else 0
