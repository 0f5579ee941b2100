"""The AWS Private CA issuance path, against moto on loopback: does fleetpki reach the quota?

``bench_aws`` starts ``moto_server`` in a subprocess on a free loopback port, creates a
root + subordinate Private CA hierarchy with ``pki.backends.aws_pca_setup.create_hierarchy``,
adopts it like ``ca init --backend aws-pca`` does, sets the client-side IssueCertificate
limit to the quota Q (25/s, the AWS default) and issues N device certificates from CSRs
through the product's batch path (CSR checks, policy, IssueCertificate with an
IdempotencyToken, the ``certificate_issued`` waiter, GetCertificate, verification of what
came back, inventory rows). Figure: certificates/s against Q; target >= 0.90 with no
throttling error reaching the caller.

The server is moto's own ``moto.server.main`` with three changes made in the server
process:

- IssueCertificate honours templates, ``ApiPassthrough`` and ``Validity``
  (``bench/moto_pca.py``, the handler the end-to-end tests use too). Stock moto ignores
  them: its subordinate CA certificate has no ``basicConstraints CA:TRUE`` (adoption is
  refused by ``check_chain``) and its device certificates have no EKU or SAN (quarantined
  by ``verify_issued``), so stock moto cannot exercise the path at all.
- The CA's RSA key is parsed once per CA instead of on every IssueCertificate (moto decrypts
  and validates it each time, ~70 ms: the stand-in, not fleetpki, would be measured).
- IssueCertificate enforces the quota with a token bucket, as AWS throttles its APIs: Q
  tokens a second, a burst of Q/5; a call finding the bucket empty is answered with
  ``ThrottlingException``. Every throttled response the client
  sees is counted (a botocore ``needs-retry`` hook), whether boto3's adaptive retries, our
  own backoff or nobody absorbed it.

Run alone: ``.venv/bin/python bench/aws.py [N]`` prints the figure as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "bench" / "run.py"
QUOTA = 25.0  # IssueCertificate requests/s: the AWS Private CA default quota
REGION = "us-east-1"

if TYPE_CHECKING:
    from bench.run import Figure


def _run_module() -> ModuleType:
    """bench/run.py's namespace: the running ``__main__`` when that is it (no second copy
    of the module and its ``Figure`` class), else ``bench.run`` imported."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is not None and main_file and Path(main_file).resolve() == RUN_PY:
        return main
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bench.run

    return bench.run


# -- the server process ---------------------------------------------------------------------


LATENCY = (0.05, 0.15)  # seconds the stand-in adds to every IssueCertificate/GetCertificate


def serve(port: int, quota: float, latency: tuple[float, float] = LATENCY) -> None:
    """moto's server with a template-honouring, quota-enforcing IssueCertificate, and
    50-150 ms of latency on IssueCertificate and GetCertificate, as a real service has
    (the figure then measures fleetpki against a realistic service, not its own pacing
    alone: it must keep enough requests in flight)."""
    import random
    sys.path.insert(0, str(ROOT))
    from moto.acmpca.models import CertificateAuthority
    from moto.acmpca.responses import ACMPCAResponse
    from moto.core.exceptions import JsonRESTError
    from moto.server import main

    from bench.moto_pca import issue_certificate as honour_templates

    # moto decrypts and validates the CA's RSA key from PEM on every use (~70 ms with
    # OpenSSL 3's RSA key check): parse it once per CA, so the stand-in is not what is measured
    load_key = vars(CertificateAuthority)["key"].fget
    keys: dict[bytes, Any] = {}

    def cached_key(self: Any) -> Any:
        if self.private_bytes not in keys:
            keys[self.private_bytes] = load_key(self)
        return keys[self.private_bytes]

    CertificateAuthority.key = property(cached_key)  # type: ignore[assignment,method-assign]
    # AWS throttles API calls with token buckets: the quota refills the bucket, and a small
    # burst (here a fifth of a second's worth) absorbs the jitter of requests in flight.
    # A strict sliding window would throttle even a client pacing at exactly the quota
    # (26 evenly spaced requests fit in a closed one-second window).
    capacity = max(1.0, quota / 5)
    bucket = {"tokens": capacity, "at": time.monotonic()}
    lock = threading.Lock()

    def issue_certificate(self: Any) -> str:
        with lock:
            now = time.monotonic()
            bucket["tokens"] = min(capacity, bucket["tokens"] + (now - bucket["at"]) * quota)
            bucket["at"] = now
            if bucket["tokens"] < 1:
                raise JsonRESTError("ThrottlingException", "Rate exceeded")
            bucket["tokens"] -= 1
        time.sleep(random.uniform(*latency))  # noqa: S311 (a delay, not a secret)
        return honour_templates(self)

    get_certificate = ACMPCAResponse.get_certificate

    def slow_get_certificate(self: Any) -> Any:
        time.sleep(random.uniform(*latency))  # noqa: S311
        return get_certificate(self)

    ACMPCAResponse.issue_certificate = issue_certificate  # type: ignore[method-assign]
    ACMPCAResponse.get_certificate = slow_get_certificate  # type: ignore[method-assign]
    main(["-H", "127.0.0.1", "-p", str(port)])


@contextmanager
def moto_server(quota: float) -> Iterator[str]:
    """This file's patched moto (``serve``) on a free loopback port, on the real clock."""
    from pki.processes import moto_server as start

    def argv(port: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), str(quota)]

    with start(None, argv=argv) as url:
        yield url


@contextmanager
def aws_environment(endpoint: str) -> Iterator[None]:
    """The standard AWS settings pointing at moto, restored afterwards."""
    values = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in [*values, "AWS_PROFILE"]}
    os.environ.update(values)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the benchmark ----------------------------------------------------------------------------


def bench_aws(sizes: dict[str, int], work: Path) -> list[Figure]:
    run = _run_module()
    from pki.aws.pacing import THROTTLING
    from pki.backends.aws_pca import AwsPrivateCA, make_client
    from pki.backends.aws_pca_setup import create_hierarchy
    from pki.clock import SystemClock

    big = sizes.get("aws", 250)
    small = 120 if big >= 100 else max(1, big // 2)  # a small batch: below the fork threshold
    quota = QUOTA
    csrs = run.make_csrs(big + small)
    clock = SystemClock()
    throttled = {"responses": 0}

    def count_throttles(response: Any = None, **_: Any) -> None:
        if response is not None:
            code = response[1].get("Error", {}).get("Code")
            if code in THROTTLING:
                throttled["responses"] += 1

    run.log(f"aws: moto_server on loopback, IssueCertificate quota {quota:g}/s, "
            f"{LATENCY[0] * 1000:g}-{LATENCY[1] * 1000:g} ms per call, {small} then {big} issues")
    figures = []
    with moto_server(quota) as endpoint, aws_environment(endpoint):
        client = make_client(REGION)
        client.meta.events.register("needs-retry.acm-pca.IssueCertificate", count_throttles)
        maker = AwsPrivateCA("arn:aws:acm-pca:::certificate-authority/creating", client,
                             clock=clock)  # fmt: skip
        arn = create_hierarchy(maker, "bench", "ec-p256", 3650, 1825)
        for key, count, chosen in (("aws_issue_quota_small", small, csrs[:small]),
                                   ("aws_issue_quota", big, csrs[small:])):  # fmt: skip
            throttled["responses"] = 0
            figures.append(_one_batch(run, key, count, chosen, work / key, client, arn, clock,
                                      throttled))  # fmt: skip
    return figures


def _one_batch(
    run: ModuleType, key: str, count: int, csrs: list[tuple[str, bytes]], work: Path,
    client: Any, arn: str, clock: Any, throttled: dict[str, int],
) -> Figure:  # fmt: skip
    """One batch of ``count`` CSRs on a home of its own adopting the same Private CA."""
    from pki.aws.pacing import RateLimits
    from pki.backends.aws_pca import AwsPrivateCA
    from pki.ca.setup import init_aws_ca
    from pki.errors import FleetPkiError
    from pki.home import Home
    from pki.issue.batch import default_workers
    from pki.issue.issuer import Issuer
    from pki.model import IssueRequest
    from pki.storage import Inventory

    quota = QUOTA
    work.mkdir(parents=True, exist_ok=True)
    home = Home(work / "aws-home")
    inventory = Inventory.create(f"sqlite:///{work / 'aws-inventory.db'}")
    try:
        ca = AwsPrivateCA(arn, client, clock=clock, ledger=inventory,
                          limits=RateLimits(issue=quota))  # fmt: skip
        init_aws_ca(home, inventory, clock, ca, REGION)  # adopt: status and chain checked
        issuer = Issuer(ca, inventory, clock)
        requests = [IssueRequest("device", name, pem, actor="bench") for name, pem in csrs]
        caller_errors: list[str] = []

        def issue_all() -> int:
            try:
                report = issuer.issue_batch(
                    requests, actor="bench", workers=default_workers(len(requests), remote=True)
                )
            except FleetPkiError as exc:  # a backend error stops a batch
                caller_errors.append(str(exc))
                return 0
            caller_errors.extend(f"{f.name}: {f.error}" for f in report.failed)
            return len(report.issued)

        seconds, issued = run.timed(issue_all)
    finally:
        inventory.close()
    rate = issued / seconds
    ratio = rate / quota
    throttling_errors = sum("throttl" in e for e in caller_errors)
    met = ratio >= 0.9 and issued == count and not caller_errors
    return run.Figure(  # type: ignore[no-any-return]
            key,
            f"AWS Private CA path (moto on loopback, {LATENCY[0] * 1000:g}-"
            f"{LATENCY[1] * 1000:g} ms a call): {count} device certificates",
            rate,
            "certs/s",
            quota,
            "IssueCertificate quota (client-side limit, enforced by the server)",
            ratio,
            ">= 0.90",
            met,
            {
                "issued": issued,
                "seconds": round(seconds, 3),
                "throttled_responses": throttled["responses"],
                "throttles_past_boto_retries": ca.stats.throttled,
                "throttling_errors_to_caller": throttling_errors,
                "errors_to_caller": caller_errors[:3],
                "calls": dict(ca.stats.calls),
                "limiter_wait_s_all_threads": round(ca.stats.waited, 3),
                "requests_in_flight": default_workers(len(requests), remote=True),
                "server": "moto.server.main + template-honouring, quota-enforcing "
                "IssueCertificate, added latency (see bench/aws.py)",
            },
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), float(sys.argv[3]))
    else:
        import dataclasses
        import tempfile

        sys.path.insert(0, str(ROOT))
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 250
        with tempfile.TemporaryDirectory(prefix="fleetpki-bench-aws-") as tmp:
            started = time.perf_counter()
            figures = bench_aws({"aws": n}, Path(tmp))
            total = time.perf_counter() - started
        for figure in figures:
            print(json.dumps(dataclasses.asdict(figure) | {"wall_s": round(total, 1)}, indent=2))
