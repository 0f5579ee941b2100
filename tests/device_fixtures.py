"""Shared helpers for the device-side tests: a home with a CA, devices and running
stand-ins, driven through the real CLI (``pki.cli.main``) and real clients."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pki.clock import Clock, FixedClock, SystemClock
from tests.helpers import run_cli


def fleetpki(home: Path, *argv: Any, clock: Clock | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process on ``home``; (exit code, stdout, stderr)."""
    result = run_cli(["--home", home, *argv], clock=clock)
    return result.code, result.out, result.err


def ok(home: Path, *argv: Any, clock: Clock | None = None) -> str:
    code, out, err = fleetpki(home, *argv, clock=clock)
    assert code == 0, err
    return out


@dataclass(frozen=True)
class Stand:
    home: Path
    root: Path
    ports: dict[str, Any]

    @property
    def mqtt_port(self) -> int:
        return int(self.ports["mqtt"]["port"])

    @property
    def topic_prefix(self) -> str:
        return str(self.ports["mqtt"]["topic_prefix"])

    @property
    def https_port(self) -> int:
        return int(self.ports["https"]["port"])

    @property
    def ca_file(self) -> Path:
        return Path(self.ports["ca_file"])

    @property
    def access_log(self) -> Path:
        return Path(self.ports["access_log"])

    @property
    def mosquitto_log(self) -> Path:
        return Path(self.ports["mosquitto_log"])

    def device(self, name: str) -> Path:
        return self.root / name

    def access_entries(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.access_log.read_text().splitlines() if x.strip()]

    def serial(self, thing: str) -> str:
        return str(json.loads(ok(self.home, "list", "--thing", thing, "--json"))[0]["serial"])


def make_home(root: Path, devices: Sequence[str], expired: Sequence[str] = ()) -> Path:
    """A CA created 60 days ago (so that an already expired certificate can be issued)
    and device certificates with keys in ROOT/<name>/."""
    home = root / "home"
    past = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
    ok(home, "ca", "init", clock=past)
    for name in devices:
        ok(home, "issue", "device", name, "--generate-key", "--out", root / name)
    for name in expired:
        ok(
            home,
            "issue",
            "device",
            name,
            "--generate-key",
            "--days",
            "5",
            "--out",
            root / name,
            clock=past,
        )
    return home


def dev_up(home: Path, root: Path) -> Stand:
    ports = json.loads(ok(home, "dev", "up", "--json", clock=SystemClock()))
    return Stand(home, root, ports)


@contextlib.contextmanager
def running_stand(home: Path, root: Path) -> Iterator[Stand]:
    """``dev up`` with its own moto_server (AWS_ENDPOINT_URL unset meanwhile), then
    ``dev down``."""
    saved = os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        stand = dev_up(home, root)
        try:
            yield stand
        finally:
            ok(home, "dev", "down")
    finally:
        if saved is not None:
            os.environ["AWS_ENDPOINT_URL"] = saved


def mqtt_args(stand: Stand, device: Path | None) -> list[str]:
    args = ["-h", "127.0.0.1", "-p", str(stand.mqtt_port), "--cafile", str(stand.ca_file)]
    if device is not None:
        args += ["--cert", str(device / "fullchain.pem"), "--key", str(device / "key.pem")]
    return args


def mosquitto_pub(
    stand: Stand, device: Path | None, topic: str, message: str = "hello"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            *mqtt_args(stand, device),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def curl(stand: Stand, device: Path | None) -> subprocess.CompletedProcess[str]:
    args = ["curl", "-sS", "--max-time", "20", "--cacert", str(stand.ca_file)]
    if device is not None:
        args += ["--cert", str(device / "fullchain.pem"), "--key", str(device / "key.pem")]
    args.append(f"https://localhost:{stand.https_port}/whoami")
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
