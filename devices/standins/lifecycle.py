"""``dev up`` and ``dev down``: start the stand-ins as one (all or none), stop them again.

Everything the broker reads lives in a run folder outside HOME (HOME is 0700): when
fleetpki runs as root, Mosquitto drops to the ``mosquitto`` user, so the run folder and
the files it reads are handed to that user.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from devices import broker_acl
from devices.standins import broker, material
from devices.standins.programs import need, standin_env
from devices.standins.state import (
    ROTATION_USER,
    TOPIC_PREFIX,
    DevState,
    alive,
    broker_pid,
    dev_dir,
    load_state,
    ports_path,
    state_path,
)
from pki.clock import Clock
from pki.errors import OperatorError
from pki.files import atomic_write, ensure_dir
from pki.home import Home
from pki.processes import (
    HOST,
    Process,
    free_port,
    on_a_free_port,
    pid_alive,
    spawn,
    start_moto,
    terminate,
    wait_ready,
)

if TYPE_CHECKING:
    from pki.app import App


@dataclass(frozen=True)
class _RunFolder:
    """The run folder with what the broker and the endpoint read, and its owner."""

    path: Path
    owner: tuple[int, int] | None
    admin_password: str = field(default="", repr=False)


def up(home: Home, clock: Clock, app: App) -> DevState:
    """Start Mosquitto, the HTTPS endpoint and (without AWS_ENDPOINT_URL) moto_server.

    ``app`` is the application core (inventory, CA, issuer). Refuses when the stand-ins
    of this home are already running. A failure at any step stops what was started and
    removes the run folder and the state files.
    """
    current = load_state(home)
    if current is not None and alive(current):
        raise OperatorError(
            f"the stand-ins are already running (MQTT {HOST}:{current.mqtt_port}, "
            f"HTTPS {current.https_url}); stop them with 'fleetpki dev down'"
        )
    need("mosquitto", "mosquitto")
    need("mosquitto_ctrl", "mosquitto-clients")
    broker.dynsec_plugin()
    published = material.publication(home)  # before anything starts: its port must be free
    server = material.ensure_server_certificate(home, clock, app)
    crl = material.ensure_crl(home, clock, app)
    ensure_dir(dev_dir(home), 0o700)
    run = Path(tempfile.mkdtemp(prefix="fleetpki-dev-"))
    started: list[int] = []
    try:
        folder = _fill_run_folder(home, app, clock, run, server, crl, published)
        result = _start_all(folder, published, started)
        _write_state(home, result)
    except BaseException:
        for pid in reversed(started):
            terminate(pid)
        shutil.rmtree(run, ignore_errors=True)
        _remove_state_files(home)
        raise
    return result


def _fill_run_folder(
    home: Home,
    app: App,
    clock: Clock,
    run: Path,
    server: Path,
    crl: Path,
    published: material.Publication | None,
) -> _RunFolder:
    owner = broker.mosquitto_owner()
    run.chmod(0o755)
    broker.give(run, owner)
    broker.write_owned(run / "ca.pem", material.ca_bundle(home), 0o644, owner)
    broker.write_owned(run / "crl.pem", crl.read_bytes(), 0o644, owner)
    broker.write_owned(run / "server.pem", (server / "fullchain.pem").read_bytes(), 0o644, owner)
    broker.write_owned(run / "server.key", (server / "key.pem").read_bytes(), 0o600, owner)
    if published is not None:
        material.write_published(home, run)
    password = secrets.token_urlsafe(24)
    broker.dynsec_init(run / "dynsec.json", password)
    broker_acl.seed(run / "dynsec.json", TOPIC_PREFIX, material.active_things(app, clock))
    broker.give(run / "dynsec.json", owner)
    (run / "mosquitto.log").touch()
    broker.give(run / "mosquitto.log", owner)
    return _RunFolder(run, owner, password)


def _start_all(
    folder: _RunFolder, published: material.Publication | None, started: list[int]
) -> DevState:
    """Broker, its rotation-service user, HTTPS endpoint, moto: each pid goes into
    ``started`` the moment it exists (the caller stops them on failure)."""

    def start_broker() -> tuple[Process, int, int]:
        proc, mqtt_port, admin_port = broker.start_broker(folder.path, folder.owner)
        started.append(proc.pid)
        return proc, mqtt_port, admin_port

    mosquitto, mqtt_port, admin_port = on_a_free_port(start_broker)
    rotation_password = secrets.token_urlsafe(24)
    broker.add_service_user(folder.path, admin_port, folder.admin_password, ROTATION_USER,
                            rotation_password, broker_acl.ROTATION_ROLE)  # fmt: skip
    https, https_port = on_a_free_port(lambda: _start_https(folder.path, published, started))
    moto_pid, endpoint = None, os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is None:
        moto, endpoint = start_moto(folder.path / "moto.log", standin_env())
        started.append(moto.pid)
        moto_pid = moto.pid
    return DevState(
        run_dir=str(folder.path),
        mqtt_port=mqtt_port,
        admin_port=admin_port,
        https_port=https_port,
        mosquitto_pid=mosquitto.pid,
        https_pid=https.pid,
        moto_pid=moto_pid,
        aws_endpoint_url=endpoint,
        admin_password=folder.admin_password,
        rotation_password=rotation_password,
        pki_port=published.port if published is not None else None,
    )


def _start_https(
    run: Path, published: material.Publication | None, started: list[int]
) -> tuple[Process, int]:
    """The HTTPS endpoint (``devices.https_standin``), and the CRL distribution points on
    plain HTTP when the config names them; ready when its log says it listens (a probe
    connection would show up in the access log)."""
    serve: list[str] = []
    if published is not None:
        serve = ["--pki-port", str(published.port)]
        for url_path, name in published.paths.items():
            serve += ["--serve", f"{url_path}={run / 'pki' / name}"]
    port = free_port()
    log = run / "https.log"
    https = spawn(
        [sys.executable, "-m", "devices.https_standin", "--port", str(port),
         "--cert", str(run / "server.pem"), "--key", str(run / "server.key"),
         "--ca", str(run / "ca.pem"), "--crl", str(run / "crl.pem"),
         "--access-log", str(run / "access.log"), "--run-dir", str(run), *serve],
        log=log,
        env=standin_env(),
    )  # fmt: skip
    started.append(https.pid)
    listening = f"listening on {port}"
    wait_ready(https, lambda: log.exists() and listening in log.read_text(errors="replace"),
               what="https stand-in", log=log)  # fmt: skip
    return https, port


def _remove_state_files(home: Home) -> None:
    for path in (state_path(home), ports_path(home)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def restart_broker(home: Home) -> DevState:
    """Stop Mosquitto cleanly (SIGTERM: it saves its sessions and the messages queued for
    them) and start it again on the same ports, as an operator's broker restart would.
    Refused when the stand-ins are not running."""
    state = load_state(home)
    if state is None or not pid_alive(state.https_pid, state.run_dir):
        raise OperatorError("the stand-ins are not running: start them with 'fleetpki dev up'")
    pid = broker_pid(state)
    if pid is not None:
        terminate(pid)
    proc = broker.launch(state.run)
    restarted = replace(state, mosquitto_pid=proc.pid)
    _write_state(home, restarted)
    return restarted


def _write_state(home: Home, state: DevState) -> None:
    atomic_write(state_path(home), json.dumps(asdict(state), indent=2).encode(), 0o600)
    atomic_write(ports_path(home), json.dumps(state.public(), indent=2).encode(), 0o644)


def down(home: Home) -> list[str]:
    """Stop what ``up`` started; returns what was stopped. Idempotent."""
    state = load_state(home)
    if state is None:
        return []
    stopped: list[str] = []
    for name, pid, marker in (
        ("moto_server", state.moto_pid, "moto_server"),
        ("https stand-in", state.https_pid, state.run_dir),
        ("mosquitto", broker_pid(state), state.run_dir),
    ):
        if pid is not None and pid_alive(pid, marker):
            terminate(pid)
            stopped.append(f"{name} (pid {pid})")
    shutil.rmtree(state.run, ignore_errors=True)
    _remove_state_files(home)
    return stopped
