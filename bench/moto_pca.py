"""moto's Private CA made to honour templates, passthrough and validity (for the tests'
in-process moto server and the benchmark's moto_server process).

Stock moto ignores ``TemplateArn`` (a subordinate gets no extensions at all),
``ApiPassthrough`` and ``Validity``. Real AWS applies them, so the end-to-end test needs
a Private CA that does too: this patches moto's IssueCertificate handler (the wire calls
stay real boto3 over HTTP) to build the certificate the way AWS documents for the
templates fleetpki uses. Tests against stock moto show what our verification does with
its output.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

EKU = {
    "CLIENT_AUTH": ExtendedKeyUsageOID.CLIENT_AUTH,
    "SERVER_AUTH": ExtendedKeyUsageOID.SERVER_AUTH,
}


def _validity(params: dict[str, Any], key: str, default: dt.datetime) -> dt.datetime:
    spec = params.get(key)
    if not spec:
        return default
    if spec["Type"] == "ABSOLUTE":
        return dt.datetime.fromtimestamp(spec["Value"], dt.UTC)
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=spec["Value"])


def issue_certificate(self: Any) -> str:
    from moto.acmpca.models import acmpca_backends

    params = json.loads(self.body)
    backend = acmpca_backends[self.current_account][self.region]
    ca = backend.describe_certificate_authority(params["CertificateAuthorityArn"])
    csr = x509.load_pem_x509_csr(base64.b64decode(params["Csr"]))
    template = params.get("TemplateArn", "")
    now = dt.datetime.now(dt.UTC)
    subject = csr.subject
    ca_key = ca.key
    issuer_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca.issuer)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_validity(params, "ValidityNotBefore", now))
        .not_valid_after(_validity(params, "Validity", now + dt.timedelta(days=365)))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), False)
    )
    ca_usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    if template.endswith("RootCACertificate/V1") or "SubordinateCACertificate" in template:
        path = None if "Root" in template else 0
        builder = builder.add_extension(x509.BasicConstraints(True, path), True)
        builder = builder.add_extension(ca_usage, True)
        if "Root" not in template:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False
            )
    else:
        builder = builder.add_extension(x509.BasicConstraints(False, None), True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False
        )
        passthrough = params.get("ApiPassthrough", {})
        ext = passthrough.get("Extensions", {})
        if "Subject" in passthrough:
            subject = x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, passthrough["Subject"]["CommonName"])]
            )
        if "KeyUsage" in ext:
            ku = ext["KeyUsage"]
            builder = builder.add_extension(
                x509.KeyUsage(
                    ku.get("DigitalSignature", False), False, ku.get("KeyEncipherment", False),
                    False, False, False, False, False, False,
                ),
                True,
            )  # fmt: skip
        if "ExtendedKeyUsage" in ext:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [EKU[e["ExtendedKeyUsageType"]] for e in ext["ExtendedKeyUsage"]]
                ),
                False,
            )
        names: list[x509.GeneralName] = []
        for name in ext.get("SubjectAlternativeNames", []):
            if "DnsName" in name:
                names.append(x509.DNSName(name["DnsName"]))
            if "IpAddress" in name:
                names.append(x509.IPAddress(ipaddress.ip_address(name["IpAddress"])))
            if "UniformResourceIdentifier" in name:
                names.append(x509.UniformResourceIdentifier(name["UniformResourceIdentifier"]))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    cert = builder.subject_name(subject).sign(ca_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    arn = f"{ca.arn}/certificate/{cert.serial_number:x}"
    ca.issued_certificates[arn] = pem
    if not template.endswith("RootCACertificate/V1"):

        def raw(value: Any) -> bytes:
            return value.encode() if isinstance(value, str) else bytes(value or b"")

        chain = raw(ca.certificate_bytes).strip()
        if ca.certificate_chain:
            chain += b"\n" + raw(ca.certificate_chain).strip()
        ca.issued_certificates_certificate_chains[arn] = chain
    return json.dumps({"CertificateArn": arn})
