"""Java: a keytool truststore from ``ca chain --root``, a PKCS#12 client from
``issue device --format pkcs12``, and PKIX validation with fleetpki's CRLs.

Java's PKIX checks revocation at every level: with the issuing CA's CRL alone it cannot
determine the issuing CA's status (UNDETERMINED_REVOCATION_STATUS) and refuses everyone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import Pki, fleetpki
from tests.interop.relying import nginx

STOREPASS = "changeit-truststore"
P12_PASSPHRASE = "test-p12-passphrase"


@pytest.fixture(scope="module")
def java(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``java -cp DIR PkixCheck``, compiled once."""
    classes = tmp_path_factory.mktemp("java")
    source = Path(__file__).with_name("PkixCheck.java")
    subprocess.run(
        [shutil.which("javac") or "javac", "-d", str(classes), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return [shutil.which("java") or "java", "-cp", str(classes), "PkixCheck"]


@pytest.fixture(scope="module")
def truststore(interop_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("truststore") / "trust.p12"
    done = subprocess.run(
        ["keytool", "-importcert", "-noprompt", "-alias", "fleetpki-root",
         "-file", str(interop_pki.root), "-keystore", str(store),
         "-storetype", "PKCS12", "-storepass", STOREPASS],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    listing = subprocess.run(
        ["keytool", "-list", "-keystore", str(store), "-storepass", STOREPASS],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "fleetpki-root" in listing and "trustedCertEntry" in listing
    return store


def pkix(java: list[str], store: Path, *args: str | Path) -> str:
    env = dict(os.environ, FLEETPKI_P12_PASSPHRASE=P12_PASSPHRASE)
    done = subprocess.run(
        [*java, args[0], str(store), STOREPASS, *map(str, args[1:])],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ca_chain_root_is_the_one_certificate_keytool_imports(interop_pki: Pki) -> None:
    assert interop_pki.root.read_text().count("BEGIN CERTIFICATE") == 1
    assert interop_pki.issuing.read_text().count("BEGIN CERTIFICATE") == 1
    chain = interop_pki.chain.read_text()
    assert chain == interop_pki.issuing.read_text() + interop_pki.root.read_text()


def test_pkix_with_the_combined_crl_file(
    interop_pki: Pki, java: list[str], truststore: Path
) -> None:
    pki = interop_pki
    valid = pkix(java, truststore, "verify", pki.combined, pki.valid / "fullchain.pem")
    assert "crls 2" in valid and "VALID" in valid.splitlines()
    revoked = pkix(java, truststore, "verify", pki.combined, pki.revoked / "fullchain.pem")
    assert "INVALID REVOKED" in revoked
    alone = pkix(
        java, truststore, "verify", pki.crl / "issuing.crl.pem", pki.valid / "fullchain.pem"
    )
    assert "INVALID UNDETERMINED_REVOCATION_STATUS" in alone


def test_a_java_client_with_a_pkcs12_bundle_talks_to_nginx(
    interop_pki: Pki, java: list[str], truststore: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pki = interop_pki
    monkeypatch.setenv("FLEETPKI_P12_PASSPHRASE", P12_PASSPHRASE)
    out = tmp_path / "java-device"
    fleetpki(pki.home, "issue", "device", "java-1", "--generate-key", "--format", "pkcs12",
             "--out", out)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["bundle.p12"]
    assert (out / "bundle.p12").stat().st_mode & 0o777 == 0o600
    with nginx(tmp_path, pki) as server:
        answer = pkix(
            java, truststore, "connect", pki.combined, out / "bundle.p12", "127.0.0.1",
            str(server.port),
        )  # fmt: skip
        why = server.error_log()[-3000:]  # nginx's own words, should it refuse
    assert "STATUS HTTP/1.1 200 OK" in answer, why
    assert "BODY hello CN=java-1" in answer
