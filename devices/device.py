"""One simulated device's identity and bookkeeping: its credentials (its own key, the
certificate issued from its CSR), mTLS HTTPS calls, the stats the simulator adds up, and
its side of the rotation protocol. Its MQTT clients (paho-mqtt 2.x, the AWS IoT Device
SDK) are in ``devices.mqtt_clients``."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices import rotation_protocol as rp

# client-side TLS failures -> the stable reason codes of the access log
_ALERTS = {
    "ALERT_CERTIFICATE_REVOKED": "revoked",
    "ALERT_CERTIFICATE_EXPIRED": "expired",
    "ALERT_UNKNOWN_CA": "unknown-ca",
    "ALERT_BAD_CERTIFICATE": "unknown-ca",
    "ALERT_CERTIFICATE_REQUIRED": "no-certificate",
    "ALERT_HANDSHAKE_FAILURE": "no-certificate",
}


def refusal_reason(exc: BaseException) -> str:
    """What a refused client learns from the server's TLS alert."""
    text = f"{getattr(exc, 'reason', '') or ''} {exc}".upper().replace(" ", "_")
    for key, reason in _ALERTS.items():
        if key in text:
            return reason
    if isinstance(exc, ConnectionError | ssl.SSLEOFError):
        return "connection-closed"
    return "handshake-failed"


@dataclass(frozen=True)
class Credentials:
    name: str
    cert: Path | None  # full chain
    key: Path | None
    ca: Path

    @classmethod
    def in_folder(cls, name: str, folder: Path, ca: Path) -> Credentials:
        return cls(name, folder / "fullchain.pem", folder / "key.pem", ca)


def client_context(creds: Credentials, *, tls12: bool = True) -> ssl.SSLContext:
    """TLS 1.2 by default: the server's verdict on the client certificate then arrives
    during the handshake, so a refused device learns the reason (with TLS 1.3 it comes
    after the handshake as a bare disconnect)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(creds.ca)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if creds.cert is not None and creds.key is not None:
        ctx.load_cert_chain(creds.cert, creds.key)
    return ctx


def https_call(ctx: ssl.SSLContext, port: int, path: str = "/whoami") -> tuple[bool, str]:
    """GET over mTLS; (accepted, identity or refusal reason)."""
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.request("GET", path)
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status == 200, str(body.get("identity"))
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        return False, refusal_reason(exc)
    finally:
        conn.close()


@dataclass
class DeviceStats:
    name: str
    client: str = "paho"
    valid: bool = True
    victim: bool = False
    connected: bool = False
    refused: str | None = None
    connect_latency: float | None = None
    started_at: float | None = None  # wall clock when the TCP connect began
    connected_at: float | None = None  # wall clock of the CONNACK
    sent: int = 0
    acked: int = 0
    not_authorized: int = 0
    disconnected_at: float | None = None  # wall clock (time.time())
    https_ok: bool | None = None
    https_refused_at: float | None = None
    https_reason: str | None = None
    reconnect_reason: str | None = None
    # rotation (wall clock times)
    rotation_requested_at: float | None = None
    rotation_certificate_at: float | None = None
    rotation_reconnected_at: float | None = None
    rotation_confirmed_at: float | None = None  # PUBACK of the confirmation
    rotation_error: str | None = None
    rotated_serial: str | None = None
    old_certificate: str | None = None  # reconnect with the replaced certificate, later
    pending: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "pending"}
        data["lost"] = self.sent - self.acked
        return data


class DeviceRotation:
    """The device's side of the rotation protocol (``devices.rotation_protocol``), shared
    by both MQTT clients: answer a request with a CSR for a key made here, check and store
    the certificate that comes back (the old pair is kept in ``previous/``), and say when
    the switch can happen and what to confirm."""

    def __init__(self, creds: Credentials, stats: DeviceStats, topic_prefix: str) -> None:
        self.creds = creds
        self.stats = stats
        self.prefix = topic_prefix
        self.rotation_id: str | None = None
        self._key_pem: bytes | None = None
        self._csr_pem: bytes | None = None
        self.switch_pending = False  # the new certificate is on disk; reconnect with it
        self.confirm_pending = False  # reconnected; the confirmation is still to send
        self.switch_started: float | None = None

    def topic(self, kind: str) -> str:
        return rp.topic(self.prefix, self.creds.name, kind)

    def subscriptions(self) -> list[str]:
        return [self.topic("request"), self.topic("certificate")]

    def on_message(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """A message on one of our rotation topics -> what to publish (topic, payload)."""
        try:
            _thing, kind = rp.parse_topic(self.prefix, topic)
            message = rp.decode(kind, payload)
        except Exception:  # a device ignores what it cannot read
            return None
        if isinstance(message, rp.Request):
            if (
                message.rotation_id == self.rotation_id
                and self.stats.rotated_serial is not None
                and not self.switch_pending
                and not self.confirm_pending
            ):
                # asked again for a rotation done here: the service has not heard the
                # confirmation (lost with a broker), so it goes out again; the service
                # clearing the retained request is the acknowledgement
                return self.topic("confirm"), rp.encode(
                    rp.Confirm(self.rotation_id, self.stats.rotated_serial)
                )
            return self._answer(message)
        if isinstance(message, rp.CertificateMessage):
            self._accept(message)
        return None

    def _answer(self, request: rp.Request) -> tuple[str, bytes]:
        if request.rotation_id != self.rotation_id or self._csr_pem is None:
            from pki.issue.delivery import make_key_and_csr
            from pki.model import KeyType

            self.rotation_id = request.rotation_id
            self._key_pem, self._csr_pem = make_key_and_csr(KeyType.EC_P256, self.creds.name)
            self.stats.rotation_requested_at = time.time()
        message = rp.CsrMessage(request.rotation_id, self._csr_pem)
        return self.topic("csr"), rp.encode(message)

    def _accept(self, message: rp.CertificateMessage) -> None:
        if message.rotation_id != self.rotation_id or self._key_pem is None:
            return
        if not message.ok:
            self.stats.rotation_error = message.error
            return
        if self.switch_pending or self.stats.rotated_serial == message.serial:
            return  # a repeat
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        assert message.fullchain_pem is not None
        try:
            cert = x509.load_pem_x509_certificates(message.fullchain_pem)[0]
            key = serialization.load_pem_private_key(self._key_pem, None)
        except (ValueError, x509.InvalidVersion):
            self.stats.rotation_error = "unreadable-certificate"
            return
        if cert.public_key() != key.public_key():
            self.stats.rotation_error = "certificate-for-another-key"
            return
        from pki.files import atomic_write

        assert self.creds.cert is not None and self.creds.key is not None
        previous = self.creds.cert.parent / "previous"
        previous.mkdir(mode=0o700, exist_ok=True)
        atomic_write(previous / "key.pem", self.creds.key.read_bytes(), 0o600)
        atomic_write(previous / "fullchain.pem", self.creds.cert.read_bytes(), 0o644)
        atomic_write(self.creds.key, self._key_pem, 0o600)
        atomic_write(self.creds.cert, message.fullchain_pem, 0o644)
        self.stats.rotated_serial = message.serial
        self.stats.rotation_certificate_at = time.time()
        self.switch_pending = True

    def switched(self) -> tuple[str, bytes]:
        """Connected with the new certificate: the confirmation to publish."""
        assert self.rotation_id is not None and self.stats.rotated_serial is not None
        self.switch_pending = False
        self.confirm_pending = False
        self.stats.rotation_reconnected_at = time.time()
        message = rp.Confirm(self.rotation_id, self.stats.rotated_serial)
        return self.topic("confirm"), rp.encode(message)

    def previous(self) -> Credentials:
        assert self.creds.cert is not None
        return Credentials.in_folder(
            self.creds.name, self.creds.cert.parent / "previous", self.creds.ca
        )
