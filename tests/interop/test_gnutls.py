"""GnuTLS: ``certtool --verify`` and ``gnutls-cli`` with fleetpki's CRLs.

GnuTLS checks every level of the chain against the CRLs it is given, and treats a CRL it
was not given as "not revoked": without the root's CRL it would trust a chain whose
issuing CA the root revoked. The combined file closes that gap.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest

from pki.model import RevocationReason
from pki.storage import Inventory
from tests.interop.conftest import Pki, fleetpki, make_pki
from tests.interop.relying import nginx


def certtool(pki: Pki, leaf: Path, crl: Path | None) -> tuple[bool, str]:
    argv = ["certtool", "--verify", "--load-ca-certificate", str(pki.root)]
    if crl is not None:
        argv += ["--load-crl", str(crl)]
    done = subprocess.run(
        [*argv, "--infile", str(leaf / "fullchain.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    summary = [line for line in done.stdout.splitlines() if "Chain verification output" in line]
    assert summary, done.stdout + done.stderr
    return done.returncode == 0 and "Verified." in summary[-1], summary[-1]


def test_certtool_verifies_every_level_against_the_combined_file(interop_pki: Pki) -> None:
    pki = interop_pki
    assert certtool(pki, pki.valid, pki.combined)[0]
    trusted, why = certtool(pki, pki.revoked, pki.combined)
    assert not trusted and "revoked" in why
    assert not certtool(pki, pki.foreign, pki.combined)[0]


@pytest.fixture
def revoked_subordinate(tmp_path: Path) -> Pki:
    """A hierarchy whose root revoked its issuing CA (the root's CRL lists it)."""
    pki = make_pki(tmp_path)
    from cryptography import x509

    issuing = x509.load_pem_x509_certificate(pki.issuing.read_bytes())
    inventory = Inventory.open(f"sqlite:///{pki.home / 'inventory.db'}")
    try:
        with inventory.transaction() as conn:
            now = dt.datetime.now(dt.UTC)
            assert inventory.mark_revoked(
                conn, issuing.serial_number, now, RevocationReason.CA_COMPROMISE
            )
    finally:
        inventory.close()
    fleetpki(pki.home, "crl", "--root", "--out", tmp_path / "root-now.crl")
    return pki


def test_certtool_refuses_a_chain_whose_issuing_ca_the_root_revoked(
    revoked_subordinate: Pki,
) -> None:
    pki = revoked_subordinate
    trusted, why = certtool(pki, pki.valid, pki.combined)
    assert not trusted and "revoked" in why
    # given only the issuing CA's CRL, GnuTLS takes the missing root CRL as "not revoked"
    assert certtool(pki, pki.valid, pki.crl / "issuing.crl.pem")[0]


def gnutls_cli(pki: Pki, port: int, device: Path, crl: Path) -> tuple[int, str]:
    # gnutls-cli checks each CRL's signature against its CA file when loading it: it gets
    # the chain (issuing CA and root), as the CRLs are signed by both
    done = subprocess.run(
        ["gnutls-cli", "--x509cafile", str(pki.chain), "--x509crlfile", str(crl),
         "--x509certfile", str(device / "fullchain.pem"),
         "--x509keyfile", str(device / "key.pem"), "-p", str(port), "127.0.0.1"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_gnutls_cli_checks_the_servers_certificate_against_the_crls(
    interop_pki: Pki, tmp_path: Path
) -> None:
    pki = interop_pki
    with nginx(tmp_path, pki) as server:
        code, out = gnutls_cli(pki, server.port, pki.valid, pki.combined)
        assert code == 0 and "The certificate is trusted" in out, out
        assert "Handshake was completed" in out
    # a revoked server certificate: refused by gnutls-cli
    fleetpki(
        pki.home, "issue", "server", "localhost", "--ip", "127.0.0.1", "--generate-key",
        "--out", tmp_path / "revoked-server",
    )  # fmt: skip
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "revoked-server" / "cert.pem").read_bytes())
    fleetpki(pki.home, "revoke", format(cert.serial_number, "x"))
    revoked = Pki(**{**pki.__dict__, "server": tmp_path / "revoked-server"})
    with nginx(tmp_path, revoked) as server:
        code, out = gnutls_cli(pki, server.port, pki.valid, pki.combined)
        assert code != 0 and "revoked" in out, out
