"""Versioned S3 publishing of trust bundles and CRLs, and pointing AWS endpoints at them.

Every boto3 client comes from ``make_client`` (standard AWS settings, including
``AWS_ENDPOINT_URL``; adaptive retries). Nothing is uploaded before the endpoint has been
found; an object is written only when its SHA-256 (kept in the object's metadata)
differs from the current version; every endpoint change is recorded in the ledger.
AWS errors are never swallowed: they become ``PublishError`` (exit 1) or an
``OperatorError`` (exit 2) when the operator has to fix something.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
)

from pki import awsclient
from pki.awsclient import AWS_FAILURES
from pki.bundles import Target, TrustBundle
from pki.clock import Clock
from pki.errors import FleetPkiError, InvalidInput, NotFound, OperatorError, PublishError
from pki.storage import AuditEvent, BundleVersion, Inventory

SHA_METADATA = "fleetpki-sha256"
PEM_CONTENT_TYPE = "application/x-pem-file"
# ALB limits per trust store (revocation lists).
ALB_MAX_REVOCATION_LISTS = 30
ALB_MAX_REVOKED_ENTRIES = 500_000
ALB_MAX_REVOCATION_BYTES = 50 * 1024 * 1024

APIGW_REST = "apigw"
APIGW_HTTP = "apigw-http"
ALB = "alb"
ALB_CRL = "alb-crl"
DENYLIST = "denylist"


def make_client(service: str, region: str | None = None) -> Any:
    """A boto3 client from the standard settings, retrying in adaptive mode."""
    return awsclient.make_client(service, region)


def _code(exc: Exception) -> str:
    """The AWS error code of a ``ClientError``; "" for a transport failure (BotoCoreError)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return ""


def _aws_error(exc: Exception, doing: str) -> FleetPkiError:
    invalid = awsclient.invalid_parameters(exc, doing)
    if invalid is not None:
        return invalid
    unparsable = awsclient.not_aws(exc, doing)
    if unparsable is not None:
        return PublishError(unparsable)
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        text = f"{doing} failed: {code}" + (f": {message}" if message else "")
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}:
            return PublishError(text + " (check the IAM permissions of these credentials)")
        return PublishError(text)
    return PublishError(f"{doing} failed: {exc}")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> S3Location:
        if not text.startswith("s3://"):
            raise InvalidInput(f"{text!r} is not an S3 URI; use s3://BUCKET/KEY")
        bucket, _, key = text[len("s3://") :].partition("/")
        return cls.of(bucket, key)

    @classmethod
    def of(cls, bucket: str, key: str) -> S3Location:
        if not bucket or not key:
            raise InvalidInput("an S3 location needs both a bucket and a key")
        if key.endswith("/"):
            raise InvalidInput(f"S3 key {key!r} names a folder; give an object key")
        return cls(bucket, key)


@dataclass(frozen=True)
class Upload:
    location: S3Location
    version_id: str
    sha256: str
    uploaded: bool  # False: the current version already had this content


def require_versioning(s3: Any, bucket: str) -> None:
    try:
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    except AWS_FAILURES as exc:
        if _code(exc) in {"NoSuchBucket", "404"}:
            raise NotFound(f"S3 bucket {bucket!r} does not exist") from None
        raise _aws_error(
            exc, f"reading the versioning of bucket {bucket} (s3 GetBucketVersioning)"
        ) from None
    if status != "Enabled":
        raise OperatorError(
            f"S3 bucket {bucket!r} does not have versioning enabled; endpoints pin object "
            "versions, so enable it first (aws s3api put-bucket-versioning --bucket "
            f"{bucket} --versioning-configuration Status=Enabled)"
        )


def current_object(s3: Any, where: S3Location) -> tuple[str, str | None] | None:
    """(VersionId, stored SHA-256) of the current object, or None when there is none."""
    try:
        head = s3.head_object(Bucket=where.bucket, Key=where.key)
    except AWS_FAILURES as exc:
        if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise _aws_error(exc, f"reading {where.uri}") from None
    version = head.get("VersionId")
    if not version or version == "null":
        return None  # written before versioning was enabled: overwrite with a real version
    return str(version), head.get("Metadata", {}).get(SHA_METADATA)


def upload_if_changed(
    s3: Any,
    where: S3Location,
    body: bytes,
    content_type: str = PEM_CONTENT_TYPE,
    digest: str | None = None,
) -> Upload:
    """Put ``body`` unless the current version already holds the same SHA-256 (of ``body``,
    or the content ``digest`` given)."""
    digest = digest or hashlib.sha256(body).hexdigest()
    require_versioning(s3, where.bucket)
    current = current_object(s3, where)
    if current is not None and current[1] == digest:
        return Upload(where, current[0], digest, uploaded=False)
    try:
        response = s3.put_object(
            Bucket=where.bucket,
            Key=where.key,
            Body=body,
            ContentType=content_type,
            Metadata={SHA_METADATA: digest},
            ChecksumAlgorithm="SHA256",
        )
    except AWS_FAILURES as exc:
        raise _aws_error(exc, f"uploading {where.uri} (s3 PutObject)") from None
    version = response.get("VersionId")
    if not version or version == "null":
        raise PublishError(f"S3 returned no VersionId for {where.uri}; is versioning suspended?")
    return Upload(where, str(version), digest, uploaded=True)


def read_version(s3: Any, where: S3Location, version_id: str) -> bytes:
    try:
        body = s3.get_object(Bucket=where.bucket, Key=where.key, VersionId=version_id)["Body"]
        return bytes(body.read())
    except AWS_FAILURES as exc:
        if _code(exc) in {"NoSuchVersion", "NoSuchKey", "404"}:
            raise NotFound(f"{where.uri} has no version {version_id}") from None
        raise _aws_error(exc, f"reading {where.uri} version {version_id}") from None


def restore_version(s3: Any, where: S3Location, version_id: str) -> Upload:
    """Make an old version the current object again (same bytes, same hash metadata)."""
    body = read_version(s3, where, version_id)
    return upload_if_changed(s3, where, body)


# -- endpoints --------------------------------------------------------------------------


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
    client_factory = client_factory or make_client
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


def _record(
    inventory: Inventory, version: BundleVersion, clock: Clock, detail: Mapping[str, Any]
) -> BundleVersion:
    with inventory.transaction() as conn:
        number = inventory.record_bundle_version(conn, version)
        inventory.audit(
            conn,
            [
                AuditEvent(
                    clock.now(),
                    version.actor,
                    f"bundle-{version.action}",
                    None,
                    {**detail, "ledger_id": number},
                )
            ],
        )
    return BundleVersion(**{**version.__dict__, "id": number})


def publish_bundle(
    bundle: TrustBundle,
    target: str,
    where: S3Location,
    endpoint: Endpoint | None,
    s3: Any,
    inventory: Inventory,
    clock: Clock,
    actor: str,
) -> BundleVersion:
    """Check the endpoint, upload when changed, point the endpoint at the version, record it."""
    if endpoint is not None:
        endpoint.check()
    upload = upload_if_changed(s3, where, bundle.pem)
    if endpoint is not None:
        endpoint.apply(where, upload.version_id)
    version = BundleVersion(
        target=target,
        endpoint=endpoint.name if endpoint else None,
        bucket=where.bucket,
        key=where.key,
        version_id=upload.version_id,
        sha256=upload.sha256,
        certificates=len(bundle),
        action="publish" if endpoint else "upload",
        uploaded=upload.uploaded,
        applied_at=clock.now(),
        actor=actor,
    )
    return _record(
        inventory,
        version,
        clock,
        {
            "s3": where.uri,
            "version_id": upload.version_id,
            "sha256": upload.sha256,
            "endpoint": version.endpoint,
            "uploaded": upload.uploaded,
        },
    )


def rollback_bundle(
    to: BundleVersion,
    endpoint: Endpoint | None,
    s3: Any,
    inventory: Inventory,
    clock: Clock,
    actor: str,
) -> BundleVersion:
    """Point the endpoint back at an earlier S3 version and make it the current object."""
    where = S3Location(to.bucket, to.key)
    body = read_version(s3, where, to.version_id)
    digest = hashlib.sha256(body).hexdigest()
    if digest != to.sha256:
        raise PublishError(
            f"{where.uri} version {to.version_id} no longer matches the ledger's SHA-256; "
            "refusing to roll back to it"
        )
    if endpoint is not None:
        endpoint.check()
        endpoint.apply(where, to.version_id)
    restored = upload_if_changed(s3, where, body)
    version = BundleVersion(
        target=to.target,
        endpoint=endpoint.name if endpoint else None,
        bucket=to.bucket,
        key=to.key,
        version_id=to.version_id,
        sha256=digest,
        certificates=to.certificates,
        action="rollback",
        uploaded=restored.uploaded,
        applied_at=clock.now(),
        actor=actor,
    )
    return _record(
        inventory,
        version,
        clock,
        {
            "s3": where.uri,
            "version_id": to.version_id,
            "sha256": digest,
            "endpoint": version.endpoint,
            "current_version": restored.version_id,
        },
    )


# -- revocation: ALB trust-store CRLs and the API Gateway denylist ---------------------


@dataclass(frozen=True)
class AlbRevocation:
    upload: Upload
    revocation_id: int
    removed: tuple[int, ...]
    entries: int


def publish_alb_crl(
    elbv2: Any,
    s3: Any,
    trust_store_arn: str,
    where: S3Location,
    crl_der: bytes,
    entries: int,
    previous_ids: Sequence[int],
) -> AlbRevocation:
    """Upload a CRL and load it into the trust store, replacing our previous list.

    ``previous_ids`` are the revocation IDs fleetpki added before (from the ledger); other
    lists in the trust store are left alone but count against the limits.
    """
    store = AlbTrustStore(elbv2, trust_store_arn)
    if len(crl_der) > ALB_MAX_REVOCATION_BYTES:
        raise OperatorError(
            f"the CRL is {len(crl_der)} bytes; an ALB trust store takes revocation files up "
            "to 50 MB"
        )
    store.check()
    try:
        existing = elbv2.describe_trust_store_revocations(TrustStoreArn=trust_store_arn).get(
            "TrustStoreRevocations", []
        )
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc,
            f"listing the revocations of {trust_store_arn} (elbv2 DescribeTrustStoreRevocations)",
        ) from None
    ours = {int(r["RevocationId"]) for r in existing} & set(previous_ids)
    others = [r for r in existing if int(r["RevocationId"]) not in ours]
    other_entries = sum(int(r.get("NumberOfRevokedEntries", 0)) for r in others)
    if len(others) + 1 > ALB_MAX_REVOCATION_LISTS:
        raise OperatorError(
            f"trust store {trust_store_arn} already holds {len(others)} revocation lists not "
            f"published by fleetpki; ALB allows {ALB_MAX_REVOCATION_LISTS}"
        )
    if other_entries + entries > ALB_MAX_REVOKED_ENTRIES:
        raise OperatorError(
            f"{entries} revoked entries plus {other_entries} already loaded exceed the ALB "
            f"limit of {ALB_MAX_REVOKED_ENTRIES} per trust store"
        )
    upload = upload_if_changed(s3, where, crl_der, "application/pkix-crl")
    # Make room first only when adding would break the list limit; otherwise add, then remove,
    # so the trust store is never without our revocations.
    remove_first = len(existing) + 1 > ALB_MAX_REVOCATION_LISTS
    if remove_first and ours:
        _remove_revocations(elbv2, trust_store_arn, sorted(ours))
    try:
        added = elbv2.add_trust_store_revocations(
            TrustStoreArn=trust_store_arn,
            RevocationContents=[
                {
                    "S3Bucket": where.bucket,
                    "S3Key": where.key,
                    "S3ObjectVersion": upload.version_id,
                    "RevocationType": "CRL",
                }
            ],
        )["TrustStoreRevocations"]
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc, f"adding the CRL to trust store {trust_store_arn} (elbv2 AddTrustStoreRevocations)"
        ) from None
    if not added:
        raise PublishError(f"trust store {trust_store_arn} returned no revocation ID")
    if not remove_first and ours:
        _remove_revocations(elbv2, trust_store_arn, sorted(ours))
    return AlbRevocation(upload, int(added[0]["RevocationId"]), tuple(sorted(ours)), entries)


def _remove_revocations(elbv2: Any, arn: str, ids: Sequence[int]) -> None:
    try:
        elbv2.remove_trust_store_revocations(TrustStoreArn=arn, RevocationIds=list(ids))
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc, f"removing old revocation lists from {arn} (elbv2 RemoveTrustStoreRevocations)"
        ) from None


def publish_denylist(s3: Any, where: S3Location, body: bytes) -> Upload:
    """Upload when the list changed. The hash compared (and recorded) is the one of the
    content without ``generated_at``, so an unchanged list is not re-uploaded only because
    it was generated later, and ``generated_at`` stays the time the list last changed."""
    return upload_if_changed(s3, where, body, "application/json", denylist_digest(body))


def s3_object_loader(uri: str, s3: Any | None = None) -> Callable[[], bytes]:
    """For the Lambda authorizer: a loader that reads the current denylist object."""
    where = S3Location.parse(uri)

    def load() -> bytes:
        client = s3 or make_client("s3")
        try:
            return bytes(client.get_object(Bucket=where.bucket, Key=where.key)["Body"].read())
        except AWS_FAILURES as exc:
            raise _aws_error(exc, f"reading {where.uri}") from None

    return load


def denylist_json(serials: Sequence[int], generated_at: str, source: str) -> bytes:
    """Compact, deterministic: sorted lower-case hex serials."""
    data = {
        "format": "fleetpki-denylist/1",
        "generated_at": generated_at,
        "source": source,
        "serials": sorted({format(s, "x") for s in serials}, key=lambda h: (len(h), h)),
    }
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def denylist_digest(body: bytes) -> str:
    """SHA-256 of a denylist's content: every field but ``generated_at``, canonical JSON."""
    data = json.loads(body)
    data.pop("generated_at", None)
    return hashlib.sha256(
        json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    ).hexdigest()
