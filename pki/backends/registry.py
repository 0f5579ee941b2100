"""The backend registry: ``config.json`` names a backend, the registry opens it (like
smallstep's ``cas.New``). Built-in backends load lazily (boto3 only for ``aws-pca``);
other packages add theirs through the ``fleetpki.backends`` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pki.clock import Clock
from pki.errors import InvalidInput
from pki.home import Home, HomeConfig

if TYPE_CHECKING:
    from pki.backends import CertificateAuthority
    from pki.storage import Inventory

GROUP = "fleetpki.backends"
BUILT_IN = {
    "local": "pki.backends.local:from_home",
    "aws-pca": "pki.backends.aws_pca:from_home",
}


@dataclass(frozen=True)
class BackendContext:
    """What a backend may use to open itself."""

    home: Home
    config: HomeConfig
    clock: Clock
    inventory: Callable[[], Inventory]  # opened only when the backend needs it
    root_key: Path | None = None


BackendFactory = Callable[[BackendContext], "CertificateAuthority"]


def factory(name: str) -> BackendFactory:
    from pki import plugins

    target = BUILT_IN.get(name)
    if target is not None:
        built_in: BackendFactory = plugins.EntryPoint(name, target, GROUP).load()
        return built_in
    found = {ep.name: ep for ep in plugins.entry_points(GROUP)}
    if name not in found:
        known = ", ".join(sorted({*BUILT_IN, *found}))
        raise InvalidInput(f"unknown CA backend {name!r} (known: {known})")
    loaded: BackendFactory = found[name].load()
    return loaded


def open_backend(context: BackendContext) -> CertificateAuthority:
    return factory(context.config.backend)(context)
