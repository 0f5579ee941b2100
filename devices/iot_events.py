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
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pki.errors import InvalidInput

RULE_NAME = "FleetpkiConnected"
RULE_SQL = "SELECT * FROM '$aws/events/presence/connected/+'"
SQL_VERSION = "2016-03-23"
MAX_BODY = 16 * 1024  # a lifecycle event is a few hundred bytes
_CERTIFICATE_ID = re.compile(r"[0-9a-f]{64}")
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
        self.memory = memory
        self.max_messages = max_messages
        self.budget = budget  # seconds one drain may take; the rest waits for the next
        self.monotonic = monotonic
        # certificate id -> the client id it connected as; insertion-ordered: the oldest is
        # forgotten first
        self._seen: dict[str, str] = {}
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
                    self._remember(*found)
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ],
            )
            read += len(messages)
        return read

    def _remember(self, certificate_id: str, client_id: str) -> None:
        self._seen.pop(certificate_id, None)
        self._seen[certificate_id] = client_id
        while len(self._seen) > self.memory:
            del self._seen[next(iter(self._seen))]

    def seen(self, certificate_id: str, client_id: str) -> bool:
        """Whether the certificate connected, as ``client_id`` (the thing: the policy
        ``iot provision`` attaches lets a device connect only as its own thing name)."""
        return self._seen.get(certificate_id) == client_id

