"""One way to compute a percentile, for every summary fleetpki prints (rotation waves, the
fleet simulator, the benchmarks): ``statistics.quantiles``, inclusive method (never beyond
the largest value seen)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], share: float) -> float | None:
    """The ``share`` percentile (0.99: p99; 0 < share < 1, in hundredths) of ``values``;
    None when there are none."""
    if not 0 < share < 1:
        raise ValueError(f"a percentile share is between 0 and 1, not {share}")
    ordered = sorted(values)
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return cuts[round(share * 100) - 1]
