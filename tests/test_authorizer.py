"""The Lambda authorizer denies revoked serials and allows valid ones (fails closed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from pki.aws.authorizer import Denylist, make_handler
from pki.aws.publish import denylist_json, s3_object_loader
from pki.model import isoformat
from tests.conftest import Cli
from tests.helpers import NOW, load_cert

ARN = "arn:aws:execute-api:us-east-1:123456789012:abc/prod/GET/telemetry"


def rest_event(cert_pem: str, serial: str | None) -> dict[str, Any]:
    client_cert: dict[str, Any] = {"clientCertPem": cert_pem}
    if serial is not None:
        client_cert["serialNumber"] = serial
    return {"methodArn": ARN, "requestContext": {"identity": {"clientCert": client_cert}}}


def http_event(cert_pem: str) -> dict[str, Any]:
    return {"requestContext": {"authentication": {"clientCert": {"clientCertPem": cert_pem}}}}


def colon_hex(serial: int) -> str:
    text = format(serial, "x")
    text = text if len(text) % 2 == 0 else "0" + text
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def effect(result: dict[str, Any]) -> str:
    return str(result["policyDocument"]["Statement"][0]["Effect"])


def test_authorizer_against_a_published_denylist(
    cli: Cli, ca_home: Path, aws: str, tmp_path: Path
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="authz")
    s3.put_bucket_versioning(Bucket="authz", VersioningConfiguration={"Status": "Enabled"})
    certs = {}
    for name in ("good", "bad"):
        cli.ok("issue", "device", name, "--generate-key", "--out", tmp_path / name)
        certs[name] = load_cert(tmp_path / name / "cert.pem")
    cli.ok("revoke", format(certs["bad"].serial_number, "x"), "--no-crl")
    cli.ok("crl", "publish", "--denylist", "s3://authz/deny.json")
    logs: list[str] = []
    handler = make_handler(s3_object_loader("s3://authz/deny.json"), log=logs.append)
    pem = {n: (tmp_path / n / "cert.pem").read_text() for n in certs}
    good_serial = certs["good"].serial_number
    bad_serial = certs["bad"].serial_number

    allowed = handler(rest_event(pem["good"], colon_hex(good_serial)), None)
    assert (
        effect(allowed) == "Allow" and allowed["policyDocument"]["Statement"][0]["Resource"] == ARN
    )
    assert effect(handler(rest_event(pem["bad"], colon_hex(bad_serial)), None)) == "Deny"
    assert logs == [f"fleetpki authorizer: deny: certificate {bad_serial:x} is revoked"]
    # without serialNumber the PEM is read; HTTP APIs get the simple response
    assert effect(handler(rest_event(pem["bad"], None), None)) == "Deny"
    assert handler(http_event(pem["good"]), None) == {"isAuthorized": True}
    assert handler(http_event(pem["bad"]), None) == {"isAuthorized": False}
    assert handler({"requestContext": {}}, None) == {"isAuthorized": False}


def test_authorizer_fails_closed_and_caches() -> None:
    loads: list[int] = []
    now = [0.0]
    body = denylist_json([0x0A], isoformat(NOW), "test")

    def loader() -> bytes:
        loads.append(1)
        if len(loads) == 1:
            raise OSError("S3 unreachable")
        return body

    handler = make_handler(loader, ttl=60, monotonic=lambda: now[0], log=lambda _m: None)
    event = {"requestContext": {"authentication": {"clientCert": {"serialNumber": "0b"}}}}
    assert handler(event, None) == {"isAuthorized": False}  # no list yet: deny
    now[0] = 61
    assert handler(event, None) == {"isAuthorized": True}
    assert handler(event, None) == {"isAuthorized": True}
    assert len(loads) == 2  # cached within the TTL
    revoked = {"requestContext": {"authentication": {"clientCert": {"serialNumber": "0a"}}}}
    assert handler(revoked, None) == {"isAuthorized": False}
    assert Denylist.parse(body).serials == frozenset({10})
    assert json.loads(body)["serials"] == ["a"]
