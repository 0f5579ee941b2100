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
from botocore.exceptions import BotoCoreError, NoRegionError

from pki.errors import OperatorError

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
