"""S3 objects fleetpki publishes: trust bundles and CRLs in versioned buckets (written only
when their SHA-256, kept in the object's metadata, changed), and the API Gateway
authorizer's denylist."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pki.aws import client as awsclient
from pki.aws.client import AWS_FAILURES
from pki.aws.client import error_code as _code
from pki.aws.client import publish_error as _aws_error
from pki.errors import InvalidInput, NotFound, OperatorError, PublishError

SHA_METADATA = "fleetpki-sha256"
PEM_CONTENT_TYPE = "application/x-pem-file"


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


def publish_denylist(s3: Any, where: S3Location, body: bytes) -> Upload:
    """Upload when the list changed. The hash compared (and recorded) is the one of the
    content without ``generated_at``, so an unchanged list is not re-uploaded only because
    it was generated later, and ``generated_at`` stays the time the list last changed."""
    return upload_if_changed(s3, where, body, "application/json", denylist_digest(body))


def s3_object_loader(uri: str, s3: Any | None = None) -> Callable[[], bytes]:
    """For the Lambda authorizer: a loader that reads the current denylist object."""
    where = S3Location.parse(uri)

    def load() -> bytes:
        client = s3 or awsclient.make_client("s3")
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
