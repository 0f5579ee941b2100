"""bench/aws.py: its server enforces the quota it claims to, and a small run issues through
the real AWS Private CA path (no timing is asserted)."""

from __future__ import annotations

import socket
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.aws import bench_aws, moto_server

CA = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/00000000-0000-0000-0000-0000"


def test_server_throttles_above_the_quota() -> None:
    with moto_server(quota=2) as url:
        client = boto3.client(
            "acm-pca", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
            aws_secret_access_key="b", config=Config(retries={"total_max_attempts": 1}),
        )  # fmt: skip
        codes = []
        for _ in range(5):
            with pytest.raises(ClientError) as err:
                client.issue_certificate(
                    CertificateAuthorityArn=CA, Csr=b"x", SigningAlgorithm="SHA256WITHRSA",
                    Validity={"Value": 1, "Type": "DAYS"},
                )  # fmt: skip
            codes.append(err.value.response["Error"]["Code"])
    # a burst far above 2/s: the first call is served (it reaches moto, which refuses the
    # bogus CA), the rest of the burst is throttled
    assert codes[0] != "ThrottlingException"
    assert codes.count("ThrottlingException") >= 3
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as sock:  # the server process is gone
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_small_run_issues_through_the_backend(tmp_path: Path) -> None:
    small, big = bench_aws({"aws": 6}, tmp_path)
    assert (small.key, big.key) == ("aws_issue_quota_small", "aws_issue_quota")
    for figure, count in ((small, 3), (big, 6)):
        assert figure.baseline == 25.0
        notes = figure.notes
        assert notes["issued"] == count and notes["errors_to_caller"] == []
        assert notes["calls"]["IssueCertificate"] == count
        assert notes["throttling_errors_to_caller"] == 0
        assert figure.ratio == pytest.approx(figure.value / 25.0)
