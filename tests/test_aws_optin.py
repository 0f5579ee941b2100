"""The real-account suite (``tests/test_aws_real.py``) never runs unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aws_fixtures import loopback_endpoint
from tests.conftest import AWS_OPT_IN, aws_selected

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/test_aws_real.py"


def run_suite(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on the real-account suite, in a subprocess, with everything it would need set
    (fake credentials, bucket, CA ARN) so that only the opt-in machinery can stop it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FLEETPKI_"))}
    base |= {
        "AWS_ACCESS_KEY_ID": "AKIAFLEETPKITESTONLY",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "FLEETPKI_AWS_TEST_BUCKET": "fleetpki-no-such-bucket",
        "FLEETPKI_AWS_TEST_CA_ARN": "arn:aws:acm-pca:us-east-1:123456789012:"
        "certificate-authority/00000000-0000-0000-0000-000000000000",
    } | env
    return subprocess.run(
        [sys.executable, "-m", "pytest", SUITE, "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=base, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_default_run_skips_the_aws_suite() -> None:
    # --setup-plan executes no fixture and no test body, so a broken hook cannot reach AWS;
    # it still applies skip markers: the default run must report both tests skipped
    default = run_suite("--setup-plan")
    assert default.returncode == 0, default.stdout + default.stderr
    assert "2 skipped" in default.stdout
    assert f"SKIPPED [2] {SUITE}: {AWS_OPT_IN}" in default.stdout
    # the same plan with -m aws is not skipped: the hook is what stops the default run
    selected = run_suite("--setup-plan", "-m", "aws")
    assert "skipped" not in selected.stdout and "no tests ran" in selected.stdout
    assert "2 deselected" in run_suite("-m", "not aws").stdout


def test_selected_suite_refuses_a_loopback_endpoint() -> None:
    result = run_suite("-m", "aws", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("AWS_ENDPOINT_URL=http://127.0.0.1:9 points at loopback") == 2
    assert "2 skipped" in result.stdout and "passed" not in result.stdout


@pytest.mark.parametrize(
    ("markexpr", "selected"),
    [("", False), ("postgres", False), ("slow and not aws", True), ("aws", True),
     ("aws or slow", True), ("awsome", False), ("no-aws", False)],
)  # fmt: skip
def test_aws_selected(markexpr: str, selected: bool) -> None:
    assert aws_selected(markexpr) is selected


def test_loopback_endpoints() -> None:
    assert loopback_endpoint({}) is None
    assert loopback_endpoint({"AWS_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com"}) is None
    for url in ("http://127.0.0.1:5000", "http://localhost:4566", "http://[::1]:80"):
        assert loopback_endpoint({"AWS_ENDPOINT_URL": url}) == f"AWS_ENDPOINT_URL={url}"
    found = loopback_endpoint({"AWS_ENDPOINT_URL_S3": "http://127.0.0.2:9", "HOME": "/"})
    assert found == "AWS_ENDPOINT_URL_S3=http://127.0.0.2:9"
