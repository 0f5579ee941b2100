"""When a certificate should be renewed. Pure: the time is passed in."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_SPREAD = 10_007  # prime: buckets for the deterministic jitter


@dataclass(frozen=True)
class RenewalPolicy:
    """Renew at ``fraction`` of the lifetime, moved by up to ``jitter`` x lifetime either way.

    The jitter is derived from the serial, so re-planning never moves a certificate's
    renewal time, while a fleet issued in one batch is spread out instead of renewing at
    the same instant.
    """

    fraction: float = 2 / 3
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError("fraction must be between 0 and 1")
        if not 0 <= self.jitter < min(self.fraction, 1 - self.fraction):
            raise ValueError("jitter must be smaller than the distance to either end")

    @property
    def earliest(self) -> float:
        """The smallest share of the lifetime after which any certificate is renewed."""
        return self.fraction - self.jitter


def renewal_timestamp(
    not_before: float, not_after: float, serial: int, policy: RenewalPolicy
) -> float:
    """``renewal_time`` on POSIX timestamps (the planner's hot path over a million rows)."""
    spread = (serial % _SPREAD) / (_SPREAD - 1) * 2 - 1  # in [-1, 1]
    return not_before + (not_after - not_before) * (policy.fraction + policy.jitter * spread)


def renewal_time(
    not_before: dt.datetime, not_after: dt.datetime, serial: int, policy: RenewalPolicy
) -> dt.datetime:
    at = renewal_timestamp(not_before.timestamp(), not_after.timestamp(), serial, policy)
    return dt.datetime.fromtimestamp(at, dt.UTC)
