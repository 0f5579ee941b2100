"""The batch path on several processes gives the same results as on one."""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import pytest

import pki.issue.batch
import pki.issue.forkpool
import pki.issue.issuer
from pki.errors import BackendError, PolicyViolation
from pki.issue.delivery import FolderPerThing
from pki.issue.pending import PendingDelivery
from pki.model import IssuedCertificate
from tests.conftest import Cli
from tests.helpers import csr_with_version, load_cert, make_csr


def test_errors_survive_a_trip_through_pickle() -> None:
    violation = pickle.loads(pickle.dumps(PolicyViolation("weak-key", "too weak")))
    assert isinstance(violation, PolicyViolation)
    assert (violation.reason, str(violation)) == (
        "weak-key",
        "policy violation (weak-key): too weak",
    )
    backend = pickle.loads(pickle.dumps(BackendError("issue", "aws-pca", "throttled")))
    assert (backend.operation, backend.backend, backend.cause) == ("issue", "aws-pca", "throttled")
    assert str(backend) == "aws-pca backend failed to issue: throttled"


@pytest.mark.usefixtures("db_url", "ca_home")
def test_parallel_batch_matches_serial(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str | None
) -> None:
    monkeypatch.setattr("pki.issue.forkpool.FORKED_CHUNK", 7)  # several chunks per worker
    workers_used: list[int] = []
    real = pki.issue.forkpool.issue_forked

    def spy(issuer: pki.issue.issuer.Issuer, *args: object) -> object:
        workers_used.append(args[4])  # type: ignore[arg-type]
        return real(issuer, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pki.issue.forkpool, "issue_forked", spy)
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(40):
        (batch / f"unit-{i:02d}.csr").write_bytes(make_csr(f"unit-{i:02d}")[0])
    (batch / "unit-bad.csr").write_bytes(make_csr("other-name")[0])
    result = cli(
        "issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", "2", "--json"
    )
    assert result.code == 2, result.err
    summary = json.loads(result.out)
    assert len(summary["issued"]) == 40
    assert [s["thing"] for s in summary["skipped"]] == ["unit-bad"]
    assert workers_used == [2]
    assert "policy violation (cn-mismatch)" in summary["skipped"][0]["error"]
    serials = {r["serial"] for r in summary["issued"]}
    assert len(serials) == 40
    for i in range(40):
        cert = load_cert(tmp_path / "out" / f"unit-{i:02d}" / "cert.pem")
        assert cert.subject.rfc4514_string() == f"CN=unit-{i:02d}"
    # the parent's database connections still work after the workers exit
    listed = json.loads(cli.ok("list", "--json").out)
    assert {r["serial"] for r in listed} == serials
    audit = json.loads(cli.ok("audit", "--json", "--limit", "100").out)
    assert sum(1 for e in audit if e["action"] == "issue") == 40


def test_default_workers() -> None:
    assert pki.issue.batch.default_workers(10) == 1
    assert pki.issue.batch.default_workers(5000) >= 1


@pytest.mark.usefixtures("ca_home")
def test_workers_needs_batch(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "issue", "device", "x", "--generate-key", "--workers", "2", "--out", tmp_path / "x"
    )
    assert (result.code, result.err) == (2, "fleetpki: error: --workers only applies to --batch\n")
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("ca_home")
def test_a_failing_chunk_stops_the_forked_batch_without_orphans(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery that fails in one worker: that chunk is rolled back (rows and files), the
    batch stops and raises, and every certificate file on disk has its inventory row."""
    from pki.app import App
    from pki.clock import SystemClock
    from pki.errors import AlreadyExists
    from pki.model import IssueRequest

    monkeypatch.setattr("pki.issue.forkpool.FORKED_CHUNK", 5)
    state = App(home, SystemClock())
    out = tmp_path / "out"
    requests = [
        IssueRequest("device", f"fork-{i:02d}", make_csr(f"fork-{i:02d}")[0], actor="t")
        for i in range(40)
    ]

    class Deliver(FolderPerThing):
        def stage(self, issued: Sequence[IssuedCertificate]) -> list[PendingDelivery]:
            if any(i.record.common_name == "fork-22" for i in issued):
                raise AlreadyExists("fork-22/cert.pem already exists")
            return super().stage(issued)

    with pytest.raises(AlreadyExists, match="fork-22"):
        state.issuer().issue_batch(requests, Deliver(out, False), workers=2)
    recorded = {r.serial for r in state.inventory().find(now=state.now()) if r.thing}
    on_disk = {load_cert(p).serial_number for p in out.glob("*/cert.pem")}
    assert on_disk == recorded  # no file without a row, no row without its file
    assert not (out / "fork-22").exists() or not any((out / "fork-22").iterdir())
    assert 0 < len(recorded) < 40


@pytest.mark.usefixtures("ca_home")
def test_without_json_the_workers_send_back_counts_only(cli: Cli, tmp_path: Path) -> None:
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(30):
        (batch / f"lean-{i:02d}.csr").write_bytes(make_csr(f"lean-{i:02d}")[0])
    result = cli("issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", "2")
    assert result.code == 0, result.err
    assert "issued 30 device certificate(s)" in result.err
    assert len(list((tmp_path / "out").glob("*/cert.pem"))) == 30
    assert len(json.loads(cli.ok("list", "--json").out)) == 30


@pytest.mark.parametrize(
    ("total", "size", "workers"), [(0, 500, 2), (1, 500, 2), (10_000, 500, 2), (20_001, 500, 3)]
)
def test_forked_spans_cover_the_batch_and_shrink_at_the_end(
    total: int, size: int, workers: int
) -> None:
    spans = pki.issue.forkpool.forked_spans(total, size, workers)
    covered = [i for start, end in spans for i in range(start, end)]
    assert covered == list(range(total))
    lengths = [end - start for start, end in spans]
    assert all(0 < n <= size for n in lengths)
    assert lengths == sorted(lengths, reverse=True)  # full chunks first, the tail shrinks
    if total >= 10_000:
        assert lengths[0] == size
        # the last chunks are small: a worker waits on the other one for at most that long
        assert max(lengths[-workers:]) <= pki.issue.forkpool.FORKED_TAIL_CHUNK
        assert len(spans) < total / size + 30  # not a flood of tiny commits


@pytest.mark.usefixtures("ca_home")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_csr_of_an_unknown_version_is_skipped_like_any_malformed_one(
    cli: Cli, tmp_path: Path, workers: str
) -> None:
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(6):
        (batch / f"unit-{i}.csr").write_bytes(make_csr(f"unit-{i}")[0])
    (batch / "unit-v2.csr").write_bytes(csr_with_version(make_csr("unit-v2")[0], 1))
    result = cli(
        "issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", workers,
        "--json",
    )  # fmt: skip
    assert result.code == 2, result.err
    summary = json.loads(result.out)
    assert len(summary["issued"]) == 6
    assert [s["thing"] for s in summary["skipped"]] == ["unit-v2"]
    assert summary["skipped"][0]["error"].startswith("malformed CSR: ")
    single = cli(
        "issue", "device", "unit-v2", "--csr", batch / "unit-v2.csr", "--out", tmp_path / "x"
    )
    assert (single.code, single.err.count("\n")) == (2, 1)
    assert single.err.startswith("fleetpki: error: malformed CSR: ")
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("ca_home")
def test_an_unforeseen_failure_in_a_worker_stops_the_batch_with_exit_1(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is not one of ours (it may not even survive pickling) must not
    hang the parent: the batch stops, says what happened, and exits 1."""
    real = pki.issue.issuer.Issuer.prepare

    class Unpicklable(Exception):
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a} {b}")

    def prepare(self: pki.issue.issuer.Issuer, request: pki.issue.issuer.IssueRequest) -> object:
        if request.name == "unit-13":
            raise Unpicklable("boom", "here")
        return real(self, request)

    monkeypatch.setattr(pki.issue.issuer.Issuer, "prepare", prepare)
    monkeypatch.setattr("pki.issue.forkpool.FORKED_CHUNK", 5)
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(30):
        (batch / f"unit-{i:02d}.csr").write_bytes(make_csr(f"unit-{i:02d}")[0])
    result = cli("issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", "2")
    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        "fleetpki: internal error in a batch worker: Unpicklable: boom here"
    )
