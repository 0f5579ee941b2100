"""The processes fleetpki starts (the local stand-ins, moto_server) and the ones its tests
and benchmarks start: spawn, wait until ready, stop — every wait with a deadline,
nothing left running when a start fails.

One of each: ``free_port``, ``spawn``, ``wait_ready``, ``stop`` / ``terminate``, and
``start_moto`` for ``moto_server`` on a free loopback port (on the real clock: AWS keeps
the real time under ``scripts/test --shift``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pki.childenv import without_faketime
from pki.errors import BackendError

HOST = "127.0.0.1"
START_TIMEOUT = 30.0

Process = subprocess.Popen[bytes]


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (another program may take it before we bind: see
    ``on_a_free_port``)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool], *, timeout: float = START_TIMEOUT, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Process:
    """Start ``argv`` in a session of its own (a Ctrl-C at the terminal is not its), its
    output appended to ``log`` (or dropped), nothing on its standard input."""
    if log is None:
        return _popen(argv, subprocess.DEVNULL, env, cwd)
    with log.open("ab") as out:
        return _popen(argv, out, env, cwd)


def _popen(
    argv: Sequence[str], out: Any, env: Mapping[str, str] | None, cwd: Path | None
) -> Process:
    return subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def log_tail(log: Path | None, lines: int = 3) -> str:
    """The last ``lines`` of ``log`` on one line (for an error saying why a start failed)."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


def wait_ready(
    proc: Process,
    ready: Callable[[], bool],
    *,
    what: str,
    log: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until ``ready()`` holds while ``proc`` runs. A process that exits first, a
    deadline passed, or anything raised meanwhile (Ctrl-C) stops it; the failure to start
    is a ``BackendError`` with its log's tail."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is None and ready():
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except BaseException:
        stop(proc)
        raise
    why = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready"
    tail = log_tail(log)
    stop(proc)
    raise BackendError(
        "start", what, f"{why} within {timeout:.0f} s" + (f": {tail}" if tail else "")
    )


def stop(proc: Process, timeout: float = 10.0) -> None:
    """SIGTERM to the process's group, SIGKILL after ``timeout``; reaped either way."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def terminate(pid: int, timeout: float = 10.0) -> None:
    """Stop a process known only by its pid (a stand-in an earlier command started):
    SIGTERM, SIGKILL after ``timeout``; reaped when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll /proc
            if not Path(f"/proc/{pid}").exists():
                return
            done = 0
        if done == pid:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs and its command line mentions ``marker`` (pids are reused)."""
    if pid is None:
        return False
    try:
        cmdline = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return False
    return marker in cmdline


Started = TypeVar("Started")


def on_a_free_port(start: Callable[[], Started], attempts: int = 3) -> Started:
    """``start`` picks free ports and starts a listener on them; another program may take
    a port between the pick and the bind, so a start that failed for a port in use is
    tried again, with new ports, ``attempts`` times in all. Other failures are raised."""
    for attempt in range(attempts):
        try:
            return start()
        except BackendError as exc:
            if "in use" not in str(exc).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    log: Path,
    ready: Callable[[], bool],
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Process]:
    """``argv`` running until the block ends; the block starts once ``ready()`` holds."""
    proc = spawn(argv, log=log, env=env, cwd=cwd)
    try:
        wait_ready(proc, ready, what=what, log=log)
        yield proc
    finally:
        stop(proc)


# -- moto_server ------------------------------------------------------------------------------


def moto_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/moto-api/", timeout=1)  # noqa: S310 (http on loopback)
    except OSError:
        return False
    return True


def moto_argv(port: int) -> list[str]:
    return [str(Path(sys.executable).parent / "moto_server"), "-H", HOST, "-p", str(port)]


def start_moto(
    log: Path | None,
    env: Mapping[str, str] | None = None,
    argv: Callable[[int], list[str]] = moto_argv,
) -> tuple[Process, str]:
    """``moto_server`` (or ``argv(port)``: a patched one) on a free loopback port, on the
    real clock; returns the process and its endpoint URL once it answers."""

    def start() -> tuple[Process, str]:
        port = free_port()
        proc = spawn(argv(port), log=log, env=without_faketime(env))
        url = f"http://{HOST}:{port}"
        wait_ready(proc, lambda: moto_answers(url), what="moto_server", log=log)
        # the answer may have come from another program that took the port meanwhile:
        # ours then exits on its failed bind
        time.sleep(0.15)
        if proc.poll() is not None:
            raise BackendError("start", "moto_server", f"{HOST}:{port} is in use")
        return proc, url

    return on_a_free_port(start)


@contextlib.contextmanager
def moto_server(
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    argv: Callable[[int], list[str]] = moto_argv,
) -> Iterator[str]:
    """``start_moto`` for the length of a block; its endpoint URL."""
    proc, url = start_moto(log, env, argv)
    try:
        yield url
    finally:
        stop(proc)
