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
from pki.inventory import Inventory, redact_url


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


def bind(home: Home, inventory: Inventory, issuing: x509.Certificate | None) -> HomeConfig:
    """Check that ``inventory`` is this home's, before any command uses it; returns the
    home's configuration. A home made before hierarchy ids (no id in ``config.json``)
    claims its inventory once, when that inventory records this home's issuing CA."""
    config = home.config()
    found = inventory.hierarchy()
    url = redact_url(home.database_url)
    if config.hierarchy_id is not None:
        if found == config.hierarchy_id:
            return config
        if found is None:
            raise OperatorError(
                f"the inventory at {url} does not belong to the CA in {home.path} (it holds no "
                "CA hierarchy); point FLEETPKI_DATABASE_URL at this home's inventory, or "
                "restore it from a backup"
            )
        raise OperatorError(
            f"the inventory at {url} belongs to another CA hierarchy than the one in "
            f"{home.path}; point FLEETPKI_DATABASE_URL at this home's own inventory"
        )
    # a home from before hierarchy ids: it may claim an inventory that recorded its CA
    if issuing is None or not inventory.has_ca_fingerprint(_fingerprint(issuing)):
        if found is None and not inventory.has_certificates():
            raise OperatorError(
                f"the inventory at {url} is empty: it is not the inventory of the CA in "
                f"{home.path}; point FLEETPKI_DATABASE_URL at this home's inventory"
            )
        if issuing is not None or found is not None:
            raise OperatorError(
                f"the inventory at {url} belongs to another CA hierarchy than the one in "
                f"{home.path}; point FLEETPKI_DATABASE_URL at this home's own inventory"
            )
    with inventory.transaction() as conn:
        claimed = inventory.claim_hierarchy(conn, found or new_hierarchy_id())
    updated = dataclasses.replace(config, hierarchy_id=claimed)
    home.write_config(updated)
    return updated
