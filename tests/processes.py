"""Processes the tests start (servers operators run, clients): spawn, wait until ready,
stop — every wait with a deadline, nothing left running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float = DEADLINE, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; the whole process group when it has one."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    log: Path,
    ready: Callable[[], bool],
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (its own process group, output in ``log``) until the block ends; the
    block starts once ``ready()`` holds. A process that dies early fails with its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
            return ready()

        wait_until(up, what=f"{what} ready")
        yield proc
    finally:
        stop(proc)


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
