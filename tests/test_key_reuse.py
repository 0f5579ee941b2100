"""One key, one identity, one certificate per request: a retried request gets its
certificate again instead of a second one; a key bound to another identity is refused
(key-reused) unless --allow-key-reuse (audited); a replacement needs a new key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pki.issue.keyreuse import decide
from pki.model import CertificateRecord, IssueRequest, Status
from tests.conftest import Cli
from tests.helpers import NOW, make_csr


def _record(serial: int, thing: str, profile: str = "device") -> CertificateRecord:
    return CertificateRecord(
        serial=serial, thing=thing if profile == "device" else None, common_name=thing,
        profile=profile, status=Status.ACTIVE, not_before=NOW,
        not_after=NOW + dt.timedelta(days=30), fingerprint_sha256="00", issuer="CN=i",
        backend="local", created_at=NOW,
    )  # fmt: skip


def test_the_rule_itself() -> None:
    mine, other = _record(1, "t1"), _record(2, "t2")
    ask = IssueRequest("device", "t1", b"")
    assert decide(ask, []).existing is None and decide(ask, []).violation is None
    assert decide(ask, [mine]).existing == mine  # a retry: the same certificate
    refused = decide(ask, [other]).violation
    assert refused is not None and refused.reason == "key-reused" and "'t2'" in refused.message
    server = decide(IssueRequest("server", "t1", b""), [mine]).violation
    assert server is not None and server.reason == "key-reused"  # another profile
    allowed = IssueRequest("device", "t1", b"", allow_key_reuse=True)
    assert decide(allowed, [other]).reused and decide(allowed, [mine]).reused
    # a replacement: never its predecessor's key; a retried one gets what it was issued
    again = decide(IssueRequest("device", "t1", b"", replacing=1), [mine]).violation
    assert again is not None and again.reason == "key-reused"
    newer = _record(3, "t1")
    assert decide(IssueRequest("device", "t1", b"", replacing=1), [newer]).existing == newer
    stolen = IssueRequest("device", "t1", b"", replacing=1, allow_key_reuse=True)
    assert decide(stolen, [other]).violation is not None


def test_the_same_csr_again_gets_the_same_certificate(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "d1.csr"
    csr.write_bytes(make_csr("d1")[0])
    first = json.loads(cli.ok("issue", "device", "d1", "--csr", csr, "--out", tmp_path / "a",
                              "--json").out)  # fmt: skip
    again = cli.ok("issue", "device", "d1", "--csr", csr, "--out", tmp_path / "b")
    assert "delivered again, nothing new signed" in again.err
    assert (tmp_path / "a" / "cert.pem").read_bytes() == (tmp_path / "b" / "cert.pem").read_bytes()
    forced = json.loads(cli.ok("issue", "device", "d1", "--csr", csr, "--out", tmp_path / "a",
                               "--force", "--json").out)  # fmt: skip
    assert forced["serial"] == first["serial"]
    assert len(json.loads(cli.ok("list", "--json").out)) == 1
    assert "redeliver" in cli.ok("audit", "--serial", first["serial"]).out


def test_a_key_of_another_thing_is_refused_unless_allowed(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    pem, key = make_csr("d1")
    (tmp_path / "d1.csr").write_bytes(pem)
    (tmp_path / "d2.csr").write_bytes(make_csr("d2", key)[0])
    cli.ok("issue", "device", "d1", "--csr", tmp_path / "d1.csr", "--out", tmp_path / "a")
    refused = cli("issue", "device", "d2", "--csr", tmp_path / "d2.csr", "--out", tmp_path / "b")
    assert refused.code == 2 and "(key-reused)" in refused.err and "'d1'" in refused.err
    assert not (tmp_path / "b").exists()
    allowed = json.loads(cli.ok("issue", "device", "d2", "--csr", tmp_path / "d2.csr", "--out",
                                tmp_path / "b", "--allow-key-reuse", "--json").out)  # fmt: skip
    audit = json.loads(cli.ok("audit", "--serial", allowed["serial"], "--json").out)
    assert audit[0]["detail"]["key_reused"] is True


def test_one_key_twice_in_one_batch_is_issued_once(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    batch = tmp_path / "csrs"
    batch.mkdir()
    pem, key = make_csr("k1")
    (batch / "k1.csr").write_bytes(pem)
    (batch / "k2.csr").write_bytes(make_csr("k2", key)[0])
    result = cli("issue", "device", "--batch", batch, "--out", tmp_path / "out")
    assert result.code == 2 and "skipped k2: policy violation (key-reused)" in result.err
    assert [r["thing"] for r in json.loads(cli.ok("list", "--json").out)] == ["k1"]


def test_the_same_key_with_other_names_is_not_taken_for_a_retry(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "web.csr"
    csr.write_bytes(make_csr("web.example.com")[0])
    cli.ok("issue", "server", "web.example.com", "--csr", csr, "--out", tmp_path / "a")
    other = cli("issue", "server", "web.example.com", "--csr", csr, "--dns", "web.example.com",
                "--dns", "api.example.com", "--out", tmp_path / "b")  # fmt: skip
    assert other.code == 2 and "(key-reused)" in other.err and "other names" in other.err
    assert not (tmp_path / "b").exists()


def test_one_key_in_two_chunks_of_a_forked_batch_is_issued_once(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "csrs"
    batch.mkdir()
    shared = make_csr("f000")[1]
    for i in range(220):  # forked (200 or more); the two in chunks signed at the same time
        key = shared if i in (0, 60) else None
        (batch / f"f{i:03d}.csr").write_bytes(make_csr(f"f{i:03d}", key)[0])
    result = cli("issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", "2")
    assert result.code == 2 and "skipped f060: policy violation (key-reused)" in result.err
    assert len(json.loads(cli.ok("list", "--json", "--limit", "1000").out)) == 219
