"""The entry-point hooks: what a hook says, and what a broken one does, come back as
warnings; the work that called them stands."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pki import hooks
from tests.helpers import NOW


def _points(*values: str) -> list[EntryPoint]:
    return [EntryPoint(f"h{n}", v, hooks.STATUS_HOOKS) for n, v in enumerate(values)]


def test_a_hook_that_does_not_load_or_fails_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pki.plugins

    found = _points("no_such_module_here:nothing", "builtins:len", "os.path:basename")
    monkeypatch.setattr(pki.plugins, "entry_points", lambda group: found)
    query = hooks.StatusQuery(Path("/nonexistent"), object(), NOW)
    warnings = hooks.status_warnings(query)
    assert warnings[0].startswith("status hook h0: ModuleNotFoundError")
    assert warnings[1].startswith("status hook h1: TypeError")  # len(query): not a list
    assert warnings[2].startswith("status hook h2: TypeError")
    assert len(warnings) == 3
