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
    pending: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "pending"}
        data["lost"] = self.sent - self.acked
        return data


class PahoDevice:
    """A paho device driven by an external loop (the simulator's selector)."""

    def __init__(self, creds: Credentials, host: str, port: int, topic_prefix: str) -> None:
        self.creds = creds
        self.stats = DeviceStats(creds.name)
        self.topic = f"{topic_prefix}/{creds.name}/telemetry"
        self.command_topic = f"{topic_prefix}/{creds.name}/cmd"
        self.host, self.port = host, port
        self.client = NodelayClient(
            CallbackAPIVersion.VERSION2, client_id=creds.name, protocol=mqtt.MQTTv311
        )
        self.client.tls_set_context(client_context(creds))
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self._started = 0.0
        self.closing = False

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
        self.stats.connected = True
        self.stats.connect_latency = time.monotonic() - self._started
        self.stats.connected_at = time.time()
        client.subscribe(self.command_topic, qos=1)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        if mid in self.stats.pending:
            self.stats.pending.discard(mid)
            self.stats.acked += 1

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        if not self.closing and self.stats.disconnected_at is None:
            self.stats.disconnected_at = time.time()

    def publish(self, payload: bytes) -> None:
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
    its own event-loop threads, so counters are guarded by a lock."""

    def __init__(self, creds: Credentials, host: str, port: int, topic_prefix: str) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self.creds = creds
        self.stats = DeviceStats(creds.name, client="awsiotsdk")
        self.topic = f"{topic_prefix}/{creds.name}/telemetry"
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._mqtt5 = mqtt5
        self.closing = False
        self._started = 0.0
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=host,
            port=port,
            cert_filepath=str(creds.cert),
            pri_key_filepath=str(creds.key),
            ca_filepath=str(creds.ca),
            client_id=creds.name,
            enable_metrics_collection=False,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnect,
        )
        self._subscribe = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(f"{topic_prefix}/{creds.name}/cmd", mqtt5.QoS.AT_LEAST_ONCE)
            ]
        )

    def start(self) -> bool:
        self._started = time.monotonic()
        self.stats.started_at = time.time()
        self.client.start()
        return True

    def _on_success(self, _data: Any) -> None:
        with self._lock:
            if not self.stats.connected:
                self.stats.connected = True
                self.stats.connect_latency = time.monotonic() - self._started
                self.stats.connected_at = time.time()
        self.client.subscribe(self._subscribe)
        self._connected.set()

    def _on_failure(self, data: Any) -> None:
        with self._lock:
            if not self.stats.connected and self.stats.refused is None:
                self.stats.refused = refusal_reason(Exception(str(data.exception)))
        self.client.stop()

    def _on_disconnect(self, _data: Any) -> None:
        with self._lock:
            if not self.closing and self.stats.disconnected_at is None:
                self.stats.disconnected_at = time.time()

    def publish(self, payload: bytes) -> None:
        mqtt5 = self._mqtt5
        if not self._connected.is_set():
            return
        with self._lock:
            self.stats.sent += 1
        future = self.client.publish(
            mqtt5.PublishPacket(topic=self.topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
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
            if good:
                with self._lock:
                    self.stats.acked += 1

        future.add_done_callback(done)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self) -> None:
        self.closing = True
        self.client.stop()
