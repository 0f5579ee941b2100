"""Every database call has a deadline: no command waits forever on a database.

``FLEETPKI_DB_TIMEOUT`` (seconds, default 15) bounds each wait:

- SQLite: the wait for another writer's lock (``busy_timeout``);
- PostgreSQL: connecting (libpq's ``connect_timeout``), and each statement and COMMIT on
  the client side. A server that stops answering — or a stalled network or proxy, which
  the server's own ``statement_timeout`` never hears of and whose kernel answers TCP
  keepalives — is cut off when the deadline passes: a watchdog shuts the connection's
  socket down, the driver's blocked read returns, and the command fails with one line
  saying the database did not answer in time.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pki.errors import InvalidInput, StorageError

TIMEOUT_ENV = "FLEETPKI_DB_TIMEOUT"
DEFAULT_TIMEOUT = 15.0
_WATCH = "fleetpki_deadline"


def db_timeout(environ: Mapping[str, str] | None = None) -> float:
    """The deadline of one database wait, in seconds (``FLEETPKI_DB_TIMEOUT``)."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 3600:  # nan fails too
        raise InvalidInput(f"{TIMEOUT_ENV} must be a number of seconds from 0.1 to 3600")
    return value


def connect_args(dialect: str, seconds: float) -> dict[str, Any]:
    if dialect == "postgresql":
        return {"connect_timeout": max(1, math.ceil(seconds))}
    return {}


class _Watch:
    """One connection's watchdog: armed around each statement and COMMIT."""

    def __init__(self, fd: int, seconds: float) -> None:
        self.fd = fd
        self.seconds = seconds
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        self.disarm()
        self._timer = threading.Timer(self.seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut(self) -> None:
        self.fired = True
        try:
            with socket.socket(fileno=os.dup(self.fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _disarming(call: Any, watch: _Watch) -> Any:
    def wrapped() -> Any:
        try:
            return call()
        finally:
            watch.disarm()

    return wrapped


def _watch(conn: Any) -> _Watch | None:
    try:
        watch = conn.info.get(_WATCH)
    except sa.exc.SQLAlchemyError:
        return None
    return watch if isinstance(watch, _Watch) else None


def install(engine: Engine, seconds: float) -> None:
    """Give every PostgreSQL connection of ``engine`` its client-side deadline."""
    if engine.dialect.name != "postgresql":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        watch = _Watch(dbapi_connection.pgconn.socket, seconds)
        record.info[_WATCH] = watch
        for name in ("commit", "rollback"):  # disarmed as soon as the server answered
            setattr(dbapi_connection, name, _disarming(getattr(dbapi_connection, name), watch))

    def arm(conn: Any, *_: Any) -> None:
        watch = _watch(conn)
        if watch is not None:
            watch.arm()

    def disarm(conn: Any, *_: Any) -> None:
        watch = _watch(conn)
        if watch is not None:
            watch.disarm()

    sa.event.listen(engine, "before_cursor_execute", arm)
    sa.event.listen(engine, "after_cursor_execute", disarm)
    sa.event.listen(engine, "commit", arm)
    sa.event.listen(engine, "rollback", arm)

    @sa.event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        watch = record.info.get(_WATCH) if record is not None else None
        if isinstance(watch, _Watch):
            watch.disarm()

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> BaseException | None:
        watch = _watch(context.connection) if context.connection is not None else None
        if watch is not None:
            watch.disarm()
            if watch.fired:
                return StorageError(
                    f"the database did not answer within {seconds:g} s ({TIMEOUT_ENV})"
                )
        return None
