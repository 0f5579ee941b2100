"""``fleetpki ca init``: create the CA, record it, write the config — all or nothing."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509

from pki.backends.local import LocalCA, check_ca_options
from pki.ca.hierarchy import check_free_for_init, new_hierarchy_id
from pki.clock import Clock
from pki.errors import AlreadyExists, InvalidInput, OperatorError
from pki.files import remove_quietly
from pki.home import Home, HomeConfig
from pki.issue.check import fingerprint, issuer_key_id
from pki.issue.issuer import PEM
from pki.issue.profiles import ISSUING_CA_PROFILE, ROOT_CA_PROFILE
from pki.model import CertificateRecord, KeyType, Status
from pki.revocation.signing import sign_and_publish
from pki.storage import AuditEvent, Inventory, NewCertificate

if TYPE_CHECKING:
    from pki.app import App
    from pki.backends.aws_pca import AwsPrivateCA


@dataclass(frozen=True)
class CaInitResult:
    records: tuple[CertificateRecord, ...]
    generated_passphrase: bool


def ca_record(
    cert: x509.Certificate, profile: str, backend: str, clock: Clock
) -> CertificateRecord:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return CertificateRecord(
        serial=cert.serial_number,
        thing=None,
        common_name=str(cn[0].value) if cn else cert.subject.rfc4514_string(),
        profile=profile,
        status=Status.ACTIVE,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=fingerprint(cert),
        issuer=cert.issuer.rfc4514_string(),
        backend=backend,
        created_at=clock.now(),
        issuer_key_id=issuer_key_id(cert),
    )


def record_chain(
    inventory: Inventory,
    clock: Clock,
    actor: str,
    chain: tuple[x509.Certificate, ...],
    backend: str,
    detail: dict[str, str],
    hierarchy_id: str,
) -> tuple[tuple[CertificateRecord, ...], str]:
    """Record a CA chain (issuing CA first, root last) in the inventory with a ``ca-init``
    audit event, and claim the inventory for the hierarchy; certificates already there
    (another home adopting the same CA) are left as they are. Returns the records, root
    first, and the hierarchy id the inventory has (an AWS CA adopted again joins the
    hierarchy that recorded it)."""
    pairs = [(ca_record(chain[-1], ROOT_CA_PROFILE, backend, clock), chain[-1])]
    pairs += [(ca_record(c, ISSUING_CA_PROFILE, backend, clock), c) for c in chain[:-1]]
    records = tuple(record for record, _ in pairs)
    with inventory.transaction() as conn:
        hierarchy_id = inventory.claim_hierarchy(conn, hierarchy_id)
        known = {r.serial for r in inventory.find(now=clock.now(), include_ca=True)}
        inventory.add_certificates(
            conn,
            [
                NewCertificate(record, cert.public_bytes(PEM).decode())
                for record, cert in pairs
                if record.serial not in known
            ],
        )
        inventory.audit(
            conn,
            [
                AuditEvent(
                    clock.now(),
                    actor,
                    "ca-init",
                    records[-1].serial_hex,
                    {**detail, "root_serial": records[0].serial_hex, "hierarchy": hierarchy_id},
                )
            ],
        )
    return records, hierarchy_id


def check_init(
    home: Home, key_type: str, common_name: str, root_days: int, issuing_days: int
) -> KeyType:
    """Everything ``ca init`` can refuse, checked before anything is written."""
    if home.has_ca() or (home.ca_dir.exists() and any(home.ca_dir.iterdir())):
        raise AlreadyExists(
            f"a CA already exists in {home.path}; refusing to overwrite it "
            "(use another --home for a new CA)"
        )
    try:
        kind = KeyType(key_type)
    except ValueError:
        raise InvalidInput(f"unknown key type {key_type!r}") from None
    check_ca_options(common_name, root_days, issuing_days)
    home.init_passphrase()  # a passphrase too short, or two that differ
    home.init_root_passphrase()  # the root's own, when set, likewise
    return kind


def init_ca(
    home: Home,
    inventory: Inventory,
    clock: Clock,
    key_type: str,
    common_name: str,
    root_days: int,
    issuing_days: int,
    *,
    urls: tuple[dict[str, str], dict[str, str]] = ({}, {}),
) -> CaInitResult:
    """Create a local CA: root and issuing keys and certificates, recorded, the config
    written, and the first CRL of each CA published — all or nothing. ``urls`` are the
    ``crl_url`` and ``ca_issuers_url`` settings (the issuing CA's certificate names the
    root's; every leaf names the issuing CA's)."""
    kind = check_init(home, key_type, common_name, root_days, issuing_days)
    check_free_for_init(inventory, home.database_url, None)
    chosen = home.init_passphrase()
    root_passphrase = home.init_root_passphrase()
    crl_url, ca_issuers_url = urls
    config = HomeConfig(
        backend="local",
        key_type=key_type,
        common_name=common_name,
        crl_url=dict(crl_url),
        ca_issuers_url=dict(ca_issuers_url),
    )
    config.check_ranges()
    home.ensure()
    if chosen is None:
        if home.passphrase_path.exists():  # an empty file: replaced by a generated one
            remove_quietly(home.passphrase_path)
        passphrase, generated = home.new_passphrase(), True
    else:
        passphrase, generated = chosen, False
    created: list[str] = []  # what this call made, and only that is undone on failure
    mark = inventory.audit_mark()
    try:
        ca = LocalCA.create(
            home.ca_dir,
            key_type=kind,
            common_name=common_name,
            passphrase=passphrase,
            now=clock.now(),
            root_days=root_days,
            issuing_days=issuing_days,
            root_passphrase=root_passphrase,
            root_urls=config.urls("root"),
            urls=config.urls("issuing"),
        )
        created.append("ca")
        records, hierarchy_id = record_chain(
            inventory,
            clock,
            home.actor(),
            ca.chain(),
            ca.name,
            {"key_type": key_type, "common_name": common_name},
            new_hierarchy_id(),
        )
        home.write_config(dataclasses.replace(config, hierarchy_id=hierarchy_id))
        # relying parties that check every level of the chain need both CRLs from the start
        for which in ("root", "issuing"):
            sign_and_publish(home, inventory, ca, clock, home.actor(), which=which)
    except BaseException:
        if "ca" in created:
            # the inventory was empty (check_free_for_init): what this call recorded goes
            # too, so that running 'ca init' again works
            inventory.forget_init(ca.chain(), mark)
            shutil.rmtree(home.ca_dir, ignore_errors=True)
            shutil.rmtree(home.crl_files.folder, ignore_errors=True)
            remove_quietly(home.config_path)
        if generated:
            remove_quietly(home.passphrase_path)
        raise
    return CaInitResult(records, generated)


def init_aws_ca(
    home: Home,
    inventory: Inventory,
    clock: Clock,
    ca: AwsPrivateCA,
    region: str | None,
) -> CaInitResult:
    """Adopt an AWS Private CA: it must be ACTIVE and its chain must check out."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from pki.backends.aws_pca_setup import check_chain

    if home.has_ca():
        raise AlreadyExists(
            f"a CA already exists in {home.path}; refusing to overwrite it "
            "(use another --home for a new CA)"
        )
    status = ca.describe().get("Status")
    if status != "ACTIVE":
        raise OperatorError(f"AWS Private CA {ca.arn} is {status}, not ACTIVE")
    chain = ca.chain()
    check_chain(ca.arn, chain, clock.now())
    check_free_for_init(inventory, home.database_url, chain[0])
    home.ensure()
    key = chain[0].public_key()
    key_type = (
        f"ec-{key.curve.name}"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else f"rsa-{key.key_size}"
        if isinstance(key, rsa.RSAPublicKey)
        else type(key).__name__
    )
    try:
        records, hierarchy_id = record_chain(
            inventory,
            clock,
            home.actor(),
            chain,
            ca.name,
            {"backend": ca.name, "ca_arn": ca.arn},
            new_hierarchy_id(),
        )
        home.write_config(
            HomeConfig(
                backend=ca.name,
                key_type=key_type,
                common_name=records[-1].common_name,
                ca_arn=ca.arn,
                region=region,
                hierarchy_id=hierarchy_id,
            )
        )
    except BaseException:
        remove_quietly(home.config_path)
        raise
    return CaInitResult(records, False)


@dataclass(frozen=True)
class CaInitOptions:
    """What ``ca init`` was asked for (the defaults are the command's)."""

    ca_arn: str | None = None
    create: bool = False
    region: str | None = None
    key_type: str = "ec-p256"
    common_name: str = "fleetpki"
    root_days: int = 3650
    issuing_days: int = 1825
    publish_url: str | None = None


def set_up_local_ca(app: App, options: CaInitOptions) -> CaInitResult:
    """``ca init`` for the local CA: every option checked before anything is written."""
    from pki.ca.distribution import urls_under

    ca_arn, create, region = options.ca_arn, options.create, options.region
    key_type, common_name = options.key_type, options.common_name
    root_days, issuing_days = options.root_days, options.issuing_days
    publish_url = options.publish_url
    if ca_arn or create or region:
        raise InvalidInput("--ca-arn, --create and --region need --backend aws-pca")
    check_init(app.home, key_type, common_name, root_days, issuing_days)
    try:
        urls = urls_under(publish_url) if publish_url else ({}, {})
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return init_ca(
        app.home, app.inventory(create=True), app.clock, key_type, common_name, root_days,
        issuing_days, urls=urls,
    )  # fmt: skip


def set_up_private_ca(
    app: App, options: CaInitOptions, *, say: Callable[[str], None]
) -> CaInitResult:
    """``ca init --backend aws-pca``: adopt a Private CA (``ca_arn``) or create a root and a
    subordinate (``create``, billed monthly: every check comes first). Every CA this call
    made is named through ``say``, and disabled and deleted again when anything after
    its creation fails."""
    from pki.backends.aws_pca import AwsPrivateCA, make_client, region_of_arn
    from pki.backends.aws_pca_setup import create_hierarchy, discard_cas

    ca_arn, create, region = options.ca_arn, options.create, options.region
    key_type, common_name = options.key_type, options.common_name
    root_days, issuing_days = options.root_days, options.issuing_days
    publish_url = options.publish_url
    if publish_url:
        raise InvalidInput(
            "--publish-url is for the local CA: AWS Private CA names its own CRL "
            "distribution point (its CrlConfiguration)"
        )
    if bool(ca_arn) == create:
        raise InvalidInput("--backend aws-pca needs exactly one of --ca-arn ARN or --create")
    if app.home.has_ca():
        raise AlreadyExists(
            f"a CA already exists in {app.home.path}; refusing to overwrite it "
            "(use another --home for a new CA)"
        )
    if create:
        check_ca_options(common_name, root_days, issuing_days)
    client = make_client(region or (region_of_arn(ca_arn) if ca_arn else None))
    if create:  # an inventory of another hierarchy is refused before anything is billed
        check_free_for_init(app.inventory(create=True), app.home.database_url, None)
    created: list[str] = []
    maker = AwsPrivateCA("arn:aws:acm-pca:::certificate-authority/creating", client,
                         clock=app.clock)  # fmt: skip
    try:
        if create:
            ca_arn = create_hierarchy(maker, common_name, key_type, root_days, issuing_days,
                                      created)  # fmt: skip
            say(f"created AWS Private CA hierarchy: root {created[0]}, issuing CA {ca_arn}")
        assert ca_arn is not None
        ca = AwsPrivateCA(ca_arn, client, clock=app.clock)
        return init_aws_ca(app.home, app.inventory(create=True), app.clock, ca, region)
    except BaseException:
        for arn in created:
            say(f"created AWS Private CA {arn}")
        for line in discard_cas(maker, created):
            say(line)
        raise
