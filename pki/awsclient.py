"""Every boto3 client fleetpki makes: the standard AWS settings, one error for a missing
region, adaptive retries.

botocore reads the region from ``AWS_DEFAULT_REGION`` or the profile, but not from
``AWS_REGION``, which the AWS CLI v2, the other SDKs and Lambda set; fleetpki honours it
first, so either variable works.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoRegionError, ParamValidationError

from pki.errors import InvalidInput, OperatorError

ADAPTIVE = Config(retries={"mode": "adaptive", "max_attempts": 10})


def region_setting(region: str | None = None) -> str | None:
    """The region to ask for: ``region``, else ``AWS_REGION``, else None (botocore then
    reads ``AWS_DEFAULT_REGION`` and the profile)."""
    return region or os.environ.get("AWS_REGION") or None


def make_client(service: str, region: str | None = None, config: Config = ADAPTIVE) -> Any:
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
