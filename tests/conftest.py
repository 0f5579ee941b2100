from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pki.clock import Clock, SystemClock
from tests.aws_fixtures import _pca_server, pca_aws  # noqa: F401 (fixtures for every test)
from tests.helpers import Result, run_cli

AWS_OPT_IN = (
    "opt-in: runs against a real AWS account and costs money; select it with 'pytest -m aws' "
    "(see docs/aws.md)"
)


def aws_selected(markexpr: str) -> bool:
    """Whether ``-m`` asks for the ``aws`` marker (a bare word in the expression)."""
    return re.search(r"(?<![\w-])aws(?![\w-])", markexpr) is not None


def full_tier_selected(markexpr: str, environ: Mapping[str, str]) -> bool:
    """Whether the ``slow`` tests run: the full tier (``FLEETPKI_TEST_FULL=1``), or ``-m``
    asking for them by name (``-m slow``; not ``-m 'not slow'``)."""
    if environ.get("FLEETPKI_TEST_FULL") == "1":
        return True
    return bool(re.search(r"(?<![\w-])slow(?![\w-])", markexpr)) and not re.search(
        r"\bnot\s+slow\b", markexpr
    )


FULL_TIER = (
    "full tier: a long end-to-end, fault or generated-input run; 'scripts/test --full' "
    "(or FLEETPKI_TEST_FULL=1) runs it"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``aws`` tests never run by default: skipped unless ``-m`` mentions ``aws``. ``slow``
    tests run in the full tier only (``scripts/test --full``, which ``.ci/run`` uses)."""
    markexpr = str(config.getoption("markexpr", "") or "")
    skip_aws = pytest.mark.skip(reason=AWS_OPT_IN)
    skip_slow = pytest.mark.skip(reason=FULL_TIER)
    full = full_tier_selected(markexpr, os.environ)
    for item in items:
        if item.get_closest_marker("aws") is not None and not aws_selected(markexpr):
            item.add_marker(skip_aws)
        elif item.get_closest_marker("slow") is not None and not full:
            item.add_marker(skip_slow)


PG_URL = os.environ.get("FLEETPKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLEETPKI_DATABASE_URL", raising=False)
    monkeypatch.delenv("FLEETPKI_CA_PASSPHRASE", raising=False)
    monkeypatch.setenv("FLEETPKI_HOME", str(tmp_path / "home"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


class Cli:
    """The command line on this test's home (``FLEETPKI_HOME``), in-process."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, *argv: str, clock: Clock | None = None) -> Result:
        return run_cli(argv, clock or self.clock)

    def ok(self, *argv: str, clock: Clock | None = None) -> Result:
        result = self(*argv, clock=clock)
        assert result.code == 0, result.err
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli(SystemClock())


@pytest.fixture
def ca_home(cli: Cli, home: Path) -> Path:
    cli.ok("ca", "init")
    return home


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(
            PG_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=3
        ):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server; its tests are skipped when it is unreachable, except where
    it is required (``FLEETPKI_REQUIRE_PG=1``, set by ``.ci/run``): there they fail."""
    if not _pg_available():
        message = f"PostgreSQL not reachable at {PG_URL}"
        if os.environ.get("FLEETPKI_REQUIRE_PG") == "1":
            pytest.fail(f"{message} (FLEETPKI_REQUIRE_PG=1: the PostgreSQL half must run)")
        pytest.skip(message)
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"fleetpki_t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run a test on the SQLite default and on PostgreSQL (when reachable)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", url)
    return url


# -- AWS control plane: a moto server on a free loopback port ------------------------------


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto_server`` on 127.0.0.1, started once per test session (per xdist worker), on
    the real clock under ``scripts/test --shift`` (``pki.processes.start_moto``)."""
    from pki.processes import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto account; boto3 finds it through the standard AWS_* settings."""
    import urllib.request

    req = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint
