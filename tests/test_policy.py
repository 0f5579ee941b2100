"""Each policy rule, refused with its exact reason and message, through the CLI:
exit 2, one line on stderr, no inventory row, no file written."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import Cli
from tests.helpers import PEM, make_csr, weak_rsa_key

THING_URI = "https://fleetpki.local/things/"


def _inventory_serials(cli: Cli) -> list[str]:
    return [r["serial"] for r in json.loads(cli.ok("list", "--json").out)]


def _refused(cli: Cli, tmp_path: Path, csr_pem: bytes, *args: str) -> str:
    csr = tmp_path / "req.csr"
    csr.write_bytes(csr_pem)
    out = tmp_path / "out"
    before = _inventory_serials(cli)
    result = cli(*args, "--csr", str(csr), "--out", str(out))
    assert result.code == 2, result
    assert result.err.count("\n") == 1, f"error must be one line: {result.err!r}"
    assert not out.exists(), "nothing may be written on a refusal"
    assert _inventory_serials(cli) == before
    return result.err.strip()


def _device(cli: Cli, tmp_path: Path, csr_pem: bytes, thing: str = "sensor-1", *extra: str) -> str:
    return _refused(cli, tmp_path, csr_pem, "issue", "device", thing, *extra)


def _server(cli: Cli, tmp_path: Path, csr_pem: bytes, *args: str) -> str:
    return _refused(cli, tmp_path, csr_pem, "issue", "server", *args)


@pytest.mark.usefixtures("ca_home")
class TestDeviceRules:
    def test_unparsable_pem(self, cli: Cli, tmp_path: Path) -> None:
        err = _device(cli, tmp_path, b"hello, not a csr\n")
        assert err == (
            "fleetpki: error: input is not a PEM certificate request (no BEGIN CERTIFICATE "
            "REQUEST) nor a DER one"
        )

    def test_truncated_pem(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1")
        err = _device(cli, tmp_path, pem[:120] + b"\n-----END CERTIFICATE REQUEST-----\n")
        assert err.startswith("fleetpki: error: malformed CSR:")

    def test_private_key_in_input_is_refused_and_not_echoed(self, cli: Cli, tmp_path: Path) -> None:
        pem, key = make_csr("sensor-1")
        key_pem = key.private_bytes(  # type: ignore[attr-defined]
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        err = _device(cli, tmp_path, key_pem + pem)
        assert "contains a PRIVATE KEY block" in err
        body = key_pem.decode().splitlines()[1]
        assert body not in err

    def test_bad_signature(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1")
        csr = x509.load_pem_x509_csr(pem)
        der = bytearray(csr.public_bytes(serialization.Encoding.DER))
        der[-5] ^= 0x01  # flip a bit in the signature
        tampered = (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(bytes(der))
            + b"-----END CERTIFICATE REQUEST-----\n"
        )
        err = _device(cli, tmp_path, tampered)
        assert err == (
            "fleetpki: error: policy violation (bad-signature): CSR signature does not verify "
            "(the request was altered or not signed by its key)"
        )

    def test_csr_over_64_kib(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1")
        err = _device(cli, tmp_path, pem + b"\n" * (64 * 1024))
        assert err.startswith("fleetpki: error: CSR file ")
        assert "over the 64 KiB limit" in err

    def test_csr_from_an_endless_device(self, cli: Cli, tmp_path: Path) -> None:
        result = cli("issue", "device", "s-1", "--csr", "/dev/zero", "--out", tmp_path / "o")
        assert (result.code, result.err) == (
            2,
            "fleetpki: error: CSR file /dev/zero is not a regular file\n",
        )
        assert not (tmp_path / "o").exists()

    def test_weak_rsa_key(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", weak_rsa_key())
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (weak-key): key RSA 1024 is too weak; "
            "RSA keys need at least 2048 bits"
        )

    def test_unsupported_curve(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", ec.generate_private_key(ec.SECP521R1()))
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (unsupported-key): key EC secp521r1 is not "
            "accepted; use EC P-256 or P-384, or RSA >= 2048"
        )

    def test_ed25519_unsupported(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", ed25519.Ed25519PrivateKey.generate())
        err = _device(cli, tmp_path, pem)
        assert err.startswith(
            "fleetpki: error: policy violation (unsupported-key): key type Ed25519"
        )

    def test_sha1_signed_csr(self, cli: Cli, tmp_path: Path) -> None:
        # cryptography refuses to sign with SHA-1; openssl still can.
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha1",
                "-subj",
                "/CN=sensor-1",
                "-keyout",
                str(tmp_path / "k"),
                "-out",
                str(tmp_path / "s.csr"),
            ],
            check=True,
            capture_output=True,
        )
        err = _device(cli, tmp_path, (tmp_path / "s.csr").read_bytes())
        assert err == (
            "fleetpki: error: policy violation (weak-signature): CSR is signed with SHA1; "
            "use SHA-256 or stronger"
        )

    def test_ca_true_requested(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr(
            "sensor-1", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]
        )
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (ca-requested): CSR asks for CA:true; "
            "device certificates can never be CAs"
        )

    def test_cert_sign_key_usage_requested(self, cli: Cli, tmp_path: Path) -> None:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        pem, _ = make_csr("sensor-1", extensions=[(usage, True)])
        err = _device(cli, tmp_path, pem)
        assert "policy violation (ca-requested): CSR asks for keyCertSign/cRLSign" in err

    def test_extension_not_allowed(self, cli: Cli, tmp_path: Path) -> None:
        constraints = x509.NameConstraints(
            permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
        )
        pem, _ = make_csr("sensor-1", extensions=[(constraints, True)])
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (extension-not-allowed): CSR requests extension "
            "nameConstraints, which the device profile does not allow"
        )

    def test_server_auth_eku_on_device(self, cli: Cli, tmp_path: Path) -> None:
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        pem, _ = make_csr("sensor-1", extensions=[(eku, False)])
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (eku-not-allowed): CSR asks for extended key "
            "usage serverAuth; the device profile allows only clientAuth"
        )

    def test_cn_mismatch(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-2")
        err = _device(cli, tmp_path, pem, "sensor-1")
        assert err == (
            "fleetpki: error: policy violation (cn-mismatch): CSR common name 'sensor-2' does "
            "not match the thing name 'sensor-1'"
        )

    def test_invalid_thing_name(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr(None)
        err = _device(cli, tmp_path, pem, "bad/thing")
        assert err == (
            "fleetpki: error: policy violation (invalid-thing-name): thing name 'bad/thing' "
            "must be 1-128 characters of A-Z a-z 0-9 : _ -"
        )

    def test_a_thing_name_with_a_final_newline_is_refused(self, cli: Cli, tmp_path: Path) -> None:
        """Found by the hostile-input run: '^…$' lets a trailing newline through."""
        pem, _ = make_csr("0\n")
        err = _device(cli, tmp_path, pem, "0\n")
        assert err == (
            "fleetpki: error: policy violation (invalid-thing-name): thing name '0\\n' "
            "must be 1-128 characters of A-Z a-z 0-9 : _ -"
        )
        assert json.loads(cli.ok("list", "--json").out) == []

    def test_dns_san_on_device(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", sans=[x509.DNSName("evil.example.com")])
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (san-not-allowed): CSR asks for SAN "
            "evil.example.com; device certificates carry only the thing URI"
        )

    def test_other_things_uri(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", sans=[x509.UniformResourceIdentifier(THING_URI + "sensor-2")])
        err = _device(cli, tmp_path, pem)
        assert err == (
            "fleetpki: error: policy violation (san-not-allowed): CSR asks for SAN URI "
            f"{THING_URI}sensor-2; this device may only have {THING_URI}sensor-1"
        )

    def test_email_san(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", sans=[x509.RFC822Name("a@example.com")])
        err = _device(cli, tmp_path, pem)
        assert "(san-not-allowed): CSR asks for SAN email:a@example.com" in err

    def test_validity_over_maximum(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1")
        err = _device(cli, tmp_path, pem, "sensor-1", "--days", "398")
        assert err == (
            "fleetpki: error: policy violation (validity-too-long): 398 days is longer than "
            "the device profile's maximum of 397 days"
        )

    def test_zero_days(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1")
        err = _device(cli, tmp_path, pem, "sensor-1", "--days", "0")
        assert err == "fleetpki: error: --days must be a positive number of days, not 0"

    def test_matching_csr_with_thing_uri_is_accepted(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("sensor-1", sans=[x509.UniformResourceIdentifier(THING_URI + "sensor-1")])
        csr = tmp_path / "ok.csr"
        csr.write_bytes(pem)
        cli.ok("issue", "device", "sensor-1", "--csr", str(csr), "--out", str(tmp_path / "o"))
        assert (tmp_path / "o" / "cert.pem").exists()


@pytest.mark.usefixtures("ca_home")
class TestServerRules:
    def test_wildcard_refused_by_default(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api")
        err = _server(cli, tmp_path, pem, "api", "--dns", "*.api.example.com")
        assert err == (
            "fleetpki: error: policy violation (wildcard-not-allowed): wildcard DNS name "
            "*.api.example.com is not allowed (set allow_wildcard in config.json)"
        )

    def test_wildcard_allowed_when_configured(self, cli: Cli, tmp_path: Path, home: Path) -> None:
        config = json.loads((home / "config.json").read_text())
        config["policy"]["allow_wildcard"] = True
        (home / "config.json").write_text(json.dumps(config))
        pem, _ = make_csr("api")
        csr = tmp_path / "w.csr"
        csr.write_bytes(pem)
        cli.ok(
            "issue",
            "server",
            "api",
            "--dns",
            "*.api.example.com",
            "--csr",
            str(csr),
            "--out",
            str(tmp_path / "w"),
        )

    def test_csr_san_not_requested(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api", sans=[x509.DNSName("api.example.com"), x509.DNSName("bank.com")])
        err = _server(cli, tmp_path, pem, "api", "--dns", "api.example.com")
        assert err == (
            "fleetpki: error: policy violation (san-not-allowed): CSR asks for DNS name "
            "bank.com which was not requested (add --dns bank.com)"
        )

    def test_csr_ip_not_requested(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api", sans=[x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])
        err = _server(cli, tmp_path, pem, "api", "--dns", "api.example.com")
        assert "(san-not-allowed): CSR asks for IP address 10.1.2.3 which was not requested" in err

    def test_uri_san_on_server(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api", sans=[x509.UniformResourceIdentifier("https://x.example/")])
        err = _server(cli, tmp_path, pem, "api", "--dns", "api.example.com")
        assert "(san-not-allowed): CSR asks for SAN URI https://x.example/" in err

    def test_san_required(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr(None)
        err = _server(cli, tmp_path, pem, "My Server")
        assert err == (
            "fleetpki: error: policy violation (san-required): server name 'My Server' is "
            "neither a DNS name nor an IP address, and server certificates need at least one "
            "(give --dns / --ip)"
        )

    def test_invalid_dns_name(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api")
        err = _server(cli, tmp_path, pem, "api", "--dns", "bad_name.example.com")
        assert err == (
            "fleetpki: error: policy violation (invalid-dns-name): DNS name "
            "'bad_name.example.com' is not a valid host name"
        )

    def test_bad_ip_option(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api")
        err = _server(cli, tmp_path, pem, "api", "--ip", "300.1.1.1")
        assert err == "fleetpki: error: --ip '300.1.1.1' is not an IP address"

    def test_ca_true_on_server(self, cli: Cli, tmp_path: Path) -> None:
        pem, _ = make_csr("api", extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)])
        err = _server(cli, tmp_path, pem, "api", "--dns", "api.example.com")
        assert "(ca-requested): CSR asks for CA:true; server certificates can never be CAs" in err


@pytest.mark.usefixtures("ca_home")
def test_thing_name_longer_than_a_common_name(cli: Cli, tmp_path: Path) -> None:
    name = "t" * 65  # allowed by IoT Core (128), not by X.520 for the CN
    err = _device(cli, tmp_path, make_csr(None)[0], name)
    assert err == (
        "fleetpki: error: policy violation (invalid-thing-name): thing name 'tttttttttttttttttttt'"
        "... is 65 characters; it is the certificate's common name, which holds at most 64"
    )


@pytest.mark.usefixtures("ca_home")
@pytest.mark.parametrize(
    ("profile", "reason"), [("device", "invalid-thing-name"), ("server", "invalid-name")]
)
def test_a_name_too_long_is_refused_by_the_policy_before_a_key_is_made(
    cli: Cli, tmp_path: Path, profile: str, reason: str
) -> None:
    before = cli.ok("list", "--json").out
    result = cli("issue", profile, "t" * 65, "--generate-key", "--out", tmp_path / "o")
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"fleetpki: error: policy violation ({reason}): ")
    assert result.err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert cli.ok("list", "--json").out == before


@pytest.mark.usefixtures("ca_home")
def test_an_odd_subject_attribute_gives_no_warning_on_stderr(cli: Cli, tmp_path: Path) -> None:
    """Only the CN of a CSR counts; cryptography's warning about C=USA (3 letters) must not
    reach the operator as noise."""
    import warnings

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "USA", _validate=False),
                x509.NameAttribute(NameOID.COMMON_NAME, "odd-1"),
            ]
        )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    path = tmp_path / "odd.csr"
    path.write_bytes(csr.public_bytes(PEM))
    # a process of its own: pytest would catch the warning before it reached stderr
    done = subprocess.run(
        [sys.executable, "-m", "pki", "issue", "device", "odd-1", "--csr", str(path),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
    assert done.stderr.startswith("issued device certificate for odd-1")
