"""The local CA: a root and an issuing intermediate, keys encrypted at rest in the home."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pki.backends import RevokedEntry, SigningRequest
from pki.keys import PrivateKey, encrypt_key, generate_key, signature_hash

if TYPE_CHECKING:
    from pki.backends.registry import BackendContext
from pki.ca.distribution import CaUrls
from pki.errors import (
    AlreadyExists,
    FleetPkiError,
    InvalidInput,
    NotFound,
    OperatorError,
    StorageError,
    WrongPassphrase,
)
from pki.files import atomic_write, ensure_dir, read_regular
from pki.issue.policy import BACKDATE
from pki.issue.profiles import key_usage_for
from pki.model import KeyType, RevocationReason

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key.pem"
ISSUING_CERT = "issuing.pem"
ISSUING_KEY = "issuing.key.pem"

MAX_CA_FILE = 256 * 1024
NO_URLS = CaUrls()  # a CA certificate or an encrypted CA key is a few KiB


def _ca_extensions(
    builder: x509.CertificateBuilder,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    path_length: int,
    issuer_ski: x509.SubjectKeyIdentifier,
    issuer_urls: CaUrls = NO_URLS,
) -> x509.CertificateBuilder:
    for extension in issuer_urls.extensions():
        builder = builder.add_extension(extension.value, extension.critical)
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False
        )
    )


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    signing_key: PrivateKey,
    validity: tuple[dt.datetime, dt.datetime],
    path_length: int,
    issuer_ski: x509.SubjectKeyIdentifier,
    issuer_urls: CaUrls = NO_URLS,
) -> x509.Certificate:
    """A CA certificate for ``public_key`` signed by ``signing_key`` (``issuer``'s)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    builder = _ca_extensions(builder, public_key, path_length, issuer_ski, issuer_urls)
    return builder.sign(signing_key, signature_hash(signing_key))


def _write_all_or_nothing(folder: Path, files: Sequence[tuple[str, bytes, int]]) -> None:
    """Write ``files`` (name, content, mode) into a staging folder beside ``folder``, then
    rename it into place: a failure at any point leaves no partial CA behind."""
    ensure_dir(folder.parent)
    staging = folder.parent / f".ca-init-{secrets.token_hex(4)}"
    ensure_dir(staging)
    try:
        for name, content, mode in files:
            atomic_write(staging / name, content, mode)
        if folder.exists():
            folder.rmdir()  # empty, checked by the caller
        staging.rename(folder)
    except BaseException:
        for leftover in staging.glob("*"):
            leftover.unlink()
        if staging.exists():
            staging.rmdir()
        raise


MAX_CA_DAYS = 30 * 366  # a root for 30 years is already long; beyond is a typo


def check_ca_options(common_name: str, root_days: int, issuing_days: int) -> None:
    if not common_name.strip() or len(common_name) > 50:
        raise InvalidInput("--common-name must be 1-50 characters")
    if not 0 < root_days <= MAX_CA_DAYS:
        raise InvalidInput(f"--root-days must be 1-{MAX_CA_DAYS} (30 years at most)")
    if issuing_days <= 0:
        raise InvalidInput("--issuing-days must be at least 1")
    if issuing_days >= root_days:
        raise InvalidInput("the issuing CA must expire before the root (issuing days < root)")


class LocalCA:
    """Signs with the issuing CA's key, which is decrypted only when first needed."""

    name = "local"

    def __init__(
        self,
        ca_dir: Path,
        passphrase: Callable[[], bytes],
        *,
        root_passphrase: Callable[[], bytes] | None = None,
        urls: CaUrls = NO_URLS,
        root_key: Path | None = None,
    ) -> None:
        """``urls``: where the issuing CA's CRL and certificate are served (every new
        certificate names them). The root key (``root_key``, default in the home) is
        needed only to sign the root's CRL; it may be kept offline, with a passphrase of
        its own (``root_passphrase``, default the CA passphrase)."""
        self._dir = ca_dir
        self._passphrase = passphrase
        self._root_passphrase = root_passphrase or passphrase
        self._urls = urls
        self._root_key_path = root_key or ca_dir / ROOT_KEY
        if not (ca_dir / ISSUING_CERT).exists():
            raise NotFound(f"no CA in {ca_dir.parent}; run 'fleetpki ca init' first")

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        ca_dir: Path,
        *,
        key_type: KeyType,
        common_name: str,
        passphrase: bytes,
        now: dt.datetime,
        root_days: int = 3650,
        issuing_days: int = 1825,
        root_passphrase: bytes | None = None,
        root_urls: CaUrls = NO_URLS,
        urls: CaUrls = NO_URLS,
    ) -> LocalCA:
        """Make a root and an issuing CA (path length 0) and write them into ``ca_dir``.

        The root key is encrypted with ``root_passphrase`` (default: ``passphrase``); the
        issuing CA's certificate names where the root's CRL and certificate are served
        (``root_urls``). Everything is written into a staging directory first and renamed
        into place, so a failure leaves no partial CA behind.
        """
        check_ca_options(common_name, root_days, issuing_days)
        if ca_dir.exists() and any(ca_dir.iterdir()):
            raise AlreadyExists(
                f"a CA already exists in {ca_dir}; refusing to overwrite it "
                "(use another --home to create a new one)"
            )
        root_key = generate_key(key_type)
        issuing_key = generate_key(key_type)
        start = now - BACKDATE
        root_name = _cn(f"{common_name} Root CA")
        root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
        root = ca_certificate(
            root_name, root_name, root_key.public_key(), root_key,
            (start, now + dt.timedelta(days=root_days)), 1, root_ski,
        )  # fmt: skip
        issuing = ca_certificate(
            _cn(f"{common_name} Issuing CA"), root_name, issuing_key.public_key(), root_key,
            (start, now + dt.timedelta(days=issuing_days)), 0, root_ski, root_urls,
        )  # fmt: skip
        pem = serialization.Encoding.PEM
        _write_all_or_nothing(
            ca_dir,
            [
                (ROOT_KEY, encrypt_key(root_key, root_passphrase or passphrase), 0o600),
                (ISSUING_KEY, encrypt_key(issuing_key, passphrase), 0o600),
                (ROOT_CERT, root.public_bytes(pem), 0o644),
                (ISSUING_CERT, issuing.public_bytes(pem), 0o644),
            ],
        )
        return cls(
            ca_dir,
            lambda: passphrase,
            root_passphrase=lambda: root_passphrase or passphrase,
            urls=urls,
        )

    # -- CertificateAuthority ---------------------------------------------------------------

    @cached_property
    def issuing_certificate(self) -> x509.Certificate:
        return self._load_cert(ISSUING_CERT)

    @cached_property
    def root_certificate(self) -> x509.Certificate:
        return self._load_cert(ROOT_CERT)

    @cached_property
    def issuing_ski(self) -> x509.SubjectKeyIdentifier:
        return self.issuing_certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value

    @cached_property
    def _issuing_subject(self) -> x509.Name:
        return self.issuing_certificate.subject

    @cached_property
    def _url_extensions(self) -> list[x509.Extension[x509.ExtensionType]]:
        return self._urls.extensions()

    @cached_property
    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self.issuing_ski)

    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.issuing_certificate, self.root_certificate)

    def issue(self, request: SigningRequest) -> x509.Certificate:
        plan = request.plan
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in plan.dns_names]
        names += [x509.IPAddress(ip) for ip in plan.ip_addresses]
        names += [x509.UniformResourceIdentifier(u) for u in plan.uris]
        # The extension list is handed to the builder whole (add_extension copies it).
        builder = x509.CertificateBuilder(
            issuer_name=self._issuing_subject,
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, plan.common_name)]),
            public_key=request.public_key,
            serial_number=request.serial,
            not_valid_before=plan.not_before,
            not_valid_after=plan.not_after,
            extensions=[
                x509.Extension(
                    x509.BasicConstraints.oid,
                    True,
                    x509.BasicConstraints(ca=False, path_length=None),
                ),
                x509.Extension(x509.KeyUsage.oid, True, key_usage_for(request.public_key)),
                x509.Extension(
                    x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage(list(plan.profile.eku))
                ),
                x509.Extension(
                    x509.SubjectKeyIdentifier.oid,
                    False,
                    x509.SubjectKeyIdentifier.from_public_key(request.public_key),
                ),
                x509.Extension(x509.AuthorityKeyIdentifier.oid, False, self._aki),
                x509.Extension(
                    x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName(names)
                ),
                *self._url_extensions,
            ],
        )
        key = self._issuing_key
        return builder.sign(key, signature_hash(key))

    def load_signing_key(self) -> None:
        """Decrypt the issuing key now (before forking batch workers)."""
        _ = self._issuing_key

    def revoke(self, serial: int, reason: RevocationReason, when: dt.datetime) -> None:
        """Nothing to tell: the local CA's CRL is built from the inventory."""

    # -- CrlSigner, RootCrlSigner --------------------------------------------------------

    def sign_crl(
        self,
        entries: Sequence[RevokedEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        return self._crl(self.issuing_certificate, self._issuing_key,
                         (entries, number, this_update, next_update))  # fmt: skip

    def sign_root_crl(
        self,
        entries: Sequence[RevokedEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        """The root's CRL (the subordinate CAs it revoked), signed with the root key."""
        return self._crl(self.root_certificate, self._root_key,
                         (entries, number, this_update, next_update))  # fmt: skip

    @staticmethod
    def _crl(
        ca: x509.Certificate,
        key: PrivateKey,
        what: tuple[Sequence[RevokedEntry], int, dt.datetime, dt.datetime],
    ) -> x509.CertificateRevocationList:
        from pki.revocation.crl import build_crl

        entries, number, this_update, next_update = what
        return build_crl(ca, key, entries, number, this_update, next_update, signature_hash(key))

    def root_key_available(self) -> bool:
        """Whether the root key is at hand (it may be kept offline)."""
        return self._root_key_path.is_file()

    # -- internals ------------------------------------------------------------------------

    @cached_property
    def _root_key(self) -> PrivateKey:
        if not self._root_key_path.exists():
            raise OperatorError(
                f"the root CA key is not at {self._root_key_path} (kept offline?); "
                "give its file with --root-key FILE"
            )
        try:
            key = self._load_key_file(self._root_key_path, self._root_passphrase, "root")
        except (StorageError, NotFound) as exc:
            if self._root_key_path == self._dir / ROOT_KEY:
                raise
            raise InvalidInput(f"--root-key: {exc}") from None  # the operator's file
        if key.public_key() != self.root_certificate.public_key():
            raise InvalidInput(
                f"{self._root_key_path} is not the key of the root CA {self._dir / ROOT_CERT}"
            )
        return key

    @cached_property
    def _issuing_key(self) -> PrivateKey:
        key = self._load_key(ISSUING_KEY)
        if key.public_key() != self.issuing_certificate.public_key():
            # every certificate signed with it would fail verification, unnoticed
            raise StorageError(
                f"{self._dir / ISSUING_KEY} does not belong to {self._dir / ISSUING_CERT}; "
                "the CA home is inconsistent"
            )
        return key

    def _load_cert(self, filename: str) -> x509.Certificate:
        path = self._dir / filename
        try:
            return x509.load_pem_x509_certificate(read_regular(path, MAX_CA_FILE, "CA file"))
        except FileNotFoundError:
            raise NotFound(f"CA certificate {path} is missing; the CA home is incomplete") from None
        except OSError as exc:
            raise StorageError(f"cannot read CA certificate {path}: {exc.strerror}") from None
        except (ValueError, InvalidInput) as exc:
            raise StorageError(f"CA certificate {path} is corrupt: {exc}") from None

    def _load_key(self, filename: str) -> PrivateKey:
        path = self._dir / filename
        try:
            return self._load_key_file(path, self._passphrase, "issuing")
        except WrongPassphrase:
            if self._passphrase_opens_the_root():
                # the same passphrase opens the root key: it is right, the file is damaged
                raise StorageError(
                    f"CA key {path} is corrupt (the passphrase opens the root key but not this "
                    "one): restore it from a backup"
                ) from None
            raise

    def _passphrase_opens_the_root(self) -> bool:
        path = self._dir / ROOT_KEY
        try:
            if not path.exists() or self._root_passphrase() != self._passphrase():
                return False
            self._load_key_file(path, self._passphrase, "root")
        except FleetPkiError:
            return False
        return True

    @staticmethod
    def _load_key_file(path: Path, passphrase: Callable[[], bytes], which: str) -> PrivateKey:
        try:
            data = read_regular(path, MAX_CA_FILE, "CA key")
        except FileNotFoundError:
            raise NotFound(f"CA key {path} is missing; the CA home is incomplete") from None
        except OSError as exc:
            raise StorageError(f"cannot read CA key {path}: {exc.strerror}") from None
        except InvalidInput as exc:
            raise StorageError(str(exc)) from None
        if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
            raise StorageError(f"CA key {path} is corrupt (no encrypted PEM private key)")
        try:
            key = serialization.load_pem_private_key(data, password=passphrase())
        except (ValueError, TypeError) as exc:
            # A wrong passphrase mostly fails the padding check ("Incorrect password"), but
            # about 1 in 400 decrypts to garbage that fails ASN.1 parsing instead ("Could not
            # deserialize key data"): the same cause. A damaged PEM fails before ("Unable to
            # load PEM file").
            text = str(exc).lower()
            if any(w in text for w in ("password", "decrypt", "could not deserialize")):
                variable = f"FLEETPKI_{'ROOT' if which == 'root' else 'CA'}_PASSPHRASE"
                raise WrongPassphrase(
                    f"cannot decrypt the CA key {path.name}: wrong passphrase (check {variable})"
                ) from None
            raise StorageError(f"CA key {path} is corrupt: {str(exc).splitlines()[0]}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise StorageError(f"CA key {path} has an unsupported type")
        return key


def from_home(context: BackendContext) -> LocalCA:
    """The registry's factory: the CA in the home, its issuing key unlocked on first use."""
    home = context.home
    return LocalCA(
        home.ca_dir,
        home.passphrase,
        root_passphrase=home.root_passphrase,
        urls=context.config.urls("issuing"),
        root_key=context.root_key,
    )
