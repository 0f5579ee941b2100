"""The inventory's ledgers on SQLite and PostgreSQL: bundle versions and the Private CA
request ledger (IdempotencyTokens remembered beyond AWS's 5 minutes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pki.backends.aws_pca import LEDGER_WINDOW, AwsPrivateCA, WaitConfig
from pki.clock import FixedClock
from pki.errors import NotFound
from pki.storage import BundleVersion, Inventory
from tests.aws_fixtures import ARN, pca_signing_request
from tests.helpers import NOW


@pytest.fixture
def inventory(db_url: str | None, tmp_path: Path) -> Iterator[Inventory]:
    opened = Inventory.create(db_url or f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


def row(n: int, **changes: Any) -> BundleVersion:
    values: dict[str, Any] = {
        "target": "apigw",
        "endpoint": "api.fleet.example",
        "bucket": "fleet-trust",
        "key": "trust/bundle.pem",
        "version_id": f"v{n}",
        "sha256": f"{n:064x}",
        "certificates": 2,
        "action": "publish",
        "uploaded": n % 2 == 1,
        "applied_at": NOW + dt.timedelta(minutes=n, microseconds=n),
        "actor": "ops",
    }
    return BundleVersion(**(values | changes))


def test_bundle_ledger_round_trip(inventory: Inventory) -> None:
    written = [
        row(1),
        row(2),
        row(3, version_id="1"),  # a VersionId that looks like a ledger number
        row(4, target="alb-crl", endpoint="arn:aws:elasticloadbalancing:x:truststore/t/1",
            revocation_id=2**40),
        row(5, target="alb-crl", endpoint="arn:aws:elasticloadbalancing:x:truststore/t/1",
            revocation_id=7, uploaded=False),
    ]  # fmt: skip
    ids = []
    for version in written:
        with inventory.transaction() as conn:
            ids.append(inventory.record_bundle_version(conn, version))
    assert ids == sorted(ids) and len(set(ids)) == 5
    history = inventory.bundle_history()
    expected = [BundleVersion(**{**v.__dict__, "id": i}) for v, i in zip(written, ids, strict=True)]
    assert history == expected
    assert history[0].applied_at.tzinfo is dt.UTC and history[0].uploaded is True
    assert [h.id for h in inventory.bundle_history(limit=2)] == ids[3:]
    # by ledger number, by S3 VersionId; "1" matches both row #1 and VersionId "1": newest
    assert inventory.find_bundle_version(str(ids[1])).version_id == "v2"
    assert inventory.find_bundle_version("v1").id == ids[0]
    assert inventory.find_bundle_version("1").id == max(ids[0], ids[2])
    with pytest.raises(NotFound):
        inventory.find_bundle_version("no-such-version")
    assert sorted(inventory.revocation_ids("arn:aws:elasticloadbalancing:x:truststore/t/1")) == [
        7,
        2**40,
    ]
    assert inventory.revocation_ids("api.fleet.example") == []


def test_failed_transaction_leaves_no_ledger_row(inventory: Inventory) -> None:
    with pytest.raises(RuntimeError), inventory.transaction() as conn:
        inventory.record_bundle_version(conn, row(1))
        raise RuntimeError("the endpoint update failed after the row was written")
    assert inventory.bundle_history() == []


def test_pca_request_ledger(inventory: Inventory) -> None:
    assert inventory.pca_request("t1") is None
    inventory.record_pca_request("t1", ARN, f"{ARN}/certificate/a", NOW)
    assert inventory.pca_request("t1") == f"{ARN}/certificate/a"
    assert inventory.pca_request("t1", since=NOW) == f"{ARN}/certificate/a"
    assert inventory.pca_request("t1", since=NOW + dt.timedelta(microseconds=1)) is None
    # the same token again (a later request, or a concurrent retry): replaced, not an error
    later = NOW + dt.timedelta(days=2)
    inventory.record_pca_request("t1", ARN, f"{ARN}/certificate/b", later)
    assert inventory.pca_request("t1", since=later) == f"{ARN}/certificate/b"
    assert inventory.pca_request("t2") is None


class CountingPca:
    """Enough of the acm-pca client for ``AwsPrivateCA.issue``: counts IssueCertificate."""

    def __init__(self, pem: str) -> None:
        self.pem = pem
        self.issued: list[str] = []

    def issue_certificate(self, **params: Any) -> dict[str, str]:
        self.issued.append(f"{ARN}/certificate/{len(self.issued) + 1}")
        return {"CertificateArn": self.issued[-1]}

    def get_waiter(self, name: str) -> Any:
        assert name == "certificate_issued"
        return self

    def wait(self, **_: Any) -> None:
        return None

    def get_certificate(self, **_: Any) -> dict[str, str]:
        return {"Certificate": self.pem}


def test_retries_reuse_the_ledger_only_within_its_window(
    inventory: Inventory, tmp_path: Path
) -> None:
    local, signing = pca_signing_request(tmp_path)
    pem = local.issue(signing).public_bytes(Encoding.PEM).decode()
    client = CountingPca(pem)
    clock = FixedClock(NOW)
    ca = AwsPrivateCA(ARN, client, clock=clock, ledger=inventory, wait=WaitConfig(0, 1))
    ca.__dict__["_chain"] = local.chain()
    ca.issue(signing)
    clock.advance(LEDGER_WINDOW - dt.timedelta(seconds=1))
    ca.issue(signing)  # a retry: the first certificate, no second IssueCertificate
    assert client.issued == [f"{ARN}/certificate/1"]
    clock.advance(dt.timedelta(seconds=2))
    ca.issue(signing)  # the same request a day later is a new certificate
    assert client.issued == [f"{ARN}/certificate/1", f"{ARN}/certificate/2"]
    ca.issue(signing)
    assert len(client.issued) == 2
