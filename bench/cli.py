"""Bench rows ``cli_one_shot`` and ``cli_help``: the CPU one ``fleetpki`` process costs, as
factory scripts and operators call it, against the floor of a bare Python script and
against ``openssl x509 -req``, each measured by ``/usr/bin/time -v`` in alternating runs
(fleetpki, floor, openssl, fleetpki, ...) so that the machine's drift weighs on all alike.

The processes run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed, one
warm-up run each), as an installed package runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_USER = re.compile(r"User time \(seconds\): ([0-9.]+)")
_SYSTEM = re.compile(r"System time \(seconds\): ([0-9.]+)")
_RSS = re.compile(r"Maximum resident set size \(kbytes\): ([0-9]+)")
TIME = "/usr/bin/time"


@dataclass
class Usage:
    cpu: float = 0.0  # user + system seconds, summed over the runs
    rss_kib: int = 0  # the largest maximum resident set size of a run
    runs: int = 0

    @property
    def per_run(self) -> float:
        return self.cpu / max(self.runs, 1)


def measured(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS (KiB) of one run, from ``time -v``."""
    done = subprocess.run(
        [TIME, "-v", *argv], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {done.stderr[-600:]}")
    report = done.stderr
    user, system, rss = _USER.search(report), _SYSTEM.search(report), _RSS.search(report)
    if user is None or system is None or rss is None:
        raise RuntimeError(f"no /usr/bin/time -v report for {argv[:4]}")
    return float(user.group(1)) + float(system.group(1)), int(rss.group(1))


def _csr(path: Path, name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def one_shot(work: Path, runs: int) -> dict[str, Usage]:
    """``fleetpki issue device`` once per process, the floor and openssl, alternating;
    then ``fleetpki --help`` / ``--version`` against ``python -c 'import click'``."""
    if not Path(TIME).exists():
        raise RuntimeError(f"{TIME} is missing (Debian package 'time')")
    bindir = Path(sys.executable).parent
    fleetpki = str(bindir / "fleetpki")
    home = work / "cli-home"
    env = dict(os.environ, FLEETPKI_HOME=str(home))
    for name in ("PYTHONDONTWRITEBYTECODE", "FLEETPKI_DATABASE_URL", "FLEETPKI_CA_PASSPHRASE"):
        env.pop(name, None)
    subprocess.run([fleetpki, "ca", "init"], env=env, check=True, capture_output=True)
    floor = str(Path(__file__).resolve().parent / "floor_issue.py")
    passfile = home / "ca-passphrase"

    def commands(n: int) -> dict[str, list[str]]:
        thing = f"oneshot-{n}"
        csr = work / f"{thing}.csr"
        if not csr.exists():
            _csr(csr, thing)
        return {
            "fleetpki": [fleetpki, "issue", "device", thing, "--csr", str(csr),
                         "--out", str(work / "out" / thing)],
            "floor": [sys.executable, floor, str(home), str(csr), str(work / "floor" / thing),
                      thing],
            "openssl": ["openssl", "x509", "-req", "-in", str(csr),
                        "-CA", str(home / "ca" / "issuing.pem"),
                        "-CAkey", str(home / "ca" / "issuing.key.pem"),
                        "-passin", f"file:{passfile}", "-days", "90", "-set_serial",
                        str(1000 + n), "-out", str(work / f"{thing}.openssl.pem")],
            "help": [fleetpki, "--help"],
            "version": [fleetpki, "--version"],
            "click": [sys.executable, "-c", "import click"],
        }  # fmt: skip

    totals: dict[str, Usage] = {}
    for n in range(runs + 1):
        for name, argv in commands(n).items():
            cpu, rss = measured(argv, env, work)
            if n == 0:
                continue  # warm-up: bytecode written, files cached
            usage = totals.setdefault(name, Usage())
            usage.cpu += cpu
            usage.rss_kib = max(usage.rss_kib, rss)
            usage.runs += 1
    return totals
