"""Opt-in: the AWS flows against a REAL account (``pytest -m aws``). See docs/aws.md.

Never part of the default run: ``tests/conftest.py`` skips every ``aws`` test unless
``-m`` selects the marker, and each test here also needs credentials, the settings below,
and an ``AWS_ENDPOINT_URL`` that is not loopback (moto is what the default tests use).

- ``FLEETPKI_AWS_TEST_BUCKET``: an existing S3 bucket with versioning enabled. Objects go
  under ``fleetpki-aws-test/<random>/`` and every version written there is deleted.
- ``FLEETPKI_AWS_TEST_CA_ARN``: an ACTIVE Private CA to adopt and issue from (recommended).
  Or ``FLEETPKI_AWS_TEST_CREATE_CA=1``: create a root + subordinate hierarchy, then disable
  and schedule both for deletion (7 days). Private CA is billed per CA per month.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aws_fixtures import loopback_endpoint
from tests.conftest import Cli
from tests.helpers import load_cert, openssl_csr
from tests.trust_helpers import chain, pems

pytestmark = pytest.mark.aws

BUCKET_ENV = "FLEETPKI_AWS_TEST_BUCKET"
CA_ARN_ENV = "FLEETPKI_AWS_TEST_CA_ARN"
CREATE_ENV = "FLEETPKI_AWS_TEST_CREATE_CA"
PREFIX = "fleetpki-aws-test"


def require_real_account() -> Any:
    """A boto3 session for a real account, or a skip saying what is missing."""
    found = loopback_endpoint(os.environ)
    if found:
        pytest.skip(
            f"{found} points at loopback (moto?); the aws suite is for a real AWS account: unset it"
        )
    import boto3

    from pki.aws.client import region_setting

    session = boto3.Session(region_name=region_setting())  # AWS_REGION, as fleetpki reads it
    if session.get_credentials() is None:
        pytest.skip("no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID/...)")
    if not session.region_name:
        pytest.skip("no AWS region (set AWS_REGION)")
    return session


@pytest.fixture
def session() -> Any:
    return require_real_account()


@pytest.fixture
def bucket(session: Any) -> str:
    name = os.environ.get(BUCKET_ENV)
    if not name:
        pytest.skip(f"set {BUCKET_ENV} to a versioned S3 bucket to run this test")
    status = session.client("s3").get_bucket_versioning(Bucket=name).get("Status")
    if status != "Enabled":
        pytest.skip(f"S3 bucket {name} does not have versioning enabled")
    return name


@pytest.fixture
def prefix(session: Any, bucket: str) -> Iterator[str]:
    """A fresh key prefix; every object version and delete marker under it is removed."""
    where = f"{PREFIX}/{secrets.token_hex(6)}/"
    yield where
    s3 = session.client("s3")
    doomed: list[dict[str, str]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=where):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            doomed.append({"Key": item["Key"], "VersionId": item["VersionId"]})
    for start in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000]})


def _versions(s3: Any, bucket: str, key: str) -> list[str]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in listed.get("Versions", []) if v["Key"] == key]


def _body(s3: Any, bucket: str, key: str, version: str | None = None) -> bytes:
    extra = {"VersionId": version} if version else {}
    return bytes(s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())


def test_bundle_publish_and_rollback_on_real_s3(
    session: Any, bucket: str, prefix: str, cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    """Unchanged bundle twice -> one S3 version; changed -> a second; rollback -> v1's bytes."""
    s3 = session.client("s3")
    key = f"{prefix}bundle.pem"
    args = ["bundle", "publish", "--target", "apigw", "--bucket", bucket, "--key", key, "--json"]
    first = json.loads(cli.ok(*args).out)
    second = json.loads(cli.ok(*args).out)
    assert first["uploaded"] is True and second["uploaded"] is False
    assert _versions(s3, bucket, key) == [first["version_id"]] == [second["version_id"]]
    built = cli.ok("bundle", "build", "--target", "apigw").out.encode()
    assert _body(s3, bucket, key) == built

    extra = tmp_path / "next.pem"
    extra.write_bytes(pems(chain(2, "next")))
    third = json.loads(cli.ok(*args, "--include", str(extra)).out)
    assert third["uploaded"] is True and third["version_id"] != first["version_id"]
    assert len(_versions(s3, bucket, key)) == 2
    assert _body(s3, bucket, key) != built

    cli.ok("bundle", "rollback", "--to", str(first["id"]))
    assert _body(s3, bucket, key) == built
    assert _body(s3, bucket, key, first["version_id"]) == built
    history = json.loads(cli.ok("bundle", "history", "--json").out)
    assert [h["action"] for h in history] == ["upload", "upload", "upload", "rollback"]
    assert history[-1]["version_id"] == first["version_id"]


@pytest.fixture
def pca_arn(session: Any) -> Iterator[tuple[str, str | None]]:
    """(ARN to adopt, or "" to create) and the common name used when creating."""
    arn = os.environ.get(CA_ARN_ENV)
    if arn:
        yield arn, None
        return
    if os.environ.get(CREATE_ENV) != "1":
        pytest.skip(
            f"set {CA_ARN_ENV} to an ACTIVE Private CA (recommended), or {CREATE_ENV}=1 to "
            "create a billed root + subordinate hierarchy for this test"
        )
    common_name = f"fleetpki-aws-test-{secrets.token_hex(4)}"
    yield "", common_name
    _delete_created(session.client("acm-pca"), common_name)


def _delete_created(client: Any, common_name: str) -> None:
    """Disable and schedule for deletion every CA this test created (subordinate first)."""
    found: list[tuple[int, str, str]] = []
    for page in client.get_paginator("list_certificate_authorities").paginate():
        for ca in page["CertificateAuthorities"]:
            cn = ca["CertificateAuthorityConfiguration"]["Subject"].get("CommonName", "")
            if cn.startswith(common_name) and ca["Status"] != "DELETED":
                found.append((ca["Type"] == "ROOT", ca["Arn"], ca["Status"]))
    for _root, arn, status in sorted(found):
        if status == "ACTIVE":
            client.update_certificate_authority(CertificateAuthorityArn=arn, Status="DISABLED")
        client.delete_certificate_authority(CertificateAuthorityArn=arn,
                                            PermanentDeletionTimeInDays=7)  # fmt: skip


def test_private_ca_issue_verify_revoke(
    session: Any,
    pca_arn: tuple[str, str | None],
    cli: Cli,
    home: Path,
    tmp_path: Path,
) -> None:
    """Adopt (or create) → issue from an ``openssl req`` CSR → verify → revoke, in AWS."""
    from botocore.exceptions import ClientError

    from pki.backends.aws_pca import aws_serial

    arn, common_name = pca_arn
    if arn:
        region = arn.split(":")[3]
        cli.ok("ca", "init", "--backend", "aws-pca", "--ca-arn", arn, "--region", region)
    else:
        assert common_name is not None
        region = session.region_name
        cli.ok("ca", "init", "--backend", "aws-pca", "--create", "--common-name", common_name,
               "--region", region)  # fmt: skip
        arn = json.loads((home / "config.json").read_text())["ca_arn"]

    thing = f"aws-test-{secrets.token_hex(4)}"
    _key, csr = openssl_csr(tmp_path, thing)
    out = tmp_path / "out"
    issued = json.loads(
        cli.ok("issue", "device", thing, "--csr", csr, "--out", out, "--days", "1", "--json").out
    )
    assert issued["backend"] == "aws-pca" and issued["status"] == "active"
    cert = load_cert(out / "cert.pem")
    assert cert.subject.rfc4514_string() == f"CN={thing}"
    # an independent check of what AWS signed: openssl, strict, as a TLS client certificate
    chain_certs = (out / "chain.pem").read_bytes()
    (tmp_path / "root.pem").write_bytes(chain_certs[chain_certs.rindex(b"-----BEGIN") :])
    verified = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile",
         str(tmp_path / "root.pem"), "-untrusted", str(out / "chain.pem"), str(out / "cert.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr + verified.stdout

    revoked = cli.ok("revoke", issued["serial"], "--reason", "key-compromise")
    assert "about 30 minutes" in revoked.err
    assert json.loads(cli.ok("show", issued["serial"], "--json").out)["status"] == "revoked"
    # AWS itself has the revocation: a second RevokeCertificate is refused as already done
    client = session.client("acm-pca", region_name=region)
    with pytest.raises(ClientError) as again:
        client.revoke_certificate(
            CertificateAuthorityArn=arn,
            CertificateSerial=aws_serial(cert.serial_number),
            RevocationReason="KEY_COMPROMISE",
        )
    assert again.value.response["Error"]["Code"] == "RequestAlreadyProcessedException"
