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


def without_faketime(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without libfaketime: for the programs that must
    keep the real time (moto_server)."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if not k.startswith("FAKETIME")}
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "faketime" not in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def faketime_only(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """libfaketime's settings, when it is in use (``scripts/test --shift``): the stand-ins
    then see the same shifted time as the CA that signed their certificates. Only the
    libfaketime entries of ``LD_PRELOAD`` pass; nothing at all without ``FAKETIME``."""
    source = os.environ if environ is None else environ
    if "FAKETIME" not in source:
        return {}
    env = {k: v for k, v in source.items() if k.startswith("FAKETIME")}
    preload = [p for p in source.get("LD_PRELOAD", "").split(":") if "faketime" in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env
