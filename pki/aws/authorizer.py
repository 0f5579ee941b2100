"""API Gateway Lambda authorizer that denies revoked client certificates.

API Gateway checks the chain against the truststore but never revocation. This handler
reads the client certificate's serial from the request (REST: ``requestContext.identity
.clientCert``; HTTP API: ``requestContext.authentication.clientCert``) and denies it when
it is in the denylist ``fleetpki crl publish --denylist`` writes. No boto3 here: the
denylist comes from an injected loader (``pki.aws.publish.s3_object_loader`` in a Lambda),
cached for ``ttl`` seconds. It fails closed: no certificate or no denylist -> deny.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from pki.errors import InvalidInput

FORMAT = "fleetpki-denylist/1"


@dataclass(frozen=True)
class Denylist:
    serials: frozenset[int]
    generated_at: str

    @classmethod
    def parse(cls, data: bytes) -> Denylist:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT}")
            serials = frozenset(int(s, 16) for s in doc["serials"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"not a fleetpki denylist: {exc}") from None
        return cls(serials, str(doc.get("generated_at", "")))


def client_certificate(event: dict[str, Any]) -> dict[str, Any] | None:
    context = event.get("requestContext") or {}
    for holder in (context.get("identity"), context.get("authentication")):
        if isinstance(holder, dict) and isinstance(holder.get("clientCert"), dict):
            return dict(holder["clientCert"])
    return None


def client_serial(event: dict[str, Any]) -> int | None:
    """The serial API Gateway reports ("a1:b2:..."), or from the PEM when it is missing."""
    cert = client_certificate(event)
    if cert is None:
        return None
    text = str(cert.get("serialNumber") or "").replace(":", "").strip()
    if text:
        try:
            return int(text, 16)
        except ValueError:
            return None
    pem = cert.get("clientCertPem")
    if pem:
        try:
            return x509.load_pem_x509_certificate(str(pem).encode()).serial_number
        except (ValueError, x509.InvalidVersion):
            return None
    return None


def decide(event: dict[str, Any], denylist: Denylist | None) -> tuple[bool, str]:
    """(allowed, reason) for one request."""
    if denylist is None:
        return False, "denylist unavailable"
    serial = client_serial(event)
    if serial is None:
        return False, "no client certificate"
    if serial in denylist.serials:
        return False, f"certificate {serial:x} is revoked"
    return True, "ok"


def response(event: dict[str, Any], allowed: bool, serial: int | None) -> dict[str, Any]:
    """REST (TOKEN/REQUEST) authorizers want an IAM policy; HTTP APIs a simple response."""
    if "methodArn" in event:
        return {
            "principalId": format(serial, "x") if serial is not None else "anonymous",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": "Allow" if allowed else "Deny",
                        "Resource": event["methodArn"],
                    }
                ],
            },
        }
    return {"isAuthorized": allowed}


def make_handler(
    loader: Callable[[], bytes],
    ttl: float = 60.0,
    monotonic: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A Lambda handler; the denylist is reloaded at most every ``ttl`` seconds."""
    cache: dict[str, Any] = {"at": None, "list": None}

    def current() -> Denylist | None:
        now = monotonic()
        if cache["at"] is None or now - cache["at"] >= ttl:
            try:
                cache["list"] = Denylist.parse(loader())
            except Exception as exc:  # fail closed, keep the last good list
                log(f"fleetpki authorizer: cannot load the denylist: {exc}")
            cache["at"] = now
        result: Denylist | None = cache["list"]
        return result

    def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        allowed, reason = decide(event, current())
        if not allowed:
            log(f"fleetpki authorizer: deny: {reason}")
        return response(event, allowed, client_serial(event))

    return handler
