"""The HTTPS endpoint playing API Gateway / ALB with mutual TLS.

Requires a client certificate that chains to the trusted bundle and is not on the CRL
(leaf check), answers ``GET`` with the authenticated identity as JSON, and writes one
JSON line per accepted and per refused client to the access log, with the reason:
``unknown-ca``, ``expired``, ``revoked``, ``no-certificate``, ``not-yet-valid``,
``crl-unavailable`` or ``handshake-failed``. The trust bundle and the CRL are re-read
when their files change (checked before each handshake) and on SIGHUP.

Run as ``python -m devices.https_standin --port ... --cert ... --key ... --ca ... --crl ...
--access-log ...`` (``fleetpki dev up`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HANDSHAKE_TIMEOUT = 10.0

# OpenSSL verify messages and reasons -> the access log's stable reason codes
_VERIFY_REASONS = {
    "certificate has expired": "expired",
    "certificate revoked": "revoked",
    "certificate is not yet valid": "not-yet-valid",
    "unable to get local issuer certificate": "unknown-ca",
    "unable to get issuer certificate": "unknown-ca",
    "self-signed certificate in certificate chain": "unknown-ca",
    "self signed certificate in certificate chain": "unknown-ca",
    "self-signed certificate": "unknown-ca",
    "self signed certificate": "unknown-ca",
    "unable to verify the first certificate": "unknown-ca",
    "unable to get certificate CRL": "crl-unavailable",
    "CRL has expired": "crl-unavailable",
    "CRL is not yet valid": "crl-unavailable",
    "unsupported certificate purpose": "wrong-purpose",
}
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no-certificate",
}


def refusal_reason(exc: BaseException) -> tuple[str, str]:
    """(reason code, detail) of a failed server-side handshake."""
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return _VERIFY_REASONS.get(str(verify_message), "handshake-failed"), str(verify_message)
    reason = getattr(exc, "reason", None)
    if reason:
        return _SSL_REASONS.get(str(reason), "handshake-failed"), str(reason)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout", "handshake timed out"
    return "handshake-failed", f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path
    ca: Path
    crl: Path | None


def _signature(files: Files) -> tuple[tuple[int, int], ...]:
    out = []
    for path in (files.cert, files.ca, files.crl):
        if path is None:
            continue
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((0, 0))
    return tuple(out)


def server_context(files: Files) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(files.ca)
    if files.crl is not None:
        ctx.load_verify_locations(files.crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


class Contexts:
    """The current SSL context, rebuilt when the bundle, certificate or CRL changes."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._signature = _signature(files)
        self._ctx = server_context(files)

    def current(self) -> ssl.SSLContext:
        with self._lock:
            signature = _signature(self.files)
            if signature != self._signature:
                try:
                    self._ctx = server_context(self.files)
                    self._signature = signature
                except (OSError, ssl.SSLError):
                    pass  # a file half-replaced: keep serving with the last good context
            return self._ctx

    def reload(self) -> None:
        with self._lock:
            self._ctx = server_context(self.files)
            self._signature = _signature(self.files)


class AccessLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", buffering=1)

    def write(self, **fields: Any) -> None:
        now = dt.datetime.now(dt.UTC)
        entry = {"at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **fields}
        line = json.dumps(entry, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")


def _identity(peer: dict[str, Any]) -> str | None:
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MtlsServer

    def do_GET(self) -> None:
        peer = self.connection.getpeercert() or {}
        body = json.dumps(
            {
                "identity": _identity(peer),
                "serial": str(peer.get("serialNumber", "")).lower(),
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log is written at the handshake


class MtlsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, port: int, contexts: Contexts, log: AccessLog) -> None:
        self.contexts = contexts
        self.access_log = log
        super().__init__(("127.0.0.1", port), Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        request.settimeout(HANDSHAKE_TIMEOUT)
        tls = self.contexts.current().wrap_socket(
            request, server_side=True, do_handshake_on_connect=False
        )
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason, detail = refusal_reason(exc)
            self.access_log.write(
                peer=peer, result="refused", reason=reason, detail=detail, identity=None
            )
            _close_gently(tls)
            return
        cert = tls.getpeercert() or {}
        self.access_log.write(
            peer=peer,
            result="accepted",
            identity=_identity(cert),
            serial=str(cert.get("serialNumber", "")).lower(),
        )
        try:
            Handler(tls, client_address, self)
        except OSError:
            pass
        finally:
            with contextlib.suppress(ssl.SSLError, OSError):
                tls.unwrap()


def _close_gently(tls: ssl.SSLSocket) -> None:
    """Close a refused connection so the client reads the TLS alert that names the reason.

    Closing with the client's last flight still unread makes the kernel send a reset,
    which can destroy the alert before the client reads it; so half-close, drain briefly,
    then close.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(tls, socket.SHUT_WR)
        tls.settimeout(0.5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and socket.socket.recv(tls, 4096):
            pass
    with contextlib.suppress(OSError):
        tls.close()


CONTENT_TYPES = {".crl": "application/pkix-crl", ".cer": "application/pkix-cert"}


class PkiFiles(BaseHTTPRequestHandler):
    """Plain HTTP (RFC 5280: relying parties fetch CRLs and CA certificates without TLS):
    ``GET PATH`` answers the DER file mapped to that path, read at each request."""

    protocol_version = "HTTP/1.1"
    server: PkiHttpServer

    def do_GET(self) -> None:
        path = self.server.files.get(self.path.split("?", 1)[0])
        try:
            body = path.read_bytes() if path is not None else None
        except OSError:
            body = None
        if path is None or body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PkiHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port another program holds is an error, not shared

    def __init__(self, port: int, files: dict[str, Path]) -> None:
        self.files = files
        super().__init__(("127.0.0.1", port), PkiFiles)


def _serve_map(pairs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pair in pairs:
        url_path, _, file = pair.partition("=")
        out[url_path] = Path(file)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devices.https_standin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--crl", type=Path)
    parser.add_argument("--access-log", type=Path, required=True)
    parser.add_argument("--run-dir", help="marker for process identification")
    parser.add_argument("--pki-port", type=int, help="plain-HTTP port for CRLs and CA certs")
    parser.add_argument("--serve", action="append", default=[], help="URL_PATH=FILE")
    args = parser.parse_args(argv)
    contexts = Contexts(Files(args.cert, args.key, args.ca, args.crl))
    pki_http = None
    if args.pki_port:
        try:
            pki_http = PkiHttpServer(args.pki_port, _serve_map(args.serve))
        except OSError as exc:
            print(f"cannot listen on 127.0.0.1:{args.pki_port}: {exc.strerror}", flush=True)
            return 1
        threading.Thread(target=pki_http.serve_forever, args=(0.2,), daemon=True).start()
    server = MtlsServer(args.port, contexts, AccessLog(args.access_log))

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown).start()
        if pki_http is not None:
            threading.Thread(target=pki_http.shutdown).start()

    signal.signal(signal.SIGHUP, lambda *_: contexts.reload())
    signal.signal(signal.SIGTERM, stop)
    if pki_http is not None:
        print(f"serving CRLs and CA certificates on http://127.0.0.1:{args.pki_port}/", flush=True)
    print(
        f"listening on {args.port} (https://127.0.0.1:{args.port}/) pid {os.getpid()}", flush=True
    )
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
