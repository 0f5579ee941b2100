"""An inventory belongs to one CA hierarchy.

Two homes pointed at the same ``FLEETPKI_DATABASE_URL`` must not share records: the
second would list, revoke and publish the first one's certificates. ``ca init`` gives a
hierarchy a random id, stored in the home's ``config.json`` and in the inventory; every
later command checks that the two agree before it reads or writes anything. The id names
the hierarchy, not its root certificate: CA rollover adds generations inside one
hierarchy.
"""

from __future__ import annotations

import dataclasses
import uuid

from cryptography import x509

from pki.errors import AlreadyExists, OperatorError
from pki.home import Home, HomeConfig
from pki.storage import Inventory, redact_url


def new_hierarchy_id() -> str:
    return uuid.uuid4().hex


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def check_free_for_init(inventory: Inventory, url: str, issuing: x509.Certificate | None) -> None:
    """Before ``ca init`` writes anything: the inventory must hold no other hierarchy (an
    AWS Private CA adopted again, ``issuing``, may join the hierarchy that recorded it)."""
    if issuing is not None and inventory.has_ca_fingerprint(_fingerprint(issuing)):
        return
    if inventory.hierarchy() is not None or inventory.has_certificates():
        raise AlreadyExists(
            f"the inventory at {redact_url(url)} already holds another CA hierarchy; give this "
            "home a database of its own (FLEETPKI_DATABASE_URL), or use the home that made it"
        )


def bind(home: Home, inventory: Inventory, root: x509.Certificate | None) -> HomeConfig:
    """Check that ``inventory`` is this home's, before any command uses it; returns the
    home's configuration. ``root``: the home's root certificate (None for AWS).

    An inventory without an id (made before hierarchy ids, or restored from a backup taken
    before them) is claimed when every CA it ever recorded (its ``ca-init`` events) is this
    home's: the same root, or for AWS the same Private CA. Two old homes that shared one
    inventory are both refused: it holds two hierarchies and cannot be split here."""
    config = home.config()
    found = inventory.hierarchy()
    if config.hierarchy_id is not None and found == config.hierarchy_id:
        return config
    url = redact_url(home.database_url)
    if found is not None and config.hierarchy_id is not None:
        raise OperatorError(
            f"the inventory at {url} belongs to another CA hierarchy than the one in "
            f"{home.path}; point FLEETPKI_DATABASE_URL at this home's own inventory"
        )
    inits = inventory.ca_inits()
    if not inits:
        raise OperatorError(
            f"the inventory at {url} holds no CA: it is not the inventory of the CA in "
            f"{home.path}; point FLEETPKI_DATABASE_URL at this home's inventory, or "
            "restore it from a backup"
        )
    if not _all_ours(config, inits, root):
        raise OperatorError(
            f"the inventory at {url} holds another CA hierarchy than the one in "
            f"{home.path} (it recorded {len(inits)} CA set-ups); point "
            "FLEETPKI_DATABASE_URL at this home's own inventory"
        )
    with inventory.transaction() as conn:
        claimed = inventory.claim_hierarchy(
            conn, found or config.hierarchy_id or new_hierarchy_id()
        )
    if claimed != config.hierarchy_id:
        config = dataclasses.replace(config, hierarchy_id=claimed)
        home.write_config(config)
    return config


def _all_ours(
    config: HomeConfig, inits: list[dict[str, object]], root: x509.Certificate | None
) -> bool:
    if config.backend == "aws-pca":
        return all(init.get("ca_arn") == config.ca_arn for init in inits)
    if root is None:
        return False
    own = format(root.serial_number, "x")
    own = own if len(own) % 2 == 0 else "0" + own
    return all(init.get("root_serial") == own for init in inits)
