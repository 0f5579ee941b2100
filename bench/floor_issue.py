"""The floor of any Python one-shot issuer (bench row ``cli_one_shot``): load the CSR and
check its signature, decrypt the home's issuing key, sign a certificate with the same
extensions fleetpki puts in, write the PEM. No policy, no inventory, no audit, no check of
the result.

    python bench/floor_issue.py HOME CSR OUT_DIR THING
"""

import datetime as dt
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID


def main() -> None:
    home, csr_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    thing = sys.argv[4]
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    if not csr.is_signature_valid:
        raise SystemExit("bad CSR signature")
    issuing = x509.load_pem_x509_certificate((home / "ca" / "issuing.pem").read_bytes())
    passphrase = (home / "ca-passphrase").read_bytes().strip()
    key = serialization.load_pem_private_key(
        (home / "ca" / "issuing.key.pem").read_bytes(), password=passphrase
    )
    now = dt.datetime.now(dt.UTC)
    public = csr.public_key()
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuing.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(usage, True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)  # type: ignore[arg-type]
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"https://fleetpki.local/things/{thing}")]
            ),
            False,
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    os.makedirs(out, mode=0o700, exist_ok=True)
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


if __name__ == "__main__":
    main()
