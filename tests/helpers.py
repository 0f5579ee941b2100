"""Test helpers: CSRs made with cryptography and with the openssl command, CLI runs."""

from __future__ import annotations

import base64
import datetime as dt
import io
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from pki.cli import main
from pki.clock import Clock

PEM = serialization.Encoding.PEM
# The tests' "now": the real clock (shifted, under scripts/test --shift, like everything
# else in the run), to the minute. Every fixed clock in a test is relative to it: no test
# date is absolute, so the suite holds on any calendar day.
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_cli(argv: Sequence[object], clock: Clock | None = None) -> Result:
    """Run ``fleetpki`` in-process (``pki.cli.main``, as the installed command does) and
    capture its output: the one way every test runs the command line in-process."""
    import contextlib

    # text streams over bytes, as the real ones are: DER goes to sys.stdout.buffer
    out, err = (io.TextIOWrapper(io.BytesIO(), "utf-8", write_through=True) for _ in "12")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv], clock=clock)
    return Result(code, _text(out), _text(err))


def _text(stream: io.TextIOWrapper) -> str:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8", errors="replace")


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def make_csr(
    cn: str | None,
    key: object | None = None,
    *,
    sans: Sequence[x509.GeneralName] = (),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> tuple[bytes, object]:
    key = key or ec_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        csr = builder.sign(key, None)
    else:
        csr = builder.sign(key, algorithm or hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(PEM), key


def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def openssl_csr(directory: Path, cn: str, *, rsa_bits: int | None = None) -> tuple[Path, Path]:
    """A key and CSR made by ``openssl req``, not by our code."""
    key = directory / f"{cn}.key"
    csr = directory / f"{cn}.csr"
    newkey = (
        ["-newkey", f"rsa:{rsa_bits}"]
        if rsa_bits
        else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            *newkey,
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cn}",
        ],
        check=True,
        capture_output=True,
    )
    return key, csr


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- real TLS handshakes ----------------------------------------------------------------

import socket  # noqa: E402
import ssl  # noqa: E402
import threading  # noqa: E402


@dataclass(frozen=True)
class Handshake:
    accepted: bool
    server_error: str | None
    peer_cn: str | None


def mtls_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Handshake:
    """One real mutual-TLS handshake over loopback TCP; the server's verdict is returned."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    verdict: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                subject = dict(x[0] for x in peer.get("subject", ())) if peer else {}
                verdict["cn"] = subject.get("commonName")
                tls.recv(1)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            detail = getattr(exc, "verify_message", None)
            verdict["error"] = f"{reason}: {detail}" if detail else reason
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"x")
            tls.recv(2)
    except (ssl.SSLError, OSError):
        pass
    thread.join(10)
    listener.close()
    error = verdict.get("error")
    return Handshake(
        error is None and "cn" in verdict, str(error) if error else None, verdict.get("cn")
    )  # type: ignore[arg-type]


def csr_with_version(pem: bytes, version: int) -> bytes:
    """The same CSR claiming another version (RFC 2986 knows only v1 = 0): the signature
    no longer matches, but the parser trips over the version first."""
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    der = der.replace(b"\x02\x01\x00", b"\x02\x01" + bytes([version]), 1)
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join(
        [b"-----BEGIN CERTIFICATE REQUEST-----", *lines, b"-----END CERTIFICATE REQUEST-----", b""]
    )


def pkilint(path: Path) -> list[str]:
    """ERROR and FATAL findings of pkilint's RFC 5280 certificate linter."""
    import json
    import sys

    lint = Path(sys.executable).parent / "lint_pkix_cert"
    result = subprocess.run(
        [str(lint), "lint", "-s", "ERROR", "-f", "JSON", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.startswith("{"), result.stderr
    findings = json.loads(result.stdout)["results"]
    return [f"{r['validator']}: {f['code']}" for r in findings for f in r["finding_descriptions"]]


def run_sql(url: str, statement: str) -> None:
    """One statement on the inventory at ``url``, behind fleetpki's back (a tamperer, an
    old backup)."""
    import sqlalchemy as sa

    from pki.storage import open_engine

    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()
