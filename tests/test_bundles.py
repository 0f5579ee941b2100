"""Trust bundles: strict parsing, deterministic output, every target violation named."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.aws.bundles import (
    Target,
    TrustBundle,
    build_bundle,
    check_pem_text,
    check_target,
    parse_strict,
    require_target,
)
from pki.errors import PolicyViolation
from tests.conftest import Cli
from tests.helpers import NOW
from tests.trust_helpers import chain, make_ca, pems, rsa_key


def reasons(bundle: TrustBundle, target: Target, **kw: int) -> list[str]:
    return [v.reason for v in check_target(bundle, target, **kw)]


def test_bundle_is_deduplicated_sorted_and_deterministic() -> None:
    a, b, c = chain(3)
    one = build_bundle([c.cert, a.cert, b.cert, a.cert], NOW)
    two = build_bundle(parse_strict(pems([b, c, a, c]), "x"), NOW)
    assert one.pem == two.pem and one.sha256 == two.sha256
    assert one.sha256 == hashlib.sha256(one.pem).hexdigest()
    assert [x.subject.rfc4514_string() for x in one.certificates] == [
        "CN=L0 root",
        "CN=L1",
        "CN=L2",
    ]
    assert one.pem.count(b"BEGIN CERTIFICATE") == 3
    assert check_target(one, Target.APIGW) == [] and check_target(one, Target.ALB) == []


def test_strict_parsing_refuses_anything_but_certificate_blocks(tmp_path: Path) -> None:
    root = make_ca("root")
    key = root.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cases = {
        root.pem + key: "private-key: f contains a private key",
        root.pem.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1): (
            "pem-headers: f has a PEM block with headers"
        ),
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n": (
            "not-a-certificate: f contains a CERTIFICATE REQUEST block"
        ),
        b"subject=CN=root\n" + root.pem: "stray-text: f has text outside PEM blocks",
    }
    for data, message in cases.items():
        with pytest.raises(PolicyViolation) as err:
            parse_strict(data, "f")
        assert (
            str(err.value)
            == f"policy violation ({message.split(':')[0]}): bundle refused: {message}"
        )
    # blank lines between blocks are fine on input (the output never has any)
    assert len(parse_strict(root.pem + b"\n\n" + make_ca("other").pem, "f")) == 2


def test_build_refuses_expired_non_ca_and_empty() -> None:
    old = make_ca("old root", start=NOW - dt.timedelta(days=400), days=30)
    leaf = make_ca("leaf", parent=make_ca("r"), is_ca=False)
    with pytest.raises(PolicyViolation) as err:
        build_bundle([old.cert, leaf.cert], NOW)
    assert err.value.reason == "expired,not-a-ca"
    expired_on = old.cert.not_valid_after_utc
    assert str(err.value) == (
        "policy violation (expired,not-a-ca): bundle refused: "
        f"expired: CN=old root: expired {expired_on:%Y-%m-%d}; "
        "not-a-ca: CN=leaf: is not a CA certificate (basicConstraints)"
    )
    with pytest.raises(PolicyViolation, match=r"\(empty-bundle\)"):
        build_bundle([], NOW)
    future = make_ca("later", start=NOW + dt.timedelta(days=2))
    with pytest.raises(PolicyViolation, match=r"\(not-yet-valid\)"):
        build_bundle([future.cert], NOW)


def test_apigw_needs_the_full_chain_up_to_the_root() -> None:
    _root, mid, issuing = chain(3)
    partial = build_bundle([mid.cert, issuing.cert], NOW)
    violations = check_target(partial, Target.APIGW)
    assert [str(v) for v in violations] == [
        "incomplete-chain: CN=L1: its issuer CN=L0 root is not in the bundle; "
        "API Gateway needs the full chain up to the root",
        "incomplete-chain: CN=L2: its issuer CN=L0 root is not in the bundle; "
        "API Gateway needs the full chain up to the root",
    ]
    assert reasons(partial, Target.ALB) == []  # ALB takes intermediates alone
    # a certificate whose name matches but whose signature does not is no parent
    impostor = make_ca("L0 root")
    assert reasons(build_bundle([impostor.cert, mid.cert], NOW), Target.APIGW) == [
        "incomplete-chain"
    ]


@pytest.mark.parametrize("target", list(Target))
def test_chain_longer_than_four_is_refused(target: Target) -> None:
    five = build_bundle([c.cert for c in chain(5)], NOW)
    assert reasons(five, target) == ["chain-too-long"]
    assert reasons(build_bundle([c.cert for c in chain(4)], NOW), target) == []


def test_apigw_refuses_sha1_signatures(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-sha1", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "k"), "-out",
         str(tmp_path / "c"), "-subj", "/CN=sha1 root", "-days", "30"],
        check=True, capture_output=True,
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate((tmp_path / "c").read_bytes())
    bundle = build_bundle([cert], dt.datetime.now(dt.UTC))
    assert [str(v) for v in check_target(bundle, Target.APIGW)] == [
        "weak-signature: CN=sha1 root: signed with sha1; API Gateway needs SHA-256 or stronger"
    ]


@pytest.mark.parametrize("target", list(Target))
def test_weak_and_unsupported_keys(target: Target) -> None:
    small = make_ca("rsa1024", key=rsa_key(1024))
    koblitz = make_ca("k1", key=ec.generate_private_key(ec.SECP256K1()))
    good = [
        make_ca("rsa2048", key=rsa_key(2048)),
        make_ca("p521", key=ec.generate_private_key(ec.SECP521R1())),
    ]
    bundle = build_bundle([small.cert, koblitz.cert, *(c.cert for c in good)], NOW)
    found = [str(v) for v in check_target(bundle, target)]
    assert found == [
        f"unsupported-key: CN=k1: EC secp256k1 key; {target.label} accepts ECDSA P-256/P-384/P-521 "
        "or RSA",
        f"unsupported-key: CN=rsa1024: RSA 1024-bit key; {target.label} accepts "
        + ("RSA 2048-8192" if target is Target.ALB else "RSA >= 2048")
        + " or ECDSA P-256/P-384/P-521",
    ]


def test_alb_certificate_count_quota_is_configurable() -> None:
    roots = [make_ca(f"root {i:02}").cert for i in range(26)]
    bundle = build_bundle(roots, NOW)
    assert [str(v) for v in check_target(bundle, Target.ALB)] == [
        "too-many-certificates: 26 CA certificates; an ALB trust store takes at most 25 "
        "(raise --max-certificates only for a raised quota)"
    ]
    assert check_target(bundle, Target.ALB, max_certificates=30) == []
    assert check_target(bundle, Target.APIGW) == []


def test_alb_refuses_ca_certificates_over_16_kb() -> None:
    big = make_ca("big", filler=17_000)
    bundle = build_bundle([big.cert, make_ca("small").cert], NOW)
    found = check_target(bundle, Target.ALB)
    assert [v.reason for v in found] == ["certificate-too-large"]
    assert found[0].subject == "CN=big" and "ALB takes CA certificates up to 16 KB" in str(found[0])


def _v1(cert_der: bytes, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Re-encode a certificate as X.509 v1 (no version field) and re-sign it."""

    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        length = (
            bytes([n])
            if n < 128
            else bytes([0x80 | ((n.bit_length() + 7) // 8)])
            + n.to_bytes((n.bit_length() + 7) // 8, "big")
        )
        return bytes([tag]) + length + body

    def children(der: bytes) -> list[bytes]:
        out, i = [], 0
        while i < len(der):
            first = der[i + 1]
            if first < 128:
                size, head = first, 2
            else:
                k = first & 0x7F
                size, head = int.from_bytes(der[i + 2 : i + 2 + k], "big"), 2 + k
            out.append(der[i : i + head + size])
            i += head + size
        return out

    def body(der: bytes) -> bytes:
        return der[2:] if der[1] < 128 else der[2 + (der[1] & 0x7F) :]

    tbs, alg, _sig = children(body(cert_der))
    fields = [f for f in children(body(tbs)) if f[0] not in (0xA0, 0xA3)]
    new_tbs = tlv(0x30, b"".join(fields))
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(tlv(0x30, new_tbs + alg + tlv(0x03, b"\0" + signature)))


def test_alb_refuses_x509_v1() -> None:
    root = make_ca("v1 root")
    v1 = _v1(root.cert.public_bytes(serialization.Encoding.DER), root.key)
    assert v1.version is x509.Version.v1
    bundle = TrustBundle((v1,), v1.public_bytes(serialization.Encoding.PEM), "0" * 64)
    assert reasons(bundle, Target.ALB) == ["not-v3"]
    with pytest.raises(PolicyViolation, match=r"\(not-a-ca\)"):
        build_bundle([v1], NOW)  # and a v1 certificate cannot say it is a CA anyway


def test_alb_refuses_blank_lines_in_the_uploaded_text() -> None:
    root = make_ca("r")
    assert check_pem_text(root.pem + b"\n" + root.pem, Target.ALB)[0].reason == "blank-lines"
    assert check_pem_text(root.pem + root.pem, Target.ALB) == []
    assert check_pem_text(root.pem + b"\n" + root.pem, Target.APIGW) == []


def test_require_target_names_every_violation() -> None:
    root = make_ca("weak", key=rsa_key(1024))
    bundle = build_bundle([root.cert, *(c.cert for c in chain(5, "Z"))], NOW)
    with pytest.raises(PolicyViolation) as err:
        require_target(bundle, Target.ALB)
    assert err.value.reason == "chain-too-long,unsupported-key"
    assert str(err.value).startswith(
        "policy violation (chain-too-long,unsupported-key): bundle for ALB refused: "
    )


# -- CLI -------------------------------------------------------------------------------


def test_bundle_build_from_the_inventory(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle.pem"
    result = cli.ok("bundle", "build", "--target", "apigw", "--out", out)
    data = out.read_bytes()
    certs = x509.load_pem_x509_certificates(data)
    assert sorted(c.subject.rfc4514_string() for c in certs) == [
        "CN=fleetpki Issuing CA",
        "CN=fleetpki Root CA",
    ]
    digest = hashlib.sha256(data).hexdigest()
    assert (
        result.err
        == f"bundle for API Gateway: 2 CA certificate(s), sha256 {digest}, written to {out}\n"
    )
    again = cli.ok("bundle", "build", "--target", "alb")
    assert again.out.encode() == data
    summary = json.loads(cli.ok("bundle", "build", "--target", "alb", "--json").out)
    assert summary["sha256"] == digest and summary["certificates"] == 2


def test_bundle_build_with_a_second_generation(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    extra = tmp_path / "next.pem"
    nxt = chain(2, "next")
    extra.write_bytes(pems(nxt))
    result = json.loads(
        cli.ok("bundle", "build", "--target", "apigw", "--include", extra, "--json").out
    )
    assert result["certificates"] == 4


def test_bundle_build_refusals_write_nothing(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle.pem"
    root = make_ca("r")
    keyfile = tmp_path / "with-key.pem"
    keyfile.write_bytes(
        root.pem
        + root.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    bad = cli("bundle", "build", "--target", "alb", "--include", keyfile, "--out", out)
    assert (bad.code, bad.err) == (
        2,
        f"fleetpki: error: policy violation (private-key): bundle refused: private-key: "
        f"{keyfile} contains a private key\n",
    )
    empty = tmp_path / "empty.pem"  # a failed download of the new CA, say
    empty.write_bytes(b"")
    for source, message in (
        (empty, f"--include {empty} holds no certificate"),
        (Path("/dev/zero"), "--include /dev/zero is not a regular file"),
    ):
        bad = cli("bundle", "build", "--target", "alb", "--include", source, "--out", out)
        assert (bad.code, bad.err) == (2, f"fleetpki: error: {message}\n")
    many = tmp_path / "many.pem"
    many.write_bytes(pems([make_ca(f"root {i:02}") for i in range(24)]))
    bad = cli("bundle", "build", "--target", "alb", "--include", many, "--out", out)
    assert bad.code == 2
    assert bad.err == (
        "fleetpki: error: policy violation (too-many-certificates): bundle for ALB refused: "
        "too-many-certificates: 26 CA certificates; an ALB trust store takes at most 25 "
        "(raise --max-certificates only for a raised quota)\n"
    )
    assert not out.exists()
    cli.ok(
        "bundle",
        "build",
        "--target",
        "alb",
        "--include",
        many,
        "--max-certificates",
        "26",
        "--out",
        out,
    )
    assert out.exists()


def test_bundle_build_needs_a_ca(cli: Cli, home: Path) -> None:
    result = cli("bundle", "build", "--target", "alb")
    assert result.code == 2 and "run 'fleetpki ca init' first" in result.err
