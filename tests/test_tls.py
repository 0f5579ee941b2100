"""Real mTLS handshakes with certificates fleetpki issued."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import trustme

from pki.clock import FixedClock, SystemClock
from tests.conftest import Cli
from tests.helpers import mtls_handshake


def server_context(home: Path, server_dir: Path, crl: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(server_dir / "fullchain.pem", server_dir / "key.pem")
    ctx.load_verify_locations(home / "ca" / "root.pem")
    ctx.load_verify_locations(home / "ca" / "issuing.pem")
    if crl is not None:
        ctx.load_verify_locations(crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(home: Path, device_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(home / "ca" / "root.pem")
    if device_dir is not None:
        ctx.load_cert_chain(device_dir / "fullchain.pem", device_dir / "key.pem")
    return ctx


@pytest.fixture
def pki_dirs(cli: Cli, home: Path, tmp_path: Path) -> dict[str, Path]:
    # The CA is created 60 days ago so that a certificate can be issued already expired.
    past = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
    cli.ok("ca", "init", clock=past)
    dirs = {name: tmp_path / name for name in ("server", "good", "expired", "revoked")}
    cli.ok(
        "issue",
        "server",
        "localhost",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--generate-key",
        "--out",
        dirs["server"],
    )
    cli.ok("issue", "device", "good-1", "--generate-key", "--out", dirs["good"])
    cli.ok(
        "issue",
        "device",
        "old-1",
        "--generate-key",
        "--days",
        "5",
        "--out",
        dirs["expired"],
        clock=past,
    )
    cli.ok("issue", "device", "bad-1", "--generate-key", "--out", dirs["revoked"])
    return dirs


def test_issued_device_is_accepted(home: Path, pki_dirs: dict[str, Path]) -> None:
    result = mtls_handshake(
        server_context(home, pki_dirs["server"]), client_context(home, pki_dirs["good"])
    )
    assert result.accepted, result.server_error
    assert result.peer_cn == "good-1"


def test_foreign_ca_is_refused(home: Path, pki_dirs: dict[str, Path], tmp_path: Path) -> None:
    foreign = trustme.CA()
    leaf = foreign.issue_cert("good-1")
    ctx = client_context(home, None)
    leaf.configure_cert(ctx)
    result = mtls_handshake(server_context(home, pki_dirs["server"]), ctx)
    assert not result.accepted
    assert result.server_error == (
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
    )


def test_expired_device_is_refused(home: Path, pki_dirs: dict[str, Path]) -> None:
    result = mtls_handshake(
        server_context(home, pki_dirs["server"]), client_context(home, pki_dirs["expired"])
    )
    assert not result.accepted
    assert result.server_error == "CERTIFICATE_VERIFY_FAILED: certificate has expired"


def test_missing_client_certificate_is_refused(home: Path, pki_dirs: dict[str, Path]) -> None:
    result = mtls_handshake(server_context(home, pki_dirs["server"]), client_context(home, None))
    assert not result.accepted
    assert result.server_error == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_revoked_device_is_refused_once_the_crl_is_loaded(
    cli: Cli, home: Path, pki_dirs: dict[str, Path], tmp_path: Path
) -> None:
    serial = cli.ok("list", "--thing", "bad-1", "--json").out.split('"serial": "')[1].split('"')[0]
    crl = tmp_path / "crl.pem"
    cli.ok("crl", "--out", crl, clock=SystemClock())
    # before revocation, with the CRL loaded, the device gets in
    before = mtls_handshake(
        server_context(home, pki_dirs["server"], crl), client_context(home, pki_dirs["revoked"])
    )
    assert before.accepted, before.server_error
    cli.ok("revoke", serial, "--reason", "key-compromise")
    cli.ok("crl", "--out", crl)
    after = mtls_handshake(
        server_context(home, pki_dirs["server"], crl), client_context(home, pki_dirs["revoked"])
    )
    assert not after.accepted
    assert after.server_error == "CERTIFICATE_VERIFY_FAILED: certificate revoked"
    # the other devices still get in with the same CRL
    good = mtls_handshake(
        server_context(home, pki_dirs["server"], crl), client_context(home, pki_dirs["good"])
    )
    assert good.accepted, good.server_error
    # the home CRL that revoke itself re-signed works too
    home_crl = mtls_handshake(
        server_context(home, pki_dirs["server"], home / "crl" / "issuing.crl.pem"),
        client_context(home, pki_dirs["revoked"]),
    )
    assert not home_crl.accepted
