"""The moto server fixture answers real boto3 calls on loopback."""

from __future__ import annotations

import boto3


def test_moto_serves_versioned_s3(aws: str) -> None:
    assert aws.startswith("http://127.0.0.1:")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="fleet-bundles")
    s3.put_bucket_versioning(Bucket="fleet-bundles", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="fleet-bundles", Key="k", Body=b"1")["VersionId"]
    v2 = s3.put_object(Bucket="fleet-bundles", Key="k", Body=b"2")["VersionId"]
    assert v1 != v2
    assert s3.get_object(Bucket="fleet-bundles", Key="k", VersionId=v1)["Body"].read() == b"1"


def test_each_test_gets_a_clean_account(aws: str) -> None:
    assert boto3.client("s3").list_buckets()["Buckets"] == []
