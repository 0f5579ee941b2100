"""The environment fleetpki gives the programs it starts: an allow-list, never its own.

fleetpki's environment can hold the CA passphrase, AWS credentials and database URLs with
passwords. A child that outlives the command (the local stand-ins) or that fleetpki does
not control (a server's reload command) gets only harmless variables, so no other process
of the same user can read those secrets from ``/proc/PID/environ``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

BASE = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def child_env(keep: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``BASE`` plus the named ``keep`` variables, where set."""
    source = os.environ if environ is None else environ
    return {name: source[name] for name in (*BASE, *keep) if name in source}
