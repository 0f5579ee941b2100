"""AWS Private CA backend (``acm-pca``).

Issues through ``IssueCertificate`` with a blank API-passthrough template so the
extensions are exactly the policy's plan (EKU, key usage, SANs, subject), an absolute
validity from the plan, the signing algorithm that matches the CA key, and an
``IdempotencyToken`` derived from the request. AWS honours a token for 5 minutes; the
inventory's request ledger remembers it longer, so a retry never makes a second
certificate. Calls go through a client-side token bucket per API (the default service
quotas), boto3 retries in adaptive mode, and typed handling of ``ThrottlingException``
and ``RequestInProgressException``. What comes back is verified by ``pki.issue.issuer``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import (
    ClientError,
    WaiterError,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.aws import client as awsclient
from pki.backends import SigningRequest
from pki.clock import Clock
from pki.errors import BackendError, FleetPkiError, InvalidInput, NotFound, OperatorError
from pki.model import RevocationReason

if TYPE_CHECKING:
    from pki.backends.registry import BackendContext

BACKEND = "aws-pca"
BLANK_END_ENTITY = "arn:aws:acm-pca:::template/BlankEndEntityCertificate_APIPassthrough/V1"
ROOT_TEMPLATE = "arn:aws:acm-pca:::template/RootCACertificate/V1"
SUBORDINATE_TEMPLATE = "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
# A retry of the same request within this window fetches the first certificate (AWS itself
# honours an IdempotencyToken for 5 minutes); after it, the same request issues anew.
LEDGER_WINDOW = dt.timedelta(hours=24)

_EKU_NAMES = {
    x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH: "CLIENT_AUTH",
    x509.oid.ExtendedKeyUsageOID.SERVER_AUTH: "SERVER_AUTH",
}


class Ticker(Protocol):
    """Monotonic time and sleeping, injected so limits are testable without waiting."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealTicker:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``acquire`` sleeps for one."""

    def __init__(self, rate: float, ticker: Ticker, burst: float = 1.0) -> None:
        if rate <= 0 or burst < 1:
            raise InvalidInput("rate limits must be positive (and burst at least 1)")
        self.rate = rate
        self.burst = burst
        self._ticker = ticker
        self._tokens = burst
        self._last = ticker.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._ticker.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Take one token, sleeping until there is one; returns the time slept."""
        with self._lock:
            self._refill()
            waited = 0.0
            if self._tokens < 1:
                waited = (1 - self._tokens) / self.rate
                self._ticker.sleep(waited)
                self._refill()
            self._tokens -= 1
            return waited


@dataclass(frozen=True)
class RateLimits:
    """Requests per second per API (AWS Private CA default quotas)."""

    issue: float = 25.0
    get: float = 75.0
    revoke: float = 20.0

    def buckets(self, ticker: Ticker) -> dict[str, TokenBucket]:
        return {
            "IssueCertificate": TokenBucket(self.issue, ticker),
            "GetCertificate": TokenBucket(self.get, ticker),
            "RevokeCertificate": TokenBucket(self.revoke, ticker),
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


@dataclass
class CallStats:
    """Counters of the calls made; safe to update from the batch's request threads."""

    calls: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    waited: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, *, api: str | None = None, waited: float = 0.0, throttled: int = 0) -> None:
        with self._lock:
            if api is not None:
                self.calls[api] = self.calls.get(api, 0) + 1
            self.waited += waited
            self.throttled += throttled


def region_of_arn(arn: str) -> str | None:
    """``eu-west-1`` of ``arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/...``."""
    parts = arn.split(":")
    return parts[3] or None if len(parts) > 4 and parts[0] == "arn" else None


def make_client(region: str | None = None) -> Any:
    return awsclient.make_client("acm-pca", region)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _message(exc: ClientError) -> str:
    text = str(exc.response.get("Error", {}).get("Message", "")).strip()
    text = text.splitlines()[0] if text else ""  # one line for the operator
    return f"{_code(exc)}: {text}" if text else _code(exc)


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
    code = _code(exc)
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
        self.throttle_retries = throttle_retries
        self.stats = CallStats()

    # -- calls ------------------------------------------------------------------------------

    def call(self, api: str, operation: str, fn: Callable[..., Any], **params: Any) -> Any:
        """One rate-limited call; throttling is retried with backoff, then raised typed."""
        bucket = self.buckets.get(api)
        for attempt in range(self.throttle_retries + 1):
            waited = bucket.acquire() if bucket is not None else 0.0
            self.stats.record(api=api, waited=waited)
            try:
                return fn(**params)
            except ClientError as exc:
                if _code(exc) in THROTTLING and attempt < self.throttle_retries:
                    self.stats.record(throttled=1)
                    self.ticker.sleep(min(0.05 * 2**attempt, 5.0))
                    continue
                raise map_error(operation, exc, self.arn) from None
            except awsclient.TRANSPORT_FAILURES as exc:
                raise map_error(operation, exc, self.arn) from None
        raise BackendError(operation, BACKEND, "unreachable")  # pragma: no cover

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
        """Wait until issued (the ``certificate_issued`` waiter), then get the certificate."""
        bucket = self.buckets["GetCertificate"]
        self.stats.record(waited=bucket.acquire())
        try:
            self.client.get_waiter("certificate_issued").wait(
                CertificateAuthorityArn=self.arn,
                CertificateArn=certificate_arn,
                WaiterConfig={"Delay": self.wait.delay, "MaxAttempts": self.wait.attempts},
            )
        except WaiterError as exc:
            last = exc.last_response or {}
            code = last.get("Error", {}).get("Code", "")
            reason = (
                "still RequestInProgressException" if code == "RequestInProgressException"
                else str(exc)
            )  # fmt: skip
            raise BackendError(
                "issue", BACKEND, f"certificate {certificate_arn} not ready: {reason}"
            ) from None
        except awsclient.TRANSPORT_FAILURES as exc:  # the endpoint or the credentials
            raise map_error("issue", exc, self.arn) from None
        got = self.call(
            "GetCertificate",
            "fetch the issued certificate",
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
                if _code(exc) == "RequestAlreadyProcessedException":
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


# -- adopting and creating a CA -------------------------------------------------------------

_KEY_ALGORITHMS = {
    "ec-p256": ("EC_prime256v1", "SHA256WITHECDSA"),
    "ec-p384": ("EC_secp384r1", "SHA384WITHECDSA"),
    "rsa-2048": ("RSA_2048", "SHA256WITHRSA"),
    "rsa-3072": ("RSA_3072", "SHA256WITHRSA"),
}


def check_chain(arn: str, chain: tuple[x509.Certificate, ...], now: dt.datetime) -> None:
    """The adopted CA's chain: every certificate a valid CA, each signed by the next, a root."""
    from pki.aws.bundles import chain_of

    def bad(why: str) -> OperatorError:
        return OperatorError(f"AWS Private CA {arn} cannot be used: {why}")

    if not chain:
        raise bad("it returned no certificate")
    for cert in chain:
        name = cert.subject.rfc4514_string()
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise bad(f"{name} is not a CA certificate (no basicConstraints CA:TRUE)")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise bad(f"{name} is not valid now")
    path, complete = chain_of(chain[0], chain)
    if not complete or len(path) != len(chain):
        raise bad("its certificate chain does not lead from the CA to a root")


def create_hierarchy(
    ca: AwsPrivateCA,
    common_name: str,
    key_type: str,
    root_days: int,
    issuing_days: int,
    created: list[str] | None = None,
) -> str:
    """Create a root and a subordinate (path length 0) Private CA; return the subordinate.

    Every CA made is appended to ``created`` as soon as it exists, so that a caller can
    take them down again (``discard_cas``) when anything after that fails."""
    made = created if created is not None else []
    client = ca.client
    try:
        key_algorithm, signing = _KEY_ALGORITHMS[key_type]
    except KeyError:
        raise InvalidInput(f"unknown key type {key_type!r}") from None
    if not 0 < issuing_days < root_days:
        raise InvalidInput("the issuing CA must expire before the root (issuing days < root)")

    def create(kind: str, cn: str) -> str:
        response = ca.call(
            "CreateCertificateAuthority",
            "create a CA",
            client.create_certificate_authority,
            CertificateAuthorityConfiguration={
                "KeyAlgorithm": key_algorithm,
                "SigningAlgorithm": signing,
                "Subject": {"CommonName": cn},
            },
            CertificateAuthorityType=kind,
            IdempotencyToken=hashlib.sha256(f"{kind}{cn}".encode()).hexdigest()[:32],
        )
        arn = str(response["CertificateAuthorityArn"])
        if arn not in made:
            made.append(arn)
        try:
            client.get_waiter("certificate_authority_csr_created").wait(
                CertificateAuthorityArn=arn,
                WaiterConfig={"Delay": ca.wait.delay, "MaxAttempts": ca.wait.attempts},
            )
        except WaiterError as exc:
            raise BackendError("create a CA", BACKEND, f"{arn} has no CSR: {exc}") from None
        except awsclient.TRANSPORT_FAILURES as exc:
            raise map_error("create a CA", exc, arn) from None
        return arn

    def sign(issuer: str, subject: str, template: str, days: int) -> str:
        csr = ca.call(
            "GetCertificateAuthorityCsr",
            "read a CA CSR",
            client.get_certificate_authority_csr,
            CertificateAuthorityArn=subject,
        )["Csr"]
        issued = ca.call(
            "IssueCertificate",
            "issue a CA certificate",
            client.issue_certificate,
            CertificateAuthorityArn=issuer,
            Csr=csr.encode(),
            SigningAlgorithm=signing,
            TemplateArn=template,
            Validity={"Value": days, "Type": "DAYS"},
            IdempotencyToken=hashlib.sha256(f"{issuer}{subject}".encode()).hexdigest()[:32],
        )["CertificateArn"]
        issuer_ca = AwsPrivateCA(issuer, client, clock=ca.clock, ticker=ca.ticker, wait=ca.wait)
        return issuer_ca.fetch(str(issued)).public_bytes(serialization.Encoding.PEM).decode()

    root = create("ROOT", f"{common_name} Root CA")
    root_pem = sign(root, root, ROOT_TEMPLATE, root_days)
    ca.call(
        "ImportCertificateAuthorityCertificate",
        "import the root certificate",
        client.import_certificate_authority_certificate,
        CertificateAuthorityArn=root,
        Certificate=root_pem.encode(),
    )
    sub = create("SUBORDINATE", f"{common_name} Issuing CA")
    sub_pem = sign(root, sub, SUBORDINATE_TEMPLATE, issuing_days)
    ca.call(
        "ImportCertificateAuthorityCertificate",
        "import the issuing CA certificate",
        client.import_certificate_authority_certificate,
        CertificateAuthorityArn=sub,
        Certificate=sub_pem.encode(),
        CertificateChain=root_pem.encode(),
    )
    return sub


# A deleted Private CA can be restored for this many days (7-30), then it is gone.
RESTORE_DAYS = 7


def discard_cas(client: Any, arns: list[str]) -> list[str]:
    """Take down Private CAs this run created (each is billed monthly): disable an ACTIVE
    one, then delete it (restorable for ``RESTORE_DAYS`` days). Returns a line per CA
    saying what happened; failures are said, never raised."""
    lines = []
    for arn in reversed(arns):  # the subordinate before its root
        try:
            status = client.describe_certificate_authority(CertificateAuthorityArn=arn)[
                "CertificateAuthority"
            ]["Status"]
            if status == "ACTIVE":
                client.update_certificate_authority(CertificateAuthorityArn=arn, Status="DISABLED")
            if status != "DELETED":
                client.delete_certificate_authority(
                    CertificateAuthorityArn=arn, PermanentDeletionTimeInDays=RESTORE_DAYS
                )
            lines.append(f"deleted {arn} (restorable for {RESTORE_DAYS} days)")
        except awsclient.AWS_FAILURES as exc:
            lines.append(f"could not delete {arn}: {map_error('delete a CA', exc, arn)}; "
                         "delete it by hand (it is billed)")  # fmt: skip
    return lines


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
