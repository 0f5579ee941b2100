"""The stand-in broker's authorization, mirroring the IoT policy fleetpki provisions.

IoT Core authorizes a device only for its own topics (``${iot:Connection.Thing.ThingName}``)
and refuses anything else visibly: SUBACK failure (0x80) on MQTT 3.1.1, reason code 0x87
Not authorized on MQTT 5, for a SUBSCRIBE; a PUBACK with 0x87 for a QoS 1 PUBLISH on
MQTT 5. Mosquitto 2.0.11's ``acl_file`` never checks SUBSCRIBE (it grants any filter and
only filters deliveries), so the stand-in does not use it: the dynamic-security plugin
authorizes everyone.

- Each thing with an active device certificate is a dynsec client (no password: its TLS
  certificate authenticates it, ``use_identity_as_username``) with a role of its own that
  allows ``<prefix>/<thing>/#`` for subscribe, publish and receive. Mosquitto 2.0.11's
  dynsec has no ``%u`` patterns, hence one role per thing.
- Anything not allowed is denied: no default grants, and with no ``acl_file`` a check
  dynsec defers is refused. A certificate whose thing is not registered can connect (the
  CRL and the CA decide that) but may do nothing, like a certificate without a policy.
- Things are registered when ``dev up`` starts (from the inventory) and whenever
  fleetpki issues a device certificate while the stand-ins run (an issuance hook).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROTATION_ROLE = "fleetpki-rotation"
# what the default ACL access would otherwise let through
DENY_BY_DEFAULT = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


def role_name(thing: str) -> str:
    return f"thing:{thing}"


def thing_role(prefix: str, thing: str) -> dict[str, Any]:
    topic = f"{prefix}/{thing}/#"
    return {
        "rolename": role_name(thing),
        "acls": [
            {"acltype": kind, "topic": topic, "priority": 0, "allow": True}
            for kind in ("subscribePattern", "publishClientSend", "publishClientReceive")
        ],
    }


def thing_client(thing: str) -> dict[str, Any]:
    return {"username": thing, "roles": [{"rolename": role_name(thing)}]}


def rotation_role(prefix: str) -> dict[str, Any]:
    """The rotation service: reads the devices' CSRs and confirmations, writes requests
    and certificates, on every thing's rotation topics and nothing else."""
    reads = (f"{prefix}/+/rotation/csr", f"{prefix}/+/rotation/confirm")
    writes = (f"{prefix}/+/rotation/request", f"{prefix}/+/rotation/certificate")
    acls = [
        {"acltype": kind, "topic": topic, "priority": 0, "allow": True}
        for topic in reads
        for kind in ("subscribePattern", "publishClientReceive")
    ]
    acls += [
        {"acltype": "publishClientSend", "topic": topic, "priority": 0, "allow": True}
        for topic in writes
    ]
    return {"rolename": ROTATION_ROLE, "acls": acls}


def seed(config: Path, prefix: str, things: Iterable[str]) -> None:
    """Add the deny-by-default access, the rotation role and one client + role per thing
    to a dynsec file made by ``mosquitto_ctrl dynsec init`` (before the broker starts: a
    whole fleet at once, without a file save per command)."""
    data = json.loads(config.read_text())
    data["defaultACLAccess"] = dict(DENY_BY_DEFAULT)
    roles = [r for r in data.get("roles", []) if not str(r["rolename"]).startswith("thing:")]
    clients = [c for c in data.get("clients", []) if "password" in c]  # admin
    unique = sorted(set(things))
    data["roles"] = [*roles, rotation_role(prefix), *(thing_role(prefix, t) for t in unique)]
    data["clients"] = [*clients, *(thing_client(t) for t in unique)]
    text = json.dumps(data, indent=1) + "\n"
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(config)


def register_commands(prefix: str, things: Iterable[str]) -> list[dict[str, Any]]:
    """dynsec commands that register things (each already known thing answers "already
    exists", which is fine)."""
    commands: list[dict[str, Any]] = []
    for thing in sorted(set(things)):
        role = thing_role(prefix, thing)
        commands.append({"command": "createRole", **role})
        commands.append({"command": "createClient", **thing_client(thing)})
    return commands


def unregister_commands(thing: str) -> list[dict[str, Any]]:
    """Delete the thing's client (which also cuts its live sessions) and its role."""
    return [
        {"command": "deleteClient", "username": thing},
        {"command": "deleteRole", "rolename": role_name(thing)},
    ]


def failed(responses: list[dict[str, Any]]) -> list[str]:
    """The errors of dynsec responses, ignoring "already exists" (registering twice)."""
    return [
        f"{r.get('command')}: {r['error']}"
        for r in responses
        if r.get("error") and "already exists" not in str(r["error"])
    ]
