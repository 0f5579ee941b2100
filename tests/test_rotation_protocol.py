"""The rotation protocol's topics and messages (pure)."""

from __future__ import annotations

import json

import pytest

from devices import rotation_protocol as rp
from pki.errors import InvalidInput

ID = "0123456789abcdef0123456789abcdef"
CSR = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


def test_topics_round_trip_and_service_subscriptions() -> None:
    for kind in rp.KINDS:
        assert rp.parse_topic("things", rp.topic("things", "pump-7", kind)) == ("pump-7", kind)
    assert rp.parse_topic("a/b", "a/b/pump-7/rotation/csr") == ("pump-7", "csr")
    assert rp.service_subscriptions("things") == (
        "things/+/rotation/csr",
        "things/+/rotation/confirm",
    )
    with pytest.raises(ValueError, match="unknown rotation message kind"):
        rp.topic("things", "pump-7", "telemetry")


@pytest.mark.parametrize(
    "topic",
    [
        "things/pump-7/telemetry",
        "other/pump-7/rotation/csr",
        "things//rotation/csr",
        "things/pump-7/rotation/reboot",
        "things/a/b/rotation/csr",
    ],
)
def test_parse_topic_refuses_what_is_not_a_rotation_topic(topic: str) -> None:
    with pytest.raises(InvalidInput, match="is not a rotation topic"):
        rp.parse_topic("things", topic)


@pytest.mark.parametrize(
    "message",
    [
        rp.Request(ID, "0a1b"),
        rp.CsrMessage(ID, CSR),
        rp.CertificateMessage(ID, "0c", b"-----BEGIN CERTIFICATE-----\nx\n"),
        rp.CertificateMessage(ID, error="cn-mismatch", message="the CN must be pump-7"),
        rp.Confirm(ID, "0c"),
    ],
)
def test_messages_round_trip(message: rp.Message) -> None:
    kind = {
        rp.Request: "request",
        rp.CsrMessage: "csr",
        rp.CertificateMessage: "certificate",
        rp.Confirm: "confirm",
    }[type(message)]
    assert rp.decode(kind, rp.encode(message)) == message


def _payload(**fields: object) -> bytes:
    return json.dumps({"v": 1, "rotation_id": ID, **fields}).encode()


@pytest.mark.parametrize(
    ("kind", "payload", "problem"),
    [
        ("csr", b"not json", "is not JSON"),
        ("csr", b"[1]", "not a JSON object"),
        ("csr", json.dumps({"v": 2, "rotation_id": ID}).encode(), "version 2"),
        ("csr", json.dumps({"v": 1, "rotation_id": "../x"}).encode(), "malformed rotation_id"),
        ("csr", _payload(), "lacks 'csr'"),
        ("csr", _payload(csr="MIIB"), "is not PEM"),
        ("confirm", _payload(serial="zz"), "malformed serial"),
        # '$' matches before a final newline: these must be refused all the same
        ("csr", json.dumps({"v": 1, "rotation_id": ID + "\n"}).encode(), "malformed rotation_id"),
        ("confirm", _payload(serial="0a\n"), "malformed serial"),
        ("csr", b"x" * (rp.MAX_PAYLOAD + 1), "limit"),
    ],
)
def test_bad_messages_are_refused_with_the_reason(kind: str, payload: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        rp.decode(kind, payload)
