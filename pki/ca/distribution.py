"""Where relying parties find a CA's CRL and certificate (RFC 5280 §4.2.1.13, §4.2.2.1).

A certificate names the CRL of the CA that issued it (CRL distribution point: one DER CRL,
``application/pkix-crl``) and that CA's certificate (authority information access,
caIssuers: one DER certificate, ``application/pkix-cert``), both over plain ``http://``:
a relying party must fetch them without a client certificate, and HTTPS to check a CRL
would need the CRL first. Pure: configuration in, extensions out.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

# The CA names a home's configuration keys its URLs by.
CA_NAMES = ("issuing", "root")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class CaUrls:
    """Where one CA's CRL and its certificate are served (either may be absent)."""

    crl: str | None = None
    certificate: str | None = None

    def extensions(self) -> list[x509.Extension[x509.ExtensionType]]:
        """The CRL distribution point and caIssuers extensions (non-critical) that a
        certificate issued by this CA carries."""
        out: list[x509.Extension[x509.ExtensionType]] = []
        if self.crl:
            point = x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.crl)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
            out.append(
                x509.Extension(
                    x509.CRLDistributionPoints.oid, False, x509.CRLDistributionPoints([point])
                )
            )
        if self.certificate:
            access = x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(self.certificate),
            )
            out.append(
                x509.Extension(
                    x509.AuthorityInformationAccess.oid,
                    False,
                    x509.AuthorityInformationAccess([access]),
                )
            )
        return out


def ca_urls(crl_url: dict[str, str], ca_issuers_url: dict[str, str], ca: str) -> CaUrls:
    """The URLs of CA ``ca`` (``issuing`` or ``root``) from a home's configuration."""
    return CaUrls(crl=crl_url.get(ca), certificate=ca_issuers_url.get(ca))


def check_url(url: object, setting: str) -> str:
    """An ``http://`` URL a relying party can fetch: absolute, ASCII, no spaces, a host
    and a path naming the file. Raises ValueError naming ``setting``."""
    if not isinstance(url, str):
        raise ValueError(f"{setting} must be a string")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{setting} must be ASCII without spaces or control characters")
    if len(url) > 512:
        raise ValueError(f"{setting} is longer than 512 characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"{setting} must be an http:// URL (RFC 5280: relying parties fetch CRLs and CA "
            "certificates without TLS)"
        )
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"{setting} has no valid host name") from None
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{setting} has an invalid port") from None
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{setting} must not carry a user, a query or a fragment")
    if not parts.path or parts.path.endswith("/"):
        raise ValueError(f"{setting} must name a file (e.g. http://crl.example/issuing.crl)")
    return url


def check_url_map(values: Mapping[str, object], setting: str) -> None:
    """``{"issuing": URL, "root": URL}``: known CA names, valid URLs (raises ValueError)."""
    for name, url in values.items():
        if name not in CA_NAMES:
            raise ValueError(f"{setting} has an unknown CA {name!r} (use {' or '.join(CA_NAMES)})")
        check_url(url, f"{setting}.{name}")


def urls_under(base: str) -> tuple[dict[str, str], dict[str, str]]:
    """The conventional layout under one base URL: ``BASE/crl/<ca>.crl`` and
    ``BASE/ca/<ca>.cer`` for each CA (what ``ca init --publish-url`` configures)."""
    check_url(base.rstrip("/") + "/x", "--publish-url")
    root = base.rstrip("/")
    crls = {name: f"{root}/crl/{name}.crl" for name in CA_NAMES}
    certs = {name: f"{root}/ca/{name}.cer" for name in CA_NAMES}
    return crls, certs
