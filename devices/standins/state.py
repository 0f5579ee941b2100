"""What ``dev up`` started, where it keeps its files, and whether it still runs:
``HOME/dev/state.json`` (0600) records the processes, ports and broker passwords;
``HOME/dev/ports.json`` is the public part."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices import paths
from pki.errors import OperatorError
from pki.home import Home
from pki.processes import HOST, pid_alive

TOPIC_PREFIX = "things"
ADMIN_USER = "fleetpki-admin"
ROTATION_USER = "fleetpki-rotation"  # the rotation service (plays IoT Core's rules + Lambda)
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class DevState:
    """What ``dev up`` started; written to HOME/dev/state.json."""

    run_dir: str
    mqtt_port: int
    admin_port: int
    https_port: int
    mosquitto_pid: int
    https_pid: int
    moto_pid: int | None
    aws_endpoint_url: str | None
    admin_password: str = field(repr=False)
    topic_prefix: str = TOPIC_PREFIX
    rotation_password: str = field(default="", repr=False)
    pki_port: int | None = None  # plain HTTP: the CRLs and CA certificates config.json names

    @property
    def run(self) -> Path:
        return Path(self.run_dir)

    @property
    def ca_file(self) -> Path:
        return self.run / "ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.run / "crl.pem"

    @property
    def access_log(self) -> Path:
        return self.run / "access.log"

    @property
    def mosquitto_log(self) -> Path:
        return self.run / "mosquitto.log"

    @property
    def https_url(self) -> str:
        return f"https://{SERVER_NAME}:{self.https_port}/"

    def public(self) -> dict[str, Any]:
        """The part scripts and operators use (no secrets)."""
        return {
            "mqtt": {"host": HOST, "port": self.mqtt_port, "topic_prefix": self.topic_prefix},
            "https": {"url": self.https_url, "port": self.https_port},
            "aws_endpoint_url": self.aws_endpoint_url,
            "ca_file": str(self.ca_file),
            "crl_file": str(self.crl_file),
            "access_log": str(self.access_log),
            "mosquitto_log": str(self.mosquitto_log),
            "run_dir": self.run_dir,
            "pki_http": (
                {"url": f"http://{HOST}:{self.pki_port}/", "port": self.pki_port}
                if self.pki_port
                else None
            ),
            "pids": {
                "mosquitto": self.mosquitto_pid,
                "https": self.https_pid,
                "moto": self.moto_pid,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DevState:
        return cls(**data)


def dev_dir(home: Home) -> Path:
    return paths.dev_dir(home.path)


def state_path(home: Home) -> Path:
    return paths.state_file(home.path)


def ports_path(home: Home) -> Path:
    return dev_dir(home) / "ports.json"


def load_state(home: Home) -> DevState | None:
    try:
        return DevState.from_json(json.loads(state_path(home).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise OperatorError(
            f"{state_path(home)} is damaged ({exc}); remove it and stop the stand-ins by hand"
        ) from None


def running(home: Home) -> DevState | None:
    """The stand-ins of ``home`` when they run (their state recorded and their processes
    alive), else None."""
    state = load_state(home)
    return state if state is not None and alive(state) else None


def alive(state: DevState) -> bool:
    return broker_pid(state) is not None and pid_alive(state.https_pid, state.run_dir)


def broker_pid(state: DevState) -> int | None:
    """The Mosquitto serving this run folder: the one ``dev up`` started or, restarted
    since outside fleetpki (by hand, by a supervisor), the one running its configuration."""
    config = str(state.run / "mosquitto.conf")
    if pid_alive(state.mosquitto_pid, config):
        return state.mosquitto_pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name), config):
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if Path(argv[0].decode(errors="replace")).name == "mosquitto":
                return int(entry.name)
    return None


def read_access_log(state: DevState) -> Iterator[dict[str, Any]]:
    try:
        text = state.access_log.read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)
