"""CRL distribution points and caIssuers: in every certificate when configured, served on
plain HTTP by ``dev up``, and enough for a relying party that fetches what it needs."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pki.processes import free_port
from tests.device_fixtures import fleetpki, ok, running_stand
from tests.helpers import load_cert, pkilint


def _urls(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    return (
        [n.value for point in cdp for n in point.full_name or []],
        [d.access_location.value for d in aia],
    )


def test_certificates_name_their_crl_and_issuer_and_dev_up_serves_them(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    base = f"http://127.0.0.1:{port}"
    ok(home, "ca", "init", "--publish-url", base)
    config = json.loads((home / "config.json").read_text())
    assert config["crl_url"] == {
        "issuing": f"{base}/crl/issuing.crl",
        "root": f"{base}/crl/root.crl",
    }
    ok(home, "issue", "device", "d-1", "--generate-key", "--out", tmp_path / "d-1")
    leaf = load_cert(tmp_path / "d-1" / "cert.pem")
    issuing = load_cert(home / "ca" / "issuing.pem")
    # the leaf names its issuer's CRL and certificate; the issuing CA names the root's
    assert _urls(leaf) == ([f"{base}/crl/issuing.crl"], [f"{base}/ca/issuing.cer"])
    assert _urls(issuing) == ([f"{base}/crl/root.crl"], [f"{base}/ca/root.cer"])
    assert pkilint(tmp_path / "d-1" / "cert.pem") == []
    assert pkilint(home / "ca" / "issuing.pem") == []
    with running_stand(home, tmp_path) as stand:
        assert stand.ports["pki_http"]["port"] == port
        crls = home / "crl"
        for path, kind, body in (
            ("/crl/issuing.crl", "application/pkix-crl", (crls / "issuing.crl").read_bytes()),
            ("/crl/root.crl", "application/pkix-crl", (crls / "root.crl").read_bytes()),
            ("/ca/issuing.cer", "application/pkix-cert", issuing.public_bytes(Encoding.DER)),
        ):  # fmt: skip
            with urllib.request.urlopen(base + path, timeout=10) as answer:
                assert answer.headers["Content-Type"] == kind
                assert answer.read() == body
        x509.load_der_x509_crl((home / "crl" / "issuing.crl").read_bytes())
        # a relying party that downloads the CRLs the chain names
        assert _verify_downloading(home, tmp_path / "d-1", tmp_path).returncode == 0
        serial = format(leaf.serial_number, "x")
        ok(home, "crl", "--out", tmp_path / "c.pem")  # handed to the running stand-ins too
        with urllib.request.urlopen(f"{base}/crl/issuing.crl", timeout=10) as answer:
            assert answer.read() == (home / "crl" / "issuing.crl").read_bytes()
        ok(home, "revoke", serial)  # the stand-ins serve the new CRL at once
        refused = _verify_downloading(home, tmp_path / "d-1", tmp_path)
        assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr


def _verify_downloading(home: Path, device: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """A relying party with only the root: it fetches each CRL the chain names (the leaf's
    distribution point, the issuing CA's) over plain HTTP, then verifies with them."""
    pems = []
    for cert in (load_cert(device / "cert.pem"), load_cert(home / "ca" / "issuing.pem")):
        for url in _urls(cert)[0]:
            with urllib.request.urlopen(url, timeout=10) as answer:
                crl = x509.load_der_x509_crl(answer.read())
            pems.append(crl.public_bytes(Encoding.PEM))
    fetched = work / "fetched.crl.pem"
    fetched.write_bytes(b"".join(pems))
    return subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-CRLfile", str(fetched),
         "-CAfile", str(home / "ca" / "root.pem"), "-untrusted", str(home / "ca" / "issuing.pem"),
         str(device / "cert.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_dev_up_refuses_a_distribution_point_port_that_is_taken(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ok(home, "ca", "init", "--publish-url", f"http://127.0.0.1:{port}")
        code, _out, err = fleetpki(home, "dev", "up")
    assert code == 2
    assert f"127.0.0.1:{port} (named by crl_url / ca_issuers_url in" in err
    assert not (home / "dev" / "state.json").exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [("https://crl.example/x", "must be an http:// URL"),
     ("http://crl.example/dir/", "must name a file"),
     ("http://crl example/x.crl", "without spaces")],
)  # fmt: skip
def test_bad_distribution_urls_are_refused(tmp_path: Path, url: str, why: str) -> None:
    home = tmp_path / "home"
    ok(home, "ca", "init")
    config = json.loads((home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps(config | {"crl_url": {"issuing": url}}))
    code, _out, err = fleetpki(
        home, "issue", "device", "d-1", "--generate-key", "--out", tmp_path / "o"
    )
    assert code == 2 and why in err
    assert not (tmp_path / "o").exists()
