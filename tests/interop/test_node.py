"""Node's ``tls`` server with ``requestCert`` and ``crl``: the form docs/crl.md gives.

Node checks revocation at every level of the chain, and its ``crl`` option reads only the
first CRL of a string: it needs an array, one PEM CRL per CA (fleetpki's per-CA files).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.processes import free_port, running, wait_until
from tests.interop.conftest import Pki

NODE = shutil.which("node") or "node"
SERVER = Path(__file__).with_name("node_server.js")


@contextlib.contextmanager
def node_server(
    base: Path, pki: Pki, crl: list[Path] | Path, *, report: bool = False
) -> Iterator[Path]:
    port = free_port()
    config = base / f"node-{port}.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "key": str(pki.server / "key.pem"),
                "cert": str(pki.server / "fullchain.pem"),
                "ca": [str(pki.root), str(pki.issuing)],
                "crl": [str(c) for c in crl] if isinstance(crl, list) else str(crl),
                "report": report,
            }
        )
    )
    log = base / f"node-{port}.log"
    ready = f"listening on {port}"
    with running(
        [NODE, str(SERVER), str(config)],
        log=log,
        ready=lambda: ready in log.read_text(errors="replace"),
        what="node",
    ):
        yield log


def hello(log: Path, pki: Pki, device: Path) -> str:
    """One TLS connection to the Node server as ``device``: what the server answered, or
    ``refused CODE`` as the server logged it."""
    port = int(log.name.removeprefix("node-").removesuffix(".log"))
    context = ssl.create_default_context(cafile=str(pki.root))
    context.load_cert_chain(device / "fullchain.pem", device / "key.pem")
    before = log.read_text().count("refused")
    try:
        with context.wrap_socket(
            __import__("socket").create_connection(("127.0.0.1", port), timeout=10),
            server_hostname="127.0.0.1",
        ) as tls:
            answer = tls.recv(200).decode().strip()
            if answer:
                return answer
    except (ssl.SSLError, OSError):
        pass
    wait_until(lambda: log.read_text().count("refused") > before, what="node's refusal")
    return [line for line in log.read_text().splitlines() if line.startswith("refused")][-1]


@pytest.fixture(scope="module")
def node_version() -> str:
    done = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


CRLS = ("issuing.crl.pem", "root.crl.pem")  # crl: [...] as docs/crl.md says


def test_node_with_one_crl_per_ca_accepts_valid_and_refuses_revoked(
    interop_pki: Pki, tmp_path: Path, node_version: str
) -> None:
    pki = interop_pki
    with node_server(tmp_path, pki, [pki.crl / name for name in CRLS]) as log:
        assert hello(log, pki, pki.valid) == "hello dev-valid", node_version
        for refused in (pki.revoked, pki.foreign):
            assert not hello(log, pki, refused).startswith("hello")
        assert "accepted dev-valid" in log.read_text()
    # the same configuration, telling why
    with node_server(tmp_path, pki, [pki.crl / name for name in CRLS], report=True) as log:
        assert hello(log, pki, pki.valid) == "hello dev-valid"
        assert hello(log, pki, pki.revoked) == "refused CERT_REVOKED"
        assert hello(log, pki, pki.foreign).startswith("refused UNABLE_TO_GET")


def test_node_reads_only_the_first_crl_of_a_string(interop_pki: Pki, tmp_path: Path) -> None:
    # why the docs say "an array": the combined file as one string refuses valid devices
    with node_server(tmp_path, interop_pki, interop_pki.combined, report=True) as log:
        assert hello(log, interop_pki, interop_pki.valid) == "refused UNABLE_TO_GET_CRL"
