"""The pure core of CA rollover (pki.ca.rollover): which phase may follow which, the
schedule, and the settings it refuses. Times are relative to tests.helpers.NOW."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki.ca import rollover as ro
from pki.errors import InvalidInput, OperatorError
from tests.helpers import NOW

T0 = NOW  # pure arithmetic: nothing here reads a clock
YEAR = dt.timedelta(days=365)


def test_the_phases_go_forward_one_at_a_time_and_repeat_harmlessly() -> None:
    phase = ro.Phase.PREPARED
    seen = [phase]
    while (following := ro.next_phase(phase)) is not None:
        assert ro.check_transition(phase, following) is True
        assert ro.check_transition(following, following) is False  # idempotent
        phase = following
        seen.append(phase)
    assert seen == list(ro.ORDER)
    wait = r"staged cannot become active \(its next phase is verified\)"
    with pytest.raises(OperatorError, match=wait):
        ro.check_transition(ro.Phase.STAGED, ro.Phase.ACTIVE)  # activation waits for proof
    with pytest.raises(OperatorError, match="cannot become prepared"):
        ro.check_transition(ro.Phase.ACTIVE, ro.Phase.PREPARED)
    with pytest.raises(OperatorError, match="has ended"):
        ro.check_transition(ro.Phase.RETIRED, ro.Phase.DRAINING)


@pytest.mark.parametrize("phase", list(ro.Phase))
def test_abort_only_before_anything_chains_to_the_new_ca(phase: ro.Phase) -> None:
    if phase is ro.Phase.ABORTED:
        assert ro.check_transition(phase, ro.Phase.ABORTED) is False
    elif phase in (ro.Phase.PREPARED, ro.Phase.STAGED, ro.Phase.VERIFIED):
        assert ro.check_transition(phase, ro.Phase.ABORTED) is True
    else:
        with pytest.raises(OperatorError, match="cannot be aborted once it is"):
            ro.check_transition(phase, ro.Phase.ABORTED)


def test_spires_schedule_by_default() -> None:
    planned = ro.schedule(T0, T0 + 6 * YEAR, ro.RolloverPolicy())
    assert planned.prepare == T0 + 3 * YEAR
    assert planned.activate == T0 + 5 * YEAR
    assert ro.due(planned, planned.prepare - dt.timedelta(seconds=1)) is None
    assert ro.due(planned, planned.prepare) is ro.Phase.PREPARED


@given(
    life_days=st.integers(min_value=1, max_value=40 * 365),
    prepare=st.floats(min_value=0.01, max_value=0.98),
    gap=st.floats(min_value=0.005, max_value=0.5),
    overlap_hours=st.integers(min_value=0, max_value=24 * 400),
    verified_after=st.floats(min_value=0.0, max_value=1.0),
)
def test_activation_is_never_before_the_schedule_nor_the_overlap(
    life_days: int, prepare: float, gap: float, overlap_hours: int, verified_after: float
) -> None:
    activate = min(0.99, prepare + gap)
    policy = ro.RolloverPolicy(prepare, activate, dt.timedelta(hours=overlap_hours))
    not_after = T0 + dt.timedelta(days=life_days)
    planned = ro.schedule(T0, not_after, policy)
    assert T0 < planned.prepare < planned.activate < not_after
    verified = planned.prepare + (not_after - planned.prepare) * verified_after
    at = ro.activation_time(planned, verified, policy)
    assert at >= planned.activate and at >= verified + policy.min_overlap
    assert at in (planned.activate, verified + policy.min_overlap)


@pytest.mark.parametrize(
    ("prepare", "activate", "overlap"),
    [(0.0, 0.5, 0), (0.5, 0.5, 0), (0.9, 0.5, 0), (0.5, 1.0, 0), (0.5, 0.8, -1)],
)
def test_impossible_policies_are_refused(prepare: float, activate: float, overlap: int) -> None:
    with pytest.raises(InvalidInput):
        ro.RolloverPolicy(prepare, activate, dt.timedelta(days=overlap))
    with pytest.raises(InvalidInput, match="notAfter must come after"):
        ro.schedule(T0, T0, ro.RolloverPolicy())


def test_settings_whose_old_ca_cannot_outlast_its_last_leaves_are_named() -> None:
    policy = ro.RolloverPolicy(min_overlap=dt.timedelta(days=7))
    # a 5-year CA activates its successor with 10 months left: 90-day leaves fit
    assert ro.settings_problems(T0, T0 + 5 * YEAR, dt.timedelta(days=90), policy) == []
    # a 1-year CA has 61 days left at 5/6: a 90-day leaf plus a week's overlap does not fit
    (problem,) = ro.settings_problems(T0, T0 + YEAR, dt.timedelta(days=90), policy)
    assert "60.8 days left at activation" in problem and "(97.0 days)" in problem
    earlier = ro.RolloverPolicy(0.3, 0.6, dt.timedelta(days=7))
    assert ro.settings_problems(T0, T0 + YEAR, dt.timedelta(days=90), earlier) == []


def test_ca_show_gives_the_scheduled_rollover_and_warns_when_it_cannot_work(
    tmp_path: Path,
) -> None:
    """A 60-day issuing CA activates its successor with 10 days left: 90-day leaves do
    not fit, and ca show says so; past its preparation time it says a rollover is due."""
    from pki.clock import FixedClock
    from tests.device_fixtures import fleetpki, ok

    home = tmp_path / "home"
    clock = FixedClock(NOW)
    ok(home, "ca", "init", "--issuing-days", "60", clock=clock)
    shown = json.loads(ok(home, "ca", "show", "--json", clock=clock))
    view = shown["rollover"]
    assert view["phase"] is None and view["due"] is False and view["leaf_lifetime_days"] == 90
    assert view["prepare_at"] < view["activate_at"] < view["not_after"]
    (problem,) = view["problems"]
    assert "less than the overlap plus the longest leaf lifetime" in problem
    assert problem in shown["warnings"]
    clock.advance(dt.timedelta(days=31))  # past half of its life
    code, out, err = fleetpki(home, "ca", "show", clock=clock)
    assert code == 0 and "past its scheduled rollover preparation" in err
    assert "issuing CA rollover: prepare from" in out


def test_a_default_home_has_a_workable_rollover_schedule(tmp_path: Path) -> None:
    from pki.clock import FixedClock
    from tests.device_fixtures import ok

    home = tmp_path / "home"
    ok(home, "ca", "init", clock=FixedClock(NOW))
    shown = json.loads(ok(home, "ca", "show", "--json", clock=FixedClock(NOW)))
    assert shown["rollover"]["problems"] == [] and shown["warnings"] == []


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("rollover_prepare_at", 0.9, "prepare_at < activate_at"),
        ("rollover_activate_at", 1.5, "prepare_at < activate_at"),
        ("rollover_min_overlap_hours", -1, "rollover_min_overlap_hours must be"),
        ("rollover_prepare_at", "half", "must be float"),
    ],
)
def test_bad_rollover_settings_are_refused_in_one_line(
    tmp_path: Path, setting: str, value: object, says: str
) -> None:
    from pki.clock import FixedClock
    from tests.device_fixtures import fleetpki, ok

    home = tmp_path / "home"
    ok(home, "ca", "init", clock=FixedClock(NOW))
    config = home / "config.json"
    data = json.loads(config.read_text())
    data[setting] = value
    config.write_text(json.dumps(data))
    code, _out, err = fleetpki(home, "ca", "show", clock=FixedClock(NOW))
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert says in line


def test_every_record_names_the_ca_key_that_signed_it(tmp_path: Path) -> None:
    """The foundation of CA generations: a device's record carries the issuing CA's key
    identifier, the issuing CA's the root's, the root's its own (list/show --json)."""
    from cryptography import x509

    from pki.clock import FixedClock
    from pki.issue.check import subject_key_id
    from tests.device_fixtures import ok

    home = tmp_path / "home"
    clock = FixedClock(NOW)
    ok(home, "ca", "init", clock=clock)
    device = json.loads(ok(home, "issue", "device", "kid-1", "--generate-key", "--out",
                           tmp_path / "d", "--json", clock=clock))  # fmt: skip
    root_pem, issuing_pem = (home / "ca" / "root.pem").read_bytes(), (
        home / "ca" / "issuing.pem").read_bytes()  # fmt: skip
    root = subject_key_id(x509.load_pem_x509_certificate(root_pem))
    issuing = subject_key_id(x509.load_pem_x509_certificate(issuing_pem))
    assert root != issuing and len(root) == len(issuing) == 40
    assert device["issuer_key_id"] == issuing
    shown = json.loads(ok(home, "show", device["serial"], "--json", clock=clock))
    assert shown["issuer_key_id"] == issuing
    cas = {c["profile"]: c["issuer_key_id"]
           for c in json.loads(ok(home, "ca", "show", "--json", clock=clock))["certificates"]}
    assert cas == {"root-ca": root, "issuing-ca": root}
    listed = json.loads(ok(home, "list", "--json", clock=clock))
    assert [r["issuer_key_id"] for r in listed] == [issuing]
