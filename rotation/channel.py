"""The rotation service's MQTT connection: it hears every device's CSRs and confirmations
and sends requests and certificates to one device at a time.

Against the local stand-ins it logs in as ``fleetpki-rotation`` on the broker's loopback
admin listener (password user; the ACL in ``devices.standins`` lets it use only the
rotation topics). A persistent session (clean_session off, fixed client id) keeps the
devices' messages queued at the broker while the service restarts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices import rotation_protocol as rp
from pki.errors import BackendError, FleetPkiError, InvalidInput, OperatorError
from pki.home import Home

log = logging.getLogger("fleetpki.rotation.channel")

# (thing, kind, payload, ack): ``ack`` acknowledges the message to the broker; call it
# once the message has been acted on, so that one lost in a crash is delivered again
OnMessage = Callable[[str, str, bytes, Callable[[], None]], None]


@dataclass(frozen=True)
class BrokerAccess:
    host: str
    port: int
    username: str
    password: str
    topic_prefix: str

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return f"BrokerAccess({self.username}@{self.host}:{self.port}, {self.topic_prefix!r})"


def stand_in_access(home: Home) -> BrokerAccess:
    """The local stand-ins' broker, or an operator error saying how to start it."""
    from devices import standins

    state = standins.running(home)
    if state is None:
        raise OperatorError(
            "rotation talks to the devices over MQTT, and the local broker is not running: "
            "start it with 'fleetpki dev up'"
        )
    if not state.rotation_password:
        raise OperatorError(
            "the running stand-ins predate rotation support: restart them "
            "('fleetpki dev down' then 'fleetpki dev up')"
        )
    return BrokerAccess(
        standins.HOST,
        state.admin_port,
        standins.ROTATION_USER,
        state.rotation_password,
        state.topic_prefix,
    )


class ServiceChannel:
    """paho-mqtt on its own network thread; ``on_message`` runs on that thread.

    With ``listen`` (the service that works the answers) the session is persistent
    (clean session off, fixed client id) and messages are acknowledged only when the
    service says so. Without it (a process that only sends requests while the daemon
    works the answers) the client id is its own and nothing is subscribed.
    """

    def __init__(
        self,
        access: BrokerAccess,
        on_message: OnMessage,
        *,
        listen: bool = True,
        client_id: str = "fleetpki-rotation",
        on_bad_message: Callable[[str, str], None] = lambda _topic, _why: None,
        source: Callable[[], BrokerAccess] | None = None,
        on_delivered: Callable[[str], None] = lambda _kind: None,
        on_connection: Callable[[bool], None] = lambda _connected: None,
    ) -> None:
        self.access = access
        self.listen = listen
        self._on_message = on_message
        self._on_bad = on_bad_message
        self._source = source
        self._on_delivered = on_delivered
        self._on_connection = on_connection
        self._ready = threading.Event()
        self._refused: str | None = None
        # messages the broker has not acknowledged yet, by MQTT message id -> kind; an
        # acknowledgement that beats ``publish()`` returning its id waits in ``_early``
        self._unacked: dict[int, str] = {}
        self._early: set[int] = set()
        self._sent_lock = threading.Lock()
        self._closed = False
        self.connected = False
        self.disconnected_since: float | None = None  # time.time() of the lost connection
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if listen else f"{client_id}-{uuid.uuid4().hex[:12]}",
            clean_session=not listen,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(access.username, access.password)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)  # no limit: a wave's requests all wait their turn
        client.manual_ack_set(True)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_pre_connect = self._pre_connect
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_subscribe = self._subscribed
        client.on_message = self._message
        self.client = client

    def start(self, timeout: float = 10.0) -> None:
        a = self.access
        try:
            self.client.connect(a.host, a.port, keepalive=30)
        except OSError as exc:
            raise BackendError(
                "connect to the broker", "mqtt", f"{a.host}:{a.port}: {exc.strerror or exc}"
            ) from None
        self.client.loop_start()
        if not self._ready.wait(timeout) or self._refused:
            self.close(drain=0)
            why = self._refused or f"no answer within {timeout:g} s"
            raise BackendError("subscribe to the rotation topics", "mqtt", why)

    def _pre_connect(self, client: Any, _u: Any) -> None:
        """Before every (re)connection: where the broker is now. The stand-ins restarted
        by ``dev down``/``dev up`` listen on other ports with other passwords; paho's
        reconnection would knock on the old port for ever."""
        if self._source is None or not self._ready.is_set():
            return
        try:
            fresh = self._source()
        except FleetPkiError as exc:  # not running (yet): paho retries with its backoff
            log.warning("reconnecting to the broker: %s", exc)
            return
        except Exception:  # raised here it would end paho's network thread for good
            log.exception("reading where the broker is; reconnecting to the same place")
            return
        if fresh != self.access:
            log.warning("the broker moved to %s:%d; reconnecting there", fresh.host, fresh.port)
            self.access = fresh
            client._host, client._port = fresh.host, fresh.port  # paho has no public setter
            client.username_pw_set(fresh.username, fresh.password)

    def _connected(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {reason}"
            self._ready.set()
            return
        self.connected = True
        self._on_connection(True)
        if self.disconnected_since is not None:
            log.warning("reconnected to the broker at %s:%d", self.access.host, self.access.port)
        self.disconnected_since = None
        if not self.listen:
            self._ready.set()
            return
        client.subscribe([(t, 1) for t in rp.service_subscriptions(self.access.topic_prefix)])

    def _subscribed(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:  # the broker's ACL said no (SUBACK 0x80)
            self._refused = f"subscription refused: {', '.join(refused)}"
        self._ready.set()

    def _message(self, client: Any, _u: Any, message: Any) -> None:
        def ack() -> None:
            client.ack(message.mid, message.qos)

        try:
            thing, kind = rp.parse_topic(self.access.topic_prefix, message.topic)
        except InvalidInput as exc:
            self._on_bad(str(message.topic), str(exc))
            ack()
            return
        self._on_message(thing, kind, bytes(message.payload), ack)

    def _disconnected(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.connected = False
        self._on_connection(False)
        if not self._closed and self.disconnected_since is None:
            self.disconnected_since = time.time()
            log.warning("lost the connection to the broker; reconnecting")

    def _published(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        """The broker acknowledged a message (QoS 1 PUBACK): now it counts as sent."""
        with self._sent_lock:
            kind = self._unacked.pop(mid, None)
            if kind is None:
                self._early.add(mid)
                return
        self._on_delivered(kind)

    def send(self, thing: str, message: rp.Message) -> None:
        """Queue one message (QoS 1). Sent while disconnected, it waits in paho's queue and
        goes out on the reconnection; it counts as sent (``on_delivered``) only once the
        broker acknowledged it."""
        kind = "request" if isinstance(message, rp.Request) else "certificate"
        info = self.client.publish(
            rp.topic(self.access.topic_prefix, thing, kind),
            rp.encode(message),
            qos=1,
            retain=kind == "request",  # a device connecting later still finds it
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BackendError(
                f"send a rotation {kind} to {thing}", "mqtt", mqtt.error_string(info.rc)
            )
        refusal = isinstance(message, rp.CertificateMessage) and not message.ok
        counted = f"{kind}-error" if refusal else kind
        with self._sent_lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                early = True
            else:
                self._unacked[info.mid] = counted
                early = False
        if early:
            self._on_delivered(counted)

    def clear(self, thing: str) -> None:
        """Remove the thing's retained request (its rotation ended): an empty retained
        message, which devices ignore."""
        info = self.client.publish(
            rp.topic(self.access.topic_prefix, thing, "request"), b"", qos=1, retain=True
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BackendError(
                f"clear the rotation request of {thing}", "mqtt", mqtt.error_string(info.rc)
            )
        with self._sent_lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._unacked[info.mid] = "clear"

    def unsent(self) -> int:
        """Messages the broker has not acknowledged yet."""
        with self._sent_lock:
            return len(self._unacked)

    def close(self, drain: float = 30.0) -> int:
        """Disconnect once what was sent is acknowledged by the broker (at most ``drain``
        seconds). Returns how many messages were still unacknowledged."""
        if self._closed:
            return 0
        deadline = time.monotonic() + drain
        while self.unsent() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.unsent()
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()
        return left
