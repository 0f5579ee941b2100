"""Pacing a rotation wave: at most so many devices in flight and so many asked per second,
a canary group asked first (the wave goes on only once every canary rotated), and an abort
threshold (stop asking once too large a share of the finished rotations failed). Pure: the
caller passes the wave's rotations as they stand and the seconds since the wave began."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rotation.planner import PlanItem
from rotation.store import Rotation, State

SUCCEEDED = (State.CONFIRMED, State.COMPLETED)
MAX_RATE = 1e6  # devices per second: more is no pacing (and not a number is refused)
IN_FLIGHT = (State.REQUESTED, State.ISSUED)


@dataclass(frozen=True)
class Pacing:
    max_in_flight: int | None = None  # devices asked and not yet confirmed, at once
    per_second: float | None = None  # devices asked per second (bursts of a second at most)
    canary: int = 0  # the first N asked alone; the rest only once all N rotated
    abort_above: float | None = None  # percent of finished rotations failed: stop asking

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("--max-in-flight must be at least 1")
        if self.per_second is not None and not 0 < self.per_second <= MAX_RATE:
            raise ValueError(f"--rate must be more than 0 and at most {MAX_RATE:g} per second")
        if self.canary < 0:
            raise ValueError("--canary must be 0 or more")
        if self.abort_above is not None and not 0 <= self.abort_above < 100:  # nan: refused
            raise ValueError("--abort-above must be a percentage from 0 to below 100")

    @property
    def paced(self) -> bool:
        return bool(
            self.max_in_flight or self.per_second or self.canary or self.abort_above is not None
        )


class WavePacer:
    """Which of a wave's items to ask next. ``next`` is called with the rotations asked so
    far (their current state); it returns the items to ask now (possibly none), and
    ``record`` is told which of them were asked."""

    def __init__(self, items: Sequence[PlanItem], pacing: Pacing) -> None:
        self.pacing = pacing
        self.remaining = list(items)
        self.asked = 0
        self.canary_count = min(pacing.canary, len(items))  # the first N items
        self.canaries: set[str] = set()  # the canaries actually asked
        self._canary_batch = False
        self.aborted: str | None = None
        self.skipped = 0  # offered but not asked: a rotation in progress, failed recently
        self._tokens = 1.0  # --rate: a bucket holding one second's worth, one to start
        self._filled_at = 0.0

    @property
    def exhausted(self) -> bool:
        return not self.remaining or self.aborted is not None

    def next(
        self, rows: Sequence[Rotation], elapsed: float, limit: int | None = None
    ) -> list[PlanItem]:
        """``elapsed``: seconds since the wave began; ``limit``: room the caller has (the
        rotations in flight across every wave)."""
        if self.exhausted:
            return []
        p = self.pacing
        canary_phase = self.asked < self.canary_count
        if not canary_phase and self.canary_count and not self._canaries_rotated(rows):
            return []
        finished = [r for r in rows if r.state is State.FAILED or r.state in SUCCEEDED]
        failed = sum(1 for r in finished if r.state is State.FAILED)
        if p.abort_above is not None and finished and failed * 100 > p.abort_above * len(finished):
            self.aborted = (
                f"{failed} of {len(finished)} finished rotations failed "
                f"(more than {p.abort_above:g} %)"
            )
            return []
        room = len(self.remaining) if limit is None else min(len(self.remaining), limit)
        if canary_phase:
            room = min(room, self.canary_count - self.asked)
        if p.max_in_flight is not None:
            in_flight = sum(1 for r in rows if r.state in IN_FLIGHT)
            room = min(room, p.max_in_flight - in_flight)
        if p.per_second is not None:  # never more than a second's worth at once
            burst = max(1.0, p.per_second)
            self._tokens = min(burst, self._tokens + (elapsed - self._filled_at) * p.per_second)
            self._filled_at = elapsed
            room = min(room, int(self._tokens))
        if room <= 0:
            return []
        taken, self.remaining = self.remaining[:room], self.remaining[room:]
        self.asked += len(taken)
        self._tokens -= len(taken)
        self._canary_batch = canary_phase
        return taken

    def _canaries_rotated(self, rows: Sequence[Rotation]) -> bool:
        """Every canary asked has rotated; a failed one stops the wave."""
        canary = [r for r in rows if r.thing in self.canaries]
        lost = sum(1 for r in canary if r.state is State.FAILED)
        if lost:
            self.aborted = f"{lost} of {len(canary)} canaries failed"
            return False
        return all(r.state in SUCCEEDED for r in canary)

    def record(self, requested: Sequence[Rotation], offered: int | None = None) -> None:
        """What the last batch actually asked of the ``offered`` items (a thing busy with
        another rotation is skipped, and counted): in the canary phase, those are
        canaries."""
        if offered is not None:
            skipped = max(0, offered - len(requested))
            self.skipped += skipped
            if self._canary_batch:  # a busy canary is no canary: the next items stand in
                self.asked -= skipped
        if self._canary_batch:
            self.canaries |= {r.thing for r in requested}
