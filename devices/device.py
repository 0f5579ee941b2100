"""One simulated device: its own key and CSR, mTLS MQTT (paho-mqtt 2.x or the AWS IoT
Device SDK) and mTLS HTTPS calls. The stats it keeps are plain values the simulator
adds up."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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


# How long a rotating device waits for the broker to acknowledge its telemetry in flight
# before it reconnects with the new certificate (what is unacknowledged then is lost).
SWITCH_PATIENCE = 20.0


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


class NodelayClient(mqtt.Client):
    """paho's client with TCP_NODELAY on its socket (paho does not set it)."""

    def _create_socket_connection(self) -> socket.socket:
        sock = super()._create_socket_connection()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


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


class PahoDevice:
    """A paho device driven by an external loop (the simulator's selector)."""

    def __init__(self, creds: Credentials, host: str, port: int, topic_prefix: str) -> None:
        self.creds = creds
        self.stats = DeviceStats(creds.name)
        self.topic = f"{topic_prefix}/{creds.name}/telemetry"
        self.command_topic = f"{topic_prefix}/{creds.name}/cmd"
        self.host, self.port = host, port
        self.rotation = DeviceRotation(creds, self.stats, topic_prefix)
        self.client = self._client()
        self._started = 0.0
        self.closing = False
        self._confirm_mid: int | None = None

    def _client(self) -> NodelayClient:
        client = NodelayClient(
            CallbackAPIVersion.VERSION2, client_id=self.creds.name, protocol=mqtt.MQTTv311
        )
        client.tls_set_context(client_context(self.creds))
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> bool:
        """TCP + TLS handshake + CONNECT (CONNACK arrives through the loop)."""
        self._started = time.monotonic()
        self.stats.started_at = time.time()
        try:
            self.client.connect(self.host, self.port, keepalive=60)
        except (ssl.SSLError, OSError) as exc:
            self.stats.refused = refusal_reason(exc)
            return False
        return True

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.stats.refused = f"connack-{reason}"
            return
        topics = [self.command_topic, *self.rotation.subscriptions()]
        client.subscribe([(t, 1) for t in topics])
        if self.rotation.confirm_pending:
            topic, payload = self.rotation.switched()
            self._confirm_mid = client.publish(topic, payload, qos=1).mid
            return
        self.stats.connected = True
        self.stats.connect_latency = time.monotonic() - self._started
        self.stats.connected_at = time.time()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        if mid in self.stats.pending:
            self.stats.pending.discard(mid)
            self.stats.acked += 1
        elif mid == self._confirm_mid:
            self.stats.rotation_confirmed_at = time.time()
            self._confirm_mid = None

    def _on_message(self, client: Any, _u: Any, message: Any) -> None:
        answer = self.rotation.on_message(message.topic, bytes(message.payload))
        if answer is not None:
            client.publish(answer[0], answer[1], qos=1)

    @property
    def switching(self) -> bool:
        return self.rotation.switch_pending or self.rotation.confirm_pending

    def ready_to_switch(self, now: float, patience: float = SWITCH_PATIENCE) -> bool:
        """The new certificate is stored and the telemetry in flight is acknowledged (or
        ``patience`` s have passed: what is still unacknowledged then counts as lost)."""
        if not self.rotation.switch_pending or self.rotation.confirm_pending:
            return False
        if self.rotation.switch_started is None:
            self.rotation.switch_started = now
        return not self.stats.pending or now - self.rotation.switch_started > patience

    def switch(self) -> bool:
        """Disconnect, and connect again with the new certificate (the CONNACK, through
        the loop, sends the confirmation)."""
        old = self.client
        self.closing = True
        try:
            old.disconnect()
            old.loop_write()
        except (OSError, ssl.SSLError):
            pass
        self.closing = False
        self.stats.pending.clear()
        self.rotation.confirm_pending = True
        self.rotation.switch_started = None
        self.client = self._client()
        try:
            self.client.connect(self.host, self.port, keepalive=60)
        except (ssl.SSLError, OSError) as exc:
            self.stats.rotation_error = f"reconnect: {refusal_reason(exc)}"
            return False
        return True

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        if client is not self.client:
            return  # the client a rotation replaced
        if not self.closing and self.stats.disconnected_at is None:
            self.stats.disconnected_at = time.time()

    def publish(self, payload: bytes) -> None:
        if self.switching:
            return
        info = self.client.publish(self.topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
            self.stats.sent += 1
            self.stats.pending.add(info.mid)

    def close(self) -> None:
        self.closing = True
        try:
            self.client.disconnect()
            self.client.loop_write()
        except (OSError, ssl.SSLError):
            pass
        self.client.socket() and self.client.loop_read()


class SdkDevice:
    """A device on the AWS IoT Device SDK v2 (MQTT 5, ``mtls_from_path``); the CRT runs
    its own event-loop threads, so counters are guarded by a lock. Each client built
    (a rotation builds a second one) has a generation; callbacks of an older one are
    ignored."""

    def __init__(self, creds: Credentials, host: str, port: int, topic_prefix: str) -> None:
        from awscrt import mqtt5

        self.creds = creds
        self.stats = DeviceStats(creds.name, client="awsiotsdk")
        self.topic = f"{topic_prefix}/{creds.name}/telemetry"
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._mqtt5 = mqtt5
        self.closing = False
        self._started = 0.0
        self._generation = 0
        self.rotation = DeviceRotation(creds, self.stats, topic_prefix)
        self._subscribe = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(t, mqtt5.QoS.AT_LEAST_ONCE)
                for t in (f"{topic_prefix}/{creds.name}/cmd", *self.rotation.subscriptions())
            ]
        )
        self.client = self._client()

    def _client(self) -> Any:
        from awsiot import mqtt5_client_builder

        gen = self._generation
        creds = self.creds
        return mqtt5_client_builder.mtls_from_path(
            endpoint=self.host,
            port=self.port,
            cert_filepath=str(creds.cert),
            pri_key_filepath=str(creds.key),
            ca_filepath=str(creds.ca),
            client_id=creds.name,
            enable_metrics_collection=False,
            on_lifecycle_connection_success=lambda data: self._on_success(gen, data),
            on_lifecycle_connection_failure=lambda data: self._on_failure(gen, data),
            on_lifecycle_disconnection=lambda data: self._on_disconnect(gen, data),
            on_publish_received=lambda data: self._on_received(gen, data),
        )

    def start(self) -> bool:
        self._started = time.monotonic()
        self.stats.started_at = time.time()
        self.client.start()
        return True

    def _on_success(self, gen: int, _data: Any) -> None:
        if gen != self._generation:
            return
        self.client.subscribe(self._subscribe)
        if self.rotation.confirm_pending:
            topic, payload = self.rotation.switched()
            self._publish(topic, payload, self._confirmed)
            return
        with self._lock:
            if not self.stats.connected:
                self.stats.connected = True
                self.stats.connect_latency = time.monotonic() - self._started
                self.stats.connected_at = time.time()
        self._connected.set()

    def _confirmed(self) -> None:
        self.stats.rotation_confirmed_at = time.time()

    def _on_failure(self, gen: int, data: Any) -> None:
        if gen != self._generation:
            return
        with self._lock:
            if self.rotation.confirm_pending:
                self.stats.rotation_error = "reconnect: " + refusal_reason(
                    Exception(str(data.exception))
                )
            elif not self.stats.connected and self.stats.refused is None:
                self.stats.refused = refusal_reason(Exception(str(data.exception)))
        self.client.stop()

    def _on_disconnect(self, gen: int, _data: Any) -> None:
        with self._lock:
            if gen == self._generation and not self.closing and self.stats.disconnected_at is None:
                self.stats.disconnected_at = time.time()

    def _on_received(self, gen: int, data: Any) -> None:
        if gen != self._generation:
            return
        packet = data.publish_packet
        answer = self.rotation.on_message(packet.topic, bytes(packet.payload or b""))
        if answer is not None:
            self._publish(answer[0], answer[1], None)

    def _publish(self, topic: str, payload: bytes, on_ack: Any) -> None:
        mqtt5 = self._mqtt5
        future = self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        )

        def done(f: Any) -> None:
            try:
                ack = f.result().puback
                good = ack is not None and ack.reason_code in (
                    mqtt5.PubackReasonCode.SUCCESS,
                    mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
                )
            except Exception:
                good = False
            if good and on_ack is not None:
                on_ack()

        future.add_done_callback(done)

    def _acked(self) -> None:
        with self._lock:
            self.stats.acked += 1

    def publish(self, payload: bytes) -> None:
        if not self._connected.is_set() or self.switching:
            return
        with self._lock:
            self.stats.sent += 1
        self._publish(self.topic, payload, self._acked)

    @property
    def switching(self) -> bool:
        return self.rotation.switch_pending or self.rotation.confirm_pending

    def ready_to_switch(self, now: float, patience: float = SWITCH_PATIENCE) -> bool:
        if not self.rotation.switch_pending or self.rotation.confirm_pending:
            return False
        if self.rotation.switch_started is None:
            self.rotation.switch_started = now
        with self._lock:
            drained = self.stats.sent == self.stats.acked
        return drained or now - self.rotation.switch_started > patience

    def switch(self) -> bool:
        """Stop the client and start one with the new certificate files."""
        with self._lock:
            self._generation += 1
            self.rotation.confirm_pending = True
            self.rotation.switch_started = None
        self.client.stop()
        self.client = self._client()
        self.client.start()
        return True

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self) -> None:
        self.closing = True
        self.client.stop()
