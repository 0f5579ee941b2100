"""A moto server, in this process, whose Private CA honours templates, passthrough and
validity (``bench/moto_pca.py``): the wire calls stay real boto3 over HTTP."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bench.moto_pca import issue_certificate
from pki.backends.local import LocalCA
from pki.clock import SystemClock
from pki.issue.issuer import Issuer
from pki.model import IssueRequest, KeyType
from pki.processes import free_port
from pki.storage import Inventory
from tests.helpers import make_csr


@pytest.fixture(scope="module")
def _pca_server() -> Iterator[str]:
    from moto.acmpca.responses import ACMPCAResponse
    from moto.server import ThreadedMotoServer

    original = ACMPCAResponse.issue_certificate
    ACMPCAResponse.issue_certificate = issue_certificate  # type: ignore[method-assign]
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        ACMPCAResponse.issue_certificate = original  # type: ignore[method-assign]


@pytest.fixture
def pca_aws(_pca_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Like ``aws``, but against the in-process moto whose Private CA applies templates."""
    import urllib.request

    req = urllib.request.Request(f"{_pca_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10)
    for name, value in {
        "AWS_ENDPOINT_URL": _pca_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return _pca_server


# -- helpers ---------------------------------------------------------------------------------

ARN = (
    "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/"
    "11111111-2222-3333-4444-555555555555"
)


def loopback_endpoint(environ: Mapping[str, str]) -> str | None:
    """The first ``AWS_ENDPOINT_URL*`` setting that points at this machine, if any."""
    for name in sorted(environ):
        if not name.startswith("AWS_ENDPOINT_URL"):
            continue
        host = urlsplit(environ[name]).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return f"{name}={environ[name]}"
        try:
            if ipaddress.ip_address(host).is_loopback:
                return f"{name}={environ[name]}"
        except ValueError:
            continue
    return None


def pca_signing_request(tmp_path: Path) -> Any:
    """A local CA and a device SigningRequest prepared against it (the plan a Private CA
    would be asked to sign)."""
    local = LocalCA.create(tmp_path / "ca", key_type=KeyType.EC_P256, common_name="t",
                           passphrase=b"x" * 16, now=dt.datetime.now(dt.UTC))  # fmt: skip
    inventory = Inventory.create("sqlite://")
    issuer = Issuer(local, inventory, SystemClock())
    csr, _ = make_csr("dev-1")
    return local, issuer.prepare(IssueRequest("device", "dev-1", csr))
