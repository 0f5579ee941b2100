"""The inventory's schema, made and changed by Alembic migrations only.

Each package keeps its own migrations, as a branch of one history: ``pki`` (the
certificates, the audit log, CRL numbers, ledgers) here, ``rotation`` and ``devices`` in
their packages, found through the ``fleetpki.migrations`` entry-point group (``pki`` never
imports them). ``fleetpki db upgrade`` runs what is missing; every other command first
checks that the inventory is at the revisions this fleetpki expects (``require_current``:
one query, without importing Alembic) and otherwise refuses with one line naming
``fleetpki db upgrade``. A database made before migrations (tables made at start-up) is
recognised by its tables and stamped at each branch's baseline before it is upgraded.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.errors import NotFound, OperatorError, StorageError
from pki.storage.database import open_engine, redact_url, why

if TYPE_CHECKING:
    from alembic.config import Config

GROUP = "fleetpki.migrations"
VERSION_TABLE = "alembic_version"
UPGRADE_HINT = "run 'fleetpki db upgrade'"


@dataclass(frozen=True)
class Branch:
    """One package's migrations: where they are, the revision this code needs (head), the
    one that matches the schema made before migrations (baseline), and a table of that
    schema (its presence in a database without a version table means: stamp baseline)."""

    name: str
    versions: Path
    head: str
    baseline: str
    legacy_table: str


PKI = Branch(
    name="pki",
    versions=Path(__file__).parent / "migrations" / "versions",
    head="pki_0006",
    baseline="pki_0001",
    legacy_table="certificates",
)


def branches() -> list[Branch]:
    """``pki``'s branch and every package's registered under ``fleetpki.migrations``."""
    from pki import plugins

    found = [PKI]
    for ep in plugins.entry_points(GROUP):
        branch = ep.load()
        if not isinstance(branch, Branch):
            raise StorageError(f"migration entry point {ep.name} is not a Branch")
        found.append(branch)
    return found


def current(engine: Engine) -> set[str] | None:
    """The revisions the database is at; None when it has no version table."""
    try:
        with engine.connect() as conn:
            try:  # one query on the path every command takes (no reflection: it is slower)
                with conn.begin_nested() if conn.dialect.name == "postgresql" else nullcontext():
                    rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
                    return {str(r[0]) for r in rows}
            except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
                if exc.connection_invalidated:
                    raise  # the server went away: that is the error to report
                # no such table, or another failure: reflection tells which
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
            return {str(r[0]) for r in rows}
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(
            f"cannot open the inventory at {redact_url(str(engine.url))}: {why(exc)}"
        ) from None


def _tables(engine: Engine) -> set[str]:
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(
            f"cannot open the inventory at {redact_url(str(engine.url))}: {why(exc)}"
        ) from None


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this fleetpki's migrations."""

    revisions: frozenset[str]  # what it is at (empty: no version table)
    expected: frozenset[str]  # this fleetpki's heads
    legacy: bool  # tables from before migrations, no version table
    empty: bool  # no fleetpki table at all

    @property
    def at_head(self) -> bool:
        return self.revisions == self.expected

    @property
    def newer(self) -> bool:
        """Revisions this fleetpki does not know: made by a newer one."""
        return bool(self.revisions - self.expected) and not self.legacy

    def describe(self) -> str:
        if self.empty:
            return "empty (no fleetpki schema)"
        if self.legacy:
            return "made before schema migrations"
        return ", ".join(sorted(self.revisions)) or "no revision"


def state(engine: Engine, known: list[Branch] | None = None) -> SchemaState:
    known = known if known is not None else branches()
    expected = frozenset(b.head for b in known)
    revisions = current(engine)
    if revisions is None:
        tables = _tables(engine)
        legacy = any(b.legacy_table in tables for b in known)
        return SchemaState(frozenset(), expected, legacy, not legacy)
    return SchemaState(frozenset(revisions), expected, False, False)


def require_current(engine: Engine) -> None:
    """Refuse (one line) an inventory whose schema is not this fleetpki's."""
    found = state(engine)
    if found.at_head:
        return
    where = redact_url(str(engine.url))
    if found.empty:
        raise OperatorError(
            f"the inventory at {where} has no fleetpki schema: run 'fleetpki ca init' for a "
            "new CA, or point FLEETPKI_DATABASE_URL at this home's inventory"
        )
    if found.newer:
        raise OperatorError(
            f"the inventory at {where} is at schema {found.describe()}, newer than this "
            "fleetpki knows; upgrade fleetpki"
        )
    raise OperatorError(
        f"the inventory at {where} is at schema {found.describe()}, older than this "
        f"fleetpki's; {UPGRADE_HINT} (back it up first)"
    )


def upgrade(engine: Engine) -> list[str]:
    """Run every migration the database lacks (stamping a pre-migration database at the
    baselines of the branches whose tables it has); returns the revisions now current.
    Refuses a database newer than this fleetpki."""
    from alembic import command
    from alembic.util import exc as alembic_errors

    known = branches()
    found = state(engine, known)
    if found.newer:
        raise OperatorError(
            f"the inventory at {redact_url(str(engine.url))} is at schema "
            f"{found.describe()}, newer than this fleetpki knows; upgrade fleetpki"
        )
    try:
        with engine.begin() as conn:
            config = _config(conn, known)
            if found.legacy:
                tables = set(sa.inspect(conn).get_table_names())
                baselines = [b.baseline for b in known if b.legacy_table in tables]
                command.stamp(config, baselines)
            command.upgrade(config, "heads")
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"upgrading the inventory failed: {why(exc)}") from None
    except alembic_errors.CommandError as exc:
        raise StorageError(f"upgrading the inventory failed: {exc}") from None
    return sorted(current(engine) or ())


def _config(conn: Connection, known: list[Branch]) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("version_locations", " ".join(str(b.versions) for b in known))
    config.set_main_option("path_separator", "space")
    config.attributes["connection"] = conn
    return config


# -- what ``fleetpki db`` does ---------------------------------------------------------------


def _existing(url: str, timeout: float | None = None) -> Engine:
    """An engine for an inventory that exists: a missing SQLite file is not made here."""
    if _missing_sqlite_file(url):
        raise NotFound(
            f"no inventory at {redact_url(url)}: 'fleetpki ca init' creates one (or set "
            "FLEETPKI_DATABASE_URL to the fleet's database)"
        )
    return open_engine(url, timeout)


def _missing_sqlite_file(url: str) -> bool:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return False  # open_engine says what is wrong with it
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return bool(database) and database != ":memory:" and not Path(database).exists()


def inspect_database(url: str) -> SchemaState:
    """``db current``: where the inventory at ``url`` stands (nothing written)."""
    engine = _existing(url)
    try:
        return state(engine)
    finally:
        engine.dispose()


# A migration may rewrite every row (pki_0004 fills in each certificate's key id): each of
# its statements gets at least this long, whatever FLEETPKI_DB_TIMEOUT says.
MIGRATION_TIMEOUT = 3600.0


def upgrade_database(url: str) -> tuple[SchemaState, list[str]]:
    """``db upgrade``: the state before, and the revisions after. An empty database is
    refused (``ca init`` makes the schema with the CA); so is a newer one."""
    from pki.storage.deadline import db_timeout

    engine = _existing(url, max(db_timeout(), MIGRATION_TIMEOUT))
    try:
        before = state(engine)
        if before.empty:
            raise OperatorError(
                f"the database at {redact_url(url)} has no fleetpki schema to upgrade: "
                "'fleetpki ca init' creates the inventory with its CA"
            )
        return before, upgrade(engine)
    finally:
        engine.dispose()
