"""AWS Private CA backend: end to end over HTTP against moto, parameters under Stubber,
the rate limiter and throttling with an injected clock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.aws.pacing import RateLimits, TokenBucket
from pki.backends.aws_pca import (
    BLANK_END_ENTITY,
    AwsPrivateCA,
    WaitConfig,
    aws_serial,
    idempotency_token,
    issue_parameters,
)
from pki.clock import SystemClock
from pki.errors import BackendError, InvalidInput
from pki.issue.issuer import Issuer
from pki.model import IssueRequest
from pki.storage import Inventory, pca_requests
from tests.aws_fixtures import ARN
from tests.conftest import Cli
from tests.helpers import load_cert, make_csr, openssl_csr


def test_create_issue_revoke_end_to_end(
    db_url: str | None,
    cli: Cli,
    home: Path,
    tmp_path: Path,
    pca_aws: str,
) -> None:
    init = cli.ok("ca", "init", "--backend", "aws-pca", "--create", "--json")
    records = json.loads(init.out)["certificates"]
    assert [r["profile"] for r in records] == ["root-ca", "issuing-ca"]
    config = json.loads((home / "config.json").read_text())
    assert config["backend"] == "aws-pca" and config["ca_arn"].startswith("arn:aws:acm-pca:")
    assert not (home / "ca-passphrase").exists()

    _key, csr = openssl_csr(tmp_path, "thing-7")
    out = tmp_path / "out"
    issued = json.loads(
        cli.ok("issue", "device", "thing-7", "--csr", csr, "--out", out, "--json").out
    )
    cert = load_cert(out / "cert.pem")
    assert issued["backend"] == "aws-pca" and issued["status"] == "active"
    assert cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://fleetpki.local/things/thing-7"
    ]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90, minutes=5)
    issuing, root = x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())
    cert.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)

    # the IdempotencyToken went to the request ledger of the database in use
    ledger = Inventory.open(db_url or f"sqlite:///{home / 'inventory.db'}")
    with ledger.engine.connect() as conn:
        arns = list(conn.execute(sa.select(pca_requests.c.certificate_arn)).scalars())
    ledger.close()
    assert len(arns) == 1 and arns[0].startswith(config["ca_arn"] + "/certificate/")

    # the same CSR again (--force) gets the same certificate: nothing new is asked of AWS
    same = json.loads(
        cli.ok("issue", "device", "thing-7", "--csr", csr, "--out", out, "--force", "--json").out
    )
    assert same["serial"] == issued["serial"]
    # a new certificate for the same key is asked for on purpose: a new request, not a retry
    again = json.loads(
        cli.ok("issue", "device", "thing-7", "--csr", csr, "--out", out, "--force",
               "--allow-key-reuse", "--json").out
    )  # fmt: skip
    assert again["serial"] != issued["serial"]
    assert load_cert(out / "cert.pem").serial_number == int(again["serial"], 16)
    ledger = Inventory.open(db_url or f"sqlite:///{home / 'inventory.db'}")
    with ledger.engine.connect() as conn:
        assert len(list(conn.execute(sa.select(pca_requests.c.certificate_arn)))) == 2
    ledger.close()

    revoked = cli.ok("revoke", issued["serial"], "--reason", "key-compromise")
    assert "AWS Private CA writes its own CRL to its S3 bucket, typically about 30 minutes" in (
        revoked.err
    )
    assert json.loads(cli.ok("show", issued["serial"], "--json").out)["status"] == "revoked"
    # the bundle for API Gateway is built from the adopted chain
    assert (
        json.loads(cli.ok("bundle", "build", "--target", "apigw", "--json").out)["certificates"]
        == 2
    )
    # adopting the same CA into a second home works from the ARN alone
    other = tmp_path / "other"
    again = cli.ok(
        "--home", other, "ca", "init", "--backend", "aws-pca", "--ca-arn", config["ca_arn"]
    )
    assert f"adopted AWS Private CA {config['ca_arn']}" in again.err


def test_stock_moto_output_is_refused(cli: Cli, home: Path, aws: str) -> None:
    """Stock moto ignores the subordinate template: the CA is not a CA, so adoption fails."""
    result = cli("ca", "init", "--backend", "aws-pca", "--create")
    assert result.code == 2
    assert "cannot be used: CN=fleetpki Issuing CA is not a CA certificate" in result.err
    assert not (home / "config.json").exists()


def test_bad_ca_init_options(cli: Cli, home: Path, aws: str) -> None:
    both = cli("ca", "init", "--backend", "aws-pca")
    assert (both.code, both.err) == (
        2,
        "fleetpki: error: --backend aws-pca needs exactly one of --ca-arn ARN or --create\n",
    )
    bad = cli("ca", "init", "--backend", "aws-pca", "--ca-arn", "nope")
    assert (bad.code, bad.err) == (2, "fleetpki: error: 'nope' is not an AWS Private CA ARN\n")
    missing = cli(
        "ca", "init", "--backend", "aws-pca", "--ca-arn",
        "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/00000000-0000-0000-0000-000000000000",
    )  # fmt: skip
    assert missing.code == 2 and "was not found" in missing.err
    assert cli("ca", "init", "--ca-arn", "x").err == (
        "fleetpki: error: --ca-arn, --create and --region need --backend aws-pca\n"
    )
    assert not (home / "config.json").exists()


# -- request parameters under Stubber (validated against the acm-pca service model) -------


class FixedChainCA(AwsPrivateCA):
    def __init__(self, chain: tuple[x509.Certificate, ...], *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.__dict__["_chain"] = chain


def test_issue_parameters_under_stubber(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pki.backends.local import LocalCA
    from pki.model import KeyType

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local = LocalCA.create(tmp_path / "ca", key_type=KeyType.EC_P384, common_name="t",
                           passphrase=b"x" * 16, now=dt.datetime.now(dt.UTC))  # fmt: skip
    assert local.chain()[0].public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    client = boto3.client("acm-pca", aws_access_key_id="a", aws_secret_access_key="b")
    inventory = Inventory.create(f"sqlite:///{tmp_path / 'i.db'}")
    ca = FixedChainCA(local.chain(), ARN, client, clock=SystemClock(), ledger=inventory,
                      wait=WaitConfig(0.01, 2))  # fmt: skip
    issuer = Issuer(ca, inventory, SystemClock())
    csr, _ = make_csr("dev-1")
    signing = issuer.prepare(IssueRequest("device", "dev-1", csr))
    params = issue_parameters(ARN, signing, "SHA384WITHECDSA", idempotency_token(ARN, signing))
    assert params["TemplateArn"] == BLANK_END_ENTITY
    assert params["ApiPassthrough"] == {
        "Extensions": {
            "KeyUsage": {"DigitalSignature": True, "KeyEncipherment": False},
            "ExtendedKeyUsage": [{"ExtendedKeyUsageType": "CLIENT_AUTH"}],
            "SubjectAlternativeNames": [
                {"UniformResourceIdentifier": "https://fleetpki.local/things/dev-1"}
            ],
        },
        "Subject": {"CommonName": "dev-1"},
    }
    assert params["Validity"] == {
        "Value": int(signing.plan.not_after.timestamp()),
        "Type": "ABSOLUTE",
    }
    issued = local.issue(signing)  # what a correct Private CA would return
    cert_arn = f"{ARN}/certificate/abc"
    stub = Stubber(client)
    stub.add_response("issue_certificate", {"CertificateArn": cert_arn}, params)
    stub.add_response(
        "get_certificate",
        {"Certificate": issued.public_bytes(serialization_pem()).decode()},
        {"CertificateAuthorityArn": ARN, "CertificateArn": cert_arn},
    )
    pem = issued.public_bytes(serialization_pem()).decode()
    # a retry (beyond AWS's 5-minute token window) finds the ledger entry: no second issue
    stub.add_response("get_certificate", {"Certificate": pem},
                      {"CertificateAuthorityArn": ARN, "CertificateArn": cert_arn})  # fmt: skip
    stub.add_response(
        "revoke_certificate",
        {},
        {"CertificateAuthorityArn": ARN, "CertificateSerial": aws_serial(issued.serial_number),
         "RevocationReason": "CERTIFICATE_AUTHORITY_COMPROMISE"},
    )  # fmt: skip
    with stub:
        assert ca.issue(signing) == issued
        assert ca.issue(signing) == issued
        from pki.model import RevocationReason

        ca.revoke(issued.serial_number, RevocationReason.CA_COMPROMISE, dt.datetime.now(dt.UTC))
    stub.assert_no_pending_responses()
    assert ca.stats.calls["IssueCertificate"] == 1
    assert KeyType.EC_P384.value == "ec-p384"
    inventory.close()


def serialization_pem() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def test_aws_serial_format() -> None:
    assert aws_serial(0x0A1B2C) == "0a:1b:2c"
    assert aws_serial(0xABC) == "0a:bc"


# -- rate limiting and throttling with an injected clock ---------------------------------


class FakeTicker:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_paces_to_the_rate() -> None:
    ticker = FakeTicker()
    bucket = TokenBucket(25, ticker)
    for _ in range(101):
        bucket.acquire()
    assert ticker.now == pytest.approx(4.0)  # the first is free, then 100 at 25/s


class QuotaPCA:
    """Answers like Private CA, throttling when more than ``quota`` calls land in one second."""

    def __init__(self, ticker: FakeTicker, quota: int, cert: str) -> None:
        self.ticker = ticker
        self.quota = quota
        self.cert = cert
        self.calls: list[float] = []
        self.throttled = 0

    def issue_certificate(self, **_: Any) -> dict[str, str]:
        now = self.ticker.now
        recent = [t for t in self.calls if t > now - 1 + 1e-9]
        if len(recent) >= self.quota:
            self.throttled += 1
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
                "IssueCertificate",
            )
        self.calls.append(now)
        return {"CertificateArn": f"{ARN}/certificate/{len(self.calls)}"}


def test_a_thousand_issues_meet_the_quota_without_throttling(tmp_path: Path) -> None:
    ticker = FakeTicker()
    fake = QuotaPCA(ticker, 25, "")
    ca = AwsPrivateCA(ARN, fake, clock=SystemClock(), ticker=ticker, limits=RateLimits())
    for _ in range(1000):
        ca.call("IssueCertificate", "issue", fake.issue_certificate, Csr=b"x")
    assert fake.throttled == 0 and ca.stats.throttled == 0
    assert len(fake.calls) == 1000
    assert ticker.now == pytest.approx(999 / 25)  # 25/s: the quota, not slower


def test_throttling_is_retried_then_reported_typed(tmp_path: Path) -> None:
    ticker = FakeTicker()
    fake = QuotaPCA(ticker, 25, "")
    # no client-side limit: AWS throttles, our backoff absorbs it
    loose = AwsPrivateCA(ARN, fake, clock=SystemClock(), ticker=ticker,
                         limits=RateLimits(issue=10_000))  # fmt: skip
    for _ in range(200):
        loose.call("IssueCertificate", "issue", fake.issue_certificate)
    assert fake.throttled > 0 and len(fake.calls) == 200
    stuck = QuotaPCA(ticker, 0, "")
    ca = AwsPrivateCA(ARN, stuck, clock=SystemClock(), ticker=ticker, throttle_retries=3)
    with pytest.raises(BackendError) as err:
        ca.call("IssueCertificate", "issue", stuck.issue_certificate)
    assert str(err.value) == (
        "aws-pca backend failed to issue: throttled by AWS Private CA (ThrottlingException) "
        "after retries; lower the rate limits in config.json or ask for a higher quota"
    )
    assert stuck.throttled == 4


def test_batch_through_private_ca_keeps_requests_in_flight(
    cli: Cli,
    home: Path,
    tmp_path: Path,
    pca_aws: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli.ok("ca", "init", "--backend", "aws-pca", "--create")
    seen: list[int] = []
    real = Issuer._outcomes

    def spy(self: Issuer, requests: Any, workers: int) -> Any:
        seen.append(workers)
        return real(self, requests, workers)

    monkeypatch.setattr(Issuer, "_outcomes", spy)
    csrs = tmp_path / "csrs"
    csrs.mkdir()
    for i in range(12):
        (csrs / f"unit-{i:02d}.csr").write_bytes(make_csr(f"unit-{i:02d}")[0])
    result = cli("issue", "device", "--batch", csrs, "--out", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    issued = json.loads(result.out)["issued"]
    from pki.issue.batch import REMOTE_IN_FLIGHT

    # threads for a remote CA (as many as requests, up to the limit), not one at a time
    assert REMOTE_IN_FLIGHT > 1 and seen == [min(REMOTE_IN_FLIGHT, 12)]
    assert len({r["serial"] for r in issued}) == 12
    assert all(r["backend"] == "aws-pca" for r in issued)
    for i in range(12):
        cert = load_cert(tmp_path / "out" / f"unit-{i:02d}" / "cert.pem")
        assert cert.subject.rfc4514_string() == f"CN=unit-{i:02d}"


# -- one retry layer: every HTTP attempt counted at a real endpoint on loopback ----------


class _Answers:
    """A loopback endpoint that answers every request with one AWS JSON error."""

    def __init__(self, status: int, code: str) -> None:
        import http.server
        import threading

        answers = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answers.requests += 1
                body = json.dumps({"__type": code, "message": "no"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "attempts", "error"),
    [
        (400, "ThrottlingException", 4, BackendError),
        (500, "InternalFailure", 3, BackendError),
        (400, "InvalidArnException", 1, InvalidInput),
    ],
)
def test_one_call_is_at_most_the_retry_layers_attempts(
    status: int, code: str, attempts: int, error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore retries nothing for the Private CA client: a call that AWS keeps throttling
    reaches AWS ``throttle_retries + 1`` times (not 9 x 10), a 5xx three times, an
    error a retry cannot fix once."""
    from pki.backends.aws_pca import make_client

    endpoint = _Answers(status, code)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        ticker = FakeTicker()
        ca = AwsPrivateCA(ARN, make_client("us-east-1"), clock=SystemClock(), ticker=ticker,
                          throttle_retries=3)  # fmt: skip
        with pytest.raises(error, match=code):
            ca.describe()
        assert endpoint.requests == attempts
        # a backoff before each retry, with full jitter below the exponential ceiling
        assert len(ticker.sleeps) == attempts - 1
        assert all(0 <= t <= 0.05 * 2**n for n, t in enumerate(ticker.sleeps))
    finally:
        endpoint.close()


def test_the_other_clients_use_botocores_standard_retries() -> None:
    from pki.aws.client import make_client

    retries = make_client("s3", "us-east-1").meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 3}


def _answers(*codes: str) -> Any:
    """A client call that fails with ``codes`` in turn (AWS's status for each), then
    succeeds; ``calls`` counts the requests."""
    status = {"ThrottlingException": 400, "InternalFailure": 500, "RequestInProgressException": 400}
    pending = list(codes)

    def call(**_: Any) -> dict[str, str]:
        call.calls += 1  # type: ignore[attr-defined]
        if pending:
            code = pending.pop(0)
            raise ClientError(
                {"Error": {"Code": code, "Message": "no"},
                 "ResponseMetadata": {"HTTPStatusCode": status.get(code, 400)}},
                "Op",
            )  # fmt: skip
        return {"Certificate": "done"}

    call.calls = 0  # type: ignore[attr-defined]
    return call


def test_throttling_and_transient_failures_have_budgets_of_their_own() -> None:
    ticker = FakeTicker()
    ca = AwsPrivateCA(ARN, object(), clock=SystemClock(), ticker=ticker, throttle_retries=3)
    mixed = _answers("ThrottlingException", "ThrottlingException", "InternalFailure",
                     "ThrottlingException", "InternalFailure")  # fmt: skip
    assert ca.call("X", "x", mixed) == {"Certificate": "done"}
    assert mixed.calls == 6 and ca.stats.throttled == 3 and ca.stats.retried == 5
    too_many = _answers(*["InternalFailure"] * 3)
    with pytest.raises(BackendError, match="InternalFailure"):
        ca.call("X", "x", too_many)
    assert too_many.calls == 3  # the first try and two retries


def test_a_call_that_is_not_idempotent_is_resent_only_after_throttling() -> None:
    ca = AwsPrivateCA(ARN, object(), clock=SystemClock(), ticker=FakeTicker())
    throttled = _answers("ThrottlingException", "ThrottlingException")
    assert ca.call("X", "x", throttled, idempotent=False) == {"Certificate": "done"}
    assert throttled.calls == 3
    failed = _answers("InternalFailure")
    with pytest.raises(BackendError, match="InternalFailure"):
        ca.call("X", "x", failed, idempotent=False)
    assert failed.calls == 1


def test_polling_is_bounded_by_its_attempts_even_when_throttled() -> None:
    ticker = FakeTicker()
    ca = AwsPrivateCA(ARN, object(), clock=SystemClock(), ticker=ticker,
                      wait=WaitConfig(delay=1.0, attempts=5))  # fmt: skip
    ready_late = _answers("RequestInProgressException", "ThrottlingException")
    assert ca.call_until_ready("GetCertificate", "fetch", ready_late) == {"Certificate": "done"}
    assert ready_late.calls == 3
    never = _answers(*["ThrottlingException", "RequestInProgressException"] * 50)
    with pytest.raises(BackendError, match="not ready after 5s"):
        ca.call_until_ready("GetCertificate", "fetch", never)
    assert never.calls == 5  # one request a poll: no retry budget stacked on the polls
    assert ticker.now < 10
