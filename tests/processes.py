"""What only the tests need to start processes: a clock behind the test's (libfaketime).
Spawning, waiting until ready and stopping are ``pki.processes``, shared with the
stand-ins and the benchmarks."""

from __future__ import annotations

import os
import re
from pathlib import Path


def faketime_env(seconds_behind: int) -> dict[str, str]:
    """This environment with the clock ``seconds_behind`` the test's clock (which is
    shifted already under ``scripts/test --shift``): libfaketime's offset is composed."""
    env = dict(os.environ)
    offset = _offset_seconds(env.get("FAKETIME", "")) - seconds_behind
    env["FAKETIME"] = f"{offset:+d}"
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    if "faketime" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(filter(None, [_libfaketime(), env.get("LD_PRELOAD")]))
    return env


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


def _offset_seconds(value: str) -> int:
    match = re.fullmatch(r"([+-]?\d+)([smhdy]?)", value.strip())
    return int(match.group(1)) * _UNITS[match.group(2)] if match else 0


def _libfaketime() -> str:
    for pattern in ("*/faketime/libfaketimeMT.so.1", "*/faketime/libfaketime.so.1"):
        for candidate in sorted(Path("/usr/lib").glob(pattern)):
            return str(candidate)
    raise FileNotFoundError("libfaketime is not installed (Debian package faketime)")
