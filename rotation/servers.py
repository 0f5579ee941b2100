"""Server certificates fleetpki keeps current on disk: each target is a folder that a server
(Mosquitto, nginx, the HTTPS stand-in...) reads its certificate and key from.

Layout, so that a replacement is atomic for the key *and* the certificate together::

    DIR/current -> versions/<serial>        (a symlink, swapped with one rename)
    DIR/versions/<serial>/key.pem           (0600, made here: the server is ours)
                         /cert.pem, chain.pem, fullchain.pem

The server is configured with ``DIR/current/fullchain.pem`` and ``DIR/current/key.pem``.
After the swap the target's reload command runs (no shell); the replaced certificate is
revoked as superseded after the grace period, like a device's. The three newest versions
are kept for rollback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.childenv import child_env
from pki.errors import (
    AlreadyExists,
    BackendError,
    FleetPkiError,
    InvalidInput,
    NotFound,
    StorageError,
)
from pki.files import atomic_write, check_writable_folder, ensure_dir, fsync_path
from pki.issue.delivery import CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE, KEY_FILE, make_key_and_csr
from pki.issue.issuer import Issuer
from pki.model import IssuedCertificate, IssueRequest, KeyType
from rotation import store
from rotation.store import server_targets

KEEP_VERSIONS = 3
log = logging.getLogger("fleetpki.rotation")
RELOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServerTarget:
    name: str
    directory: Path
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    key_type: str = KeyType.EC_P256.value
    days: int = 90
    reload_command: tuple[str, ...] = ()
    serial: str = ""  # the certificate installed now
    group: str = ""  # a group that may read the key (a server that drops privileges)

    @classmethod
    def from_options(
        cls,
        name: str,
        directory: Path,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        reload_command: str | None = None,
        **settings: Any,
    ) -> ServerTarget:
        """A target as an operator names it: NAME is the DNS name (or the address, when it
        is one) unless names are given; the reload command is split like a shell line
        (it runs without a shell)."""
        import ipaddress
        import shlex

        try:
            addresses = tuple(str(ipaddress.ip_address(a)) for a in ips)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if not dns:
            try:
                addresses = (str(ipaddress.ip_address(name)), *addresses)
            except ValueError:
                dns = (name,)
        try:
            command = tuple(shlex.split(reload_command)) if reload_command else ()
        except ValueError as exc:
            raise InvalidInput(f"--reload-command: {exc}") from None
        return cls(name=name, directory=directory.absolute(), dns=dns, ips=addresses,
                   reload_command=command, **settings)  # fmt: skip

    @property
    def current(self) -> Path:
        return self.directory / "current"

    def spec(self) -> str:
        return json.dumps(
            {
                "dns": list(self.dns),
                "ips": list(self.ips),
                "key_type": self.key_type,
                "days": self.days,
                "reload_command": list(self.reload_command),
                "group": self.group,
            },
            sort_keys=True,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": str(self.directory),
            "dns": list(self.dns),
            "ips": list(self.ips),
            "key_type": self.key_type,
            "days": self.days,
            "reload_command": list(self.reload_command),
            "serial": self.serial,
            "group": self.group,
        }


def _target(row: Any) -> ServerTarget:
    spec = json.loads(row.spec)
    return ServerTarget(
        name=row.name,
        directory=Path(row.directory),
        dns=tuple(spec["dns"]),
        ips=tuple(spec["ips"]),
        key_type=spec["key_type"],
        days=int(spec["days"]),
        reload_command=tuple(spec["reload_command"]),
        serial=row.serial,
        group=str(spec.get("group", "")),
    )


def targets(engine: Engine) -> list[ServerTarget]:
    with store.transaction(engine) as conn:
        rows = conn.execute(sa.select(server_targets).order_by(server_targets.c.name))
        return [_target(r) for r in rows]


def target(engine: Engine, name: str) -> ServerTarget:
    for t in targets(engine):
        if t.name == name:
            return t
    raise NotFound(f"no server target {name!r}; see 'fleetpki rotation server list'")


def check_reload_command(command: Sequence[str]) -> None:
    if command and shutil.which(command[0]) is None:
        raise InvalidInput(f"reload command {command[0]!r} is not an executable on PATH")


# ------------------------------------------------------------------------------ on disk


def group_id(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidInput(f"no group {group!r} on this machine") from None


def install(directory: Path, key_pem: bytes, issued: IssuedCertificate, group: str = "") -> Path:
    """Write a new version and point ``current`` at it with one rename. Returns the
    version folder. A failure before the rename leaves ``current`` as it was. With
    ``group``, the folders and the key are readable by that group (0750, 0640)."""
    gid = group_id(group)
    private, folder = (0o600, 0o700) if gid is None else (0o640, 0o750)
    versions = directory / "versions"
    ensure_dir(versions, folder)
    if gid is not None:  # the server's group must be able to reach versions/ at all
        try:
            info = directory.stat()
            if info.st_gid != gid and not info.st_mode & 0o001:
                os.chown(directory, -1, gid)
            if not info.st_mode & 0o010:
                directory.chmod(info.st_mode & 0o7777 | 0o050)
        except OSError as exc:
            raise StorageError(
                f"cannot give {directory} to group {group}: {exc.strerror}"
            ) from None
    version = versions / issued.record.serial_hex
    try:
        ensure_dir(version, 0o700)
        atomic_write(version / KEY_FILE, key_pem, 0o600)  # the group gets it only once set
        if gid is not None:
            for path in (versions, version, version / KEY_FILE):
                os.chown(path, -1, gid)
                path.chmod(folder if path.is_dir() else private)
        atomic_write(version / CERT_FILE, issued.cert_pem, 0o644)
        atomic_write(version / CHAIN_FILE, issued.chain_pem, 0o644)
        atomic_write(version / FULLCHAIN_FILE, issued.fullchain_pem, 0o644)
    except OSError as exc:
        shutil.rmtree(version, ignore_errors=True)  # no key left behind unused
        raise StorageError(f"cannot install into {version}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    link = directory / "current"
    temporary = directory / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        os.symlink(Path("versions") / version.name, temporary)
        os.replace(temporary, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        shutil.rmtree(version, ignore_errors=True)
        raise StorageError(f"cannot switch {link} to the new certificate: {exc.strerror}") from None
    # swapped: from here on nothing may undo it or fail the installation
    try:
        fsync_path(directory)
    except OSError as exc:
        log.warning("could not flush %s to disk: %s", directory, exc.strerror)
    with contextlib.suppress(OSError):
        _prune(versions, keep=version.name)
    return version


def _prune(versions: Path, keep: str) -> None:
    found = sorted(
        (p for p in versions.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in found[KEEP_VERSIONS:]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def reload(target: ServerTarget) -> None:
    if not target.reload_command:
        return
    command = target.reload_command
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=RELOAD_TIMEOUT,
            check=False,
            env=_reload_env(),
        )
    except subprocess.TimeoutExpired:
        raise BackendError(
            f"reload {target.name}", "server", f"{command[0]} ran over {RELOAD_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise BackendError(
            f"reload {target.name}", "server", f"{command[0]}: {exc.strerror or exc}"
        ) from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = f": {lines[-1][:200]}" if lines else ""
        raise BackendError(
            f"reload {target.name}",
            "server",
            f"{target.reload_command[0]} exited {done.returncode}{detail}",
        )


def _reload_env() -> dict[str, str]:
    """What the reload command sees: a few harmless variables, none of fleetpki's secrets
    (the CA passphrase, AWS credentials, tokens...)."""
    return child_env(keep=("SYSTEMD_PAGER",))


# ------------------------------------------------------------------------------ issuing


def issue_for(issuer: Issuer, target: ServerTarget, actor: str) -> tuple[bytes, IssuedCertificate]:
    """A key made here and a certificate for it, with the target's names and lifetime."""
    key_pem, csr_pem = make_key_and_csr(KeyType(target.key_type), target.name)
    request = IssueRequest(
        profile="server",
        name=target.name,
        csr_pem=csr_pem,
        dns_names=target.dns,
        ip_addresses=tuple(ipaddress.ip_address(a) for a in target.ips),
        days=target.days,
        actor=actor,
    )
    return key_pem, issuer.issue(request)


def add(
    engine: Engine,
    issuer: Issuer,
    target: ServerTarget,
    now: dt.datetime,
    actor: str,
    *,
    force: bool,
    reload_now: bool = True,
) -> tuple[ServerTarget, str | None]:
    """Issue the first certificate into the folder and record the target; then, with
    ``reload_now``, run the reload command. A failing first reload is a warning, returned
    (the server may not run yet: the target stays added, its certificate in place)."""
    check_reload_command(target.reload_command)
    exists = any(t.name == target.name for t in targets(engine))
    if exists and not force:
        raise AlreadyExists(f"server target {target.name!r} exists; --force replaces it")
    if target.current.exists() and not force:
        raise AlreadyExists(f"{target.current} exists; --force replaces it")
    group_id(target.group)  # an unknown group is refused before anything is issued
    check_writable_folder(target.directory, "--dir")  # and so is a folder we cannot use
    key_pem, issued = issue_for(issuer, target, actor)
    try:
        install(target.directory, key_pem, issued, target.group)
    except BaseException:
        from pki.model import RevocationReason
        from pki.revocation.revoke import revoke

        # never in use: revoked, so no certificate stays active without an owner
        revoke(issuer.inventory, issuer.ca, issuer.clock, issued.record.serial,
               RevocationReason.CESSATION_OF_OPERATION, actor)  # fmt: skip
        raise
    placed = ServerTarget(**{**target.__dict__, "serial": issued.record.serial_hex})
    with store.transaction(engine) as conn:
        conn.execute(server_targets.delete().where(server_targets.c.name == target.name))
        conn.execute(
            server_targets.insert().values(
                name=placed.name,
                directory=str(placed.directory),
                spec=placed.spec(),
                serial=placed.serial,
                added_at=now,
                updated_at=now,
            )
        )
    if not reload_now or not placed.reload_command:
        return placed, None
    try:
        reload(placed)
    except FleetPkiError as exc:
        return placed, f"the first reload failed ({exc}); the certificate is in place"
    return placed, None


def record_serial(conn: Connection, name: str, serial: str, now: dt.datetime) -> None:
    """Inside the caller's transaction (with the rotation's own row)."""
    conn.execute(
        server_targets.update()
        .where(server_targets.c.name == name)
        .values(serial=serial, updated_at=now)
    )


def remove(engine: Engine, name: str) -> ServerTarget:
    found = target(engine, name)
    with store.transaction(engine) as conn:
        conn.execute(server_targets.delete().where(server_targets.c.name == name))
    return found
