"""``fleetpki ca init``: create the CA, record it, write the config — all or nothing."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from cryptography import x509

from pki.backends.local import LocalCA
from pki.clock import Clock
from pki.errors import AlreadyExists, InvalidInput
from pki.files import remove_quietly
from pki.home import Home, HomeConfig
from pki.inventory import AuditEvent, Inventory, NewCertificate
from pki.issuance import PEM, fingerprint
from pki.model import CertificateRecord, KeyType, Status
from pki.profiles import ISSUING_CA_PROFILE, ROOT_CA_PROFILE


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
    )


def init_ca(
    home: Home,
    inventory: Inventory,
    clock: Clock,
    key_type: str,
    common_name: str,
    root_days: int,
    issuing_days: int,
) -> CaInitResult:
    if home.has_ca() or (home.ca_dir.exists() and any(home.ca_dir.iterdir())):
        raise AlreadyExists(
            f"a CA already exists in {home.path}; refusing to overwrite it "
            "(use another --home for a new CA)"
        )
    try:
        kind = KeyType(key_type)
    except ValueError:
        raise InvalidInput(f"unknown key type {key_type!r}") from None
    home.ensure()
    if home.passphrase_path.exists() and not home.passphrase_path.read_bytes().strip():
        remove_quietly(home.passphrase_path)
    if home.passphrase_path.exists():
        passphrase, generated = home.passphrase(), False
    else:
        passphrase, generated = home.new_passphrase()
    try:
        ca = LocalCA.create(
            home.ca_dir,
            key_type=kind,
            common_name=common_name,
            passphrase=passphrase,
            now=clock.now(),
            root_days=root_days,
            issuing_days=issuing_days,
        )
        issuing, root = ca.chain()
        records = (
            ca_record(root, ROOT_CA_PROFILE, ca.name, clock),
            ca_record(issuing, ISSUING_CA_PROFILE, ca.name, clock),
        )
        with inventory.transaction() as conn:
            inventory.add_certificates(
                conn,
                [
                    NewCertificate(records[0], root.public_bytes(PEM).decode()),
                    NewCertificate(records[1], issuing.public_bytes(PEM).decode()),
                ],
            )
            inventory.audit(
                conn,
                [
                    AuditEvent(
                        clock.now(),
                        home.actor(),
                        "ca-init",
                        records[1].serial_hex,
                        {
                            "key_type": key_type,
                            "common_name": common_name,
                            "root_serial": records[0].serial_hex,
                        },
                    )
                ],
            )
        home.write_config(HomeConfig(backend=ca.name, key_type=key_type, common_name=common_name))
    except BaseException:
        shutil.rmtree(home.ca_dir, ignore_errors=True)
        remove_quietly(home.config_path)
        if generated:
            remove_quietly(home.passphrase_path)
        raise
    return CaInitResult(records, generated)
