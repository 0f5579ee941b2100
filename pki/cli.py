"""The ``fleetpki`` command line.

``main(argv) -> int`` is the whole contract: exit 0 on success, 2 for operator errors
(bad input, policy violation, not found), 1 for internal or backend failures, with a
one-line message on stderr. Other packages add command groups through the
``fleetpki.commands`` entry-point group, so this module never imports them.
Heavy imports happen inside the commands to keep start-up fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.cli_options import (
    KEY_TYPES,
    batch_option,
    csr_option,
    days_option,
    err,
    format_option,
    generate_key_option,
    key_type_option,
    out_option,
    p12_option,
    print_json,
)

if TYPE_CHECKING:
    import datetime as dt

    from cryptography import x509

    from pki.backends import CertificateAuthority
    from pki.clock import Clock
    from pki.home import Home
    from pki.issuance import Issuer
    from pki.model import CertificateRecord, IssuedCertificate
    from pki.storage import Inventory

ENTRY_POINT_GROUP = "fleetpki.commands"


@dataclass
class State:
    """What every command shares: the home, the clock, and lazily opened backends."""

    home_path: Path
    clock: Clock
    _inventory: Inventory | None = field(default=None, repr=False)
    root_key: Path | None = None  # crl --root --root-key FILE: a root key kept offline
    database: str | None = None  # an inventory URL that overrides FLEETPKI_DATABASE_URL

    @property
    def home(self) -> Home:
        from pki.home import Home

        return Home(self.home_path, self.database)

    def inventory(self, *, create: bool = False) -> Inventory:
        """The inventory; outside ``ca init`` the home must already hold a CA."""
        if self._inventory is None:
            from pki.storage import Inventory

            home = self.home
            if create:
                home.ensure()
            else:
                home.config()  # raises NotFound with the 'run ca init' hint
            if create:
                inventory = Inventory.create(home.database_url)
            else:
                inventory = Inventory.open(home.database_url)
            if not create:
                from pki.hierarchy import bind

                try:
                    bind(home, inventory, self._home_root_certificate())
                except BaseException:
                    inventory.close()
                    raise
            self._inventory = inventory
        return self._inventory

    def _home_root_certificate(self) -> x509.Certificate | None:
        """The local CA's root certificate, read from the home (None for AWS)."""
        from cryptography import x509

        path = self.home.ca_dir / "root.pem"
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None

    def ca(self) -> CertificateAuthority:
        from pki.backends.local import LocalCA

        home = self.home
        config = home.config()
        if config.backend == "aws-pca":
            from pki.backends.aws_pca import AwsPrivateCA, RateLimits, make_client, region_of_arn

            if not config.ca_arn:
                from pki.errors import InvalidInput

                raise InvalidInput(f"{home.config_path} has backend aws-pca but no ca_arn")
            return AwsPrivateCA(
                config.ca_arn,
                # the CA's own region: never whatever region this shell happens to name
                make_client(config.region or region_of_arn(config.ca_arn)),
                clock=self.clock,
                ledger=self.inventory(),
                limits=RateLimits(config.issue_rate, config.get_rate, config.revoke_rate),
            )
        if config.backend != "local":
            from pki.errors import InvalidInput

            raise InvalidInput(f"unknown CA backend {config.backend!r} in {home.config_path}")
        return LocalCA(
            home.ca_dir,
            home.passphrase,
            root_passphrase=home.root_passphrase,
            urls=config.urls("issuing"),
            root_key=self.root_key,
        )

    def issuer(self) -> Issuer:
        from pki.hooks import issuance_notifier
        from pki.issuance import Issuer

        return Issuer(
            self.ca(),
            self.inventory(),
            self.clock,
            self.home.config().policy,
            on_issued=issuance_notifier(self.home.path),
        )

    def now(self) -> dt.datetime:
        return self.clock.now()

    def close(self) -> None:
        if self._inventory is not None:
            self._inventory.close()


pass_state = click.make_pass_decorator(State)


class PluginGroup(click.Group):
    """Adds the command groups other packages register under ``fleetpki.commands``."""

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        plugin = self._plugins().get(cmd_name)
        if plugin is None:
            return None
        try:
            loaded = plugin.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            return _broken_plugin(cmd_name, plugin.value, exc)
        return loaded if isinstance(loaded, click.Command) else None


def _broken_plugin(name: str, target: str, exc: Exception) -> click.Command:
    message = f"command group {name!r} ({target}) failed to load: {type(exc).__name__}: {exc}"

    def fail() -> None:
        from pki.errors import FleetPkiError

        raise FleetPkiError(message)

    return click.Command(
        name,
        callback=fail,
        help=f"(unavailable: {message})",
        context_settings={"ignore_unknown_options": True},
    )


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FLEETPKI_HOME",
    default=".fleetpki",
    show_default=True,
    help="Directory holding the CA, its configuration and the SQLite inventory "
    "(env FLEETPKI_HOME).",
)
@click.version_option(package_name="fleetpki")
@click.pass_context
def cli(ctx: click.Context, home: Path) -> None:
    """fleetpki: certificates and mTLS for device fleets.

    Issue, list and revoke device (client) and server certificates from a local CA or
    AWS Private CA, publish CRLs and trust bundles, provision IoT Core, and rotate
    certificates before they expire. Exit codes: 0 success, 2 operator error, 1 internal
    or backend failure, 130 interrupted.

    \b
    Environment:
      FLEETPKI_HOME             the home (like --home)
      FLEETPKI_DATABASE_URL     the inventory (default: SQLite in the home), e.g.
                                postgresql://user@host:5432/fleet
      FLEETPKI_CA_PASSPHRASE    passphrase of the CA keys (default: HOME/ca-passphrase)
      FLEETPKI_ROOT_PASSPHRASE  the root key's own passphrase, when it has one
      AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL   the AWS settings
    """
    state: State = ctx.obj
    state.home_path = home


# ---------------------------------------------------------------------------------- ca


@cli.group()
def ca() -> None:
    """Create and inspect the certificate authority."""


@ca.command("init")
@click.option(
    "--backend",
    type=click.Choice(["local", "aws-pca"]),
    default="local",
    show_default=True,
    help="local: keys in the home. aws-pca: AWS Private CA (--ca-arn ARN or --create).",
)
@click.option("--ca-arn", help="aws-pca: adopt this existing Private CA (its chain is checked).")
@click.option(
    "--create",
    is_flag=True,
    help="aws-pca: create a root + subordinate Private CA hierarchy (test and demo use).",
)
@click.option("--region", help="aws-pca: AWS region (default: the standard AWS settings).")
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="ec-p256",
    show_default=True,
    help="Key type of the root and issuing CA.",
)
@click.option(
    "--common-name",
    default="fleetpki",
    show_default=True,
    help="Name of the CA; the certificates are '<NAME> Root CA' and '<NAME> Issuing CA'.",
)
@click.option("--root-days", type=int, default=3650, show_default=True, help="Root lifetime.")
@click.option(
    "--issuing-days",
    type=int,
    default=1825,
    show_default=True,
    help="Issuing CA lifetime (must be shorter than the root's).",
)
@click.option(
    "--publish-url",
    metavar="URL",
    help="local: an http:// base URL where relying parties fetch the CRLs and CA "
    "certificates (URL/crl/<ca>.crl, URL/ca/<ca>.cer); every certificate names them "
    "(CRL distribution point, caIssuers). 'fleetpki dev up' serves them on loopback.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the CA certificates as JSON.")
@pass_state
def ca_init(
    state: State,
    backend: str,
    ca_arn: str | None,
    create: bool,
    region: str | None,
    key_type: str,
    common_name: str,
    root_days: int,
    issuing_days: int,
    publish_url: str | None,
    as_json: bool,
) -> None:
    """Create a root CA and an issuing intermediate (path length 0), and the first CRL of
    each (HOME/crl/).

    The keys are encrypted with FLEETPKI_CA_PASSPHRASE; when it is unset a random
    passphrase is generated into HOME/ca-passphrase (mode 0600). The root key gets
    FLEETPKI_ROOT_PASSPHRASE when that is set (then the root key may be moved offline:
    only 'fleetpki crl --root' needs it). Refuses to overwrite an existing CA, and an
    inventory (FLEETPKI_DATABASE_URL) that holds another CA hierarchy.
    """
    from pki.ca_setup import CaInitResult, init_ca

    result: CaInitResult
    if backend == "aws-pca" and publish_url:
        from pki.errors import InvalidInput

        raise InvalidInput(
            "--publish-url is for the local CA: AWS Private CA names its own CRL "
            "distribution point (its CrlConfiguration)"
        )
    if backend == "aws-pca":
        result = _init_aws_pca(
            state, ca_arn, create, region, key_type, common_name, root_days, issuing_days
        )
        _report_ca(state, result, as_json, f"adopted AWS Private CA {state.home.config().ca_arn}")
        return
    if ca_arn or create or region:
        from pki.errors import InvalidInput

        raise InvalidInput("--ca-arn, --create and --region need --backend aws-pca")
    from pki.ca_setup import check_init
    from pki.distribution import urls_under

    check_init(state.home, key_type, common_name, root_days, issuing_days)  # before any write
    try:
        urls = urls_under(publish_url) if publish_url else ({}, {})
    except ValueError as exc:
        from pki.errors import InvalidInput

        raise InvalidInput(str(exc)) from None
    result = init_ca(
        state.home,
        state.inventory(create=True),
        state.clock,
        key_type,
        common_name,
        root_days,
        issuing_days,
        urls=urls,
    )
    home = state.home
    if result.generated_passphrase:
        err(
            f"generated a CA key passphrase into {home.passphrase_path} (mode 0600); "
            "back it up, or set FLEETPKI_CA_PASSPHRASE instead"
        )
    _report_ca(state, result, as_json, f"created CA '{common_name}' ({key_type})")


def _report_ca(state: State, result: Any, as_json: bool, what: str) -> None:
    if as_json:  # the same shape as 'ca show --json'
        from pki.ca_status import ca_status

        print_json(ca_status(state.home, state.inventory(), state.now()).to_json())
        return
    err(f"{what} in {state.home.path}")
    for record in result.records:
        err(
            f"  {record.profile:<11} {record.common_name}  serial {record.serial_hex}  "
            f"valid until {record.not_after:%Y-%m-%d}"
        )


def _init_aws_pca(
    state: State,
    ca_arn: str | None,
    create: bool,
    region: str | None,
    key_type: str,
    common_name: str,
    root_days: int,
    issuing_days: int,
) -> Any:
    from pki.backends.aws_pca import AwsPrivateCA, create_hierarchy, make_client, region_of_arn
    from pki.ca_setup import init_aws_ca
    from pki.errors import AlreadyExists, InvalidInput

    if bool(ca_arn) == create:
        raise InvalidInput("--backend aws-pca needs exactly one of --ca-arn ARN or --create")
    if state.home.has_ca():
        raise AlreadyExists(
            f"a CA already exists in {state.home.path}; refusing to overwrite it "
            "(use another --home for a new CA)"
        )
    if create:
        from pki.backends.local import check_ca_options

        check_ca_options(common_name, root_days, issuing_days)  # before anything is billed
    client = make_client(region or (region_of_arn(ca_arn) if ca_arn else None))
    if create:  # before anything is billed: an inventory of another hierarchy is refused
        from pki.hierarchy import check_free_for_init

        check_free_for_init(state.inventory(create=True), state.home.database_url, None)
    created: list[str] = []
    try:
        if create:
            placeholder = "arn:aws:acm-pca:::certificate-authority/creating"
            maker = AwsPrivateCA(placeholder, client, clock=state.clock)
            ca_arn = create_hierarchy(
                maker, common_name, key_type, root_days, issuing_days, created
            )
            err(f"created AWS Private CA hierarchy: root {created[0]}, issuing CA {ca_arn}")
        assert ca_arn is not None
        ca = AwsPrivateCA(ca_arn, client, clock=state.clock)
        return init_aws_ca(state.home, state.inventory(create=True), state.clock, ca, region)
    except BaseException:
        if created:  # every CA this run made is taken down again: each is billed monthly
            from pki.backends.aws_pca import discard_cas

            for arn in created:
                err(f"created AWS Private CA {arn}")
            for line in discard_cas(client, created):
                err(line)
        raise


@ca.command("chain")
@click.option(
    "--root",
    is_flag=True,
    help="Only the root CA (what a trust store imports: keytool -importcert, a bundle).",
)
@click.option(
    "--issuing",
    is_flag=True,
    help="Only the issuing CA (what follows a leaf certificate in a full chain).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "der"]),
    default="pem",
    show_default=True,
    help="der: one certificate only (with --root or --issuing).",
)
@pass_state
def ca_chain(state: State, root: bool, issuing: bool, fmt: str) -> None:
    """Print the CA chain as PEM: issuing CA first, then the root (or one of them)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.errors import InvalidInput

    if root and issuing:
        raise InvalidInput("give --root or --issuing, not both (without either: the chain)")
    which = "root" if root else "issuing" if issuing else None

    chain = state.ca().chain()
    certs = chain[-1:] if which == "root" else chain[:1] if which == "issuing" else chain
    if fmt == "der":
        if which is None:
            raise InvalidInput("--format der holds one certificate: add --root or --issuing")
        if sys.stdout.isatty():
            raise InvalidInput("refusing to write DER to a terminal; redirect it to a file")
        sys.stdout.buffer.write(certs[0].public_bytes(Encoding.DER))
        sys.stdout.flush()
        return
    for cert in certs:
        click.echo(cert.public_bytes(Encoding.PEM).decode(), nl=False)


@ca.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def ca_show(state: State, as_json: bool) -> None:
    """Show the CA certificates, the configuration and each CA's published CRL (number,
    nextUpdate; a warning when one is due for re-signing or has expired)."""
    from pki.ca_status import ca_status

    status = ca_status(state.home, state.inventory(), state.now())
    if as_json:
        print_json(status.to_json())
        return
    config = state.home.config()
    click.echo(f"backend {config.backend}, key type {config.key_type}, home {state.home.path}")
    _print_table(list(status.certificates), state.now())
    for health in status.crls:
        if health.number is None:
            click.echo(f"{health.ca} CRL: none published")
            continue
        click.echo(
            f"{health.ca} CRL #{health.number}: next update {health.next_update:%Y-%m-%d %H:%M}Z"
            f", re-signed from {health.refresh_at:%Y-%m-%d %H:%M}Z ({health.state})"
        )
    if status.crls:
        click.echo(f"all CRLs: {state.home.combined_crl_path}")
    for warning in status.warnings:
        err(f"fleetpki: warning: {warning}")


# ------------------------------------------------------------------------------- issue


@cli.group()
def issue() -> None:
    """Issue device (client) and server certificates."""


@issue.command("device")
@click.argument("thing_name", required=False)
@csr_option("device")
@generate_key_option
@key_type_option
@batch_option("Issue")
@out_option
@format_option
@p12_option
@days_option
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    help="Processes signing a --batch (default: one per CPU for 200 CSRs or more).",
)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print the issued records as JSON.")
@pass_state
def issue_device(
    state: State,
    thing_name: str | None,
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    batch_dir: Path | None,
    out_dir: Path,
    fmt: str,
    p12_passphrase_file: Path | None,
    days: int | None,
    workers: int | None,
    force: bool,
    as_json: bool,
) -> int:
    """Issue a device (clientAuth) certificate for THING_NAME, whose CN is the thing name.

    With --batch DIR, every THING.csr in DIR is issued (factory provisioning): a bad CSR
    is reported and skipped, the rest are issued; exit 2 if any was skipped.
    """
    from pki.errors import InvalidInput

    if batch_dir is not None:
        if thing_name or csr_file or generate_key:
            raise InvalidInput("--batch takes no THING_NAME, --csr or --generate-key")
        if fmt != "pem" or p12_passphrase_file is not None:
            raise InvalidInput("--batch writes PEM files; --format applies to one certificate")
        from pki.batch import issue_device_batch

        return issue_device_batch(state, batch_dir, out_dir, days, force, as_json, workers)
    if workers is not None:
        raise InvalidInput("--workers only applies to --batch")
    if not thing_name:
        raise InvalidInput("give a THING_NAME (or --batch DIR)")
    return _issue_one(
        state,
        "device",
        thing_name,
        csr_file,
        generate_key,
        key_type,
        out_dir,
        days,
        force,
        as_json,
        (),
        (),
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
    )


@issue.command("server")
@click.argument("name")
@click.option("--dns", multiple=True, help="DNS name (repeatable). Default: NAME.")
@click.option("--ip", multiple=True, help="IP address (repeatable).")
@csr_option("server")
@generate_key_option
@key_type_option
@out_option
@format_option
@p12_option
@days_option
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print the issued record as JSON.")
@pass_state
def issue_server(
    state: State,
    name: str,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    out_dir: Path,
    fmt: str,
    p12_passphrase_file: Path | None,
    days: int | None,
    force: bool,
    as_json: bool,
) -> int:
    """Issue a server (serverAuth) certificate for NAME with DNS/IP SANs."""
    import ipaddress

    from pki.errors import InvalidInput

    ips = []
    for text in ip:
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidInput(f"--ip {text!r} is not an IP address") from None
    return _issue_one(
        state,
        "server",
        name,
        csr_file,
        generate_key,
        key_type,
        out_dir,
        days,
        force,
        as_json,
        dns,
        tuple(ips),
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
    )


def _issue_one(
    state: State,
    profile: str,
    name: str,
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    out_dir: Path,
    days: int | None,
    force: bool,
    as_json: bool,
    dns: tuple[str, ...],
    ips: tuple[Any, ...],
    *,
    fmt: str = "pem",
    p12_passphrase_file: Path | None = None,
) -> int:
    from pki.delivery import single_request
    from pki.model import KeyType

    request, deliver = single_request(
        profile=profile,
        name=name,
        csr_file=csr_file,
        generate_key=generate_key,
        key_type=KeyType(key_type),
        out_dir=out_dir,
        days=days,
        force=force,
        actor=state.home.actor(),
        dns=dns,
        ips=ips,
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
    )
    issued = state.issuer().issue(request, deliver)
    _report_issued(state, [issued], as_json, out_dir)
    return 0


def _report_issued(
    state: State, issued: Sequence[IssuedCertificate], as_json: bool, out: Path | None
) -> None:
    if as_json:
        data = [i.record.to_json(state.now()) for i in issued]
        print_json(data[0] if len(data) == 1 and out is not None else data)
        return
    for item in issued:
        r = item.record
        err(
            f"issued {r.profile} certificate for {r.common_name}: serial {r.serial_hex}, "
            f"valid until {r.not_after:%Y-%m-%d %H:%M}Z" + (f" -> {out}" if out else "")
        )


# ------------------------------------------------------------------------ list / show


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice(["active", "revoked", "expired", "quarantined"]),
    help="Only certificates in this state.",
)
@click.option(
    "--expiring-within",
    metavar="DURATION",
    help="Only active certificates expiring within DURATION (e.g. 30d, 12h).",
)
@click.option("--thing", help="Only certificates of this thing.")
@click.option(
    "--profile",
    type=click.Choice(["device", "server", "root-ca", "issuing-ca"]),
    help="Only certificates of this profile.",
)
@click.option(
    "--limit", type=click.IntRange(min=1, max=1_000_000_000), help="At most this many rows."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_cmd(
    state: State,
    status: str | None,
    expiring_within: str | None,
    thing: str | None,
    profile: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List certificates in the inventory, soonest expiry first."""
    from pki.model import Status, parse_duration

    window = parse_duration(expiring_within) if expiring_within is not None else None
    records = state.inventory().find(
        now=state.now(),
        status=Status(status) if status else None,
        expiring_within=window,
        thing=thing,
        profile=profile,
        limit=limit,
    )
    if as_json:
        print_json([r.to_json(state.now()) for r in records])
        return
    _print_table(records, state.now())


def _print_table(records: Sequence[CertificateRecord], now: dt.datetime) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("serial", "name", "profile", "status", "not after", "sha256"):
        table.add_column(column, no_wrap=True)
    for r in records:
        table.add_row(
            r.serial_hex,
            r.thing or r.common_name,
            r.profile,
            r.effective_status(now).value,
            f"{r.not_after:%Y-%m-%d %H:%M}",
            r.fingerprint_sha256[:16],
        )
    Console(width=200).print(table)
    err(f"{len(records)} certificate(s)")


@cli.command("show")
@click.argument("serial")
@click.option(
    "--pem", is_flag=True, help="Print the certificate PEM instead of the record (not with --json)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show_cmd(state: State, serial: str, pem: bool, as_json: bool) -> None:
    """Show one certificate by serial (hex; colons and 0x are accepted)."""
    from pki.errors import InvalidInput
    from pki.model import parse_serial

    if pem and as_json:
        raise InvalidInput("--pem prints the certificate, --json the record: give one of them")
    number = parse_serial(serial)
    inventory = state.inventory()
    if pem:
        click.echo(inventory.get_pem(number), nl=False)
        return
    record = inventory.get(number)
    data = record.to_json(state.now())
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or None
        click.echo(f"{key:>20}: {value if value is not None else '-'}")


# ------------------------------------------------------------------------ revoke / crl


@cli.command("revoke")
@click.argument("serial")
@click.option(
    "--reason",
    type=click.Choice(
        [
            "unspecified",
            "key-compromise",
            "ca-compromise",
            "affiliation-changed",
            "superseded",
            "cessation-of-operation",
            "privilege-withdrawn",
        ]
    ),
    default="unspecified",
    show_default=True,
    help="RFC 5280 revocation reason.",
)
@click.option(
    "--no-crl",
    is_flag=True,
    help="Do not re-sign HOME/crl/issuing.crl.pem (run 'fleetpki crl' later).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@pass_state
def revoke_cmd(state: State, serial: str, reason: str, no_crl: bool, as_json: bool) -> None:
    """Revoke a certificate. Idempotent: revoking twice keeps the first reason, and finishes
    what an interrupted revocation left undone (the CRL, the revocation hooks)."""
    from pki.backends import CrlSigner
    from pki.model import RevocationReason, parse_serial
    from pki.revocation import revoke_and_publish

    ca = state.ca()
    done = revoke_and_publish(
        state.home,
        state.inventory(),
        ca,
        state.clock,
        [parse_serial(serial)],
        RevocationReason(reason),
        state.home.actor(),
        sign_crl=not no_crl,
    )
    result = done.results[0]
    record = result.record
    if result.changed and not isinstance(ca, CrlSigner):
        err(
            f"{ca.name}: AWS Private CA writes its own CRL to its S3 bucket, typically about "
            "30 minutes after a revocation; it is not immediate"
        )
    if done.crl is not None:
        plural = "entry" if done.crl.entries == 1 else "entries"
        err(
            f"CRL #{done.crl.number} with {done.crl.entries} {plural} written to {done.crl_path}"
            f" (every CA's CRLs: {state.home.combined_crl_path})"
        )
    for warning in done.warnings:
        err(f"fleetpki: warning: {warning}")
    if as_json:
        print_json(record.to_json(state.now()) | {"changed": result.changed})
        return
    if result.changed:
        err(f"revoked {record.serial_hex} ({record.thing or record.common_name}), reason {reason}")
    else:
        reason_text = record.revocation_reason.value if record.revocation_reason else "unspecified"
        err(
            f"{record.serial_hex} was already revoked at {record.revoked_at:%Y-%m-%d %H:%M}Z "
            f"(reason {reason_text}); the inventory is unchanged"
        )


@cli.group("crl", invoke_without_command=True)
@click.option(
    "--root",
    "root",
    is_flag=True,
    help="Sign the root CA's CRL (the subordinate CAs it revoked) instead of the issuing "
    "CA's. Needs the root key: in the home, or --root-key FILE when it is kept offline.",
)
@click.option(
    "--root-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --root: the root CA's encrypted key file, when it is not in the home "
    "(its passphrase: FLEETPKI_ROOT_PASSPHRASE, else FLEETPKI_CA_PASSPHRASE).",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the CRL here (default: stdout). HOME/crl/ is always updated.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "der"]),
    default="pem",
    show_default=True,
    help="Encoding of what goes to --out or stdout (HTTP distribution points serve DER).",
)
@click.option(
    "--next-update",
    default=None,
    metavar="DURATION",
    help="Time until nextUpdate (default from config.json: crl_next_update_days, 7; "
    "root_crl_next_update_days, 180, with --root).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was signed as JSON.")
@click.pass_context
def crl_cmd(
    ctx: click.Context,
    root: bool,
    root_key: Path | None,
    out_file: Path | None,
    fmt: str,
    next_update: str | None,
    as_json: bool,
) -> None:
    """Sign a full CRL of the issuing CA (or, with --root, of the root CA) with the next
    CRL number, and publish it in HOME/crl/:

    \b
      issuing.crl.pem, root.crl.pem   one CA's CRL each (Node: crl: [both files])
      combined.crl.pem                every CA's CRL (nginx ssl_crl, openssl -CRLfile,
                                      Java, GnuTLS, Mosquitto crlfile)
      issuing.crl, root.crl           DER, for an HTTP CRL distribution point

    thisUpdate is backdated like notBefore (crl_backdate_seconds, 5 minutes). The root's
    CRL is re-signed here too when it is due and the root key is at hand; otherwise a
    warning says when it runs out. 'fleetpki crl publish' loads a CRL into ALB trust
    stores and writes the API Gateway denylist.
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    if root_key is not None and not root:
        from pki.errors import InvalidInput

        raise InvalidInput("--root-key goes with --root")
    state.root_key = root_key
    _sign_crl(state, "root" if root else "issuing", out_file, fmt, next_update, as_json)


def _sign_crl(
    state: State,
    which: str,
    out_file: Path | None,
    fmt: str,
    next_update: str | None,
    as_json: bool,
) -> None:
    import os

    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.errors import InvalidInput
    from pki.files import atomic_write, refuse_special
    from pki.model import isoformat, parse_duration
    from pki.revocation import refresh_crls, sign_and_publish

    window = parse_duration(next_update) if next_update is not None else None
    if out_file is None and fmt == "der" and sys.stdout.isatty():
        raise InvalidInput("refusing to write DER to a terminal; use --out FILE")
    if out_file is not None:  # checked before a CRL number is spent
        if not os.access(out_file.parent, os.W_OK):
            raise InvalidInput(
                f"cannot write --out {out_file}: {out_file.parent} is not a writable folder"
            )
        refuse_special(out_file)
    ca, inventory, home = state.ca(), state.inventory(), state.home
    result = sign_and_publish(
        home, inventory, ca, state.clock, home.actor(), which=which, next_update=window
    )
    warnings: tuple[str, ...] = ()
    if which == "issuing":  # the root's CRL too, when it is due and its key at hand
        warnings = refresh_crls(home, inventory, ca, state.clock, home.actor()).warnings
    data = result.crl.public_bytes(Encoding.PEM if fmt == "pem" else Encoding.DER)
    if out_file is not None:
        atomic_write(out_file, data, 0o644)
    elif not as_json:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    files = home.crl_files
    summary = {
        "ca": which,
        "number": result.number,
        "entries": result.entries,
        "this_update": isoformat(result.crl.last_update_utc),
        "next_update": isoformat(result.crl.next_update_utc),
        "path": str(out_file or files.pem(which)),
        "files": {
            "pem": str(files.pem(which)),
            "der": str(files.der(which)),
            "combined": str(files.combined),
        },
        "published": result.written,
        "warnings": list(warnings),
    }
    if as_json:
        print_json(summary)
        return
    if result.resynced_from is not None:
        err(
            f"the published {which} CRL had number #{result.resynced_from}, ahead of the "
            "inventory (restored from a backup?): the new CRL's number goes past it"
        )
    where = f", written to {out_file}" if out_file else ""
    err(
        f"{which} CRL #{result.number}: {result.entries} revoked, next update "
        f"{summary['next_update']}{where}; all CRLs in {files.combined}"
    )
    if not result.written:
        err(
            f"fleetpki: warning: a newer {which} CRL was published meanwhile; "
            f"{files.pem(which)} keeps it"
        )
    for warning in warnings:
        err(f"fleetpki: warning: {warning}")


@cli.command("audit")
@click.option("--serial", help="Only events of this certificate.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1_000_000_000),
    default=50,
    show_default=True,
    help="How many of the newest events.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def audit_cmd(state: State, serial: str | None, limit: int, as_json: bool) -> None:
    """Show the append-only audit log (issue, revoke, CRL, CA events), oldest first."""
    from pki.model import isoformat, parse_serial

    events = state.inventory().audit_log(
        limit, parse_serial(serial) if serial is not None else None
    )
    if as_json:
        print_json([e.to_json() for e in events])
        return
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()) if v is not None)
        click.echo(f"{isoformat(e.at)} {e.actor} {e.action} {e.serial or '-'} {detail}")


# ----------------------------------------------------------------------------------- db


@cli.group("db")
def db() -> None:
    """The inventory's schema: which migrations it is at, and upgrading it."""


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def db_current(state: State, as_json: bool) -> int:
    """The schema revisions the inventory (FLEETPKI_DATABASE_URL, or the home's SQLite
    file) is at, against the ones this fleetpki needs. Exit 1 when it needs 'fleetpki db
    upgrade' (or a newer fleetpki)."""
    from pki.storage import migrate, open_engine, redact_url

    engine = open_engine(state.home.database_url)
    try:
        found = migrate.state(engine)
    finally:
        engine.dispose()
    data = {
        "database": redact_url(state.home.database_url),
        "revisions": sorted(found.revisions),
        "expected": sorted(found.expected),
        "state": "current" if found.at_head else "newer" if found.newer else
                 "empty" if found.empty else "legacy" if found.legacy else "older",
    }  # fmt: skip
    if as_json:
        print_json(data)
    else:
        click.echo(f"{data['database']}: {found.describe()} ({data['state']})")
        if not found.at_head and not found.empty:
            click.echo(
                "upgrade fleetpki"
                if found.newer
                else "run 'fleetpki db upgrade' (back it up first)"
            )
    return 0 if found.at_head else 1


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Run the migrations the inventory lacks, in one transaction (a database made before
    migrations is recognised and brought along with its rows). Back the inventory up
    first ('sqlite3 inventory.db ".backup copy.db"', or pg_dump)."""
    from pki.storage import migrate, open_engine, redact_url

    engine = open_engine(state.home.database_url)
    try:
        before = migrate.state(engine)
        revisions = migrate.upgrade(engine)
    finally:
        engine.dispose()
    where = redact_url(state.home.database_url)
    if before.at_head:
        err(f"{where} is already at {', '.join(revisions)}")
    else:
        err(f"upgraded {where} from {before.describe()} to {', '.join(revisions)}")


from pki.cli_trust import bundle as _bundle_group  # noqa: E402 (after State, pass_state)
from pki.cli_trust import crl_publish as _crl_publish  # noqa: E402

cli.add_command(_bundle_group)
crl_cmd.add_command(_crl_publish)


# ------------------------------------------------------------------------------ entry


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting."""
    from pki import logs
    from pki.clock import SystemClock
    from pki.errors import FleetPkiError, InternalError
    from pki.text import escape_controls, one_line

    logs.for_commands()
    state = State(home_path=Path(".fleetpki"), clock=clock or SystemClock())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # click's own main() would print an empty line on Ctrl-C before its Abort: the
        # context is made and invoked here, so an interrupt reaches the handler below as is
        with cli.make_context("fleetpki", args, obj=state) as ctx:
            result = cli.invoke(ctx)
        return result if isinstance(result, int) else 0
    except FleetPkiError as exc:
        # one line, whatever a cause carried; text that came from outside is escaped
        text = escape_controls(str(exc).strip())
        # an InternalError carried out of a worker reads "internal error ...": the same
        # "fleetpki: internal error" prefix as one raised here
        err(f"fleetpki: {text}" if isinstance(exc, InternalError) else f"fleetpki: error: {text}")
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        ctx = exc.ctx
        path = ctx.command_path if ctx else "fleetpki"
        group = ctx.command if ctx else None
        names = group.list_commands(ctx) if isinstance(group, click.Group) and ctx else []
        err(f"fleetpki: error: {path} needs a command: {', '.join(names)} (see '{path} --help')")
        return 2
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        err(f"fleetpki: error: {one_line(exc.format_message())}{hint}")
        return 2
    except click.ClickException as exc:
        err(f"fleetpki: error: {one_line(exc.format_message())}")
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (fleetpki ca chain | head): nothing more to say, to anyone
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (click.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort (it also means end of input at a prompt, which no
        # fleetpki command shows): either way the operator stopped the command
        err("fleetpki: interrupted")
        return 130
    except Exception as exc:  # a bug or an unexpected library failure: one line, exit 1
        first = (str(exc).strip().splitlines() or [""])[0]
        err(f"fleetpki: internal error: {type(exc).__name__}: {escape_controls(first)}")
        return 1
    finally:
        state.close()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
