"""``openssl verify -crl_check_all``: revocation checked at every level of the chain.

With the issuing CA's CRL alone it refuses every valid device ("unable to get certificate
CRL": nothing says whether the issuing CA itself is revoked); the combined file, which
holds the root's CRL too, is what it needs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.interop.conftest import Pki


def verify(pki: Pki, leaf: Path, crl: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-x509_strict", "-purpose", "sslclient",
         "-CAfile", str(pki.root), "-untrusted", str(pki.issuing), "-CRLfile", str(crl),
         *extra, str(leaf / "cert.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_combined_crl_file_checks_every_level(interop_pki: Pki) -> None:
    ok = verify(interop_pki, interop_pki.valid, interop_pki.combined)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    revoked = verify(interop_pki, interop_pki.revoked, interop_pki.combined)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    foreign = verify(interop_pki, interop_pki.foreign, interop_pki.combined)
    assert foreign.returncode != 0
    assert "unable to get local issuer certificate" in foreign.stdout + foreign.stderr


def test_the_issuing_crl_alone_refuses_every_valid_device(interop_pki: Pki) -> None:
    # why the root's CRL exists: what the interop issue measured, kept as a control
    alone = verify(interop_pki, interop_pki.valid, interop_pki.crl / "issuing.crl.pem")
    assert alone.returncode != 0
    assert "unable to get certificate CRL" in alone.stdout + alone.stderr


def test_der_crls_and_the_per_ca_files_say_the_same(interop_pki: Pki) -> None:
    for ca in ("issuing", "root"):
        pem = subprocess.run(
            ["openssl", "crl", "-in", str(interop_pki.crl / f"{ca}.crl.pem"), "-outform", "DER"],
            capture_output=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert pem == (interop_pki.crl / f"{ca}.crl").read_bytes()
    combined = interop_pki.combined.read_text()
    assert combined.count("-----BEGIN X509 CRL-----") == 2
