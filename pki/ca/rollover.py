"""CA rollover, the pure part: the phases of a make-before-break rollover of the issuing
CA, which phase may follow which, when a scheduled rollover prepares and activates, and
which settings cannot work. No I/O: the persisted state, the commands and each phase's
work (staging the trust stores, probing the endpoints, draining the old CA's leaves) are
built on these values.

The phases, in order (SPIRE's schedule: prepare at 1/2 of the issuing CA's life, activate
at 5/6):

- ``prepared``: the new CA exists; nothing trusts it; issuance still uses the old one.
- ``staged``: every relying party's trust holds both CAs.
- ``verified``: a probe certificate of the new CA was accepted by every endpoint, and each
  endpoint's loaded trust was checked; activation waits for this.
- ``active``: new certificates come from the new CA.
- ``draining``: the old CA's active leaves are re-issued in waves.
- ``retired``: no active certificate chains to the old CA; it leaves the trust stores.

``aborted`` ends a rollover from ``prepared``, ``staged`` or ``verified`` (nothing
chains to the new CA yet), after the previous trust was restored.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from pki.errors import InvalidInput, OperatorError


class Phase(enum.StrEnum):
    PREPARED = "prepared"
    STAGED = "staged"
    VERIFIED = "verified"
    ACTIVE = "active"
    DRAINING = "draining"
    RETIRED = "retired"
    ABORTED = "aborted"


ORDER = (
    Phase.PREPARED,
    Phase.STAGED,
    Phase.VERIFIED,
    Phase.ACTIVE,
    Phase.DRAINING,
    Phase.RETIRED,
)
ABORTABLE = frozenset({Phase.PREPARED, Phase.STAGED, Phase.VERIFIED})
FINAL = frozenset({Phase.RETIRED, Phase.ABORTED})


def next_phase(phase: Phase) -> Phase | None:
    """The phase that follows ``phase`` (None once the rollover ended)."""
    if phase in FINAL:
        return None
    return ORDER[ORDER.index(phase) + 1]


def check_transition(current: Phase, target: Phase) -> bool:
    """Whether moving from ``current`` to ``target`` changes anything: False when it is
    already there (every step is idempotent); raises for a move the rollover does not
    allow (skipping a phase, going back, aborting once the new CA issues)."""
    if current is target:
        return False
    if target is Phase.ABORTED:
        if current in ABORTABLE:
            return True
        raise OperatorError(
            f"a rollover cannot be aborted once it is {current.value}: certificates "
            "already chain to the new CA (abort is possible while prepared, staged or verified)"
        )
    if next_phase(current) is not target:
        expected = next_phase(current)
        raise OperatorError(
            f"a rollover that is {current.value} cannot become {target.value}"
            + (f" (its next phase is {expected.value})" if expected else " (it has ended)")
        )
    return True


@dataclass(frozen=True)
class RolloverPolicy:
    """When a scheduled rollover starts and activates, as fractions of the issuing CA's
    lifetime, and the least time both CAs are trusted before the new one issues."""

    prepare_at: float = 1 / 2
    activate_at: float = 5 / 6
    min_overlap: dt.timedelta = dt.timedelta(days=1)

    def __post_init__(self) -> None:
        if not 0 < self.prepare_at < self.activate_at < 1:
            raise InvalidInput(
                "the rollover needs 0 < prepare_at < activate_at < 1 "
                f"(got {self.prepare_at:g} and {self.activate_at:g})"
            )
        if self.min_overlap < dt.timedelta(0):
            raise InvalidInput("the rollover's minimum overlap must not be negative")


@dataclass(frozen=True)
class Schedule:
    prepare: dt.datetime  # when the daemon prepares the new CA
    activate: dt.datetime  # the earliest the new CA may issue (and never before verified)


def schedule(
    not_before: dt.datetime, not_after: dt.datetime, policy: RolloverPolicy
) -> Schedule:
    """The scheduled rollover of a CA valid from ``not_before`` to ``not_after``."""
    if not_after <= not_before:
        raise InvalidInput("a CA's notAfter must come after its notBefore")
    life = not_after - not_before
    return Schedule(not_before + life * policy.prepare_at, not_before + life * policy.activate_at)


def activation_time(
    planned: Schedule, verified_at: dt.datetime, policy: RolloverPolicy
) -> dt.datetime:
    """When the new CA may start issuing: at the scheduled time, but never sooner than
    ``min_overlap`` after propagation was observed."""
    return max(planned.activate, verified_at + policy.min_overlap)


def due(planned: Schedule, now: dt.datetime) -> Phase | None:
    """What a scheduled rollover calls for at ``now`` with no rollover under way:
    ``prepared`` once its preparation time has come, else None."""
    return Phase.PREPARED if now >= planned.prepare else None


def settings_problems(
    not_before: dt.datetime,
    not_after: dt.datetime,
    longest_leaf: dt.timedelta,
    policy: RolloverPolicy,
) -> list[str]:
    """Why these settings cannot roll the CA over without a refused device (empty: they
    can). From activation to the old CA's expiry, its last leaves must be re-issued: the
    old CA's life left at activation must cover the overlap and the longest leaf
    lifetime (leaves are capped at their issuer's notAfter, so a shorter span means leaves
    cut short, rotated in a rush, or refused)."""
    planned = schedule(not_before, not_after, policy)
    left = not_after - planned.activate
    needed = policy.min_overlap + longest_leaf
    if left < needed:
        return [
            f"the issuing CA has {_days(left)} left at activation ({policy.activate_at:.3g} of "
            f"its life), less than the overlap plus the longest leaf lifetime ({_days(needed)}):"
            " activate earlier, issue shorter leaves or make the CA longer-lived"
        ]
    return []


def _days(span: dt.timedelta) -> str:
    return f"{span.total_seconds() / 86_400:.1f} days"
