"""Issuing through the CLI: what comes out passes pkilint and openssl's strict verification."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import Cli
from tests.helpers import load_cert, make_csr, openssl_csr, pkilint


def openssl_verify(home: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            str(home / "ca" / "root.pem"),
            "-untrusted",
            str(home / "ca" / "issuing.pem"),
            str(cert),
        ],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("ca_key", ["ec-p256", "ec-p384", "rsa-2048"])
def test_device_and_server_certificates_lint_and_verify(
    cli: Cli, home: Path, tmp_path: Path, ca_key: str
) -> None:
    cli.ok("ca", "init", "--key-type", ca_key)
    for ca_cert in ("root.pem", "issuing.pem"):
        assert pkilint(home / "ca" / ca_cert) == []
    cli.ok("issue", "device", "pump-7", "--generate-key", "--out", tmp_path / "dev")
    cli.ok(
        "issue",
        "server",
        "api.fleet.example",
        "--dns",
        "api.fleet.example",
        "--ip",
        "127.0.0.1",
        "--generate-key",
        "--key-type",
        "rsa-2048",
        "--out",
        tmp_path / "srv",
    )
    device, server = tmp_path / "dev" / "cert.pem", tmp_path / "srv" / "cert.pem"
    assert pkilint(device) == []
    assert pkilint(server) == []
    ok = openssl_verify(home, device, "sslclient")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stderr
    assert openssl_verify(home, server, "sslserver").returncode == 0
    # and the purposes are not interchangeable
    assert openssl_verify(home, device, "sslserver").returncode != 0
    assert openssl_verify(home, server, "sslclient").returncode != 0


def test_pkilint_catches_a_bad_certificate(tmp_path: Path) -> None:
    """The lint helper really reports findings (so a clean result means something)."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:x")]), False
        )
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "bad.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert pkilint(path) != []


def test_certificate_contents(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    cli.ok("issue", "device", "pump-7", "--generate-key", "--out", tmp_path / "d", "--days", "30")
    cert = load_cert(tmp_path / "d" / "cert.pem")
    issuing = load_cert(ca_home / "ca" / "issuing.pem")
    assert cert.subject.rfc4514_string() == "CN=pump-7"
    assert cert.issuer == issuing.subject
    assert cert.serial_number.bit_length() >= 64
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://fleetpki.local/things/pump-7"
    ]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(issuing)
    # the issuing CA is a path-length-0 intermediate under the root
    ibc = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ibc.ca and ibc.path_length == 0
    # the chain files
    chain = x509.load_pem_x509_certificates((tmp_path / "d" / "chain.pem").read_bytes())
    assert [c.subject for c in chain] == [
        issuing.subject,
        load_cert(ca_home / "ca" / "root.pem").subject,
    ]
    full = x509.load_pem_x509_certificates((tmp_path / "d" / "fullchain.pem").read_bytes())
    assert full == [cert, issuing]


def test_openssl_req_csr_is_accepted(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    key, csr = openssl_csr(tmp_path, "gateway-12")
    result = cli.ok(
        "issue", "device", "gateway-12", "--csr", csr, "--out", tmp_path / "g", "--json"
    )
    record = json.loads(result.out)
    assert record["thing"] == "gateway-12" and record["status"] == "active"
    cert = load_cert(tmp_path / "g" / "cert.pem")
    assert format(cert.serial_number, "x").zfill(len(record["serial"])) == record["serial"]
    assert not (tmp_path / "g" / "key.pem").exists(), "a CSR issuance never writes a key"
    # the certificate belongs to the key openssl made
    pub = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True, check=True
    ).stdout
    from cryptography.hazmat.primitives import serialization

    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pub
    )


def test_openssl_rsa_server_csr(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    _, csr = openssl_csr(tmp_path, "web.example.org", rsa_bits=2048)
    cli.ok("issue", "server", "web.example.org", "--csr", csr, "--out", tmp_path / "w")
    cert = load_cert(tmp_path / "w" / "cert.pem")
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment  # RSA TLS servers
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org"]
    assert openssl_verify(ca_home, tmp_path / "w" / "cert.pem", "sslserver").returncode == 0


def test_generated_key_is_private_and_matches(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    cli.ok("issue", "device", "valve-1", "--generate-key", "--out", tmp_path / "v")
    key_file = tmp_path / "v" / "key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert load_cert(tmp_path / "v" / "cert.pem").public_key() == key.public_key()


def test_output_is_never_overwritten_without_force(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    cli.ok("issue", "device", "valve-1", "--generate-key", "--out", out)
    before = (out / "key.pem").read_bytes(), (out / "cert.pem").read_bytes()
    result = cli("issue", "device", "valve-1", "--generate-key", "--out", out)
    assert result.code == 2
    assert result.err.strip().endswith(
        "already exists; use --force to replace it, or another --out"
    )
    assert ((out / "key.pem").read_bytes(), (out / "cert.pem").read_bytes()) == before
    assert len(json.loads(cli.ok("list", "--json").out)) == 1
    cli.ok("issue", "device", "valve-1", "--generate-key", "--out", out, "--force")
    assert (out / "key.pem").read_bytes() != before[0]
    assert len(json.loads(cli.ok("list", "--thing", "valve-1", "--json").out)) == 2


def test_csr_and_generate_key_are_exclusive(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    result = cli("issue", "device", "x", "--out", tmp_path / "x")
    assert (result.code, result.err) == (
        2,
        "fleetpki: error: give exactly one of --csr FILE or --generate-key\n",
    )
    missing = cli("issue", "device", "x", "--csr", tmp_path / "nope.csr", "--out", tmp_path / "x")
    assert missing.code == 2
    assert "cannot read CSR file" in missing.err and "No such file" in missing.err


def test_batch_issues_good_and_skips_bad(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    batch = tmp_path / "factory"
    batch.mkdir()
    for i in range(5):
        pem, _ = make_csr(f"line-{i}")
        (batch / f"line-{i}.csr").write_bytes(pem)
    (batch / "broken.csr").write_bytes(b"garbage")
    mismatch, _ = make_csr("someone-else")
    (batch / "line-9.csr").write_bytes(mismatch)
    (batch / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    result = cli("issue", "device", "--batch", batch, "--out", out, "--json")
    assert result.code == 2  # something was skipped
    summary = json.loads(result.out)
    assert sorted(r["thing"] for r in summary["issued"]) == [f"line-{i}" for i in range(5)]
    assert [s["thing"] for s in summary["skipped"]] == ["broken", "line-9"]
    assert "cn-mismatch" in summary["skipped"][1]["error"]
    assert "skipped broken: input is not a PEM certificate request" in result.err
    for i in range(5):
        cert = load_cert(out / f"line-{i}" / "cert.pem")
        assert cert.subject.rfc4514_string() == f"CN=line-{i}"
    assert not (out / "broken").exists() and not (out / "line-9").exists()
    listed = json.loads(cli.ok("list", "--json").out)
    assert len(listed) == 5
    # again: everything already issued is skipped, nothing new is stored
    again = cli("issue", "device", "--batch", batch, "--out", out)
    assert again.code == 2
    assert len(json.loads(cli.ok("list", "--json").out)) == 5


def test_batch_commits_in_chunks(
    cli: Cli, ca_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pki.issue.issuer

    monkeypatch.setattr(pki.issue.issuer, "BATCH_COMMIT_SIZE", 3)
    batch = tmp_path / "b"
    batch.mkdir()
    for i in range(7):
        (batch / f"t{i}.csr").write_bytes(make_csr(f"t{i}")[0])
    result = cli("issue", "device", "--batch", batch, "--out", tmp_path / "o")
    assert result.code == 0, result.err
    assert "issued 7 device certificate(s)" in result.err
    assert len(json.loads(cli.ok("list", "--json").out)) == 7


def test_server_name_used_as_dns_by_default(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    cli.ok("issue", "server", "mqtt.local", "--generate-key", "--out", tmp_path / "m")
    cert = load_cert(tmp_path / "m" / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.local"]


def test_console_script_runs(ca_home: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "fleetpki"
    env = dict(os.environ, FLEETPKI_HOME=str(ca_home))
    result = subprocess.run([str(exe), "ca", "chain"], capture_output=True, text=True, env=env)
    assert result.returncode == 0
    chain = x509.load_pem_x509_certificates(result.stdout.encode())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=fleetpki Issuing CA",
        "CN=fleetpki Root CA",
    ]
    bad = subprocess.run([str(exe), "show", "zz"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr == "fleetpki: error: 'zz' is not a hexadecimal certificate serial number\n"
