"""The relying parties of the interoperability tests: nginx with client certificates, and
clients that present a device certificate (curl)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pki.processes import free_port, port_open, running, wait_until
from tests.interop.conftest import Pki

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(prefix: Path, port: int, server: Path, trusted: Path, crl: Path) -> str:
    """What an operator writes for mTLS with fleetpki: the CA chain as the client CA list,
    the combined CRL file as ssl_crl (nginx checks every level of the chain)."""
    temp = " ".join(
        f"{name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    {temp}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server}/fullchain.pem;
        ssl_certificate_key {server}/key.pem;
        ssl_client_certificate {trusted};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_crl {crl};
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
}}
"""


@dataclass
class Nginx:
    prefix: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def reload(self) -> None:
        """``nginx -s reload``: the master re-reads its configuration and files (the CRL)."""
        log = self.error_log()
        started, exited = log.count("start worker process"), log.count("exited with code")
        os.kill(self.proc.pid, signal.SIGHUP)

        def done() -> bool:  # a new worker, and the old one gone (it would still answer)
            now = self.error_log()
            return (
                now.count("start worker process") > started
                and now.count("exited with code") > exited
            )

        wait_until(done, what="nginx reload")

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def nginx(
    base: Path, pki: Pki, *, crl: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[Nginx]:
    prefix = base / f"nginx-{free_port()}"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, pki.server, pki.chain, crl or pki.combined))
    argv = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    with running(
        argv, log=prefix / "stdout.log", ready=lambda: port_open(port), what="nginx", env=env
    ) as proc:
        yield Nginx(prefix, port, proc)


def curl(url: str, pki: Pki, device: Path | None) -> tuple[int, str]:
    """GET ``url`` as ``device`` (or with no client certificate): (HTTP status, body);
    status 0 when the handshake itself failed."""
    argv = ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.root), "-w", "\n%{http_code}"]
    if device is not None:
        argv += ["--cert", str(device / "fullchain.pem"), "--key", str(device / "key.pem")]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=30)
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), (body or done.stderr).strip()
