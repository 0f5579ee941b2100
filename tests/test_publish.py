"""Publishing bundles and CRLs: S3 through moto; API Gateway and ALB calls through Stubber.

moto implements neither ALB trust stores nor API Gateway truststore updates, so those
clients are real boto3 clients with ``botocore.stub.Stubber``: every call we make is
validated against the service model, and the arguments are captured and asserted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.aws import publish
from pki.clock import FixedClock, SystemClock
from pki.storage import Inventory
from tests.conftest import Cli
from tests.trust_helpers import chain, pems

BUCKET = "fleet-trust"
ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:truststore/fleet/0123456789abcdef"
DOMAIN = "api.fleet.example"


class Stubs:
    """Stubbed clients handed out by ``pki.aws.publish.make_client``; S3 stays real (moto)."""

    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.stubbers: dict[str, Stubber] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def stub(self, service: str) -> Stubber:
        if service not in self.stubbers:
            client = boto3.client(service)
            client.meta.events.register("provide-client-params", self._capture)
            self.clients[service] = client
            self.stubbers[service] = Stubber(client)
            self.stubbers[service].activate()
        return self.stubbers[service]

    def _capture(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture
def stubs(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubs]:
    s = Stubs()
    real = publish.make_client

    def factory(service: str, region: str | None = None) -> Any:
        if service in s.stubbers:
            return s.clients[service]
        return real(service, region)

    monkeypatch.setattr(publish, "make_client", factory)
    yield s


@pytest.fixture
def bucket(aws: str) -> str:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return BUCKET


def versions(key: str) -> list[dict[str, Any]]:
    listed = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


def body(key: str, version: str | None = None) -> bytes:
    extra = {"VersionId": version} if version else {}
    return bytes(boto3.client("s3").get_object(Bucket=BUCKET, Key=key, **extra)["Body"].read())


def rest_domain(version: str | None, warnings: list[str] | None = None) -> dict[str, Any]:
    mtls: dict[str, Any] = {"truststoreUri": f"s3://{BUCKET}/trust/bundle.pem"}
    if version:
        mtls["truststoreVersion"] = version
    if warnings:
        mtls["truststoreWarnings"] = warnings
    return {"domainName": DOMAIN, "mutualTlsAuthentication": mtls}


def expect_rest_publish(stub: Stubber, before: str | None) -> None:
    stub.add_response("get_domain_name", rest_domain(before), {"domainName": DOMAIN})
    stub.add_response(
        "update_domain_name", {"domainName": DOMAIN}, {"domainName": DOMAIN, "patchOperations": ANY}
    )
    stub.add_response("get_domain_name", rest_domain("applied"), {"domainName": DOMAIN})


def patched_version(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [
        op["value"]
        for name, params in calls
        if name == "UpdateDomainName"
        for op in params["patchOperations"]
        if op["path"] == "/mutualTlsAuthentication/truststoreVersion"
    ]


def publish_args(*extra: object) -> list[object]:
    return ["bundle", "publish", "--target", "apigw", "--bucket", BUCKET, "--key",
            "trust/bundle.pem", "--domain", DOMAIN, *extra]  # fmt: skip


def test_publish_unchanged_changed_and_rollback(
    db_url: str | None, cli: Cli, ca_home: Path, bucket: str, stubs: Stubs, tmp_path: Path
) -> None:
    api = stubs.stub("apigateway")
    expect_rest_publish(api, None)
    first = json.loads(cli.ok(*publish_args("--json")).out)
    expect_rest_publish(api, first["version_id"])
    second = json.loads(cli.ok(*publish_args("--json")).out)
    assert [v["VersionId"] for v in versions("trust/bundle.pem")] == [first["version_id"]]
    assert second["version_id"] == first["version_id"] and second["uploaded"] is False
    built = cli.ok("bundle", "build", "--target", "apigw").out.encode()
    assert body("trust/bundle.pem") == built
    head = boto3.client("s3").head_object(Bucket=BUCKET, Key="trust/bundle.pem")
    assert head["Metadata"] == {"fleetpki-sha256": hashlib.sha256(built).hexdigest()}

    extra = tmp_path / "next.pem"
    extra.write_bytes(pems(chain(2, "next")))
    expect_rest_publish(api, first["version_id"])
    third = json.loads(cli.ok(*publish_args("--include", extra, "--json")).out)
    assert third["uploaded"] is True and third["version_id"] != first["version_id"]
    assert len(versions("trust/bundle.pem")) == 2
    assert len(x509.load_pem_x509_certificates(body("trust/bundle.pem"))) == 4

    expect_rest_publish(api, third["version_id"])
    rolled = cli.ok("bundle", "rollback", "--to", str(first["id"]))
    assert f"rolled back to s3://{BUCKET}/trust/bundle.pem version {first['version_id']}" in (
        rolled.err
    )
    stubs.done()
    # the domain was pointed at v1, v1, v2 and then v1 again
    v1, v2 = first["version_id"], third["version_id"]
    assert patched_version(stubs.calls) == [v1, v1, v2, v1]
    assert body("trust/bundle.pem", v1) == built
    assert body("trust/bundle.pem") == built  # the current object is v1's bytes again
    history = json.loads(cli.ok("bundle", "history", "--json").out)
    assert [(h["action"], h["version_id"], h["endpoint"]) for h in history] == [
        ("publish", v1, DOMAIN),
        ("publish", v1, DOMAIN),
        ("publish", v2, DOMAIN),
        ("rollback", v1, DOMAIN),
    ]
    assert history[3]["sha256"] == hashlib.sha256(built).hexdigest()
    # what each bundle held is recorded (doctor checks coverage offline from it)
    held = [sorted(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                   for c in x509.load_pem_x509_certificates(body("trust/bundle.pem", v)))
            for v in (v1, v2)]  # fmt: skip
    assert [sorted(h["cas"]) for h in history] == [held[0], held[0], held[1], held[0]]
    text = cli.ok("bundle", "history").out
    assert "#4 " in text and f"rollback apigw      {DOMAIN}" in text
    # the ledger is in the database the run was pointed at (PostgreSQL or the home's SQLite)
    ledger = Inventory.open(db_url or f"sqlite:///{ca_home / 'inventory.db'}")
    assert [(v.action, v.version_id) for v in ledger.bundle_history()] == [
        ("publish", v1), ("publish", v1), ("publish", v2), ("rollback", v1)
    ]  # fmt: skip
    ledger.close()


def test_truststore_warnings_roll_the_domain_back(
    db_url: str | None, cli: Cli, ca_home: Path, bucket: str, stubs: Stubs
) -> None:
    api = stubs.stub("apigateway")
    api.add_response("get_domain_name", rest_domain("good-version"), {"domainName": DOMAIN})
    api.add_response(
        "update_domain_name", {"domainName": DOMAIN}, {"domainName": DOMAIN, "patchOperations": ANY}
    )
    api.add_response(
        "get_domain_name",
        rest_domain("new", ["Certificate CN=x is not valid for the truststore"]),
        {"domainName": DOMAIN},
    )
    api.add_response(
        "update_domain_name", {"domainName": DOMAIN}, {"domainName": DOMAIN, "patchOperations": ANY}
    )
    result = cli(*publish_args())
    stubs.done()
    new = versions("trust/bundle.pem")[0]["VersionId"]
    assert (result.code, result.err) == (
        1,
        f"fleetpki: error: API Gateway reported truststore warnings for {DOMAIN} with version "
        f"{new}: Certificate CN=x is not valid for the truststore; rolled the domain back to "
        "version good-version\n",
    )
    assert patched_version(stubs.calls) == [new, "good-version"]
    assert json.loads(cli.ok("bundle", "history", "--json").out) == []


def test_http_api_domain(cli: Cli, ca_home: Path, bucket: str, stubs: Stubs) -> None:
    api = stubs.stub("apigatewayv2")
    uri = f"s3://{BUCKET}/trust/bundle.pem"
    current = {"DomainName": DOMAIN, "MutualTlsAuthentication": {"TruststoreUri": uri}}
    api.add_response("get_domain_name", current, {"DomainName": DOMAIN})
    api.add_response(
        "update_domain_name",
        {"DomainName": DOMAIN},
        {
            "DomainName": DOMAIN,
            "MutualTlsAuthentication": {"TruststoreUri": uri, "TruststoreVersion": ANY},
        },
    )
    api.add_response("get_domain_name", current, {"DomainName": DOMAIN})
    row = json.loads(cli.ok(*publish_args("--api", "http", "--json")).out)
    stubs.done()
    assert row["target"] == "apigw-http"
    sent = [p for name, p in stubs.calls if name == "UpdateDomainName"]
    assert sent[0]["MutualTlsAuthentication"]["TruststoreVersion"] == row["version_id"]


def test_http_api_truststore_warnings_roll_the_domain_back(
    db_url: str | None, cli: Cli, ca_home: Path, bucket: str, stubs: Stubs
) -> None:
    api = stubs.stub("apigatewayv2")
    old_uri = f"s3://{BUCKET}/old/bundle.pem"
    uri = f"s3://{BUCKET}/trust/bundle.pem"
    before = {"TruststoreUri": old_uri, "TruststoreVersion": "good-version"}
    api.add_response(
        "get_domain_name",
        {"DomainName": DOMAIN, "MutualTlsAuthentication": before},
        {"DomainName": DOMAIN},
    )
    api.add_response(
        "update_domain_name",
        {"DomainName": DOMAIN},
        {"DomainName": DOMAIN,
         "MutualTlsAuthentication": {"TruststoreUri": uri, "TruststoreVersion": ANY}},
    )  # fmt: skip
    warning = "Certificate CN=x is not valid for the truststore"
    api.add_response(
        "get_domain_name",
        {"DomainName": DOMAIN, "MutualTlsAuthentication": {
            "TruststoreUri": uri, "TruststoreVersion": "new", "TruststoreWarnings": [warning]}},
        {"DomainName": DOMAIN},
    )  # fmt: skip
    api.add_response(
        "update_domain_name",
        {"DomainName": DOMAIN},
        {"DomainName": DOMAIN, "MutualTlsAuthentication": before},
    )
    result = cli(*publish_args("--api", "http"))
    stubs.done()
    new = versions("trust/bundle.pem")[0]["VersionId"]
    assert (result.code, result.err) == (
        1,
        f"fleetpki: error: API Gateway reported truststore warnings for {DOMAIN} with version "
        f"{new}: {warning}; rolled the domain back to version good-version\n",
    )
    # the domain was pointed at the new version, then back at the previous URI and version
    sent = [p["MutualTlsAuthentication"] for name, p in stubs.calls if name == "UpdateDomainName"]
    assert sent == [{"TruststoreUri": uri, "TruststoreVersion": new}, before]
    assert json.loads(cli.ok("bundle", "history", "--json").out) == []


def trust_store(arn: str = ARN) -> dict[str, Any]:
    return {
        "TrustStores": [
            {"Name": "fleet", "TrustStoreArn": arn, "Status": "ACTIVE",
             "NumberOfCaCertificates": 2, "TotalRevokedEntries": 0}
        ]
    }  # fmt: skip


def test_alb_publish_modifies_the_trust_store(
    cli: Cli, ca_home: Path, bucket: str, stubs: Stubs
) -> None:
    elb = stubs.stub("elbv2")
    elb.add_response("describe_trust_stores", trust_store(), {"TrustStoreArns": [ARN]})
    elb.add_response(
        "modify_trust_store",
        trust_store(),
        {"TrustStoreArn": ARN, "CaCertificatesBundleS3Bucket": BUCKET,
         "CaCertificatesBundleS3Key": "alb/bundle.pem", "CaCertificatesBundleS3ObjectVersion": ANY},
    )  # fmt: skip
    result = cli.ok("bundle", "publish", "--target", "alb", "--bucket", BUCKET, "--key",
                    "alb/bundle.pem", "--trust-store", ARN)  # fmt: skip
    stubs.done()
    version = versions("alb/bundle.pem")[0]["VersionId"]
    sent = next(p for name, p in stubs.calls if name == "ModifyTrustStore")
    assert sent["CaCertificatesBundleS3ObjectVersion"] == version
    assert f"{ARN} now trusts that version" in result.err


def test_refusals_write_nothing(
    db_url: str | None, cli: Cli, ca_home: Path, aws: str, stubs: Stubs
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="plain")
    api = stubs.stub("apigateway")
    api.add_response("get_domain_name", rest_domain(None), {"domainName": DOMAIN})
    result = cli("bundle", "publish", "--target", "apigw", "--bucket", "plain", "--key", "b.pem",
                 "--domain", DOMAIN)  # fmt: skip
    assert (result.code, result.err) == (
        2,
        "fleetpki: error: S3 bucket 'plain' does not have versioning enabled; endpoints pin "
        "object versions, so enable it first (aws s3api put-bucket-versioning --bucket plain "
        "--versioning-configuration Status=Enabled)\n",
    )
    assert s3.list_objects_v2(Bucket="plain").get("KeyCount") == 0
    # a domain without mutual TLS: refused before anything is uploaded
    s3.put_bucket_versioning(Bucket="plain", VersioningConfiguration={"Status": "Enabled"})
    api.add_response("get_domain_name", {"domainName": DOMAIN}, {"domainName": DOMAIN})
    result = cli("bundle", "publish", "--target", "apigw", "--bucket", "plain", "--key", "b.pem",
                 "--domain", DOMAIN)  # fmt: skip
    assert (result.code, result.err) == (
        2,
        f"fleetpki: error: custom domain '{DOMAIN}' has no mutual TLS configured; create it "
        "with a truststore URI first\n",
    )
    missing = cli("bundle", "publish", "--target", "alb", "--bucket", "nope", "--key", "k",
                  "--trust-store", "not-an-arn")  # fmt: skip
    assert (missing.code, missing.err) == (
        2,
        "fleetpki: error: 'not-an-arn' is not an ELBv2 trust store ARN\n",
    )
    nobucket = cli("bundle", "publish", "--target", "apigw", "--bucket", "nope", "--key", "k")
    assert (nobucket.code, nobucket.err) == (
        2,
        "fleetpki: error: S3 bucket 'nope' does not exist\n",
    )
    # a name botocore itself refuses: the operator's mistake, on one line
    badname = cli("bundle", "publish", "--target", "apigw", "--bucket", "Bad Bucket!", "--key", "k")
    assert badname.code == 2
    assert badname.err.startswith(
        "fleetpki: error: reading the versioning of bucket Bad Bucket! (s3 GetBucketVersioning): "
        "invalid parameter: "
        'Invalid bucket name "Bad Bucket!"'
    )
    assert badname.err.count("\n") == 1
    stubs.done()
    assert s3.list_objects_v2(Bucket="plain").get("KeyCount") == 0
    assert json.loads(cli.ok("bundle", "history", "--json").out) == []
    assert cli("bundle", "rollback", "--to", "7").err == (
        "fleetpki: error: no bundle version '7' in the ledger (see 'fleetpki bundle history')\n"
    )


# -- revocations: ALB trust-store CRLs and the API Gateway denylist --------------------


def issue_and_revoke(cli: Cli, tmp_path: Path, names: list[str]) -> list[str]:
    serials = []
    for name in names:
        out = cli.ok(
            "issue", "device", name, "--generate-key", "--out", tmp_path / name, "--json"
        ).out
        serials.append(json.loads(out)["serial"])
        cli.ok("revoke", serials[-1], "--no-crl")
    return serials


def test_crl_publish_to_alb_replaces_the_previous_list(
    db_url: str | None, cli: Cli, ca_home: Path, bucket: str, stubs: Stubs, tmp_path: Path
) -> None:
    serials = issue_and_revoke(cli, tmp_path, ["d1"])
    elb = stubs.stub("elbv2")
    uri = f"s3://{BUCKET}/crl/issuing.crl"

    def expect(existing: list[int], new_id: int) -> None:
        elb.add_response("describe_trust_stores", trust_store(), {"TrustStoreArns": [ARN]})
        elb.add_response("describe_trust_stores", trust_store(), {"TrustStoreArns": [ARN]})
        elb.add_response(
            "describe_trust_store_revocations",
            {"TrustStoreRevocations": [
                {"TrustStoreArn": ARN, "RevocationId": i, "RevocationType": "CRL",
                 "NumberOfRevokedEntries": 1} for i in existing]},
            {"TrustStoreArn": ARN},
        )  # fmt: skip
        elb.add_response(
            "add_trust_store_revocations",
            {"TrustStoreRevocations": [{"TrustStoreArn": ARN, "RevocationId": new_id,
                                        "RevocationType": "CRL", "NumberOfRevokedEntries": 1}]},
            {"TrustStoreArn": ARN, "RevocationContents": [
                {"S3Bucket": BUCKET, "S3Key": "crl/issuing.crl", "S3ObjectVersion": ANY,
                 "RevocationType": "CRL"}]},
        )  # fmt: skip

    expect([5], 11)  # 5 belongs to someone else: left alone
    first = json.loads(
        cli.ok("crl", "publish", "--trust-store", ARN, "--crl-uri", uri, "--json").out
    )
    assert first["alb"]["revocation_id"] == 11 and first["alb"]["removed_revocation_ids"] == []
    crl = x509.load_der_x509_crl(body("crl/issuing.crl"))
    assert [format(e.serial_number, "x") for e in crl] == [serials[0].lstrip("0")]
    expect([5, 11], 12)
    elb.add_response(
        "remove_trust_store_revocations", {}, {"TrustStoreArn": ARN, "RevocationIds": [11]}
    )
    second = cli.ok("crl", "publish", "--trust-store", ARN, "--crl-uri", uri)
    stubs.done()
    assert f"loaded into {ARN} as revocation list 12, replacing 11" in second.err
    # the plain CRL command still works as before
    assert "CRL #4" in cli.ok("crl", "--out", tmp_path / "x.crl").err


def test_crl_publish_limits_and_bad_input(
    cli: Cli, ca_home: Path, bucket: str, stubs: Stubs
) -> None:
    elb = stubs.stub("elbv2")
    elb.add_response("describe_trust_stores", trust_store(), {"TrustStoreArns": [ARN]})
    elb.add_response("describe_trust_stores", trust_store(), {"TrustStoreArns": [ARN]})
    full = [{"TrustStoreArn": ARN, "RevocationId": i, "RevocationType": "CRL",
             "NumberOfRevokedEntries": 10} for i in range(30)]  # fmt: skip
    elb.add_response(
        "describe_trust_store_revocations", {"TrustStoreRevocations": full}, {"TrustStoreArn": ARN}
    )
    uri = f"s3://{BUCKET}/crl/issuing.crl"
    result = cli("crl", "publish", "--trust-store", ARN, "--crl-uri", uri)
    stubs.done()
    assert (result.code, result.err) == (
        2,
        f"fleetpki: error: trust store {ARN} already holds 30 revocation lists not published "
        "by fleetpki; ALB allows 30\n",
    )
    assert versions("crl/issuing.crl") == []
    assert cli("crl", "publish").err == (
        "fleetpki: error: give --trust-store ARN (with --crl-uri) and/or --denylist s3://...\n"
    )
    bad = cli("crl", "publish", "--denylist", "https://x/y")
    assert (bad.code, bad.err) == (
        2,
        "fleetpki: error: 'https://x/y' is not an S3 URI; use s3://BUCKET/KEY\n",
    )

    # a bad --denylist is refused before the ALB half signs, uploads or changes anything
    def published() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (ca_home / "crl").glob("*")}

    crls = published()
    both = cli("crl", "publish", "--trust-store", ARN, "--crl-uri", uri, "--denylist", "x")
    assert (both.code, both.err) == (
        2,
        "fleetpki: error: 'x' is not an S3 URI; use s3://BUCKET/KEY\n",
    )
    assert versions("crl/issuing.crl") == []
    assert published() == crls


def test_denylist_publish(
    db_url: str | None, cli: Cli, ca_home: Path, bucket: str, tmp_path: Path
) -> None:
    serials = issue_and_revoke(cli, tmp_path, ["d1", "d2"])
    cli.ok("issue", "device", "ok1", "--generate-key", "--out", tmp_path / "ok1")
    uri = f"s3://{BUCKET}/authz/denylist.json"
    start = SystemClock().now() + dt.timedelta(minutes=1)
    first = cli.ok("crl", "publish", "--denylist", uri, clock=FixedClock(start))
    assert "denylist of 2 revoked serial(s) written to" in first.err
    data = json.loads(body("authz/denylist.json"))
    assert sorted(data["serials"]) == sorted(s.lstrip("0") for s in serials)
    assert data["format"] == "fleetpki-denylist/1"
    # an hour later, nothing new revoked: not uploaded again, generated_at unchanged
    later = FixedClock(start + dt.timedelta(hours=1))
    again = cli.ok("crl", "publish", "--denylist", uri, clock=later)
    assert "unchanged at" in again.err and len(versions("authz/denylist.json")) == 1
    assert json.loads(body("authz/denylist.json")) == data
    cli.ok("revoke", issue_and_revoke(cli, tmp_path, ["d3"])[0], "--no-crl")
    third = cli.ok("crl", "publish", "--denylist", uri, clock=later)
    assert "denylist of 3 revoked serial(s) written to" in third.err
    assert len(versions("authz/denylist.json")) == 2
    assert json.loads(body("authz/denylist.json"))["generated_at"] != data["generated_at"]
