"""The application core every front end stands on: the command line, the rotation daemon,
the fleet simulator and the network service open a home through an ``App`` and call the
workflows with it. Command and handler functions only parse, call and print.

An ``App`` opens what a command needs, lazily: the home's configuration, the inventory
(its schema checked, its hierarchy bound to the home), the CA backend (from the backend
registry) and the issuer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pki.clock import Clock, SystemClock

if TYPE_CHECKING:
    from cryptography import x509

    from pki.backends import CertificateAuthority
    from pki.home import Home
    from pki.issue.issuer import Issuer
    from pki.issue.pending import Settled
    from pki.model import CertificateRecord
    from pki.storage import Inventory

DEFAULT_HOME = ".fleetpki"  # as pki.home's (imported lazily: the CLI starts without it)


@dataclass
class App:
    """One home, opened for one process. Not shared between processes (a forked worker
    makes its own connections)."""

    home_path: Path = field(default_factory=lambda: Path(DEFAULT_HOME))
    clock: Clock = field(default_factory=SystemClock)
    root_key: Path | None = None  # a root key kept offline (crl --root --root-key FILE)
    database: str | None = None  # an inventory URL that overrides FLEETPKI_DATABASE_URL
    _inventory: Inventory | None = field(default=None, repr=False)
    _ca: CertificateAuthority | None = field(default=None, repr=False)

    @property
    def home(self) -> Home:
        from pki.home import Home

        return Home(self.home_path, self.database)

    def elsewhere(self, home_path: Path, database: str | None = None) -> App:
        """Another home on the same clock, with nothing of this one opened."""
        return App(home_path=home_path, clock=self.clock, database=database)

    @property
    def actor(self) -> str:
        return self.home.actor()

    def now(self) -> dt.datetime:
        return self.clock.now()

    def inventory(self, *, create: bool = False) -> Inventory:
        """The inventory. With ``create`` (``ca init``) its schema is made on an empty
        database; otherwise the home must hold a CA, the schema must be this fleetpki's
        and the inventory must belong to the home's CA hierarchy."""
        if self._inventory is None:
            from pki.storage import Inventory

            home = self.home
            if create:
                home.ensure()
                self._inventory = Inventory.create(home.database_url)
                return self._inventory
            home.config()  # raises NotFound with the 'run ca init' hint
            inventory = Inventory.open(home.database_url)
            try:
                from pki.ca.hierarchy import bind

                bind(home, inventory, self._home_root_certificate())
            except BaseException:
                inventory.close()
                raise
            self._inventory = inventory
        return self._inventory

    def _home_root_certificate(self) -> x509.Certificate | None:
        """The local CA's root certificate, read from the home (None for AWS)."""
        from cryptography import x509

        try:
            return x509.load_pem_x509_certificate((self.home.ca_dir / "root.pem").read_bytes())
        except (OSError, ValueError):
            return None

    def ca(self) -> CertificateAuthority:
        """The home's CA backend, from the registry (``config.json`` → ``backend``)."""
        if self._ca is None:
            from pki.backends.registry import BackendContext, open_backend

            self._ca = open_backend(
                BackendContext(self.home, self.home.config(), self.clock, self.inventory,
                               self.root_key)
            )  # fmt: skip
        return self._ca

    def issuer(self) -> Issuer:
        from pki.hooks import issuance_notifier
        from pki.issue.issuer import Issuer

        return Issuer(
            self.ca(),
            self.inventory(),
            self.clock,
            self.home.config().policy,
            on_issued=issuance_notifier(self.home.path),
        )

    def complete_interrupted(self, out: Path | None, *, per_thing: bool = False) -> Settled:
        """Finish what a crashed run left (``pki.issue.pending``): deliver or withdraw the
        certificates recorded into ``out`` (everywhere when None) and remove stale
        temporary files from ``out`` (and its folders per thing with ``per_thing``)."""
        from pki.issue.pending import complete_interrupted, delivery_folders

        folders = [] if out is None else delivery_folders(out, per_thing=per_thing)
        settled = complete_interrupted(
            self.inventory(), folders, under=out, now=self.now(), actor=self.actor
        )
        if per_thing:  # folders a killed batch made and never filled
            for folder in folders[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        return settled

    def interrupted_issue(
        self, out: Path, name: str, profile: str
    ) -> tuple[Settled, CertificateRecord | None]:
        """Before issuing ``name`` into ``out``: finish what a crashed run left there; with
        it, the certificate of ``name`` (``profile``) this delivered into ``out``, if
        any: the interrupted run's request was this one, and it is now done."""
        settled = self.complete_interrupted(out)
        folder = out.absolute()
        for item in settled.delivered:
            if folder in item.folders:
                record = self.inventory().get(item.serial)
                if (record.thing or record.common_name) == name and record.profile == profile:
                    return settled, record
        return settled, None

    def close(self) -> None:
        if self._inventory is not None:
            self._inventory.close()
            self._inventory = None
