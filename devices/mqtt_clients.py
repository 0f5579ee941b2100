"""A simulated device's MQTT connection over mutual TLS: paho-mqtt 2.x driven by the
simulator's selector loop (no thread per device), or the AWS IoT Device SDK v2 (MQTT 5),
whose CRT runs its own threads. Both keep ``DeviceStats`` and answer the rotation
protocol through ``DeviceRotation``."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.device import (
    Credentials,
    DeviceRotation,
    DeviceStats,
    client_context,
    refusal_reason,
)

# How long a rotating device waits for the broker to acknowledge its telemetry in flight
# before it reconnects with the new certificate (what is unacknowledged then is lost).
SWITCH_PATIENCE = 20.0


class NodelayClient(mqtt.Client):
    """paho's client with TCP_NODELAY on its socket (paho does not set it)."""

    def _create_socket_connection(self) -> socket.socket:
        sock = super()._create_socket_connection()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


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
