"""Where the stand-ins keep their state in a home: a module without imports, so that a
command can tell whether stand-ins may run before it loads them."""

from __future__ import annotations

from pathlib import Path


def dev_dir(home: Path) -> Path:
    return home / "dev"


def state_file(home: Path) -> Path:
    """``HOME/dev/state.json``: what ``dev up`` started (0600)."""
    return dev_dir(home) / "state.json"
