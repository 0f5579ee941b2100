"""The certificate-rotation protocol over MQTT, shared by the service and the devices. Pure.

Every topic is under the device's own ``<prefix>/<thing>/`` (so the IoT policy / broker
ACL that confines a device to its own topics also covers rotation)::

    service -> device   <prefix>/<thing>/rotation/request       {"rotation_id", "serial"}
    device  -> service  <prefix>/<thing>/rotation/csr           {"rotation_id", "csr"}
    service -> device   <prefix>/<thing>/rotation/certificate   {"rotation_id", "serial",
                                                                  "certificate"} or
                                                                 {"rotation_id", "error",
                                                                  "message"}
    device  -> service  <prefix>/<thing>/rotation/confirm       {"rotation_id", "serial"}

A request is published retained, so that a device connecting later still finds it, and
sent again (same ``rotation_id``) on a per-device backoff until the device answers; when
the rotation ends the service clears it with an empty retained message, which devices
ignore. Answering the same request twice is harmless: a repeated CSR gets the same
certificate again. A device asked again for a rotation it already finished (its
confirmation was lost, say with a broker killed before it saved it) sends its confirmation
again; the cleared request is the acknowledgement.

The device makes the new key itself; only the CSR travels. It reconnects with the new
certificate before it confirms, so a confirmation proves the certificate works. The thing
a message comes from is the one in its topic: the broker lets a device publish only under
its own name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pki.errors import InvalidInput

VERSION = 1
KINDS = ("request", "csr", "certificate", "confirm")
FROM_DEVICE = ("csr", "confirm")
MAX_PAYLOAD = 16 * 1024
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SERIAL_RE = re.compile(r"^[0-9a-f]{1,40}$")


def topic(prefix: str, thing: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown rotation message kind {kind!r}")
    return f"{prefix}/{thing}/rotation/{kind}"


def service_subscriptions(prefix: str) -> tuple[str, ...]:
    """What the rotation service listens to: every device's CSRs and confirmations."""
    return tuple(f"{prefix}/+/rotation/{kind}" for kind in FROM_DEVICE)


def parse_topic(prefix: str, name: str) -> tuple[str, str]:
    """``<prefix>/<thing>/rotation/<kind>`` -> (thing, kind)."""
    parts = name.split("/")
    head = prefix.split("/")
    if (
        len(parts) != len(head) + 3
        or parts[: len(head)] != head
        or parts[-2] != "rotation"
        or parts[-1] not in KINDS
        or not parts[len(head)]
    ):
        raise InvalidInput(f"topic {name[:200]!r} is not a rotation topic under {prefix!r}")
    return parts[len(head)], parts[-1]


@dataclass(frozen=True)
class Request:
    rotation_id: str
    serial: str  # the certificate being replaced


@dataclass(frozen=True)
class CsrMessage:
    rotation_id: str
    csr_pem: bytes


@dataclass(frozen=True)
class CertificateMessage:
    rotation_id: str
    serial: str | None = None
    fullchain_pem: bytes | None = None
    error: str | None = None  # a stable reason code when the service refused the CSR
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Confirm:
    rotation_id: str
    serial: str  # the new certificate the device now uses


Message = Request | CsrMessage | CertificateMessage | Confirm


def encode(message: Message) -> bytes:
    data: dict[str, Any] = {"v": VERSION, "rotation_id": message.rotation_id}
    if isinstance(message, Request | Confirm):
        data["serial"] = message.serial
    elif isinstance(message, CsrMessage):
        data["csr"] = message.csr_pem.decode("ascii")
    elif message.ok:
        assert message.fullchain_pem is not None and message.serial is not None
        data["serial"] = message.serial
        data["certificate"] = message.fullchain_pem.decode("ascii")
    else:
        data["error"] = message.error
        data["message"] = message.message or ""
    return json.dumps(data, separators=(",", ":")).encode()


def decode(kind: str, payload: bytes) -> Message:
    """Parse and check one message; ``InvalidInput`` names what is wrong."""
    if len(payload) > MAX_PAYLOAD:
        raise InvalidInput(f"rotation {kind} message is {len(payload)} bytes (limit {MAX_PAYLOAD})")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested to exhaustion
        raise InvalidInput(f"rotation {kind} message is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"rotation {kind} message is not a JSON object")
    if data.get("v") != VERSION:
        raise InvalidInput(f"rotation {kind} message has version {data.get('v')!r}, not {VERSION}")
    rotation_id = _text(data, "rotation_id", kind)
    if not _ID_RE.fullmatch(rotation_id):
        raise InvalidInput(f"rotation {kind} message has a malformed rotation_id")
    if kind == "request":
        return Request(rotation_id, _serial(data, kind))
    if kind == "csr":
        return CsrMessage(rotation_id, _pem(data, "csr", kind))
    if kind == "confirm":
        return Confirm(rotation_id, _serial(data, kind))
    if kind == "certificate":
        if "error" in data:
            return CertificateMessage(
                rotation_id, error=_text(data, "error", kind), message=str(data.get("message", ""))
            )
        return CertificateMessage(
            rotation_id, serial=_serial(data, kind), fullchain_pem=_pem(data, "certificate", kind)
        )
    raise InvalidInput(f"unknown rotation message kind {kind!r}")


def _text(data: dict[str, Any], name: str, kind: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"rotation {kind} message lacks {name!r}")
    return value


def _serial(data: dict[str, Any], kind: str) -> str:
    value = _text(data, "serial", kind).lower()
    if not _SERIAL_RE.fullmatch(value):
        raise InvalidInput(f"rotation {kind} message has a malformed serial")
    return value


def _pem(data: dict[str, Any], name: str, kind: str) -> bytes:
    value = _text(data, name, kind)
    if "-----BEGIN " not in value or not value.isascii():
        raise InvalidInput(f"rotation {kind} message: {name!r} is not PEM")
    return value.encode("ascii")
