"""Pacing and the one retry layer for calls to AWS Private CA.

A client-side token bucket per API keeps a fleet's batch under the service quota, so
throttling is the exception; when AWS throttles anyway, or answers with a transient
failure (5xx, a dropped connection), ``RetryPolicy`` says whether to try again and how
long to wait: exponential backoff with full jitter (AWS Architecture Blog, "Exponential
Backoff And Jitter"). botocore's own retries are off for this client
(``pki.aws.client.SINGLE_ATTEMPT``), so one call is at most ``throttle_retries + 1`` HTTP
requests: never retries stacked on retries.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from botocore import exceptions as botocore_errors

from pki.aws.client import error_code
from pki.errors import InvalidInput

THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
TRANSIENT = frozenset(
    {"InternalFailure", "InternalServerError", "ServiceUnavailable", "RequestTimeout",
     "RequestTimeoutException"}
)  # fmt: skip


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


@dataclass
class CallStats:
    """Counters of the calls made; safe to update from the batch's request threads."""

    calls: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    retried: int = 0
    waited: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self, *, api: str | None = None, waited: float = 0.0, throttled: int = 0, retried: int = 0
    ) -> None:
        with self._lock:
            if api is not None:
                self.calls[api] = self.calls.get(api, 0) + 1
            self.waited += waited
            self.throttled += throttled
            self.retried += retried


def failure_kind(exc: BaseException) -> str | None:
    """ "throttled", "transient" (worth another try: 5xx, a dropped or timed-out
    connection) or None (AWS's considered answer, or a failure a retry will not fix)."""
    code = error_code(exc)
    if code in THROTTLING:
        return "throttled"
    if code in TRANSIENT:
        return "transient"
    if isinstance(exc, botocore_errors.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return "transient" if isinstance(status, int) and status >= 500 else None
    if isinstance(exc, botocore_errors.ConnectionError | botocore_errors.HTTPClientError):
        return "transient"
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again, and how long to wait before try ``attempt`` + 1.

    Throttling is retried ``throttle_retries`` times (the bucket should make it rare);
    transient failures ``transient_retries`` times (an endpoint that is down should be
    said quickly). Every call that is retried is idempotent: issuance and CA creation
    carry an IdempotencyToken, a repeated revocation is success, the rest only read."""

    throttle_retries: int = 8
    transient_retries: int = 2
    base: float = 0.05
    cap: float = 5.0

    def should_retry(self, kind: str | None, attempt: int) -> bool:
        if kind == "throttled":
            return attempt < self.throttle_retries
        if kind == "transient":
            return attempt < self.transient_retries
        return False

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: anywhere between 0 and the exponential ceiling."""
        return rng.uniform(0, min(self.cap, self.base * 2**attempt))
