"""AWS Private CA backend (``acm-pca``).

Issues through ``IssueCertificate`` with a blank API-passthrough template so the
extensions are exactly the policy's plan (EKU, key usage, SANs, subject), an absolute
validity from the plan, the signing algorithm that matches the CA key, and an
``IdempotencyToken`` derived from the request. AWS honours a token for 5 minutes; the
inventory's request ledger remembers it longer, so a retry never makes a second
certificate. Calls go through a client-side token bucket per API (the default service
quotas) and one retry layer (``pki.aws.pacing``: throttling and transient failures, full
jitter; botocore's own retries are off for this client); ``RequestInProgressException``
is polled for until a deadline. What comes back is verified by ``pki.issue.issuer``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.aws import client as awsclient
from pki.aws.pacing import (
    THROTTLING,
    CallStats,
    RateLimits,
    RealTicker,
    RetryPolicy,
    Ticker,
    failure_kind,
)
from pki.backends import SigningRequest
from pki.clock import Clock
from pki.errors import BackendError, FleetPkiError, InvalidInput, NotFound, OperatorError
from pki.model import RevocationReason

if TYPE_CHECKING:
    from pki.backends.registry import BackendContext

BACKEND = "aws-pca"
BLANK_END_ENTITY = "arn:aws:acm-pca:::template/BlankEndEntityCertificate_APIPassthrough/V1"
# A retry of the same request within this window fetches the first certificate (AWS itself
# honours an IdempotencyToken for 5 minutes); after it, the same request issues anew.
LEDGER_WINDOW = dt.timedelta(hours=24)

_EKU_NAMES = {
    x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH: "CLIENT_AUTH",
    x509.oid.ExtendedKeyUsageOID.SERVER_AUTH: "SERVER_AUTH",
}


MAX_REISSUES = 50


class RequestLedger(Protocol):
    """Where IdempotencyTokens are remembered beyond AWS's 5 minutes (the inventory)."""

    def pca_request(self, token: str, since: dt.datetime | None = None) -> str | None: ...

    def record_pca_request(
        self, token: str, ca_arn: str, certificate_arn: str, at: dt.datetime
    ) -> None: ...

    def has_certificate(self, serial: int) -> bool:
        """Whether a certificate with this serial is already recorded."""
        ...


@dataclass(frozen=True)
class WaitConfig:
    delay: float = 1.0
    attempts: int = 60


def region_of_arn(arn: str) -> str | None:
    """``eu-west-1`` of ``arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/...``."""
    parts = arn.split(":")
    return parts[3] or None if len(parts) > 4 and parts[0] == "arn" else None


def make_client(region: str | None = None) -> Any:
    """An acm-pca client whose every call is one HTTP request: the retrying is ours."""
    return awsclient.make_client("acm-pca", region, awsclient.SINGLE_ATTEMPT)


def _message(exc: ClientError) -> str:
    code = awsclient.error_code(exc)
    text = awsclient.error_message(exc)
    text = text.splitlines()[0] if text else ""  # one line for the operator
    return f"{code}: {text}" if text else code


def map_error(operation: str, exc: Exception, ca_arn: str) -> FleetPkiError:
    """A botocore error as one of ours: operator-fixable ones exit 2."""
    invalid = awsclient.invalid_parameters(exc, operation)
    if invalid is not None:
        return invalid
    unparsable = awsclient.not_aws(exc, f"acm-pca: {operation}")
    if unparsable is not None:
        return BackendError(operation, BACKEND, unparsable)
    if not isinstance(exc, ClientError):
        return BackendError(operation, BACKEND, str(exc))
    code = awsclient.error_code(exc)
    if code == "ResourceNotFoundException":
        return NotFound(f"AWS Private CA {ca_arn} (or the certificate) was not found")
    if code == "InvalidStateException":
        return OperatorError(f"AWS Private CA {ca_arn} cannot {operation} now: {_message(exc)}")
    if code in {"MalformedCSRException", "InvalidArgsException", "InvalidArnException",
                "InvalidRequestException", "ValidationException"}:  # fmt: skip
        return InvalidInput(f"AWS Private CA refused to {operation}: {_message(exc)}")
    if code in THROTTLING:
        return BackendError(
            operation,
            BACKEND,
            f"throttled by AWS Private CA ({code}) after retries; lower the rate limits in "
            "config.json or ask for a higher quota",
        )
    if code == "AccessDeniedException":
        return BackendError(
            operation, BACKEND, f"{_message(exc)} (check the IAM permissions of these credentials)"
        )
    return BackendError(operation, BACKEND, _message(exc))


def signing_algorithm(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {384: "SHA384WITHECDSA", 521: "SHA512WITHECDSA"}.get(
            key.curve.key_size, "SHA256WITHECDSA"
        )
    if isinstance(key, rsa.RSAPublicKey):
        return "SHA256WITHRSA"
    raise BackendError("issue", BACKEND, f"unsupported CA key type {type(key).__name__}")


def idempotency_token(ca_arn: str, request: SigningRequest, after: str = "") -> str:
    """Same CA, CSR, profile, names and lifetime -> same token (AWS allows 36 characters).

    ``after`` names the certificate an earlier, completed request for the same CSR got,
    so that asking again (``--force``) is a new request and not a retry of that one.
    """
    plan = request.plan
    digest = hashlib.sha256()
    for part in (
        after,
        ca_arn,
        request.csr.public_bytes(serialization.Encoding.DER).hex(),
        plan.profile.name,
        plan.common_name,
        "|".join(plan.dns_names),
        "|".join(str(i) for i in plan.ip_addresses),
        "|".join(plan.uris),
        str(int((plan.not_after - plan.not_before).total_seconds())),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def issue_parameters(
    ca_arn: str, request: SigningRequest, algorithm: str, token: str
) -> dict[str, Any]:
    """The IssueCertificate call for a plan: every extension comes from the plan."""
    plan = request.plan
    rsa_key = isinstance(request.public_key, rsa.RSAPublicKey)
    names: list[dict[str, str]] = [{"DnsName": d} for d in plan.dns_names]
    names += [{"IpAddress": str(ip)} for ip in plan.ip_addresses]
    names += [{"UniformResourceIdentifier": u} for u in plan.uris]
    extensions: dict[str, Any] = {
        "KeyUsage": {"DigitalSignature": True, "KeyEncipherment": rsa_key},
        "ExtendedKeyUsage": [{"ExtendedKeyUsageType": _EKU_NAMES[oid]} for oid in plan.profile.eku],
    }
    if names:
        extensions["SubjectAlternativeNames"] = names
    return {
        "CertificateAuthorityArn": ca_arn,
        "Csr": request.csr.public_bytes(serialization.Encoding.PEM),
        "SigningAlgorithm": algorithm,
        "TemplateArn": BLANK_END_ENTITY,
        "Validity": {"Value": int(plan.not_after.timestamp()), "Type": "ABSOLUTE"},
        "ValidityNotBefore": {"Value": int(plan.not_before.timestamp()), "Type": "ABSOLUTE"},
        "ApiPassthrough": {
            "Extensions": extensions,
            "Subject": {"CommonName": plan.common_name},
        },
        "IdempotencyToken": token,
    }


def aws_serial(serial: int) -> str:
    """The serial as Private CA prints it: colon-separated lower-case hex bytes."""
    text = format(serial, "x")
    text = text if len(text) % 2 == 0 else "0" + text
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


class AwsPrivateCA:
    """A Private CA (normally a subordinate) that fleetpki issues through."""

    name = BACKEND

    def __init__(
        self,
        ca_arn: str,
        client: Any,
        *,
        clock: Clock,
        ledger: RequestLedger | None = None,
        limits: RateLimits | None = None,
        ticker: Ticker | None = None,
        wait: WaitConfig | None = None,
        throttle_retries: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        if not ca_arn.startswith("arn:") or ":certificate-authority/" not in ca_arn:
            raise InvalidInput(f"{ca_arn!r} is not an AWS Private CA ARN")
        self.arn = ca_arn
        self.client = client
        self.clock = clock
        self.ledger = ledger
        self.ticker = ticker or RealTicker()
        self.buckets = (limits or RateLimits()).buckets(self.ticker)
        self.wait = wait or WaitConfig()
        self.retry = RetryPolicy(throttle_retries=throttle_retries)
        self.stats = CallStats()
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrecy)

    # -- calls ------------------------------------------------------------------------------

    def _attempts(
        self,
        api: str,
        fn: Callable[..., Any],
        params: dict[str, Any],
        *,
        idempotent: bool = True,
        throttle_retries: int | None = None,
    ) -> Any:
        """The one retry layer: paced by the API's bucket; throttling (never processed by
        AWS, so always safe to send again) and, for an idempotent call, transient failures
        tried again after a jittered backoff, each kind with its own budget; anything else
        raised as it came."""
        bucket = self.buckets.get(api)
        policy = self.retry
        if throttle_retries is not None:
            policy = dataclasses.replace(policy, throttle_retries=throttle_retries)
        if not idempotent:
            policy = dataclasses.replace(policy, transient_retries=0)
        tries = {"throttled": 0, "transient": 0}
        while True:
            self.stats.record(api=api, waited=bucket.acquire() if bucket is not None else 0.0)
            try:
                return fn(**params)
            except awsclient.AWS_FAILURES as exc:
                kind = failure_kind(exc)
                if kind is None or not policy.should_retry(kind, tries[kind]):
                    raise
                tries[kind] += 1
                self.stats.record(throttled=int(kind == "throttled"), retried=1)
                self.ticker.sleep(policy.delay(sum(tries.values()) - 1, self._rng))

    def call(
        self,
        api: str,
        operation: str,
        fn: Callable[..., Any],
        *,
        idempotent: bool = True,
        **params: Any,
    ) -> Any:
        """One rate-limited call, retried where that can help, then raised typed. A call
        that is not ``idempotent`` (a second one would not land on the same result) is
        sent again only after throttling."""
        try:
            return self._attempts(api, fn, params, idempotent=idempotent)
        except awsclient.AWS_FAILURES as exc:
            raise map_error(operation, exc, self.arn) from None

    def call_until_ready(
        self, api: str, operation: str, fn: Callable[..., Any], **params: Any
    ) -> Any:
        """``call``, asked again every ``wait.delay`` seconds while AWS answers
        ``RequestInProgressException`` (a certificate or a CA's CSR not made yet) or
        throttles, ``wait.attempts`` polls at most: at most that many requests (and their
        transient retries), about ``delay * attempts`` seconds."""
        for _ in range(self.wait.attempts):
            try:
                return self._attempts(api, fn, params, throttle_retries=0)
            except awsclient.AWS_FAILURES as exc:
                code = awsclient.error_code(exc)
                if code != "RequestInProgressException" and failure_kind(exc) != "throttled":
                    raise map_error(operation, exc, self.arn) from None
            self.ticker.sleep(self.wait.delay)
        seconds = self.wait.delay * self.wait.attempts
        raise BackendError(
            operation, BACKEND, f"not ready after {seconds:g}s: still in progress or throttled"
        )

    # -- CertificateAuthority ---------------------------------------------------------------

    @cached_property
    def _chain(self) -> tuple[x509.Certificate, ...]:
        got = self.call(
            "GetCertificateAuthorityCertificate",
            "read the CA certificate",
            self.client.get_certificate_authority_certificate,
            CertificateAuthorityArn=self.arn,
        )
        pem = (got.get("Certificate", "") + "\n" + got.get("CertificateChain", "")).encode()
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except (ValueError, x509.InvalidVersion) as exc:
            raise BackendError("read the CA certificate", BACKEND, str(exc)) from None
        return tuple(certs)

    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def issue(self, request: SigningRequest) -> x509.Certificate:
        """Issue once per request: a retry (same token, certificate not yet recorded in the
        inventory) gets the certificate the first attempt created; a new request for a CSR
        whose earlier certificate is recorded gets a new certificate."""
        since = self.clock.now() - LEDGER_WINDOW
        after = ""
        for _ in range(MAX_REISSUES):
            token = idempotency_token(self.arn, request, after)
            certificate_arn = self.ledger.pca_request(token, since) if self.ledger else None
            if certificate_arn is None:
                break
            earlier = self.fetch(certificate_arn)
            if self.ledger is None or not self.ledger.has_certificate(earlier.serial_number):
                return earlier  # a retry: hand back what the first attempt created
            after = format(earlier.serial_number, "x")
        else:
            raise BackendError(
                "issue", BACKEND, f"the same CSR was issued {MAX_REISSUES} times in 24 hours"
            )
        params = issue_parameters(self.arn, request, signing_algorithm(self._chain[0]), token)
        response = self.call("IssueCertificate", "issue", self.client.issue_certificate, **params)
        certificate_arn = str(response["CertificateArn"])
        if self.ledger is not None:
            self.ledger.record_pca_request(token, self.arn, certificate_arn, self.clock.now())
        return self.fetch(certificate_arn)

    def fetch(self, certificate_arn: str) -> x509.Certificate:
        """The certificate, once AWS has made it (polled while it is in progress)."""
        got = self.call_until_ready(
            "GetCertificate",
            f"fetch the issued certificate {certificate_arn}",
            self.client.get_certificate,
            CertificateAuthorityArn=self.arn,
            CertificateArn=certificate_arn,
        )
        try:
            return x509.load_pem_x509_certificate(str(got["Certificate"]).encode())
        except (KeyError, ValueError, x509.InvalidVersion) as exc:
            raise BackendError("issue", BACKEND, f"unreadable certificate: {exc}") from None

    def revoke(self, serial: int, reason: RevocationReason, when: dt.datetime) -> None:
        """Revoke in AWS; an already revoked certificate is success (revocation is final)."""

        def revoke_once(**params: Any) -> Any:
            try:
                return self.client.revoke_certificate(**params)
            except ClientError as exc:
                if awsclient.error_code(exc) == "RequestAlreadyProcessedException":
                    return {}
                raise

        self.call(
            "RevokeCertificate",
            "revoke",
            revoke_once,
            CertificateAuthorityArn=self.arn,
            CertificateSerial=aws_serial(serial),
            RevocationReason=reason.aws_name,
        )

    def describe(self) -> Mapping[str, Any]:
        got = self.call(
            "DescribeCertificateAuthority",
            "describe the CA",
            self.client.describe_certificate_authority,
            CertificateAuthorityArn=self.arn,
        )
        return dict(got["CertificateAuthority"])


def from_home(context: BackendContext) -> AwsPrivateCA:
    """The registry's factory: the Private CA ``config.json`` names, in its own region
    (never whatever region this shell happens to name), its ledger in the inventory."""
    config = context.config
    if not config.ca_arn:
        raise InvalidInput(f"{context.home.config_path} has backend aws-pca but no ca_arn")
    return AwsPrivateCA(
        config.ca_arn,
        make_client(config.region or region_of_arn(config.ca_arn)),
        clock=context.clock,
        ledger=context.inventory(),
        limits=RateLimits(config.issue_rate, config.get_rate, config.revoke_rate),
    )
