"""fleetpki benchmarks. Run through ``scripts/bench [--quick]``.

Every figure is a ratio against a baseline measured in the same run (these machines are
shared and noisy: absolute times drift, ratios much less). Targets are checked here; the
script exits 1 naming every missed target. Results go to bench/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pki.backends import RevokedEntry  # noqa: E402
from pki.backends.local import LocalCA  # noqa: E402
from pki.clock import SystemClock  # noqa: E402
from pki.issue.issuer import Issuer  # noqa: E402
from pki.model import CertificateRecord, IssueRequest, KeyType, RevocationReason, Status  # noqa: E402
from pki.revocation.crl import build_crl, check_serials, revoked_serials  # noqa: E402
from pki.storage import Inventory, NewCertificate  # noqa: E402

PEM = serialization.Encoding.PEM
PG_URL = os.environ.get("FLEETPKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

SIZES = {
    "full": {
        "issue": 20_000,
        "crl": 1_000_000,
        "check": 100_000,
        "rows": 1_000_000,
        "per_process": 300,
        "devices": 1_000,
        "handshakes": 2_000,
        "aws": 500,
        "cli_runs": 20,
    },
    "quick": {
        "issue": 2_000,
        "crl": 100_000,
        "check": 10_000,
        "rows": 100_000,
        "per_process": 40,
        "devices": 200,
        "handshakes": 400,
        "aws": 100,
        "cli_runs": 10,
    },
}


@dataclass
class Figure:
    key: str
    title: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- 1 and 2: issuance


def make_csrs(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"dev-{i:06d}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        out.append((name, csr.public_bytes(PEM)))
    return out


def new_ca(directory: Path) -> LocalCA:
    return LocalCA.create(
        directory / "ca",
        key_type=KeyType.EC_P256,
        common_name="bench",
        passphrase=b"bench-passphrase",
        now=SystemClock().now(),
    )


def ceiling(csrs: list[tuple[str, bytes]], ca: LocalCA) -> float:
    """Bare cryptography: CSR load + signature check + CertificateBuilder.sign + PEM, with
    the same extensions fleetpki puts in, no policy, no verification, no storage."""
    from bench.ceiling import signed

    issuer = ca.issuing_certificate.subject
    key = ca._issuing_key
    now = dt.datetime.now(dt.UTC)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.issuing_ski)

    def run() -> int:
        count = 0
        for name, pem in csrs:
            csr = x509.load_pem_x509_csr(pem)
            if not csr.is_signature_valid:
                raise AssertionError("bad CSR")
            uri = f"https://fleetpki.local/things/{name}"
            cert = signed(csr, csr.public_key(), issuer, key, aki, uri, now)
            cert.public_bytes(PEM)
            count += 1
        return count

    seconds, count = timed(run)
    return count / seconds


class FleetpkiRunner:
    """fleetpki's batch path on one inventory, timed chunk by chunk."""

    def __init__(self, ca: LocalCA, db_url: str, workers: int) -> None:
        self.inventory = Inventory.create(db_url)
        self.issuer = Issuer(ca, self.inventory, SystemClock())
        self.workers = workers

    def seconds(self, csrs: list[tuple[str, bytes]]) -> float:
        requests = [IssueRequest("device", name, pem, actor="bench") for name, pem in csrs]
        # as 'fleetpki issue device --batch' runs it (without --json nobody reads the
        # certificates back from the workers)
        seconds, report = timed(
            lambda: self.issuer.issue_batch(
                requests, workers=self.workers, actor="bench", keep=False
            )
        )
        if report.failed or report.issued_count != len(csrs):
            raise AssertionError(f"batch failed: {report.failed[:3]}")
        return seconds

    def close(self) -> None:
        self.inventory.close()


def interleaved(
    csrs: list[tuple[str, bytes]],
    runners: dict[str, Callable[[list[tuple[str, bytes]]], float]],
    rounds: int,
) -> dict[str, float]:
    """Rates of several runners over the same CSRs, measured in alternating chunks so that
    the machine's drifting speed (shared hosts) affects all of them alike."""
    size = max(1, len(csrs) // rounds)
    totals = dict.fromkeys(runners, 0.0)
    for start in range(0, len(csrs), size):
        chunk = csrs[start : start + size]
        for name, run in runners.items():
            totals[name] += run(chunk)
    return {name: len(csrs) / seconds for name, seconds in totals.items()}


def machine_scaling(n: int = 20_000) -> float:
    """How much faster two processes sign than one on this machine (ECDSA P-256, no
    coordination at all): the ceiling any 2-process speed-up can reach here."""
    import multiprocessing

    one_seconds = _sign_loop(n)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_sign_loop, [n, n])
        two_seconds = time.perf_counter() - start
    return (2 * n / two_seconds) / (n / one_seconds)


def _sign_loop(n: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    start = time.perf_counter()
    for _ in range(n):
        key.sign(b"fleetpki" * 4, ec.ECDSA(hashes.SHA256()))
    return time.perf_counter() - start


def fleetpki_rate(csrs: list[tuple[str, bytes]], ca: LocalCA, db_url: str, workers: int) -> float:
    inventory = Inventory.create(db_url)
    try:
        issuer = Issuer(ca, inventory, SystemClock())
        requests = [IssueRequest("device", name, pem, actor="bench") for name, pem in csrs]
        seconds, report = timed(
            lambda: issuer.issue_batch(requests, workers=workers, actor="bench", keep=False)
        )
        if report.failed or report.issued_count != len(csrs):
            raise AssertionError(f"batch failed: {report.failed[:3]}")
        return len(csrs) / seconds
    finally:
        inventory.close()


def openssl_rate(csrs: list[tuple[str, bytes]], ca: LocalCA, work: Path) -> float:
    """What shell-script CAs do: one ``openssl x509 -req`` process per certificate."""
    key_file = work / "ca-plain.key"
    key_file.write_bytes(
        ca._issuing_key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    cert_file = work / "ca.pem"
    cert_file.write_bytes(ca.issuing_certificate.public_bytes(PEM))
    ext = work / "ext.cnf"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    files = []
    for name, pem in csrs:
        path = work / f"{name}.csr"
        path.write_bytes(pem)
        files.append(path)

    def run() -> None:
        for path in files:
            subprocess.run(
                [
                    "openssl",
                    "x509",
                    "-req",
                    "-in",
                    str(path),
                    "-CA",
                    str(cert_file),
                    "-CAkey",
                    str(key_file),
                    "-set_serial",
                    f"0x{secrets.token_hex(16)}",
                    "-days",
                    "90",
                    "-sha256",
                    "-extfile",
                    str(ext),
                    "-out",
                    str(path.with_suffix(".pem")),
                ],
                check=True,
                capture_output=True,
            )

    seconds, _ = timed(run)
    key_file.unlink()
    return len(files) / seconds


def trustme_rate(n: int) -> float:
    """trustme (a test CA library): note it also makes a new key for every certificate."""
    import trustme

    ca = trustme.CA()
    seconds, _ = timed(
        lambda: [ca.issue_cert(f"dev-{i}.example").cert_chain_pems[0].bytes() for i in range(n)]
    )
    return n / seconds


def pg_database() -> Iterator[str] | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            pass
    except Exception:
        return None

    def gen() -> Iterator[str]:
        name = f"fleetpki_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return gen()


def bench_issuance(sizes: dict[str, int], work: Path) -> list[Figure]:
    n = sizes["issue"]
    log(f"issuance: making {n} CSRs")
    csrs = make_csrs(n)
    ca = new_ca(work)
    ca.load_signing_key()
    log("issuance: ceilings A (bare cryptography) and B (+ check + rows, bare sqlite3) and "
        "fleetpki on 1 process, interleaved")
    from bench.ceiling import CeilingB

    one_runner = FleetpkiRunner(ca, f"sqlite:///{work / 'one.db'}", workers=1)
    ceiling_b = CeilingB(ca, work / "ceiling-b.db")
    try:
        rates = interleaved(
            csrs,
            {
                "bare": lambda chunk: len(chunk) / ceiling(chunk, ca),
                "b": ceiling_b.seconds,
                "one": one_runner.seconds,
            },
            rounds=5,
        )
    finally:
        one_runner.close()
        ceiling_b.close()
    # The batch path starts its worker processes once per batch: compare 1 and 2 processes
    # in large chunks, so the pool's start-up weighs as it does in a real batch.
    log("issuance: fleetpki on 1 and on 2 processes, interleaved")
    one_runner = FleetpkiRunner(ca, f"sqlite:///{work / 'one-b.db'}", workers=1)
    two_runner = FleetpkiRunner(ca, f"sqlite:///{work / 'two.db'}", workers=2)
    try:
        pair = interleaved(csrs, {"one": one_runner.seconds, "two": two_runner.seconds}, rounds=2)
    finally:
        one_runner.close()
        two_runner.close()
    rates["two"] = rates["one"] * pair["two"] / pair["one"]
    bare, b, one, two = rates["bare"], rates["b"], rates["one"], rates["two"]
    log("issuance: this machine's own 2-process scaling (plain ECDSA signing)")
    scaling = machine_scaling()
    share = (two / one) / scaling
    figures = [
        Figure(
            "issue_sqlite",
            f"issuance, local CA P-256, SQLite ({n} CSRs)",
            one,
            "certs/s",
            b,
            "ceiling B: bare cryptography + the same check + rows via bare sqlite3",
            one / b,
            ">= 0.85",
            one / b >= 0.85,
            {"ceiling_a": round(bare, 1), "ratio_to_ceiling_a": round(one / bare, 2),
             "ceiling_b_to_a": round(b / bare, 2)},
        ),
        Figure(
            "issue_vs_ceiling_a",
            "fleetpki on 1 process vs ceiling A (bare cryptography, no check, no storage)",
            one,
            "certs/s",
            bare,
            "bare cryptography",
            one / bare,
            "report",
        ),
        Figure(
            "issue_two_cores",
            f"issuance on 2 processes ({n} CSRs)",
            two,
            "certs/s",
            one,
            "fleetpki on 1 process",
            two / one,
            ">= 0.92 of machine_two_cores",
            share >= 0.92,
            {
                "cores": os.cpu_count(),
                "machine_scaling": round(scaling, 2),
                "share_of_machine_scaling": round(share, 2),
            },
        ),
        Figure(
            "machine_two_cores",
            "this machine: 2 processes signing vs 1 (no coordination)",
            scaling,
            "x",
            None,
            "",
            None,
            "report",
        ),
    ]
    pg = pg_database()
    if pg is not None:
        log("issuance: fleetpki on PostgreSQL, one process")
        url = next(pg)
        try:
            rate = fleetpki_rate(csrs, ca, url, workers=1)
        finally:
            pg.close()
        figures.append(
            Figure(
                "issue_postgres",
                f"issuance on PostgreSQL ({n} CSRs)",
                rate,
                "certs/s",
                bare,
                "bare cryptography",
                rate / bare,
                "report",
            )
        )
    k = sizes["per_process"]
    log(f"issuance: openssl x509 -req per certificate ({k})")
    ossl = openssl_rate(csrs[:k], ca, work)
    figures.append(
        Figure(
            "issue_vs_openssl",
            "fleetpki vs one openssl process per cert",
            one,
            "certs/s",
            ossl,
            "openssl x509 -req",
            one / ossl,
            "report",
        )
    )
    log(f"issuance: trustme ({k})")
    tm = trustme_rate(k)
    figures.append(
        Figure(
            "issue_vs_trustme",
            "fleetpki vs trustme.CA().issue_cert",
            one,
            "certs/s",
            tm,
            "trustme (new key per cert)",
            one / tm,
            "report",
        )
    )
    return figures


# -------------------------------------------------------------------------------- 3: CRL


def crl_child(kind: str, n: int, checks: int) -> dict[str, Any]:
    """Runs in its own process so that its peak memory is its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench issuing")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issuer = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    serials = [secrets.randbits(127) + 1 for _ in range(n)]
    reason = RevocationReason.KEY_COMPROMISE
    when = now - dt.timedelta(hours=1)
    result: dict[str, Any] = {}
    if kind == "ours":
        entries = [RevokedEntry(s, when, reason) for s in serials]
        seconds, crl = timed(
            lambda: build_crl(
                issuer, key, entries, 1, now, now + dt.timedelta(days=7), hashes.SHA256()
            )
        )
    else:
        ext = [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(reason.x509_flag))]

        def bare() -> x509.CertificateRevocationList:
            revoked = [x509.RevokedCertificateBuilder(s, when, ext).build() for s in serials]
            return x509.CertificateRevocationListBuilder(
                issuer_name=issuer.subject,
                last_update=now,
                next_update=now + dt.timedelta(days=7),
                extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
                revoked_certificates=revoked,
            ).sign(key, hashes.SHA256())

        seconds, crl = timed(bare)
    der = crl.public_bytes(serialization.Encoding.DER)
    result["seconds"] = seconds
    result["der_bytes"] = len(der)
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "ours" and checks:
        loaded = x509.load_der_x509_crl(der)
        candidates = serials[: checks // 2] + [
            secrets.randbits(127) + 1 for _ in range(checks - checks // 2)
        ]
        set_seconds, hits = timed(lambda: check_serials(candidates, revoked_serials(loaded)))
        assert len(hits) == checks // 2
        sample = candidates[:10] + candidates[-10:]
        lin_seconds, found = timed(
            lambda: [loaded.get_revoked_certificate_by_serial_number(s) for s in sample]
        )
        assert sum(1 for f in found if f is not None) == 10
        result["set_seconds"] = set_seconds
        result["linear_per_serial"] = lin_seconds / len(sample)
        result["checks"] = checks
    return result


def run_crl_child(kind: str, n: int, checks: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--crl-child", kind, str(n), str(checks)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def bench_crl(sizes: dict[str, int]) -> list[Figure]:
    n, checks = sizes["crl"], sizes["check"]
    # Alternate the two twice and keep each one's best time (the machine's speed drifts);
    # the serial checks run in fleetpki's second process.
    log(f"CRL: bare cryptography and fleetpki, {n} entries, alternating twice")
    bare_runs = [run_crl_child("bare", n, 0)]
    ours_runs = [run_crl_child("ours", n, 0)]
    bare_runs.append(run_crl_child("bare", n, 0))
    ours_runs.append(run_crl_child("ours", n, checks))
    bare = min(bare_runs, key=lambda r: r["seconds"]) | {
        "maxrss_kib": max(r["maxrss_kib"] for r in bare_runs)
    }
    ours = ours_runs[-1] | {
        "seconds": min(r["seconds"] for r in ours_runs),
        "maxrss_kib": max(r["maxrss_kib"] for r in ours_runs),
    }
    gib = 1024 * 1024
    linear_total = ours["linear_per_serial"] * checks
    speedup = linear_total / ours["set_seconds"]
    return [
        Figure(
            "crl_build",
            f"CRL build + sign, {n} entries",
            ours["seconds"],
            "s",
            bare["seconds"],
            "bare cryptography, one pass",
            ours["seconds"] / bare["seconds"],
            "<= 1.25",
            ours["seconds"] / bare["seconds"] <= 1.25,
            {"der_mb": round(ours["der_bytes"] / 1e6, 1)},
        ),
        Figure(
            "crl_peak_memory",
            f"CRL peak memory, {n} entries",
            ours["maxrss_kib"] / 1024,
            "MiB",
            bare["maxrss_kib"] / 1024,
            "bare cryptography",
            ours["maxrss_kib"] / bare["maxrss_kib"],
            "<= 1 GiB",
            ours["maxrss_kib"] <= gib,
        ),
        Figure(
            "crl_check",
            f"check {checks} serials against the loaded CRL",
            ours["set_seconds"],
            "s",
            linear_total,
            "get_revoked_certificate_by_serial_number per serial (extrapolated)",
            speedup,
            ">= 100x",
            speedup >= 100,
            {"linear_ms_per_serial": round(ours["linear_per_serial"] * 1000, 2)},
        ),
    ]


# -------------------------------------------------------------------- 4: inventory scale


def fill_inventory(inventory: Inventory, rows: int, now: dt.datetime) -> float:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    batch = 1000

    def records(start: int) -> list[NewCertificate]:
        out = []
        for i in range(start, min(start + batch, rows)):
            serial = secrets.randbits(127) + 1
            not_after = now + dt.timedelta(days=1 + (i * 7919) % 397, seconds=i % 86400)
            out.append(
                NewCertificate(
                    CertificateRecord(
                        serial=serial,
                        thing=f"thing-{i}",
                        common_name=f"thing-{i}",
                        profile="device",
                        status=Status.ACTIVE,
                        not_before=not_after - dt.timedelta(days=397),
                        not_after=not_after,
                        fingerprint_sha256=secrets.token_hex(32),
                        issuer="CN=bench Issuing CA",
                        backend="local",
                        created_at=now,
                    ),
                    pem,
                )
            )
        return out

    def run() -> None:
        for start in range(0, rows, batch):
            chunk = records(start)
            with inventory.transaction() as conn:
                inventory.add_certificates(conn, chunk)

    seconds, _ = timed(run)
    return rows / seconds


def bench_inventory(sizes: dict[str, int], work: Path) -> list[Figure]:
    import sqlite3

    from rotation.planner import plan_inventory

    rows = sizes["rows"]
    path = work / "scale.db"
    inventory = Inventory.create(f"sqlite:///{path}")
    now = dt.datetime.now(dt.UTC)
    try:
        log(f"inventory: inserting {rows} rows in 1,000-row transactions")
        insert_rate = fill_inventory(inventory, rows, now)
        log("inventory: list --expiring-within 30d")
        list_seconds, found = timed(
            lambda: inventory.find(now=now, expiring_within=dt.timedelta(days=30))
        )
        log("inventory: rotation plan")
        plan_seconds, due = timed(lambda: plan_inventory(inventory, now))
    finally:
        inventory.close()
    conn = sqlite3.connect(path)
    raw_seconds, raw = timed(
        lambda: conn.execute(
            "SELECT serial, thing, profile, not_before, not_after FROM certificates "
            "WHERE status = 'active'"
        ).fetchall()
    )
    conn.close()
    assert len(raw) == rows
    return [
        Figure(
            "inventory_insert",
            f"inventory insert, {rows} rows (SQLite WAL)",
            insert_rate,
            "rows/s",
            None,
            "",
            None,
            "report",
        ),
        Figure(
            "inventory_expiring",
            f"list --expiring-within 30d over {rows} rows",
            list_seconds,
            "s",
            raw_seconds,
            "raw sqlite3 fetch of all rows",
            list_seconds / raw_seconds,
            "report",
            None,
            {"rows_returned": len(found), "rows_per_s": round(rows / list_seconds)},
        ),
        Figure(
            "rotation_plan",
            f"rotation plan over {rows} rows",
            plan_seconds,
            "s",
            raw_seconds,
            "raw sqlite3 fetch of all rows",
            plan_seconds / raw_seconds,
            "<= 5 s",
            plan_seconds <= 5.0,
            {"due": len(due), "rows_per_s": round(rows / plan_seconds)},
        ),
    ]


# ------------------------------------------------------------------------------ 5: fleet


def _cli(home: Path, *args: str) -> str:
    env = dict(os.environ, FLEETPKI_HOME=str(home), AWS_ENDPOINT_URL="http://127.0.0.1:9")
    env.pop("FLEETPKI_DATABASE_URL", None)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "fleetpki"), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout


def handshake_child(port: int, cert: str, key: str, ca: str, count: int) -> None:
    """Bare Python ``ssl`` mutual handshakes against the broker (TLS 1.2, as the
    simulator's devices use): TCP connect, handshake, close; prints how long they took."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    start = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                pass
    print(json.dumps({"seconds": time.perf_counter() - start, "count": count}))


def _simulate(home: Path, devices: int, scenario: str, *more: str) -> dict[str, Any]:
    out = _cli(home, "fleet", "simulate", "--devices", str(devices), "--duration", "2",
               "--scenario", scenario, "--json", *more)  # fmt: skip
    return dict(json.loads(out))


def bench_fleet(sizes: dict[str, int], work: Path) -> list[Figure]:
    devices = sizes["devices"]
    home = work / "fleet-home"
    _cli(home, "ca", "init")
    state = json.loads(_cli(home, "dev", "up", "--json"))
    try:
        port = int(state["mqtt"]["port"])
        one = work / "bare-device"
        _cli(home, "issue", "device", "bare-1", "--generate-key", "--out", str(one))
        workers = min(4, os.cpu_count() or 1)
        per = sizes["handshakes"] // workers
        log(f"fleet: bare ssl mutual handshakes, {workers} processes x {per}")
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--handshake-child",
                    str(port),
                    str(one / "fullchain.pem"),
                    str(one / "key.pem"),
                    str(home / "ca" / "root.pem"),
                    str(per),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        for p in procs:
            p.communicate()
            if p.returncode:
                raise RuntimeError("handshake child failed")
        bare = workers * per / (time.perf_counter() - started)
        log(f"fleet: simulating {devices} devices")
        summary = _simulate(home, devices, "steady")
        log(f"fleet: rotation wave of {devices} devices over MQTT")
        wave = _simulate(home, devices, "rotation")
        in_flight = max(1, devices // 5)
        log(f"fleet: the same wave paced, at most {in_flight} devices in flight")
        paced = _simulate(home, devices, "rotation", "--wave-in-flight", str(in_flight))
    finally:
        _cli(home, "dev", "down")
    rate = summary["connect_phase"]["connects_per_s"] or 0.0
    rotation = wave["rotation"]
    service = rotation["service"] or {}
    wave_seconds = rotation["wave_seconds"] or float("nan")
    connect_seconds = summary["connect_phase"]["seconds"] or float("nan")
    return [
        Figure(
            "rotation_wave",
            f"rotation wave over MQTT, {devices} devices (request -> new key + CSR -> issue -> "
            "certificate -> reconnect -> confirm)",
            wave_seconds,
            "s",
            connect_seconds,
            "the same fleet's first connect phase (s)",
            wave_seconds / connect_seconds,
            "report (every device rotated)",
            None if wave["checks"]["passed"] else False,
            {
                "confirmed": rotation["devices_confirmed"],
                "completed": service.get("states", {}).get("completed"),
                "command_seconds": service.get("seconds"),
                "per_device_p50_s": rotation["per_device_seconds"]["p50"],
                "per_device_p99_s": rotation["per_device_seconds"]["p99"],
                "lost": wave["messages"]["lost"],
                "checks_passed": wave["checks"]["passed"],
            },
        ),
        _paced_figure(devices, in_flight, paced, wave_seconds),
        Figure(
            "fleet_connects",
            f"MQTT mTLS connects, {devices} simulated devices",
            rate,
            "connects/s",
            bare,
            "bare Python ssl mutual handshakes, same broker",
            rate / bare,
            ">= 0.50",
            rate / bare >= 0.5,
            {
                "connected": summary["connected"],
                "lost": summary["messages"]["lost"],
                "p50_ms": summary["connect_latency_ms"]["p50"],
                "p99_ms": summary["connect_latency_ms"]["p99"],
            },
        ),
    ]


def _paced_figure(
    devices: int, in_flight: int, paced: dict[str, Any], unpaced_seconds: float
) -> Figure:
    rotation = paced["rotation"]
    seconds = rotation["wave_seconds"] or float("nan")
    service = rotation["service"] or {}
    return Figure(
        "rotation_wave_paced",
        f"the same rotation wave paced, at most {in_flight} of {devices} devices in flight",
        seconds,
        "s",
        unpaced_seconds,
        "the unpaced wave (every device asked at once, s)",
        seconds / unpaced_seconds,
        "report (every device rotated)",
        None if paced["checks"]["passed"] else False,
        {
            "confirmed": rotation["devices_confirmed"],
            "completed": service.get("states", {}).get("completed"),
            "per_device_p50_s": rotation["per_device_seconds"]["p50"],
            "per_device_p99_s": rotation["per_device_seconds"]["p99"],
            "checks_passed": paced["checks"]["passed"],
        },
    )


def bench_aws_part(sizes: dict[str, int], work: Path) -> list[Figure]:
    try:
        from bench.aws import bench_aws
    except ImportError as exc:
        log(f"aws: skipped ({exc})")
        return []
    return bench_aws(sizes, work)


# ---------------------------------------------------------------------------------- main


def bench_cli(sizes: dict[str, int], work: Path) -> list[Figure]:
    from bench.cli import one_shot

    runs = sizes["cli_runs"]
    log(f"one-shot CLI: {runs} alternating runs of fleetpki, the bare floor and openssl")
    usage = one_shot(work / "cli", runs)
    fleet, floor, ossl = usage["fleetpki"], usage["floor"], usage["openssl"]
    helps, version, click = usage["help"], usage["version"], usage["click"]
    one = fleet.per_run / floor.per_run
    help_ratio = helps.per_run / click.per_run
    version_ratio = version.per_run / click.per_run
    return [
        Figure(
            "cli_one_shot",
            "one 'fleetpki issue device' process: CPU (user + system)",
            fleet.per_run,
            "s",
            floor.per_run,
            "bare Python floor: CSR check + sign with cryptography + PEM",
            one,
            "<= 4.0",
            one <= 4.0,
            {
                "runs": runs,
                "openssl_s": round(ossl.per_run, 4),
                "vs_openssl": round(fleet.per_run / ossl.per_run, 2),
                "floor_vs_openssl": round(floor.per_run / ossl.per_run, 2),
                "max_rss_mib": {k: round(u.rss_kib / 1024, 1) for k, u in usage.items()},
            },
        ),
        Figure(
            "cli_help",
            "'fleetpki --help' (and --version): CPU (user + system)",
            helps.per_run,
            "s",
            click.per_run,
            "python -c 'import click'",
            help_ratio,
            "<= 2.0 (both)",
            help_ratio <= 2.0 and version_ratio <= 2.0,
            {"version_s": round(version.per_run, 4), "version_ratio": round(version_ratio, 2)},
        ),
    ]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "platform": platform.platform(),
    }


def print_table(figures: list[Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fleetpki benchmarks")
    for col in ("figure", "value", "baseline", "ratio", "target", "ok"):
        table.add_column(col)
    for f in figures:
        table.add_row(
            f.title,
            f"{f.value:,.2f} {f.unit}",
            f"{f.baseline:,.2f} ({f.baseline_name})" if f.baseline is not None else "-",
            f"{f.ratio:.2f}" if f.ratio is not None else "-",
            f.target,
            {True: "yes", False: "NO", None: "-"}[f.met],
        )
    Console(width=200).print(table)


PARTS = ["issuance", "crl", "inventory", "fleet", "aws", "cli"]
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Run {result['date']} ({result['mode']}, {result['elapsed_s']} s) on {m['cpu']}, "
        f"{m['cores']} cores, Python {m['python']}, cryptography {m['cryptography']}.",
        "",
        "| figure | value | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in result["figures"]:
        baseline = (
            f"{f['baseline']:,.2f} ({f['baseline_name']})" if f["baseline"] is not None else "-"
        )
        ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        lines.append(
            f"| {f['title']} | {f['value']:,.2f} {f['unit']} | {baseline} | {ratio} "
            f"| {f['target']} | {met} |"
        )
    return "\n".join(lines)


def update_readme(result: dict[str, Any]) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + markdown(result) + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes)")
    parser.add_argument("--only", choices=PARTS, action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--update-readme", action="store_true", help="write the results table into bench/README.md"
    )
    parser.add_argument("--crl-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--handshake-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.handshake_child:
        port, cert, key, ca, count = args.handshake_child
        handshake_child(int(port), cert, key, ca, int(count))
        return 0
    if args.crl_child:
        kind, n, checks = args.crl_child
        print(json.dumps(crl_child(kind, int(n), int(checks))))
        return 0
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    parts = args.only or PARTS
    started = time.perf_counter()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as tmp:
        work = Path(tmp)
        if "issuance" in parts:
            figures += bench_issuance(sizes, work)
        if "crl" in parts:
            figures += bench_crl(sizes)
        if "inventory" in parts:
            figures += bench_inventory(sizes, work)
        if "fleet" in parts:
            figures += bench_fleet(sizes, work)
        if "aws" in parts:
            figures += bench_aws_part(sizes, work)
        if "cli" in parts:
            figures += bench_cli(sizes, work)
    elapsed = time.perf_counter() - started
    print_table(figures)
    missed = [f for f in figures if f.met is False]
    result = {
        "mode": mode,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "elapsed_s": round(elapsed, 1),
        "figures": [f.__dict__ for f in figures],
        "missed": [f.key for f in missed],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.update_readme:
        update_readme(result)
    print(f"wrote {args.out} ({mode}, {elapsed:.0f} s)", file=sys.stderr)
    for f in missed:
        print(
            f"MISSED TARGET {f.key}: {f.title}: ratio {f.ratio:.2f}, target {f.target}",
            file=sys.stderr,
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
