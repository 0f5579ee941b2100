"""Proof of use on AWS IoT Core: a device's ``connected`` lifecycle event names, in
``principalIdentifier``, the certificate it authenticated with (its IoT certificate id).

An IoT rule (``fleetpki iot lifecycle-rule``) routes those events to an SQS queue. Before
every sweep the rotation service drains the queue; a rotation still waiting for its
confirmation whose new certificate is seen there is confirmed by use, as the HTTPS
stand-in's access log does for the stand-ins. The confirmation the device sends stays the
main path: an event read is remembered only by the running process (the last ``memory``
certificate ids) and deleted from the queue, so a daemon restarted between the event and
its sweep relies on the re-sent request, as before.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devices import store
from devices.iot import _aws, _client
from devices.recent import Recent
from pki.aws.client import error_code
from pki.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from devices.iot import IotCore

RULE_NAME = "FleetpkiConnected"
RULE_SQL = "SELECT * FROM '$aws/events/presence/connected/+'"
SQL_VERSION = "2016-03-23"
MAX_BODY = 16 * 1024  # a lifecycle event is a few hundred bytes
_CERTIFICATE_ID = re.compile(r"[0-9a-f]{64}")
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}")


def connected_certificate(body: str) -> tuple[str, str] | None:
    """The certificate id and the MQTT client id of a ``connected`` lifecycle event; None
    for anything else (another event type, another principal such as a Cognito identity,
    hostile text)."""
    if len(body) > MAX_BODY:
        return None
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or event.get("eventType") != "connected":
        return None
    principal, client = event.get("principalIdentifier"), event.get("clientId")
    if (
        isinstance(principal, str)
        and _CERTIFICATE_ID.fullmatch(principal)
        and isinstance(client, str)
        and 0 < len(client) <= 128
    ):
        return principal, client
    return None


def check_queue_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        bad = not parts.hostname or any(c.isspace() or not c.isprintable() for c in url)
    except ValueError:  # an unbalanced [ in the host
        bad = True
    if bad or parts.scheme not in ("https", "http") or parts.path.count("/") != 2:
        raise InvalidInput(
            f"not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME): {url!r}"
        )
    if parts.path.endswith(".fifo"):
        raise InvalidInput(f"an IoT rule cannot send to a FIFO queue: {url!r}")
    return url


def check_role_arn(arn: str) -> str:
    if not _ROLE_ARN.fullmatch(arn):
        raise InvalidInput(f"not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME): {arn!r}")
    return arn


def rule_payload(queue_url: str, role_arn: str) -> dict[str, Any]:
    """The topic rule that sends every ``connected`` event, as is, to the queue."""
    return {
        "sql": RULE_SQL,
        "description": "fleetpki: proof of use of rotated device certificates",
        "awsIotSqlVersion": SQL_VERSION,
        "ruleDisabled": False,
        "actions": [{"sqs": {"roleArn": role_arn, "queueUrl": queue_url, "useBase64": False}}],
    }


class LifecycleEvents:
    """Drains the queue and remembers the certificate ids seen connecting."""

    def __init__(
        self,
        queue_url: str,
        client: Any,
        *,
        memory: int = 200_000,
        max_messages: int = 20_000,
        budget: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_url = queue_url
        self.client = client
        self.max_messages = max_messages
        self.budget = budget  # seconds one drain may take; the rest waits for the next
        self.monotonic = monotonic
        # (certificate id, client id) pairs seen connecting, the last ``memory`` of them (a
        # pair, so an event naming another client cannot hide a real one)
        self._seen: Recent[tuple[str, str]] = Recent(memory)
        self.ignored = 0  # messages that were not a connected event with a certificate id

    def drain(self) -> int:
        """Read (and delete) what the queue holds, within the budget; how many messages."""
        read = 0
        ends = self.monotonic() + self.budget
        while read < self.max_messages and self.monotonic() < ends:
            answer = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages") or []  # (a dict: moto and AWS answer one)
            if not messages:
                break
            for message in messages:
                found = connected_certificate(str(message.get("Body", "")))
                if found is None:
                    self.ignored += 1
                else:
                    self._seen.add(found)
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ],
            )
            read += len(messages)
        return read

    def seen(self, certificate_id: str, client_id: str) -> bool:
        """Whether the certificate connected, as ``client_id`` (the thing: the policy
        ``iot provision`` attaches lets a device connect only as its own thing name)."""
        return (certificate_id, client_id) in self._seen


# -- the rule (fleetpki iot lifecycle-rule) -----------------------------------------------


def set_lifecycle_rule(core: IotCore, queue_url: str, role_arn: str) -> str:
    """Route every ``connected`` lifecycle event to the SQS queue (the rule
    ``FleetpkiConnected``, made or corrected) and record the queue for the rotation
    service. Returns ``created``, ``replaced`` or ``unchanged``."""
    check_queue_url(queue_url)
    check_role_arn(role_arn)
    with _aws(f"read the queue {queue_url}"):
        try:
            _client("sqs").get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            )
        except Exception as exc:
            if error_code(exc) in _NO_QUEUE:
                raise NotFound(f"no SQS queue {queue_url!r}") from None
            raise
    wanted = rule_payload(queue_url, role_arn)
    current = _lifecycle_rule(core)
    if current is None:
        with _aws("create the lifecycle rule"):
            core.client.create_topic_rule(ruleName=RULE_NAME, topicRulePayload=wanted)
        outcome = "created"
    elif _same_rule(current, wanted):
        outcome = "unchanged"
    else:
        with _aws("replace the lifecycle rule"):
            core.client.replace_topic_rule(ruleName=RULE_NAME, topicRulePayload=wanted)
        outcome = "replaced"
    store.set_lifecycle_queue(core.engine, queue_url)
    return outcome


def remove_lifecycle_rule(core: IotCore) -> bool:
    """Delete the rule and forget the queue; False when there was no rule."""
    existed = _lifecycle_rule(core) is not None
    if existed:
        with _aws("delete the lifecycle rule"):
            core.client.delete_topic_rule(ruleName=RULE_NAME)
    store.set_lifecycle_queue(core.engine, None)
    return existed


def _lifecycle_rule(core: IotCore) -> dict[str, Any] | None:
    """The rule, or None when the account has none of that name (from the list of
    rules: IoT Core answers a GetTopicRule for a missing rule as if access were
    denied, so that answer cannot tell the two apart)."""
    pages = core.client.get_paginator("list_topic_rules").paginate(
        PaginationConfig={"MaxItems": 100_000}  # bounded (an account holds at most 1,000)
    )
    with _aws("list the topic rules"):
        names = {str(r.get("ruleName")) for page in pages for r in page.get("rules") or []}
    if RULE_NAME not in names:
        return None
    with _aws("read the lifecycle rule"):
        return dict(core.client.get_topic_rule(ruleName=RULE_NAME)["rule"])


def _same_rule(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def sqs(rule: dict[str, Any]) -> list[tuple[str, str, bool]]:
        return [
            (str(a["sqs"].get("queueUrl")), str(a["sqs"].get("roleArn")),
             bool(a["sqs"].get("useBase64")))
            for a in rule.get("actions") or [] if "sqs" in a
        ]  # fmt: skip

    return (
        current.get("sql") == wanted["sql"]
        and not current.get("ruleDisabled")
        and len(current.get("actions") or []) == 1
        and sqs(current) == sqs(wanted)
    )


class IotProofOfUse:
    """``proof_of_use`` for the rotation service: which of the serials asked about
    connected to IoT Core as their own thing, from the lifecycle events of the queue
    ``iot lifecycle-rule`` recorded (read on every call, so a rule set while the daemon
    runs counts at its next sweep). The queue is drained on every call, also when nothing
    waits, so its backlog stays small, within a few seconds: the SQS client gives up on a
    call after 2 s to connect or 5 s to answer, and one drain stops after 5 s. A failure
    to read it is reported to ``warn`` and proves nothing."""

    def __init__(
        self,
        engine: Any,
        warn: Callable[[str], None],
        client: Callable[[], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.warn = warn
        self._client = client  # default: _events_client
        self.events: Any = None  # LifecycleEvents, made on first use
        self._lock = threading.Lock()

    def __call__(self, serials: set[str]) -> set[str]:
        from pki.errors import FleetPkiError

        with self._lock:
            queue = store.lifecycle_queue(self.engine)
            if queue is None:
                self.events = None
                return set()
            try:
                if self.events is None or self.events.queue_url != queue:
                    self.events = LifecycleEvents(queue, (self._client or _events_client)())
                with _aws("read the lifecycle events queue"):
                    self.events.drain()
            except FleetPkiError as exc:
                self.warn(f"proof of use on IoT Core: {exc}")
            if not serials or self.events is None:
                return set()
            ids = store.certificate_ids(self.engine, serials)
            return {serial for serial, (cert_id, thing) in ids.items()
                    if self.events.seen(cert_id, thing)}  # fmt: skip


def _events_client() -> Any:
    """SQS, with short timeouts and one attempt: the next sweep is the retry."""
    from botocore.config import Config

    from pki.aws.client import make_client

    config = Config(connect_timeout=2, read_timeout=5,
                    retries={"mode": "standard", "total_max_attempts": 1})  # fmt: skip
    return make_client("sqs", config=config)
