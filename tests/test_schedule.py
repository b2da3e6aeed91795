"""Schedule rules (SPEC 3.2, choices 10.1 and 10.5): unit tests and the cadence seen in a sandbox."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from support import ALICE, msg

from engine import schedule
from engine.ports import Approval, IncomingMethod, OrgSettings, OutgoingMethod, Status, Workload

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


# -- cadence ----------------------------------------------------------------------------------
def test_normal_cadence_is_five_minutes():
    assert schedule.cadence_delay(False, 0) == 300
    assert schedule.cadence_delay(False, 1) == 300


def test_busy_mailbox_comes_back_after_two_minutes():
    for count in (0, 1, 5, 50):
        assert schedule.cadence_delay(True, count) == 120


def test_idle_mailbox_stretches_a_minute_per_empty_cycle_up_to_twelve():
    delays = [schedule.cadence_delay(False, n) for n in range(1, 12)]
    assert delays == [300, 360, 420, 480, 540, 600, 660, 720, 720, 720, 720]
    assert schedule.cadence_delay(False, 10_000) == 720


# -- transient back-off -----------------------------------------------------------------------
def test_transient_retry_is_a_flat_five_minutes():
    assert schedule.error_delay(None) == 300
    assert schedule.error_delay(0) == 300


def test_backoff_hint_only_lengthens_the_wait():
    assert schedule.error_delay(1_000) == 300  # a shorter hint does not shorten the retry
    assert schedule.error_delay(600_000) == 600
    assert schedule.error_delay(450_500) == 450.5


def test_jitter_is_small_seeded_and_only_added():
    a = [schedule.error_delay(None, random.Random(7)) for _ in range(3)]
    b = [schedule.error_delay(None, random.Random(7)) for _ in range(3)]
    assert a == b
    rng = random.Random(1)
    values = [schedule.error_delay(None, rng) for _ in range(200)]
    assert all(300 <= v <= 300 + schedule.JITTER_MAX_S for v in values)
    assert len(set(values)) > 1


# -- the floor ----------------------------------------------------------------------------------
def test_next_run_is_end_plus_delay_when_past_the_floor():
    start = T0
    end = T0 + timedelta(seconds=30)
    assert schedule.next_run(start, end, 300, 5) == end + timedelta(seconds=300)


def test_next_run_never_earlier_than_start_plus_minimum_interval():
    start = T0
    end = T0 + timedelta(seconds=10)
    assert schedule.next_run(start, end, 120, 10) == T0 + timedelta(minutes=10)
    assert schedule.next_run(start, end, 120, 0) == end + timedelta(seconds=120)


def test_earliest_start():
    assert schedule.earliest_start(None, 5) is None
    assert schedule.earliest_start(T0, 7) == T0 + timedelta(minutes=7)


def test_mailbox_due_is_the_earliest_workload():
    later = T0 + timedelta(minutes=3)
    assert schedule.mailbox_due(None, None) is None
    assert schedule.mailbox_due(later, None) == later
    assert schedule.mailbox_due(later, T0) == T0


# -- preconditions (SPEC 3.1) ----------------------------------------------------------------------
ELIGIBLE = dict(org=OrgSettings(), owner_type="systemuser", mailbox_active=True, profile_active=True,
                delivery_method=IncomingMethod.SSS, enabled=True, status=Status.SUCCESS,
                approval=Approval.APPROVED)


def test_all_preconditions_met_is_eligible():
    assert schedule.workload_eligible(Workload.INCOMING, **ELIGIBLE)
    assert schedule.workload_eligible(Workload.OUTGOING, **{**ELIGIBLE, "delivery_method": OutgoingMethod.SSS})


@pytest.mark.parametrize("change", [
    {"mailbox_active": False},
    {"profile_active": False},
    {"delivery_method": IncomingMethod.OUTLOOK},
    {"delivery_method": IncomingMethod.FORWARD_MAILBOX},
    {"delivery_method": IncomingMethod.NONE},
    {"enabled": False},
    {"status": Status.NOT_RUN},
    {"approval": Approval.PENDING},
    {"approval": Approval.REJECTED},
    {"approval": Approval.EMPTY},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_each_missing_precondition_makes_incoming_ineligible(change):
    assert not schedule.workload_eligible(Workload.INCOMING, **{**ELIGIBLE, **change})


def test_failure_status_is_still_eligible_when_enabled():
    # Only "Not Run" blocks; a workload that failed once but is enabled keeps trying.
    assert schedule.workload_eligible(Workload.INCOMING, **{**ELIGIBLE, "status": Status.FAILURE})


def test_approval_only_matters_when_the_org_requires_it_for_that_owner_type():
    no_users = OrgSettings(requireapprovalforuseremail=False)
    no_queues = OrgSettings(requireapprovalforqueueemail=False)
    assert schedule.approval_ok(no_users, "systemuser", Approval.PENDING)
    assert not schedule.approval_ok(no_users, "queue", Approval.PENDING)
    assert schedule.approval_ok(no_queues, "queue", Approval.REJECTED)
    assert not schedule.approval_ok(no_queues, "systemuser", Approval.REJECTED)
    assert schedule.approval_ok(OrgSettings(), "queue", Approval.APPROVED)


# -- the cadence as the engine runs it -----------------------------------------------------------
def _gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


def test_idle_mailbox_polls_every_five_minutes_then_stretches_to_twelve(org):
    org.run_for(3 * 3600)
    gaps = _gaps(org.starts(ALICE))
    assert gaps[:9] == [300, 360, 420, 480, 540, 600, 660, 720, 720]
    assert set(gaps[7:]) == {720}


def test_found_items_bring_the_mailbox_back_after_two_minutes(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 0})
    o.run_for(3600)  # idle: the cadence has stretched to 10 minutes
    delivered_at = o.sb.clock.now()
    o.deliver(msg("one"))
    o.run_for(3600)
    later = [s for s in o.starts(ALICE) if s >= delivered_at]
    assert len(o.item_events(ALICE)) == 1  # the first cycle after delivery found the item
    assert (later[1] - later[0]).total_seconds() == 120
    assert (later[2] - later[1]).total_seconds() == 300  # quiet again: back to 5 minutes


def test_busy_mailbox_still_respects_the_default_five_minute_floor(org):
    org.run_for(1800)
    org.deliver(msg("one"))
    org.run_for(1800)
    gaps = _gaps(org.starts(ALICE))
    assert min(gaps) == 300
    assert 120 not in gaps


def test_minimum_polling_interval_is_a_floor_over_the_cadence(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 15})
    for minute in range(0, 120, 3):  # mail keeps the mailbox busy
        o.sb.at(o.sb.clock.now() + timedelta(minutes=minute), lambda: o.deliver(msg("busy")))
    o.run_for(2 * 3600)
    for workload in ("INCOMING", "OUTGOING"):
        gaps = _gaps(o.starts(ALICE, workload))
        assert gaps and min(gaps) >= 15 * 60
        assert gaps[0] == 15 * 60


def test_transient_error_retries_after_five_minutes(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 0})
    o.sb.add_fault(code="ErrorMailboxStoreUnavailable", operation="find_new_items", mailbox=ALICE, count=1)
    o.run_for(1800)
    err = o.errors(ALICE)
    assert len(err) == 1
    failed_at = datetime.fromisoformat(err[0][0])
    later = [s for s in o.starts(ALICE) if s > failed_at]
    assert (later[0] - failed_at).total_seconds() == 300


def test_server_busy_backoff_hint_is_honoured(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 0})
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1,
                   backoff_ms=900_000)
    o.run_for(3600)
    failed_at = datetime.fromisoformat(o.errors(ALICE)[0][0])
    later = [s for s in o.starts(ALICE) if s > failed_at]
    assert (later[0] - failed_at).total_seconds() == 900


def test_transient_retry_still_respects_a_longer_minimum_interval(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 20})
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1)
    o.run_for(3600)
    starts = o.starts(ALICE)
    assert (starts[1] - starts[0]).total_seconds() == 20 * 60
