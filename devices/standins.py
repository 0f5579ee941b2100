"""Local stand-ins for the cloud side, started and stopped as one (``fleetpki dev up/down``).

- **Mosquitto** playing IoT Core's data plane: a TLS listener on a free loopback port that
  requires a client certificate, takes the certificate CN as the username, checks the
  issuing CA's CRL, and an ACL equivalent to the IoT policy
  (``pattern readwrite <prefix>/%u/#``). The CRL is re-read on SIGHUP. Mosquitto keeps
  open sessions on SIGHUP, so the live sessions of a revoked device are cut through the
  dynamic-security plugin (``createClient`` + ``deleteClient`` kicks every connection of
  that username), on a password-protected admin listener bound to loopback.
- **An HTTPS endpoint** playing API Gateway / ALB with mTLS (``devices.https_standin``).
- **moto_server** for the AWS control plane, unless ``AWS_ENDPOINT_URL`` is set.

Everything the broker reads lives in a run folder outside HOME (HOME is 0700): when
fleetpki runs as root, Mosquitto drops to the ``mosquitto`` user, so the run folder and
the files it reads are handed to that user. ``HOME/dev/state.json`` (0600) records the
processes and ports; ``HOME/dev/ports.json`` is the public part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from pki.childenv import FAKETIME, child_env, without_faketime
from pki.clock import Clock
from pki.errors import BackendError, OperatorError
from pki.files import atomic_write, ensure_dir
from pki.home import Home

log = logging.getLogger("fleetpki.standins")

HOST = "127.0.0.1"
TOPIC_PREFIX = "things"
ADMIN_USER = "fleetpki-admin"
ROTATION_USER = "fleetpki-rotation"  # the rotation service (plays IoT Core's rules + Lambda)
MOSQUITTO_USER = "mosquitto"
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)
SERVER_NAME = "localhost"
START_TIMEOUT = 20.0


# ------------------------------------------------------------------------- pure parts


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
            "pids": {
                "mosquitto": self.mosquitto_pid,
                "https": self.https_pid,
                "moto": self.moto_pid,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DevState:
        return cls(**data)


def acl_text(prefix: str = TOPIC_PREFIX) -> str:
    """The broker's ACL: a device reads and writes only under its own thing's topics.

    ``%u`` is the username, which is the certificate CN (= the thing name). The admin
    user may only use the dynamic-security control topics; the rotation service reads
    the devices' CSRs and confirmations and writes rotation requests and certificates
    (the policy reserves the ``fleetpki-`` prefix, so no device certificate carries
    these usernames).
    """
    return (
        f"pattern readwrite {prefix}/%u/#\n"
        f"\nuser {ADMIN_USER}\ntopic readwrite $CONTROL/dynamic-security/#\n"
        f"\nuser {ROTATION_USER}\n"
        f"topic read {prefix}/+/rotation/csr\n"
        f"topic read {prefix}/+/rotation/confirm\n"
        f"topic write {prefix}/+/rotation/request\n"
        f"topic write {prefix}/+/rotation/certificate\n"
    )


def mosquitto_config(
    run: Path, mqtt_port: int, admin_port: int, plugin: str, run_as: str | None
) -> str:
    lines = [
        "# generated by fleetpki dev up; do not edit",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "set_tcp_nodelay true",
        # the rotation service's session holds a whole wave of CSRs while it works them,
        # and acknowledges them only once they are committed: let many be in flight
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
        "max_keepalive 120",
        f"log_dest file {run / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"acl_file {run / 'acl'}",
        f"plugin {plugin}",
        f"plugin_opt_config_file {run / 'dynsec.json'}",
    ]
    if run_as is not None:
        lines.append(f"user {run_as}")
    lines += [
        "",
        "# devices: mutual TLS, identity = certificate CN, CRL checked",
        f"listener {mqtt_port} {HOST}",
        f"cafile {run / 'ca.pem'}",
        f"certfile {run / 'server.pem'}",
        f"keyfile {run / 'server.key'}",
        f"crlfile {run / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "",
        "# administration (cutting sessions), loopback only, password",
        f"listener {admin_port} {HOST}",
        "",
    ]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------ files, paths


def dev_dir(home: Home) -> Path:
    return home.path / "dev"


def state_path(home: Home) -> Path:
    return dev_dir(home) / "state.json"


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


def _mosquitto_uid() -> tuple[int, int] | None:
    """Mosquitto started as root drops to the ``mosquitto`` user: its files must be its own."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _give(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner)


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    atomic_write(path, data, mode)
    _give(path, owner)


def _dynsec_plugin() -> str:
    for candidate in DYNSEC_PLUGIN_PATHS:
        if Path(candidate).exists():
            return candidate
    raise OperatorError(
        "the Mosquitto dynamic-security plugin is missing (mosquitto_dynamic_security.so); "
        "install the Debian package 'mosquitto'"
    )


def _need(command: str, package: str) -> str:
    found = shutil.which(command) or (
        f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None
    )
    if found is None:
        raise OperatorError(f"'{command}' is not installed; install the Debian package {package}")
    return found


# ------------------------------------------------------------------------- processes


def _pid_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is running and its command line mentions ``marker`` (pid reuse)."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def alive(state: DevState) -> bool:
    return _pid_alive(state.mosquitto_pid, state.run_dir) and _pid_alive(
        state.https_pid, state.run_dir
    )


def _wait_port(
    port: int,
    proc: subprocess.Popen[bytes],
    what: str,
    log: Path | None,
    ready_line: str | None = None,
) -> None:
    """Wait until ``port`` accepts connections (or, with ``ready_line``, until the log
    says so: a probe connection would show up in the HTTPS access log)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if ready_line is not None:
            if log is not None and log.exists() and ready_line in log.read_text(errors="replace"):
                return
        else:
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    pass
                # the answer may come from another process that took the port meanwhile:
                # ours then exits on its failed bind
                time.sleep(0.15)
                if proc.poll() is None:
                    return
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                lines = log.read_text(errors="replace").strip().splitlines()
                tail = ": " + " | ".join(lines[-3:]) if lines else ""
            _terminate(proc.pid)
            raise BackendError("start", what, f"no listener on {HOST}:{port}{tail}")
        time.sleep(0.05)


Started = TypeVar("Started")


def _on_a_free_port(start: Callable[[], Started], attempts: int = 3) -> Started:
    """``start`` picks free ports and starts a listener on them; another process may take a
    port between the pick and the bind, so that is tried again with new ports."""
    for attempt in range(attempts):
        try:
            return start()
        except BackendError as exc:
            if "in use" not in str(exc).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _terminate(pid: int, timeout: float = 10.0) -> None:
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


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=_standin_env() if env is None else env,
        )


def _standin_env() -> dict[str, str]:
    """The stand-ins outlive 'dev up': they get none of fleetpki's secrets (the CA
    passphrase, AWS credentials), only what running them needs."""
    return child_env(keep=("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", *FAKETIME))


# --------------------------------------------------------------------------- up / down


def _ca_bundle(home: Home) -> bytes:
    return (home.ca_dir / "issuing.pem").read_bytes() + (home.ca_dir / "root.pem").read_bytes()


def write_home_crl(home: Home, state: Any) -> Path:
    """Re-sign the issuing CA's CRL (what ``fleetpki revoke`` does after a revocation);
    returns the combined file the stand-ins read."""
    from pki.revocation import refresh_home_crl

    refresh_home_crl(home, state.inventory(), state.ca(), state.clock, home.actor())
    return home.combined_crl_path


def ensure_crl(home: Home, clock: Clock, state: Any) -> Path:
    """The combined CRL file (every CA's CRL: the broker and the HTTPS endpoint check the
    leaf against its issuer's), each CRL re-signed first when it is missing or due."""
    from pki.revocation import refresh_crls

    done = refresh_crls(home, state.inventory(), state.ca(), clock, home.actor())
    for warning in done.warnings:  # the root CRL due with its key offline, say
        log.warning("%s", warning)
    home.crl_files.rebuild_combined()
    return home.combined_crl_path


def ensure_server_certificate(home: Home, clock: Clock, state: Any) -> Path:
    """A serverAuth certificate for localhost / 127.0.0.1 issued by fleetpki, reused while
    it has more than a day left."""
    from pki.delivery import OutputFolder, make_key_and_csr
    from pki.model import IssueRequest, KeyType

    folder = dev_dir(home) / "server"
    cert = folder / "cert.pem"
    if cert.exists() and (folder / "key.pem").exists():
        current = x509.load_pem_x509_certificate(cert.read_bytes())
        if current.not_valid_after_utc > clock.now() + dt.timedelta(days=1):
            return folder
    key_pem, csr_pem = make_key_and_csr(KeyType.EC_P256, SERVER_NAME)
    request = IssueRequest(
        profile="server",
        name=SERVER_NAME,
        csr_pem=csr_pem,
        dns_names=(SERVER_NAME,),
        ip_addresses=(ipaddress.ip_address(HOST),),
        days=30,
        actor=home.actor(),
    )
    output = OutputFolder(folder, with_key=True, force=True)
    state.issuer().issue(request, output.deliver(key_pem))
    return folder


def up(home: Home, clock: Clock, state: Any) -> DevState:
    """Start Mosquitto, the HTTPS endpoint and (without AWS_ENDPOINT_URL) moto_server.

    ``state`` is the CLI's ``pki.cli.State`` (inventory, CA, issuer). Refuses when the
    stand-ins of this home are already running.
    """
    current = load_state(home)
    if current is not None and alive(current):
        raise OperatorError(
            f"the stand-ins are already running (MQTT {HOST}:{current.mqtt_port}, "
            f"HTTPS {current.https_url}); stop them with 'fleetpki dev down'"
        )
    mosquitto = _need("mosquitto", "mosquitto")
    _need("mosquitto_ctrl", "mosquitto-clients")
    plugin = _dynsec_plugin()
    home.config()  # a CA must exist
    server = ensure_server_certificate(home, clock, state)
    crl = ensure_crl(home, clock, state)

    ensure_dir(dev_dir(home), 0o700)
    run = Path(tempfile.mkdtemp(prefix="fleetpki-dev-"))
    started: list[int] = []
    try:
        owner = _mosquitto_uid()
        run.chmod(0o755)
        _give(run, owner)
        _write(run / "ca.pem", _ca_bundle(home), 0o644, owner)
        _write(run / "crl.pem", crl.read_bytes(), 0o644, owner)
        _write(run / "server.pem", (server / "fullchain.pem").read_bytes(), 0o644, owner)
        _write(run / "server.key", (server / "key.pem").read_bytes(), 0o600, owner)
        _write(run / "acl", acl_text().encode(), 0o644, owner)
        password = secrets.token_urlsafe(24)
        _dynsec_init(run / "dynsec.json", password)
        _give(run / "dynsec.json", owner)
        (run / "mosquitto.log").touch()
        _give(run / "mosquitto.log", owner)

        def start_broker() -> tuple[subprocess.Popen[bytes], int, int]:
            mqtt_port, admin_port = free_port(), free_port()
            config = mosquitto_config(
                run, mqtt_port, admin_port, plugin, MOSQUITTO_USER if owner else None
            )
            _write(run / "mosquitto.conf", config.encode(), 0o644, owner)
            broker = _spawn([mosquitto, "-c", str(run / "mosquitto.conf")], run / "stdout.log")
            started.append(broker.pid)
            # its own word that both listeners are open (a probe could reach another
            # program that took a port meanwhile)
            _wait_port(mqtt_port, broker, "mosquitto", run / "mosquitto.log", " running")
            return broker, mqtt_port, admin_port

        broker, mqtt_port, admin_port = _on_a_free_port(start_broker)
        rotation_password = secrets.token_urlsafe(24)
        _add_service_user(run, admin_port, password, ROTATION_USER, rotation_password)

        def start_https() -> tuple[subprocess.Popen[bytes], int]:
            port = free_port()
            https = _spawn(
                [sys.executable, "-m", "devices.https_standin", "--port", str(port),
                 "--cert", str(run / "server.pem"), "--key", str(run / "server.key"),
                 "--ca", str(run / "ca.pem"), "--crl", str(run / "crl.pem"),
                 "--access-log", str(run / "access.log"), "--run-dir", str(run)],
                run / "https.log",
            )  # fmt: skip
            started.append(https.pid)
            _wait_port(port, https, "https stand-in", run / "https.log", f"listening on {port}")
            return https, port

        https, https_port = _on_a_free_port(start_https)
        moto_pid, endpoint = None, os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint is None:

            def start_moto() -> tuple[subprocess.Popen[bytes], int]:
                port = free_port()
                moto = _spawn(
                    [str(Path(sys.executable).parent / "moto_server"), "-H", HOST, "-p", str(port)],
                    run / "moto.log",
                    without_faketime(_standin_env()),  # AWS keeps the real time
                )
                started.append(moto.pid)
                _wait_port(
                    port, moto, "moto_server", run / "moto.log", f"Running on http://{HOST}:{port}"
                )
                return moto, port

            moto, moto_port = _on_a_free_port(start_moto)
            moto_pid, endpoint = moto.pid, f"http://{HOST}:{moto_port}"
        result = DevState(
            run_dir=str(run),
            mqtt_port=mqtt_port,
            admin_port=admin_port,
            https_port=https_port,
            mosquitto_pid=broker.pid,
            https_pid=https.pid,
            moto_pid=moto_pid,
            aws_endpoint_url=endpoint,
            admin_password=password,
            rotation_password=rotation_password,
        )
        atomic_write(state_path(home), json.dumps(asdict(result), indent=2).encode(), 0o600)
        atomic_write(ports_path(home), json.dumps(result.public(), indent=2).encode(), 0o644)
    except BaseException:
        for pid in reversed(started):
            _terminate(pid)
        shutil.rmtree(run, ignore_errors=True)
        for path in (state_path(home), ports_path(home)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return result


def _add_service_user(
    run: Path, admin_port: int, admin_password: str, username: str, password: str
) -> None:
    """A password user on the loopback admin listener (over MQTT, never on a command line)."""
    probe = DevState(str(run), 0, admin_port, 0, 0, 0, None, None, admin_password)
    responses = _dynsec(
        probe, {"command": "createClient", "username": username, "password": password}
    )
    if not responses or responses[0].get("error"):
        detail = responses[0]["error"] if responses else "no answer to createClient"
        raise BackendError(f"create the broker user {username}", "mosquitto", str(detail))


def _dynsec_init(path: Path, password: str) -> None:
    """Create the dynamic-security file (mode 0600 from the start). The admin password goes
    to ``mosquitto_ctrl`` on its standard input (its password prompt, twice), never on the
    command line where any local user could read it; it is kept out of every message."""
    try:
        done = subprocess.run(
            [_need("mosquitto_ctrl", "mosquitto-clients"), "dynsec", "init", str(path),
             ADMIN_USER],
            input=f"{password}\n{password}\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            umask=0o077,
            env=_standin_env(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(
            "initialise dynamic security", "mosquitto_ctrl", type(exc).__name__
        ) from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BackendError(
            "initialise dynamic security", "mosquitto_ctrl", detail[-1] if detail else "failed"
        )


def down(home: Home) -> list[str]:
    """Stop what ``up`` started; returns what was stopped. Idempotent."""
    state = load_state(home)
    if state is None:
        return []
    stopped: list[str] = []
    for name, pid, marker in (
        ("moto_server", state.moto_pid, "moto_server"),
        ("https stand-in", state.https_pid, state.run_dir),
        ("mosquitto", state.mosquitto_pid, state.run_dir),
    ):
        if pid is not None and _pid_alive(pid, marker):
            _terminate(pid)
            stopped.append(f"{name} (pid {pid})")
    shutil.rmtree(state.run, ignore_errors=True)
    for path in (state_path(home), ports_path(home)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stopped


# ----------------------------------------------------------------- revocation support


def reload_crl(home: Home, state: DevState) -> None:
    """Copy the home's combined CRL file into the run folder and make Mosquitto re-read it
    (SIGHUP). The HTTPS stand-in notices the new file by itself before its next handshake.
    """
    data = home.combined_crl_path.read_bytes()
    try:
        if state.crl_file.read_bytes() == data:
            return  # already in place (a batch revocation calls this per certificate)
    except OSError:
        pass
    _write(state.crl_file, data, 0o644, _mosquitto_uid())
    try:
        os.kill(state.mosquitto_pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BackendError("reload the CRL", "mosquitto", "the broker is not running") from None


def _dynsec(state: DevState, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """Send dynamic-security commands over MQTT on the admin listener, as the admin user:
    the password never appears on a command line or in an error. Returns the responses."""
    import queue
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answers: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleetpki-{os.getpid()}")
    client.username_pw_set(ADMIN_USER, state.admin_password)
    client.on_message = lambda _c, _u, message: answers.put(bytes(message.payload))
    client.on_subscribe = lambda *_args: subscribed.set()
    what = f"run dynsec {commands[0]['command']}"
    try:
        client.connect(HOST, state.admin_port, keepalive=30)
        client.loop_start()
        client.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK")
        body = json.dumps({"commands": list(commands)})
        client.publish("$CONTROL/dynamic-security/v1", body, qos=1).wait_for_publish(10)
        payload = answers.get(timeout=10)
    except (OSError, ValueError, RuntimeError, queue.Empty) as exc:
        raise BackendError(what, "mosquitto", type(exc).__name__) from None
    finally:
        client.loop_stop()
        client.disconnect()
    return list(json.loads(payload).get("responses", []))


def cut_sessions(state: DevState, username: str) -> None:
    """Disconnect every live MQTT session of ``username`` (the thing name).

    The dynamic-security plugin kicks all clients of a username it deletes; the client
    is created just for that and exists only for the blink between the two commands.
    """
    responses = _dynsec(
        state,
        {"command": "createClient", "username": username, "password": secrets.token_urlsafe(16)},
        {"command": "deleteClient", "username": username},
    )
    deleted = [r for r in responses if r.get("command") == "deleteClient"]
    if not deleted or deleted[0].get("error"):
        detail = deleted[0]["error"] if deleted else "no answer to deleteClient"
        raise BackendError("cut the sessions of " + username, "mosquitto", str(detail))


def read_access_log(state: DevState) -> Iterator[dict[str, Any]]:
    try:
        text = state.access_log.read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)
