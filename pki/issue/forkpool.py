"""Issuing a large batch on every core: forked worker processes each check, sign,
commit and deliver chunks of the requests (inherited through fork: nothing is pickled
but the index ranges and what comes back). On two cores a parent that also wrote every
row would take the CPU the second worker needs; a worker holds SQLite's write lock only
for its inserts."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pki.backends import InProcessSigner
from pki.errors import BatchWorkerDied, FleetPkiError, InternalError
from pki.issue.pending import Delivery
from pki.issue.results import BatchReport, Failure, Outcome
from pki.model import IssueRequest

if TYPE_CHECKING:
    from pki.issue.issuer import Issuer

# Requests per chunk a forked worker signs and commits in one transaction: large enough
# to spread a commit's fsync thin, small enough that the two workers finish together.
FORKED_CHUNK = 500
# The last chunks shrink (down to this) so that the workers finish together instead of
# one waiting on the other's last full chunk.
FORKED_TAIL_CHUNK = 50


def forked_spans(total: int, size: int, workers: int) -> list[tuple[int, int]]:
    """Index ranges for forked workers: ``size`` at a time while there is plenty of work,
    then about a ``2 * workers``-th of what is left (never under ``FORKED_TAIL_CHUNK``
    or ``size``, whichever is smaller), so every worker runs out of work at about the
    same moment. Pure; the spans cover ``range(total)`` in order, without overlap."""
    spans: list[tuple[int, int]] = []
    floor = max(1, min(size, FORKED_TAIL_CHUNK))
    start = 0
    while start < total:
        share = (total - start) // (2 * max(1, workers))
        step = max(floor, min(size, share))
        spans.append((start, min(total, start + step)))
        start += step
    return spans


# The issuer a forked batch worker signs with (set in the parent just before forking).
_WORKER_ISSUER: Issuer | None = None


def _worker_init(parent: int) -> None:
    issuer = _WORKER_ISSUER
    assert issuer is not None
    _die_with(parent)
    # The parent's database connections must never be used (or closed) by a child.
    issuer.inventory.engine.dispose(close=False)


def _die_with(parent: int) -> None:
    """A worker ends when the batch's process dies (kill -9, the OOM killer): it would
    otherwise wait forever on the pool's pipes, holding the inventory open. SIGTERM:
    blocked while a chunk commits, so a chunk is never cut between rows and files."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the pool's own checks remain
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


# What a forked batch worker commits and delivers with, and the requests (set with
# _WORKER_ISSUER, inherited through fork).
_WORKER_COMMIT: tuple[Delivery, str, Sequence[IssueRequest], bool] | None = None
_WORKER_STOP: Any = None  # a multiprocessing Event: set when a chunk failed


@dataclass(frozen=True)
class ChunkResult:
    outcomes: list[Outcome]
    fatal: FleetPkiError | None = None  # storage or backend failure: the batch stops


def _worker_chunk(span: tuple[int, int]) -> ChunkResult:
    """Sign, check, quarantine, commit and deliver one chunk in a forked worker: the
    parent only hands out index ranges of the requests (inherited through fork) and adds
    up the results (on two cores, a parent that also wrote every row would take the CPU
    the second worker needs). Once a chunk failed, the others do nothing more."""
    issuer, commit, stop = _WORKER_ISSUER, _WORKER_COMMIT, _WORKER_STOP
    assert issuer is not None and commit is not None and stop is not None
    if stop.is_set():
        return ChunkResult([])
    deliver, actor, requests, keep = commit
    try:
        outcomes = issuer.outcomes(requests[span[0] : span[1]])
        for o in outcomes:
            if o.quarantined is not None:
                issuer._quarantine(o.quarantined, actor)
        issued = [o.issued for o in outcomes if o.issued is not None]
        if issued:
            # a stop (Ctrl-C, the pool terminated) waits until the rows and the files are
            # both there or both gone: never a delivered certificate without its row
            blocked = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            try:
                issuer._commit(issued, deliver, actor)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    except FleetPkiError as exc:
        stop.set()
        return ChunkResult([], exc)
    except Exception as exc:  # a bug: stop the batch like one process would, without hanging
        stop.set()
        return ChunkResult([], InternalError("in a batch worker", exc))
    if not keep:  # names and errors only: nobody reads the certificates back
        return ChunkResult([Outcome(o.name, error=o.error) for o in outcomes])
    return ChunkResult(outcomes)


def issue_forked(
    issuer: Issuer,
    requests: Iterable[IssueRequest],
    deliver: Delivery,
    progress: Callable[[str, FleetPkiError | None], None] | None,
    commit_size: int,
    workers: int,
    actor: str,
    keep: bool,
) -> BatchReport:
    global _WORKER_ISSUER, _WORKER_COMMIT, _WORKER_STOP
    report = BatchReport()
    if isinstance(issuer.ca, InProcessSigner):
        issuer.ca.load_signing_key()  # decrypt the CA key once, before forking
    work = _one_per_key(list(requests), report, progress)
    size = max(1, min(commit_size, FORKED_CHUNK))
    spans = forked_spans(len(work), size, workers)
    context = multiprocessing.get_context("fork")
    _WORKER_ISSUER, _WORKER_STOP = issuer, context.Event()
    _WORKER_COMMIT = (deliver, actor, work, keep)
    fatal: FleetPkiError | None = None
    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
        ) as pool:
            # drained to the end even after a failure: the chunks other workers
            # committed meanwhile are reported, and no worker is killed mid-commit
            for future in [pool.submit(_worker_chunk, span) for span in spans]:
                try:
                    chunk = future.result()
                except BrokenProcessPool:
                    # a worker died (the OOM killer, kill -9): the pool is gone, with
                    # whatever chunks it still held; what was committed stays
                    fatal = fatal or BatchWorkerDied(
                        f"a batch worker died (killed?); {report.issued_count} certificate(s) "
                        "were issued and delivered before it; run the same command again "
                        "to issue the rest"
                    )
                    continue
                fatal = fatal or chunk.fatal
                _add_chunk(report, chunk, progress)
    finally:
        _WORKER_ISSUER, _WORKER_COMMIT, _WORKER_STOP = None, None, None
    if fatal is not None:
        raise fatal
    return report


def _add_chunk(
    report: BatchReport,
    chunk: ChunkResult,
    progress: Callable[[str, FleetPkiError | None], None] | None,
) -> None:
    for result in chunk.outcomes:
        if result.error is not None:
            report.failed.append(Failure(result.name, result.error))
        else:
            report.issued_count += 1
            if result.issued is not None:
                report.issued.append(result.issued)
        if progress is not None:
            progress(result.name, result.error)


def _one_per_key(
    requests: list[IssueRequest],
    report: BatchReport,
    progress: Callable[[str, FleetPkiError | None], None] | None,
) -> list[IssueRequest]:
    """The requests without those whose key an earlier request of the batch has for
    another identity (refused ``key-reused`` here: the workers' chunks cannot see each
    other's keys before they are recorded). A CSR that does not parse is left to the
    worker, which refuses it with the right message."""
    from pki.errors import PolicyViolation
    from pki.issue.csr import load_csr
    from pki.issue.keyreuse import key_id

    seen: dict[str, str] = {}
    kept: list[IssueRequest] = []
    for request in requests:
        try:
            kid = key_id(load_csr(request.csr_pem).public_key())
        except Exception:
            kept.append(request)
            continue
        earlier = seen.setdefault(kid, request.name)
        if earlier != request.name and not request.allow_key_reuse:
            error = PolicyViolation(
                "key-reused", f"this CSR's key is also {earlier!r}'s, earlier in this batch"
            )
            report.failed.append(Failure(request.name, error))
            if progress is not None:
                progress(request.name, error)
            continue
        kept.append(request)
    return kept
