"""The PKI material the stand-ins serve, made by fleetpki itself: the CA bundle, the
combined CRL file, the endpoints' server certificate, the published CRLs and CA
certificates (``crl_url`` / ``ca_issuers_url``), the things the broker authorizes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from devices.standins.state import SERVER_NAME, dev_dir
from pki.clock import Clock
from pki.errors import OperatorError
from pki.files import atomic_write, ensure_dir
from pki.home import Home
from pki.processes import HOST

if TYPE_CHECKING:
    from pki.app import App

log = logging.getLogger("fleetpki.standins")


def ca_bundle(home: Home) -> bytes:
    return (home.ca_dir / "issuing.pem").read_bytes() + (home.ca_dir / "root.pem").read_bytes()


def ensure_crl(home: Home, clock: Clock, app: App) -> Path:
    """The combined CRL file (every CA's CRL: the broker and the HTTPS endpoint check the
    leaf against its issuer's), each CRL re-signed first when it is missing or due."""
    from pki.revocation.signing import refresh_crls

    done = refresh_crls(home, app.inventory(), app.ca(), clock, home.actor())
    for warning in done.warnings:  # the root CRL due with its key offline, say
        log.warning("%s", warning)
    home.crl_files.rebuild_combined()
    return home.combined_crl_path


def ensure_server_certificate(home: Home, clock: Clock, app: App) -> Path:
    """A serverAuth certificate for localhost / 127.0.0.1 issued by fleetpki, reused while
    it has more than a day left."""
    from pki.issue.delivery import OutputFolder, make_key_and_csr
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
    app.issuer().issue(request, output.deliver(key_pem))
    return folder


@dataclass(frozen=True)
class Publication:
    """Where the configured CRL distribution points and caIssuers URLs are served: one
    loopback port, URL path -> file name in RUN/pki/."""

    port: int
    paths: dict[str, str]


def publication(home: Home) -> Publication | None:
    """What ``crl_url`` / ``ca_issuers_url`` name, to serve on plain HTTP (None when the
    config names nothing). Refuses URLs on two ports and a port that is taken."""
    import urllib.parse

    config = home.config()
    named = [(url, f"{ca}.crl") for ca, url in config.crl_url.items()]
    named += [(url, f"{ca}.cer") for ca, url in config.ca_issuers_url.items()]
    if not named:
        return None
    parts = [(urllib.parse.urlsplit(url), name) for url, name in named]
    ports = {p.port or 80 for p, _ in parts}
    if len(ports) > 1:
        raise OperatorError(
            "crl_url and ca_issuers_url name several ports; dev up serves them on one "
            f"(found {', '.join(map(str, sorted(ports)))})"
        )
    port = ports.pop()
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise OperatorError(
                f"cannot serve the CRL distribution points: {HOST}:{port} (named by crl_url / "
                f"ca_issuers_url in {home.config_path}) is not free: {exc.strerror}"
            ) from None
    return Publication(port, {p.path: name for p, name in parts})


def write_published(home: Home, run: Path) -> None:
    """RUN/pki/<ca>.crl and <ca>.cer in DER: what the distribution points serve."""
    from cryptography.hazmat.primitives.serialization import Encoding

    folder = run / "pki"
    ensure_dir(folder, 0o755)
    files = home.crl_files
    for ca in ("issuing", "root"):
        if files.der(ca).exists():
            atomic_write(folder / f"{ca}.crl", files.der(ca).read_bytes(), 0o644)
        pem = home.ca_dir / f"{ca}.pem"
        if pem.exists():  # the local CA's (AWS Private CA publishes its own)
            cert = x509.load_pem_x509_certificate(pem.read_bytes())
            atomic_write(folder / f"{ca}.cer", cert.public_bytes(Encoding.DER), 0o644)


def active_things(app: App, clock: Clock) -> list[str]:
    """The things with an active device certificate in the inventory (not fleetpki's own
    probe: it may connect, and do nothing else)."""
    from pki.issue.policy import PROBE_THING
    from pki.model import Status

    records = app.inventory().find(now=clock.now(), status=Status.ACTIVE, profile="device")
    return sorted({r.thing for r in records if r.thing and r.thing != PROBE_THING})
