"""An unreachable AWS endpoint is a one-line backend error (exit 1), not an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli


def test_publish_to_an_unreachable_endpoint(
    cli: Cli, ca_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = cli(
        "bundle", "publish", "--target", "alb", "--bucket", "fleet-trust", "--key", "b.pem",
        "--trust-store",
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:truststore/ts/0123456789abcdef",
    )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith(
        "fleetpki: error: reading trust store arn:aws:elasticloadbalancing:us-east-1:"
        "123456789012:truststore/ts/0123456789abcdef (elbv2 DescribeTrustStores) failed: "
        "Could not connect to the endpoint URL"
    ), result.err
    assert "internal error" not in result.err and result.err.count("\n") == 1
