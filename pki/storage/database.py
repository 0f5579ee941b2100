"""Opening a database and talking to it: URLs, SQLite settings, errors on one line, and
the statements every store shares (dialect-aware upserts, the fast batch INSERT)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pki.errors import InvalidInput, StorageError
from pki.storage.schema import UTC, UtcDateTime


def normalise_url(url: str) -> str:
    """``postgresql://`` without a driver means psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _private_sqlite_file(database: str | None) -> None:
    """Create a new SQLite inventory file 0600 (its -wal and -shm files get the same mode
    from SQLite): it names every device of the fleet, which is nobody else's business."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        fd = os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # a missing folder and the like: SQLite's own error says it better
    os.close(fd)


def _sqlite_pragmas(busy_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def open_engine(url: str, timeout: float | None = None) -> Engine:
    """An engine for ``url`` (a new SQLite file made 0600, WAL); every wait on the
    database bounded by ``timeout`` seconds (``FLEETPKI_DB_TIMEOUT`` when None: see
    ``pki.storage.deadline``). Nothing is read or written yet."""
    from pki.storage import deadline

    seconds = deadline.db_timeout() if timeout is None else timeout
    url = normalise_url(url)
    try:
        parsed = sa.engine.make_url(url)
        engine = sa.create_engine(
            parsed, connect_args=deadline.connect_args(parsed.get_backend_name(), seconds)
        )
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as exc:
        raise InvalidInput(f"cannot use database URL {redact_url(url)}: {why(exc)}") from None
    if engine.dialect.name == "sqlite":
        _private_sqlite_file(engine.url.database)
        sa.event.listen(engine, "connect", _sqlite_pragmas(round(seconds * 1000)))
    deadline.install(engine, seconds)
    return engine


@contextmanager
def writing(engine: Engine, what: str = "inventory") -> Iterator[Connection]:
    """A transaction; a database failure is one ``StorageError`` line naming ``what``."""
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.IntegrityError as exc:
        raise StorageError(f"{what} refused the write: {why(exc)}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"{what} write failed: {why(exc)}") from None


@contextmanager
def reading(engine: Engine, what: str = "inventory") -> Iterator[Connection]:
    try:
        with engine.connect() as conn:
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"{what} read failed: {why(exc)}") from None


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT with ``on_conflict_do_*`` for the connection's dialect (SQLite, PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise StorageError(f"unsupported database {conn.dialect.name!r}: use SQLite or PostgreSQL")


def insert_params(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
) -> tuple[str, list[tuple[Any, ...]]]:
    """The SQL and parameters of one driver-level ``executemany`` INSERT of ``rows``.

    The hot path of batch issuance: SQLAlchemy's per-row parameter processing costs more
    than the insert itself. Values are converted here the way the column types would
    convert them (see ``UtcDateTime``), so rows read back identically.
    """
    if not rows:
        return "", []
    names = list(rows[0])
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    # Our own column names, each checked against the table: never input.
    to_db = functools.partial(UTC.process_bind_param, dialect=conn.dialect)
    times = [i for i, name in enumerate(names) if isinstance(table.c[name].type, UtcDateTime)]
    columns = ", ".join(names)
    values = ", ".join([placeholder] * len(names))
    sql = f"INSERT INTO {table.name} ({columns}) VALUES ({values})"  # noqa: S608
    params: list[tuple[Any, ...]] = []
    for row in rows:
        if len(row) != len(names):
            raise ValueError(f"rows for {table.name} have different columns")
        value = list(row.values())
        for i in times:
            if value[i] is not None:
                value[i] = to_db(value[i])
        params.append(tuple(value))
    return sql, params


def why(exc: BaseException) -> str:
    """The first line of a database error (the driver's own words), for a one-line message."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    """A database URL fit for a message: the password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable URL>"
