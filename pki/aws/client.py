"""Every boto3 client fleetpki makes: the standard AWS settings, one error for a missing
region, one retry layer per client: botocore's "standard" retry mode (3 attempts,
jittered) for S3, ELB, API Gateway and IoT; none for AWS Private CA, whose backend
paces and retries its calls itself (``pki.aws.pacing``).

botocore reads the region from ``AWS_DEFAULT_REGION`` or the profile, but not from
``AWS_REGION``, which the AWS CLI v2, the other SDKs and Lambda set; fleetpki honours it
first, so either variable works.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError, ParamValidationError
from botocore.parsers import ResponseParserError

from pki.errors import FleetPkiError, InvalidInput, OperatorError, PublishError

STANDARD = Config(retries={"mode": "standard", "total_max_attempts": 3})
SINGLE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})
# What a call to AWS can raise: AWS's answer (ClientError), the way there (BotoCoreError),
# or an answer that is not AWS's at all (ResponseParserError: an endpoint that does not
# implement the API, such as moto for ALB trust stores; not a BotoCoreError)
AWS_FAILURES = (ClientError, BotoCoreError, ResponseParserError)
TRANSPORT_FAILURES = (BotoCoreError, ResponseParserError)


def region_setting(region: str | None = None) -> str | None:
    """The region to ask for: ``region``, else ``AWS_REGION``, else None (botocore then
    reads ``AWS_DEFAULT_REGION`` and the profile)."""
    return region or os.environ.get("AWS_REGION") or None


def make_client(service: str, region: str | None = None, config: Config = STANDARD) -> Any:
    try:
        return boto3.client(service, region_name=region_setting(region), config=config)
    except NoRegionError:
        raise OperatorError(
            "no AWS region configured; set AWS_REGION (or a profile with a region)"
        ) from None
    except BotoCoreError as exc:
        raise OperatorError(f"cannot make an AWS {service} client: {exc}") from None


def invalid_parameters(exc: BaseException, doing: str) -> InvalidInput | None:
    """botocore refusing a request before sending it (a bucket name with a space, an empty
    thing name): the operator's input, on one line, or None for any other error."""
    if not isinstance(exc, ParamValidationError):
        return None
    text = " ".join(str(exc).split()).removeprefix("Parameter validation failed: ")
    return InvalidInput(f"{doing}: invalid parameter: {text}")


def not_aws(exc: BaseException, doing: str) -> str | None:
    """One line for an answer that is not an AWS response, or None."""
    if not isinstance(exc, ResponseParserError):
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f" at {endpoint}" if endpoint else ""
    return (
        f"{doing} failed: the endpoint{where} did not answer as AWS does (it does not "
        "implement this API?)"
    )


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ``ClientError`` (``ThrottlingException``…); "" for any
    other failure (the way there, an answer that is not AWS's)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return ""


def error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")).strip()
    return str(exc)


def publish_error(exc: BaseException, doing: str) -> FleetPkiError:
    """An AWS failure while publishing, as one of ours (never swallowed): the operator's
    input (exit 2), or a ``PublishError`` naming the call and AWS's words (exit 1)."""
    invalid = invalid_parameters(exc, doing)
    if invalid is not None:
        return invalid
    unparsable = not_aws(exc, doing)
    if unparsable is not None:
        return PublishError(unparsable)
    if isinstance(exc, ClientError):
        code, message = error_code(exc), error_message(exc)
        text = f"{doing} failed: {code}" + (f": {message}" if message else "")
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}:
            return PublishError(text + " (check the IAM permissions of these credentials)")
        return PublishError(text)
    return PublishError(f"{doing} failed: {exc}")
