"""Wave pacing decisions (pure): in flight, per second, canaries, abort threshold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rotation.pacing import Pacing, WavePacer
from rotation.planner import PlanItem
from rotation.store import Rotation, State
from tests.helpers import NOW

ITEMS = [PlanItem(n, f"d-{n:02d}", "device", NOW, NOW + dt.timedelta(days=30), NOW)
         for n in range(20)]  # fmt: skip


def rows(items: list[PlanItem], state: State) -> list[Rotation]:
    """The rotations of ``items``, all in ``state``."""
    return [
        Rotation(f"{i.serial:032x}", str(i.thing), format(i.serial, "x"), None, state, 30,
                 NOW, NOW, NOW)
        for i in items
    ]


def test_unpaced_asks_everything_at_once() -> None:
    pacer = WavePacer(ITEMS, Pacing())
    assert pacer.next([], 0.0) == ITEMS and pacer.exhausted


def test_at_most_n_in_flight() -> None:
    pacer = WavePacer(ITEMS, Pacing(max_in_flight=5))
    first = pacer.next([], 0.0)
    assert len(first) == 5
    asked = rows(first, State.REQUESTED)
    assert pacer.next(asked, 1.0) == []  # all five still in flight
    asked = rows(first[:2], State.CONFIRMED) + rows(first[2:], State.ISSUED)
    assert len(pacer.next(asked, 2.0)) == 2  # two confirmed: two more


def test_at_most_n_per_second_and_never_more_than_a_seconds_worth_at_once() -> None:
    pacer = WavePacer(ITEMS, Pacing(per_second=2))
    assert len(pacer.next([], 0.0)) == 1
    assert len(pacer.next([], 0.4)) == 0  # 0.8 of a device by now
    assert len(pacer.next([], 1.0)) == 2  # 2/s
    assert len(pacer.next([], 30.0)) == 2  # idle for half a minute: still one second's worth
    assert pacer.asked == 5


def test_the_canaries_go_first_and_the_rest_only_once_they_rotated() -> None:
    pacer = WavePacer(ITEMS, Pacing(canary=3))
    canaries = pacer.next([], 0.0)
    assert len(canaries) == 3
    pacer.record(rows(canaries, State.REQUESTED))
    assert pacer.next(rows(canaries, State.ISSUED), 1.0) == []
    rest = pacer.next(rows(canaries, State.COMPLETED), 2.0)
    assert rest == ITEMS[3:] and pacer.exhausted


def test_the_canaries_are_the_first_n_even_when_the_rate_asks_them_one_by_one() -> None:
    pacer = WavePacer(ITEMS, Pacing(canary=2, per_second=1))
    first = pacer.next([], 0.0)
    pacer.record(rows(first, State.REQUESTED))
    second = pacer.next(rows(first, State.COMPLETED), 1.0)
    pacer.record(rows(second, State.REQUESTED))
    assert len(first) == len(second) == 1 and pacer.canaries == {"d-00", "d-01"}
    asked = rows(first, State.COMPLETED) + rows(second, State.ISSUED)
    assert pacer.next(asked, 5.0) == []  # the second canary has not rotated yet
    asked = rows(first + second, State.COMPLETED)
    assert len(pacer.next(asked, 5.0)) == 1  # 1/s, a second's worth at most


def test_a_failed_canary_stops_the_wave() -> None:
    pacer = WavePacer(ITEMS, Pacing(canary=2))
    canaries = pacer.next([], 0.0)
    pacer.record(rows(canaries, State.REQUESTED))
    state = rows(canaries[:1], State.COMPLETED) + rows(canaries[1:], State.FAILED)
    assert pacer.next(state, 1.0) == []
    assert pacer.exhausted and pacer.aborted == "1 of 2 canaries failed"
    assert len(pacer.remaining) == 18


def test_the_wave_stops_above_the_failure_threshold() -> None:
    pacer = WavePacer(ITEMS, Pacing(max_in_flight=5, abort_above=20))
    first = pacer.next([], 0.0)
    one_failed = rows(first[:4], State.COMPLETED) + rows(first[4:], State.FAILED)
    second = pacer.next(one_failed, 1.0)
    assert len(second) == 5  # 1 of 5: not more than 20 %
    three_failed = one_failed + rows(second[:3], State.COMPLETED) + rows(second[3:], State.FAILED)
    assert pacer.next(three_failed, 2.0) == [] and pacer.aborted is not None
    assert "3 of 10 finished rotations failed" in pacer.aborted
    assert pacer.exhausted and len(pacer.remaining) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_in_flight": 0}, "--max-in-flight"),
        ({"per_second": 0}, "--rate"),
        ({"per_second": float("nan")}, "--rate"),
        ({"per_second": float("inf")}, "--rate"),
        ({"abort_above": float("nan")}, "--abort-above"),
        ({"canary": -1}, "--canary"),
        ({"abort_above": 100}, "--abort-above"),
    ],
)
def test_pacing_refuses_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pacing(**kwargs)  # type: ignore[arg-type]


def test_a_canary_that_could_not_be_asked_is_replaced_by_the_next_item() -> None:
    pacer = WavePacer(ITEMS, Pacing(canary=2))
    first = pacer.next([], 0.0)
    pacer.record(rows(first[:1], State.REQUESTED), offered=len(first))  # one was busy
    assert pacer.skipped == 1 and pacer.canaries == {"d-00"}
    second = pacer.next(rows(first[:1], State.COMPLETED), 1.0)
    assert second == ITEMS[2:3]  # the stand-in canary, not the rest of the wave
    pacer.record(rows(second, State.REQUESTED), offered=len(second))
    assert pacer.canaries == {"d-00", "d-02"}
    assert pacer.next(rows(first[:1], State.COMPLETED) + rows(second, State.ISSUED), 2.0) == []


@pytest.mark.parametrize(
    "argv",
    [
        ("rotate", "t-1", "--rate", "nan"),
        ("rotate", "t-1", "--canary", "-1"),
        ("rotate", "t-1", "--abort-above", "100"),
        ("rotate", "t-1", "--max-in-flight", "0"),
        ("rotate", "t-1", "--resend-after", "0s"),
        ("rotate", "t-1", "--resend-after", "20m", "--resend-max", "10m"),
        ("run", "--rate", "nan"),
        ("run", "--rate", "inf"),
        ("run", "--abort-above", "-1"),
        ("run", "--lease", "1s"),
        ("run", "--sweep-interval", "0s"),
        ("pause", "--reason"),
    ],
)
def test_bad_pacing_and_timing_options_are_one_line_and_change_nothing(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    from tests.device_fixtures import fleetpki, ok

    home = tmp_path / "home"
    ok(home, "ca", "init")
    before = ok(home, "rotation", "status", "--json")
    code, out, err = fleetpki(home, "rotation", *argv)
    assert code == 2 and out == "" and err.startswith("fleetpki: error: "), err
    assert len(err.strip().splitlines()) == 1
    assert ok(home, "rotation", "status", "--json") == before  # nothing asked, nothing paused
