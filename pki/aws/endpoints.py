"""The AWS endpoints that read a trust bundle from S3: an API Gateway custom domain (REST
or HTTP API, ``truststoreVersion``) and an ALB trust store (``modify_trust_store``). Each
is found before anything is uploaded, and checked after."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from pki.aws import client as awsclient
from pki.aws.bundles import Target
from pki.aws.client import AWS_FAILURES
from pki.aws.client import error_code as _code
from pki.aws.client import publish_error as _aws_error
from pki.aws.s3 import S3Location
from pki.errors import InvalidInput, NotFound, OperatorError, PublishError

APIGW_REST = "apigw"
APIGW_HTTP = "apigw-http"
ALB = "alb"
ALB_CRL = "alb-crl"
DENYLIST = "denylist"


class Endpoint(abc.ABC):
    """An API Gateway custom domain or an ALB trust store that loads a bundle from S3."""

    target: str
    name: str

    @abc.abstractmethod
    def check(self) -> str | None:
        """Raise unless the endpoint exists and takes a bundle; return the version in use."""

    @abc.abstractmethod
    def apply(self, where: S3Location, version_id: str) -> None:
        """Point the endpoint at that object version (and roll back on its warnings)."""


class _ApiDomain(Endpoint):
    """An API Gateway custom domain; the two APIs differ only in spelling and in how an
    update is written (``_get`` and ``_update``)."""

    MTLS, URI, VERSION, WARNINGS = "", "", "", ""

    def __init__(self, client: Any, domain: str) -> None:
        self.client = client
        self.name = domain
        self._previous: dict[str, Any] | None = None

    @abc.abstractmethod
    def _get(self) -> dict[str, Any]:
        """The domain as the API describes it."""

    @abc.abstractmethod
    def _update(self, uri: str | None, version: str | None) -> None:
        """Point the domain's mutual TLS at ``uri`` / ``version``."""

    def _mtls(self) -> dict[str, Any]:
        try:
            found = self._get()
        except AWS_FAILURES as exc:
            if _code(exc) == "NotFoundException":
                raise NotFound(f"API Gateway custom domain {self.name!r} does not exist") from None
            raise _aws_error(
                exc, f"reading custom domain {self.name} (apigateway GetDomainName)"
            ) from None
        mtls = found.get(self.MTLS)
        if not mtls or not mtls.get(self.URI):
            raise OperatorError(
                f"custom domain {self.name!r} has no mutual TLS configured; create it with a "
                "truststore URI first"
            )
        return dict(mtls)

    def check(self) -> str | None:
        self._previous = self._mtls()
        version = self._previous.get(self.VERSION)
        return str(version) if version else None

    def _write(self, uri: str | None, version: str | None) -> None:
        try:
            self._update(uri, version)
        except AWS_FAILURES as exc:
            raise _aws_error(
                exc, f"updating the truststore of {self.name} (apigateway UpdateDomainName)"
            ) from None

    def apply(self, where: S3Location, version_id: str) -> None:
        if self._previous is None:
            self.check()
        assert self._previous is not None
        self._write(where.uri, version_id)
        warnings = list(self._mtls().get(self.WARNINGS) or [])
        if warnings:
            old = self._previous
            self._write(old.get(self.URI), old.get(self.VERSION))
            raise PublishError(
                f"API Gateway reported truststore warnings for {self.name} with version "
                f"{version_id}: {'; '.join(warnings)}; rolled the domain back to version "
                f"{old.get(self.VERSION) or '(none)'}"
            )


class RestDomain(_ApiDomain):
    """A REST API custom domain (``apigateway``): ``truststoreVersion`` by patch operation."""

    target = APIGW_REST
    MTLS, URI, VERSION, WARNINGS = (
        "mutualTlsAuthentication",
        "truststoreUri",
        "truststoreVersion",
        "truststoreWarnings",
    )

    def _get(self) -> dict[str, Any]:
        return dict(self.client.get_domain_name(domainName=self.name))

    def _update(self, uri: str | None, version: str | None) -> None:
        ops = [
            {"op": "replace", "path": f"/mutualTlsAuthentication/{field}", "value": value}
            for field, value in (("truststoreUri", uri), ("truststoreVersion", version))
            if value
        ]
        self.client.update_domain_name(domainName=self.name, patchOperations=ops)


class HttpDomain(_ApiDomain):
    """An HTTP API custom domain (``apigatewayv2``)."""

    target = APIGW_HTTP
    MTLS, URI, VERSION, WARNINGS = (
        "MutualTlsAuthentication",
        "TruststoreUri",
        "TruststoreVersion",
        "TruststoreWarnings",
    )

    def _get(self) -> dict[str, Any]:
        return dict(self.client.get_domain_name(DomainName=self.name))

    def _update(self, uri: str | None, version: str | None) -> None:
        mtls = {"TruststoreUri": str(uri)} | ({"TruststoreVersion": version} if version else {})
        self.client.update_domain_name(DomainName=self.name, MutualTlsAuthentication=mtls)


class AlbTrustStore(Endpoint):
    """An ELBv2 trust store: ``modify_trust_store`` with the object version."""

    target = ALB

    def __init__(self, client: Any, arn: str) -> None:
        if not arn.startswith("arn:") or ":truststore/" not in arn:
            raise InvalidInput(f"{arn!r} is not an ELBv2 trust store ARN")
        self.client = client
        self.name = arn

    def check(self) -> str | None:
        try:
            stores = self.client.describe_trust_stores(TrustStoreArns=[self.name])["TrustStores"]
        except AWS_FAILURES as exc:
            if _code(exc) == "TrustStoreNotFound":
                raise NotFound(f"ALB trust store {self.name} does not exist") from None
            raise _aws_error(
                exc, f"reading trust store {self.name} (elbv2 DescribeTrustStores)"
            ) from None
        if not stores:
            raise NotFound(f"ALB trust store {self.name} does not exist")
        return None

    def apply(self, where: S3Location, version_id: str) -> None:
        try:
            self.client.modify_trust_store(
                TrustStoreArn=self.name,
                CaCertificatesBundleS3Bucket=where.bucket,
                CaCertificatesBundleS3Key=where.key,
                CaCertificatesBundleS3ObjectVersion=version_id,
            )
        except AWS_FAILURES as exc:
            raise _aws_error(
                exc, f"modifying trust store {self.name} (elbv2 ModifyTrustStore)"
            ) from None


def endpoint_for(
    target: str, name: str, client_factory: Callable[[str], Any] | None = None
) -> Endpoint:
    client_factory = client_factory or awsclient.make_client
    if target == APIGW_REST:
        return RestDomain(client_factory("apigateway"), name)
    if target == APIGW_HTTP:
        return HttpDomain(client_factory("apigatewayv2"), name)
    if target == ALB:
        return AlbTrustStore(client_factory("elbv2"), name)
    raise InvalidInput(f"unknown bundle target {target!r}")


def ledger_target(target: Target, api: str) -> str:
    if target is Target.ALB:
        return ALB
    return APIGW_HTTP if api == "http" else APIGW_REST


# -- bundle publish and rollback ---------------------------------------------------------
