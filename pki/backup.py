"""``fleetpki backup`` and ``restore``: a consistent copy of a home and its inventory.

A backup is a folder (0700) made all at once (written beside its name, then renamed):
``config.json``, ``ca/`` (the keys stay encrypted, 0600), ``crl/``, the SQLite inventory
copied with SQLite's online backup (consistent while fleetpki runs), and
``fleetpki-backup.json`` (what was copied, with SHA-256 digests). The CA passphrase file
is left out unless asked for: a backup holding both the keys and their passphrase is as
good as the keys in clear. A PostgreSQL inventory is backed up with ``pg_dump``; the
backup says how.

A restore checks the digests, makes a new home from the backup, and applies the
CRL-number rule: relying parties may hold CRLs numbered past the backup's (signed after
it was taken), so the inventory's CRL counter is moved past the highest number the
operator shows it (``published``: the CRL files being served now) and past the backup's
own files; a CRL with a number a relying party already has is never signed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from pki.errors import AlreadyExists, FleetPkiError, InvalidInput, StorageError
from pki.files import ensure_dir, fsync_path, os_error, read_limited
from pki.text import escape_controls

if TYPE_CHECKING:
    from pki.app import App

MANIFEST = "fleetpki-backup.json"
INVENTORY = "inventory.db"
PASSPHRASE = "ca-passphrase"  # noqa: S105 (a file name)
HOME_ITEMS = ("config.json", "ca", "crl")


@dataclass(frozen=True)
class BackupResult:
    path: Path
    files: int
    postgres_url: str | None  # the inventory is PostgreSQL: pg_dump it


@dataclass(frozen=True)
class RestoreResult:
    home: Path
    crl_numbers: dict[str, int]  # CA -> the number the next CRL goes past
    postgres: bool  # the backup's inventory was PostgreSQL: pg_restore it


def backup(app: App, dest: Path, *, with_passphrase: bool = False) -> BackupResult:
    home = app.home
    home.config()  # a home with a CA, or NotFound
    if dest.exists() or dest.is_symlink():
        raise AlreadyExists(f"{dest} already exists; give a new folder for the backup")
    ensure_dir(dest.parent, 0o700)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))  # 0700
    try:
        url = home.database_url
        postgres_url = None
        if url.startswith("sqlite:///"):
            _sqlite_copy(Path(url.removeprefix("sqlite:///")), work / INVENTORY)
        else:
            postgres_url = app.inventory().url
        items = list(HOME_ITEMS) + ([PASSPHRASE] if with_passphrase else [])
        for name in items:
            _copy(home.path / name, work / name)
        manifest = _manifest(app, work, postgres_url)
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for path in sorted(work.rglob("*")):
            fsync_path(path)
        os.rename(work, dest)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise os_error(exc, f"cannot write the backup {dest}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(dest, len(manifest["files"]), postgres_url)


def _sqlite_copy(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=15)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot copy the inventory {source}: {exc}") from None


def _copy(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        target.mkdir(mode=0o700)
        for child in sorted(source.iterdir()):
            if child.name.startswith("."):  # lock and temporary files
                continue
            _copy(child, target / child.name)
    elif source.is_file() and not source.is_symlink():
        mode = source.stat().st_mode & 0o644  # a private file (0600) stays private
        _write_new(target, source.read_bytes(), mode)


def _write_new(target: Path, data: bytes, mode: int) -> None:
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(app: App, work: Path, postgres_url: str | None) -> dict[str, Any]:
    files = {
        str(p.relative_to(work)): _digest(p) for p in sorted(work.rglob("*")) if p.is_file()
    }
    crl_files = app.home.crl_files
    return {
        "format": 1,
        "created_at": app.now().isoformat(timespec="seconds"),
        "hierarchy_id": app.home.config().hierarchy_id,
        "inventory": "postgresql" if postgres_url else "sqlite",
        "crl_numbers": {w: crl_files.number(w) for w in ("issuing", "root")},
        "files": files,
    }


def read_manifest(source: Path) -> dict[str, Any]:
    """The backup's manifest, every file checked against its digest."""
    problem = InvalidInput(f"{source} is not a fleetpki backup (no readable {MANIFEST})")
    try:
        manifest = json.loads(read_limited(source / MANIFEST, 1 << 20, "backup manifest"))
    except (ValueError, RecursionError):
        raise problem from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise problem
    for name, digest in files.items():
        path = source / name
        if not _allowed(name) or not _plain_file(source, name) or _digest(path) != digest:
            raise InvalidInput(
                f"backup {source} is damaged: {escape_controls(name)} is missing, changed, "
                "a link, or not a file a backup holds"
            )
    return dict(manifest)


def _allowed(name: str) -> bool:
    """The names a backup may hold: the home's files, one level under ca/ and crl/."""
    parts = Path(name).parts
    if len(parts) == 1:
        return name in ("config.json", INVENTORY, PASSPHRASE, MANIFEST)
    return len(parts) == 2 and parts[0] in ("ca", "crl") and not parts[1].startswith(".")


def _plain_file(source: Path, name: str) -> bool:
    """A regular file reached without following a symlink on the way."""
    import stat

    probe = source
    for part in Path(name).parts:
        probe = probe / part
        try:
            info = probe.lstat()
        except OSError:
            return False
        if stat.S_ISLNK(info.st_mode):
            return False
    return stat.S_ISREG(info.st_mode)


def restore(app: App, source: Path, published: Sequence[Path] = ()) -> RestoreResult:
    """Make ``app``'s home (which must not exist, or be an empty folder) from ``source``."""
    target = app.home.path
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise AlreadyExists(f"{target} is not empty; restore into a new home")
    manifest = read_manifest(source)
    postgres = manifest.get("inventory") == "postgresql"
    if not postgres and not app.home.database_url.startswith("sqlite:///"):
        raise InvalidInput(
            "this backup holds a SQLite inventory; unset FLEETPKI_DATABASE_URL to restore it "
            "into the new home"
        )
    if postgres:
        _require_restored_database(app.home.database_url)
    ensure_dir(target.parent, 0o700)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in manifest["files"]:
            if name == MANIFEST:
                continue
            ensure_dir((work / name).parent, 0o700)
            private = name in ("config.json", INVENTORY, PASSPHRASE) or name.endswith(".key.pem")
            _write_new(work / name, (source / name).read_bytes(), 0o600 if private else 0o644)
        if target.exists():
            target.rmdir()
        os.rename(work, target)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise os_error(exc, f"cannot restore into {target}") from None
    return RestoreResult(target, resync_crl_numbers(app, published), postgres)


def _require_restored_database(url: str) -> None:
    """A PostgreSQL backup: its database must be back (pg_restore) before the home is,
    so that the CRL-number rule can be applied to it."""
    from pki.storage import Inventory

    if url.startswith("sqlite:///"):
        raise InvalidInput(
            "this backup's inventory is PostgreSQL: pg_restore it, point "
            "FLEETPKI_DATABASE_URL at it, then run restore"
        )
    try:
        Inventory.open(url).close()
    except FleetPkiError as exc:
        raise InvalidInput(
            f"this backup's inventory is PostgreSQL and FLEETPKI_DATABASE_URL does not hold it "
            f"yet ({exc}): pg_restore it there first, then run restore"
        ) from None


def resync_crl_numbers(app: App, published: Sequence[Path]) -> dict[str, int]:
    """Move each CA's CRL counter past the highest number of its CRLs in ``published``
    and in the home's own files (recorded, audited as 'crl-resync')."""
    from pki.storage import AuditEvent

    chain = app.ca().chain()
    inventory, now = app.inventory(), app.now()
    crls = [_load_crl(p) for p in published]
    moved: dict[str, int] = {}
    for which, cert in (("issuing", chain[0]), ("root", chain[-1])):
        issuer = cert.subject.rfc4514_string()
        seen = [_number(c) for c in crls if c.issuer == cert.subject]
        own = app.home.crl_files.number(which)
        highest = max([n for n in [*seen, own] if n is not None], default=0)
        if highest <= inventory.latest_crl_number(issuer):
            continue
        with inventory.transaction() as conn:
            inventory.record_crl(conn, issuer, highest, now, now, 0, now)
            inventory.audit(conn, [AuditEvent(now, app.actor, "crl-resync", None,
                                              {"ca": which, "past": highest})])  # fmt: skip
        moved[which] = highest
    return moved


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = read_limited(path, 64 << 20, "CRL file")
    try:
        return (
            x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        )
    except ValueError:
        raise InvalidInput(f"{path} is not a CRL (PEM or DER)") from None


def _number(crl: x509.CertificateRevocationList) -> int | None:
    from pki.revocation.crl import crl_number

    try:
        return crl_number(crl)
    except x509.ExtensionNotFound:
        return None
