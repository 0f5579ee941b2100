"""Where fleetpki's log records go: one-shot commands print warnings as one line each,
the daemon logs with timestamps. Log text from outside (device messages, names) is
escaped like every other message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pki.text import escape_controls

ROOT = "fleetpki"


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = escape_controls(record.getMessage())
        if record.exc_info and record.levelno >= logging.ERROR:
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            text += f" ({kind})"
        return self.prefix(record) + text

    def prefix(self, record: logging.LogRecord) -> str:
        return f"fleetpki: {record.levelname.lower()}: "


class _Timestamped(_OneLine):
    def prefix(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname} {record.name}: "


def _install(formatter: logging.Formatter, level: int) -> None:
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "fleetpki", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.fleetpki = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def for_commands() -> None:
    """One-shot commands: warnings and errors, one line each (``fleetpki: warning: …``).
    The database driver's own warnings about a connection already lost ("error ignored
    terminating …") stay out: the command's error says it in one line."""
    _install(_OneLine(), logging.WARNING)
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def for_daemon() -> None:
    """The rotation daemon: what it does, with timestamps; the scheduler's own chatter
    (a line per job run) stays out."""
    _install(_Timestamped(), logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


@contextmanager
def quiet(name: str) -> Iterator[None]:
    """Within the block, ``name`` logs errors only: for commands that report every
    outcome themselves (a failure would otherwise show twice)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)
