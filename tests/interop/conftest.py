"""A CA home with what relying parties are tested with: a server certificate for
127.0.0.1, a valid and a revoked device, a device of a foreign CA, and the CRL files
fleetpki publishes — made once per test module through the real command line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import run_cli


def fleetpki(home: Path, *args: str | Path) -> str:
    """Run the fleetpki command line on ``home``; its stdout (fails on a non-zero exit)."""
    result = run_cli(["--home", home, *args])
    assert result.code == 0, f"fleetpki {' '.join(map(str, args))}: {result.err}"
    return result.out


@dataclass(frozen=True)
class Pki:
    home: Path
    root: Path  # fleetpki ca chain --root
    issuing: Path  # fleetpki ca chain --issuing
    chain: Path  # fleetpki ca chain (issuing, then root): what a verifier trusts
    server: Path  # DIR with fullchain.pem, key.pem: localhost / 127.0.0.1
    valid: Path  # a device in good standing
    revoked: Path  # a device fleetpki revoked
    foreign: Path  # a device of another CA
    foreign_root: Path

    @property
    def crl(self) -> Path:
        return self.home / "crl"

    @property
    def combined(self) -> Path:
        return self.crl / "combined.crl.pem"

    def device(self, name: str) -> Path:
        out = self.home.parent / name
        fleetpki(self.home, "issue", "device", name, "--generate-key", "--out", out)
        return out

    def revoke(self, device: Path) -> None:
        fleetpki(self.home, "revoke", _serial(device), "--reason", "key-compromise")


def _serial(device: Path) -> str:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((device / "cert.pem").read_bytes())
    return format(cert.serial_number, "x")


def make_pki(base: Path) -> Pki:
    home = base / "home"
    fleetpki(home, "ca", "init", "--common-name", "Interop")
    for which in ("root", "issuing"):
        (base / f"{which}.pem").write_text(fleetpki(home, "ca", "chain", f"--{which}"))
    (base / "chain.pem").write_text(fleetpki(home, "ca", "chain"))
    fleetpki(
        home, "issue", "server", "localhost", "--ip", "127.0.0.1", "--generate-key",
        "--out", base / "server",
    )  # fmt: skip
    for name in ("dev-valid", "dev-revoked"):
        fleetpki(home, "issue", "device", name, "--generate-key", "--out", base / name)
    fleetpki(home, "revoke", _serial(base / "dev-revoked"), "--reason", "key-compromise")
    other = base / "foreign-home"
    fleetpki(other, "ca", "init", "--common-name", "Foreign")
    fleetpki(other, "issue", "device", "dev-foreign", "--generate-key", "--out", base / "foreign")
    (base / "foreign-root.pem").write_text(fleetpki(other, "ca", "chain", "--root"))
    return Pki(
        home=home,
        root=base / "root.pem",
        issuing=base / "issuing.pem",
        chain=base / "chain.pem",
        server=base / "server",
        valid=base / "dev-valid",
        revoked=base / "dev-revoked",
        foreign=base / "foreign",
        foreign_root=base / "foreign-root.pem",
    )


@pytest.fixture(scope="module")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    with pytest.MonkeyPatch.context() as env:
        for name in ("FLEETPKI_DATABASE_URL", "FLEETPKI_CA_PASSPHRASE", "FLEETPKI_HOME"):
            env.delenv(name, raising=False)
        yield make_pki(tmp_path_factory.mktemp("interop"))
