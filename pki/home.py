"""The fleetpki home: where the CA, its configuration, the CRL and the SQLite inventory live.

This is the I/O edge that turns ``--home`` and the environment into backends.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pki.ca.distribution import CaUrls, ca_urls, check_url_map
from pki.ca.rollover import RolloverPolicy
from pki.errors import InvalidInput, NotFound, OperatorError, StorageError
from pki.files import atomic_write, ensure_dir, os_error, read_regular, refuse_shared_path
from pki.issue.policy import PolicySettings
from pki.revocation.files import CrlFiles

PASSPHRASE_ENV = "FLEETPKI_CA_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
ROOT_PASSPHRASE_ENV = "FLEETPKI_ROOT_PASSPHRASE"  # noqa: S105
MIN_PASSPHRASE = 12
DATABASE_ENV = "FLEETPKI_DATABASE_URL"
HOME_ENV = "FLEETPKI_HOME"
DEFAULT_HOME = ".fleetpki"  # pki.app repeats it, to start without this module
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class HomeConfig:
    backend: str = "local"
    key_type: str = "ec-p256"
    common_name: str = "fleetpki"
    crl_next_update_days: int = 7
    # the root's CRL (revoked subordinate CAs) lives long: the root key may stay offline
    root_crl_next_update_days: int = 180
    # thisUpdate is set this far in the past, like notBefore: a relying party whose clock
    # is a little behind must not refuse every client for "CRL is not yet valid"
    crl_backdate_seconds: int = 300
    # where relying parties fetch each CA's CRL and certificate: {"issuing": URL, "root":
    # URL}; new certificates carry them (CRL distribution point, caIssuers)
    crl_url: dict[str, str] = field(default_factory=dict)
    ca_issuers_url: dict[str, str] = field(default_factory=dict)
    # the CA hierarchy this home belongs to; its inventory carries the same id
    hierarchy_id: str | None = None
    policy: PolicySettings = field(default_factory=PolicySettings)
    # aws-pca backend (absent from local-CA configs; older config files load unchanged)
    ca_arn: str | None = None
    region: str | None = None
    issue_rate: float = 25.0  # IssueCertificate requests/s (AWS default quota)
    get_rate: float = 75.0  # GetCertificate requests/s
    revoke_rate: float = 20.0  # RevokeCertificate requests/s
    # the issuing CA's scheduled rollover (pki.ca.rollover): prepare its successor at this
    # fraction of its life, let the successor issue at that one, never sooner than the
    # overlap after propagation was observed (SPIRE's 1/2 and 5/6)
    rollover_prepare_at: float = 0.5
    rollover_activate_at: float = 5 / 6
    rollover_min_overlap_hours: float = 24.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def urls(self, ca: str) -> CaUrls:
        """Where CA ``ca`` (``issuing``, ``root``) serves its CRL and certificate."""
        return ca_urls(self.crl_url, self.ca_issuers_url, ca)

    @property
    def crl_backdate(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.crl_backdate_seconds)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HomeConfig:
        """Each field is checked against its type: ``"allow_wildcard": "false"`` (a string,
        hence truthy) must not quietly switch wildcards on."""
        if not isinstance(data, dict):
            raise TypeError("the top level must be an object")
        policy = data.get("policy", {})
        if not isinstance(policy, dict):
            raise TypeError("'policy' must be an object")
        _check_fields(PolicySettings(), policy, "policy.")
        rest = {k: v for k, v in data.items() if k != "policy"}
        _check_fields(cls(), rest, "")
        config = cls(policy=PolicySettings(**policy), **rest)
        config.check_ranges()
        return config

    def check_ranges(self) -> None:
        """Values of the right type may still make no sense (raises ValueError)."""
        if not 1 <= self.crl_next_update_days <= 365:
            raise ValueError("crl_next_update_days must be 1-365")
        if not 1 <= self.root_crl_next_update_days <= 730:
            raise ValueError("root_crl_next_update_days must be 1-730")
        if not 0 <= self.crl_backdate_seconds <= 86400:
            raise ValueError("crl_backdate_seconds must be 0-86400 (one day)")
        check_url_map(self.crl_url, "crl_url")
        check_url_map(self.ca_issuers_url, "ca_issuers_url")
        for name in ("issue_rate", "get_rate", "revoke_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of requests per second")
        # policy.thing_uri_prefix is checked when a device certificate is issued (a bad one
        # must not keep anybody from revoking)
        if not (math.isfinite(self.rollover_min_overlap_hours) and
                0 <= self.rollover_min_overlap_hours <= 24 * 366):  # fmt: skip
            raise ValueError("rollover_min_overlap_hours must be 0-8784 (a year)")
        try:
            self.rollover_policy()
        except OperatorError as exc:
            raise ValueError(str(exc)) from None

    def rollover_policy(self) -> RolloverPolicy:
        return RolloverPolicy(
            self.rollover_prepare_at,
            self.rollover_activate_at,
            dt.timedelta(hours=self.rollover_min_overlap_hours),
        )


def _check_fields(defaults: object, values: dict[str, Any], prefix: str) -> None:
    known = {f.name: getattr(defaults, f.name) for f in fields(defaults)}  # type: ignore[arg-type]
    for name, value in values.items():
        if name not in known:
            raise TypeError(f"unknown setting {prefix}{name!r}")
        default = known[name]
        if default is None:
            ok = value is None or isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise TypeError(f"{prefix}{name} must be {type(default).__name__}, not {value!r}")


@dataclass(frozen=True)
class Home:
    path: Path
    # the inventory's URL when this home must not follow FLEETPKI_DATABASE_URL (the fleet
    # simulator's own home: its devices never land in the operator's inventory)
    database: str | None = None

    @property
    def ca_dir(self) -> Path:
        return self.path / "ca"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def passphrase_path(self) -> Path:
        return self.path / "ca-passphrase"

    @property
    def crl_files(self) -> CrlFiles:
        """The CRLs this home publishes: one per CA, a combined file, DER copies."""
        return CrlFiles(self.path / "crl")

    @property
    def crl_path(self) -> Path:
        """The issuing CA's CRL (PEM)."""
        return self.crl_files.pem("issuing")

    @property
    def combined_crl_path(self) -> Path:
        """Every CA's current CRL in one PEM file (nginx, openssl, Java, Mosquitto)."""
        return self.crl_files.combined

    @property
    def database_url(self) -> str:
        if self.database is not None:
            return self.database
        return os.environ.get(DATABASE_ENV) or self.sqlite_url

    @property
    def sqlite_url(self) -> str:
        """The default inventory: SQLite in the home."""
        return f"sqlite:///{self.path / 'inventory.db'}"

    @staticmethod
    def actor() -> str:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return f"cli:{user}"

    def ensure(self) -> None:
        refuse_shared_path(self.path, "home")
        ensure_dir(self.path, 0o700)

    def has_ca(self) -> bool:
        return self.config_path.exists()

    def config(self) -> HomeConfig:
        refuse_shared_path(self.path, "home")
        try:
            raw = read_regular(self.config_path, MAX_CONFIG_BYTES, "config file")
        except FileNotFoundError:
            raise NotFound(
                f"no CA in {self.path}; run 'fleetpki ca init' first (or set --home / {HOME_ENV})"
            ) from None
        except OSError as exc:
            raise os_error(exc, f"cannot read {self.config_path}") from None
        try:
            return HomeConfig.from_json(json.loads(raw.decode("utf-8")))
        except RecursionError:
            raise InvalidInput(
                f"{self.config_path} is not a valid fleetpki config: nested too deeply"
            ) from None
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"{self.config_path} is not a valid fleetpki config: {exc}"
            ) from None

    def write_config(self, config: HomeConfig) -> None:
        atomic_write(
            self.config_path, (json.dumps(config.to_json(), indent=2) + "\n").encode(), 0o600
        )

    def passphrase(self) -> bytes:
        """The CA key passphrase: ``FLEETPKI_CA_PASSPHRASE``, else the home's generated file."""
        env = os.environ.get(PASSPHRASE_ENV)
        if env:
            return env.encode("utf-8", "surrogateescape")  # the bytes as given, whatever the locale
        value = self._stored_passphrase()
        if value is None:
            raise OperatorError(
                f"the CA key passphrase is not available: set {PASSPHRASE_ENV} "
                f"(no {self.passphrase_path.name} file in the home, or it is empty)"
            )
        return value

    def root_passphrase(self) -> bytes:
        """The root key's passphrase: ``FLEETPKI_ROOT_PASSPHRASE`` when the root has one of
        its own (set at ``ca init``), else the CA passphrase."""
        env = os.environ.get(ROOT_PASSPHRASE_ENV)
        if env:
            return env.encode("utf-8", "surrogateescape")
        return self.passphrase()

    def init_root_passphrase(self) -> bytes | None:
        """For ``ca init``: the root's own passphrase, when one is set (at least 12
        characters), else None (the root key shares the CA passphrase)."""
        env = os.environ.get(ROOT_PASSPHRASE_ENV)
        if not env:
            return None
        value = env.encode("utf-8", "surrogateescape")
        if len(value) < MIN_PASSPHRASE:
            raise InvalidInput(
                f"{ROOT_PASSPHRASE_ENV} is too short: use at least {MIN_PASSPHRASE} characters"
            )
        return value

    def _stored_passphrase(self) -> bytes | None:
        """The home's passphrase file, or None when there is none (or it is empty)."""
        from pki.files import read_regular

        try:  # a regular file, up to 4 KiB: a FIFO or /dev/zero would hang or never end
            value = read_regular(self.passphrase_path, 4096, "passphrase file").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.passphrase_path}: {exc.strerror}") from None
        return value or None

    def init_passphrase(self) -> bytes | None:
        """For ``ca init``, before anything is written: the passphrase the new CA keys get
        (``FLEETPKI_CA_PASSPHRASE`` or a passphrase file already in the home, at least 12
        characters, and the same when both are there), or None: make one with
        ``new_passphrase``."""
        env = os.environ.get(PASSPHRASE_ENV)
        stored = self._stored_passphrase()
        if env:
            value = env.encode("utf-8", "surrogateescape")
            if len(value) < MIN_PASSPHRASE:
                raise InvalidInput(
                    f"{PASSPHRASE_ENV} is too short: use at least {MIN_PASSPHRASE} characters"
                )
            if stored is not None and stored != value:
                raise InvalidInput(
                    f"{self.passphrase_path} holds another passphrase than {PASSPHRASE_ENV}; "
                    "remove the file or unset the variable, so the CA keys have only one"
                )
            return value
        if stored is not None and len(stored) < MIN_PASSPHRASE:
            raise InvalidInput(
                f"the passphrase in {self.passphrase_path} is too short: "
                f"use at least {MIN_PASSPHRASE} characters"
            )
        return stored

    def new_passphrase(self) -> bytes:
        """A new random passphrase, stored 0600 in the home (never over an existing file)."""
        value = secrets.token_urlsafe(32).encode()
        atomic_write(self.passphrase_path, value + b"\n", 0o600, overwrite=False)
        return value
