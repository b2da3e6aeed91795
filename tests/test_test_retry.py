"""Test & Enable retried after transient errors (SPEC 1.9 and section 4).

A transient error of a workload's test puts the test off: the workload stays switched off with
its status Not Run, ``testemailconfigurationscheduled`` is set, a Warning alert is written (when
the organization writes warnings), and the engine tests the workload again 5 minutes later (or
after Exchange's back-off hint). The tenth transient failure in a row counts as permanent.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import ADMIN, ALICE, BOB, START, SUPPORT, msg, run

from engine.ports import Status
from simulator.crm.admin import Admin

OTHER_ORG = "0f0f0f0f-1111-4222-8333-444455556666"
WARNINGS = {"generatealertsforwarnings": True}


def _tests(o, address: str | None = None) -> list[tuple]:
    """The engine's scheduled tests (event log)."""
    return [e for e in o.sb.events if len(e) > 2 and e[1] == "test" and (address is None or e[2] == address)]


def _alerts(o, level: int, address: str = ALICE) -> list:
    return [a for a in o.alerts() if a.level == level and a.regardingobjectid == o.mailboxes[address]]


def test_a_transient_error_schedules_the_test_and_the_engine_enables_the_mailbox_later(make_org):
    o = make_org(test=False, org=WARNINGS)
    rule = o.sb.add_fault(code="ErrorServerBusy", mailbox=ALICE, count=3)  # each of the three tests
    [result] = o.test_and_enable([ALICE])
    assert rule.fired == 3
    assert not result.ok and result.retry_scheduled and result.errors == {}
    assert set(result.scheduled) == {"INCOMING", "OUTGOING", "ACT"}
    assert (result.incoming, result.outgoing, result.act) == (Status.NOT_RUN,) * 3
    assert [result.status_name(w) for w in ("incoming", "outgoing", "act")] == ["SCHEDULED"] * 3
    assert result.retry_at == START + timedelta(minutes=5)
    mb = o.mailbox(ALICE)
    assert mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 1
    assert not (mb.enabledforincomingemail or mb.enabledforoutgoingemail or mb.enabledforact)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.actstatus, mb.mailboxstatus) == (0, 0, 0, 0)
    assert mb.postponemailboxprocessinguntil == START + timedelta(minutes=5)
    assert mb.lastsyncerrorcode == "ErrorServerBusy"
    # one Warning per wall (the mailbox owner and the profile owner), naming every workload; no Error
    warnings = _alerts(o, 2)
    assert {a.ownerid for a in warnings} == {o.users[ALICE], o.profile().ownerid}
    assert all(a.tracecode == "ErrorServerBusy" and "will run again in a few minutes" in a.text
               and "incoming email, outgoing email and appointments, contacts and tasks" in a.text
               for a in warnings)
    assert _alerts(o, 3) == [] and _alerts(o, 1) == []

    o.deliver(msg("before the retest"))
    o.run_for(4 * 60)
    assert o.starts(ALICE) == [] and _tests(o) == []  # nothing runs before the retry time
    o.run_for(6 * 60)
    [test] = _tests(o, ALICE)
    assert test[0] == (START + timedelta(minutes=5)).isoformat()
    mb = o.mailbox(ALICE)
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0
    assert mb.enabledforincomingemail and mb.enabledforoutgoingemail and mb.enabledforact
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.actstatus, mb.mailboxstatus) == (1, 1, 1, 1)
    [info] = _alerts(o, 1)
    assert info.tracecode == "MailboxEnabled" and "incoming and outgoing email" in info.text
    # the first cycle runs right after the test, in the same lease
    assert o.starts(ALICE)[0] == START + timedelta(minutes=5)
    o.deliver(msg("after the retest"))
    o.run_for(10 * 60)
    assert sorted(e.subject for e in o.received()) == ["after the retest", "before the retest"]
    assert len(_tests(o)) == 1 and o.sb.engine.stats.tests == 1


def test_exchanges_back_off_hint_longer_than_five_minutes_sets_the_retry_time(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1, backoff_ms=900_000)
    [result] = o.test_and_enable([ALICE])
    assert set(result.scheduled) == {"INCOMING"}
    assert result.retry_at == START + timedelta(minutes=15)
    assert o.mailbox(ALICE).receivingpostponeduntil == START + timedelta(minutes=15)
    o.run_for(14 * 60)
    assert _tests(o, ALICE) == [] and not o.mailbox(ALICE).enabledforincomingemail
    o.run_for(2 * 60)
    assert [e[0] for e in _tests(o, ALICE)] == [(START + timedelta(minutes=15)).isoformat()]
    assert o.mailbox(ALICE).enabledforincomingemail


def test_a_permanent_error_fails_at_once_and_schedules_nothing(make_org):
    o = make_org(test=False, org=WARNINGS)
    rule = o.sb.add_fault(code="8005E272", operation="find_new_items", mailbox=ALICE)
    [result] = o.test_and_enable([ALICE])
    assert result.incoming is Status.FAILURE and not result.retry_scheduled and result.retry_at is None
    assert result.status_name("incoming") == "FAILURE"
    mb = o.mailbox(ALICE)
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0
    assert mb.incomingemailstatus == 2 and not mb.enabledforincomingemail and mb.receivingpostponeduntil is None
    assert {a.tracecode for a in _alerts(o, 3)} == {"8005E272"} and _alerts(o, 2) == []
    fired = rule.fired
    o.run_for(2 * 3600)
    assert _tests(o) == [] and rule.fired == fired
    assert o.mailbox(ALICE).incomingemailstatus == 2


def test_ten_transient_failures_in_a_row_count_as_permanent_and_the_retests_stop(make_org):
    o = make_org(test=False, org=WARNINGS)
    rule = o.sb.add_fault(code="ErrorMailboxStoreUnavailable", operation="send", mailbox=ALICE)
    [result] = o.test_and_enable([ALICE])
    assert set(result.scheduled) == {"OUTGOING"} and result.incoming is Status.SUCCESS
    o.run_for(3 * 3600)
    assert rule.fired == 10  # the Test & Enable and nine scheduled tests, then no more
    tests = _tests(o, ALICE)
    assert len(tests) == 9
    times = [e[0] for e in tests]
    assert times == [(START + timedelta(minutes=5 * i)).isoformat() for i in range(1, 10)]
    assert tests[-1][4] == "OUTGOING:FAILURE" and all(t[4] == "OUTGOING:SCHEDULED" for t in tests[:-1])
    mb = o.mailbox(ALICE)
    assert mb.outgoingemailstatus == 2 and not mb.enabledforoutgoingemail and mb.mailboxstatus == 2
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0
    assert mb.lastsyncerrorcode == "ErrorMailboxStoreUnavailable" and mb.lastsyncerrorcount == 10
    assert mb.enabledforincomingemail  # the workload that passed keeps running
    errors = _alerts(o, 3)
    assert errors and all(a.tracecode == "ErrorMailboxStoreUnavailable" and "failed 10 times in a row" in a.text
                          and "outgoing email is now disabled" in a.text for a in errors)
    assert [a.errorcount for a in _alerts(o, 2)] == [9, 9]  # one row per wall, repeated by each put-off test
    o.run_for(3 * 3600)
    assert rule.fired == 10 and len(_tests(o)) == 9


def test_nine_transient_failures_then_a_pass_enable_the_workload(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=9)
    o.test_and_enable([ALICE])
    o.run_for(3600)
    assert len(_tests(o, ALICE)) == 9
    mb = o.mailbox(ALICE)
    assert mb.enabledforoutgoingemail and mb.outgoingemailstatus == 1
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0


def test_with_warnings_off_no_warning_is_written_but_the_test_still_runs_again(make_org):
    o = make_org(test=False)  # generatealertsforwarnings is off by default
    o.sb.add_fault(code="HttpServiceUnavailable", mailbox=ALICE, count=3)
    [result] = o.test_and_enable([ALICE])
    assert result.retry_scheduled and result.alerts == []
    assert o.alerts() == []
    o.run_for(10 * 60)
    assert len(_tests(o, ALICE)) == 1
    mb = o.mailbox(ALICE)
    assert mb.enabledforincomingemail and mb.enabledforoutgoingemail and not mb.testemailconfigurationscheduled
    assert [a.level for a in o.alerts()] == [1]


def test_the_scheduled_test_checks_approval_again(make_org):
    o = make_org(test=False, org=WARNINGS)
    o.sb.add_fault(code="ErrorServerBusy", mailbox=ALICE, count=3)
    [result] = o.test_and_enable([ALICE])
    assert result.retry_scheduled
    o.sb.admin.reject(ADMIN, [o.mailboxes[ALICE]])  # approval withdrawn while the test waits
    o.deliver(msg("not for an unapproved mailbox"))
    o.run_for(3600)
    assert len(_tests(o, ALICE)) == 1  # tested again once, and failed for good
    mb = o.mailbox(ALICE)
    assert not (mb.enabledforincomingemail or mb.enabledforoutgoingemail or mb.enabledforact)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.actstatus) == (2, 2, 2)
    assert not mb.testemailconfigurationscheduled and mb.lastsyncerrorcode == "MailboxNotApproved"
    assert {a.tracecode for a in _alerts(o, 3)} == {"MailboxNotApproved"} and _alerts(o, 1) == []
    assert o.starts(ALICE) == [] and o.received() == []


def test_mixed_result_enables_incoming_at_once_and_outgoing_after_the_retest(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert (result.incoming, result.outgoing, result.act) == (Status.SUCCESS, Status.NOT_RUN, Status.SUCCESS)
    assert result.status_name("outgoing") == "SCHEDULED" and set(result.scheduled) == {"OUTGOING"}
    mb = o.mailbox(ALICE)
    assert mb.enabledforincomingemail and mb.enabledforact and not mb.enabledforoutgoingemail
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.mailboxstatus) == (1, 0, 1)
    assert mb.testemailconfigurationscheduled and mb.postponemailboxprocessinguntil == START
    assert o.alerts() == []  # no Information alert while a test waits (and warnings are off)
    # incoming works now; an email sent from the CRM waits for the outgoing test
    o.deliver(msg("incoming right away"))
    activity = o.sb.crm.create_email(sender_userid=o.users[ALICE], to=["carl@fabrikam.example"], subject="Out")
    o.sb.crm.send_email(activity)
    o.run_for(60)
    assert [e.subject for e in o.received()] == ["incoming right away"]
    assert o.email(activity).statuscode == 6  # Pending Send
    assert o.starts(ALICE, "OUTGOING") == []
    o.run_for(10 * 60)
    [test] = _tests(o, ALICE)
    assert test[3] == "OUTGOING" and test[4] == "OUTGOING:SUCCESS"  # only the put-off workload
    mb = o.mailbox(ALICE)
    assert mb.enabledforoutgoingemail and mb.outgoingemailstatus == 1 and not mb.testemailconfigurationscheduled
    assert o.email(activity).statuscode == 3  # Sent
    [info] = o.alerts()
    assert info.level == 1 and "incoming and outgoing email" in info.text


def test_permanent_and_transient_in_one_test_fail_one_and_schedule_the_other(make_org):
    o = make_org(test=False, org=WARNINGS)
    o.sb.add_fault(code="8005E274", operation="find_new_items", mailbox=ALICE, count=1)
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert set(result.errors) == {"INCOMING"} and set(result.scheduled) == {"OUTGOING"}
    assert {(a.level, a.tracecode) for a in _alerts(o, 3) + _alerts(o, 2)} == {
        (3, "8005E274"), (2, "ErrorServerBusy")}
    o.run_for(10 * 60)
    mb = o.mailbox(ALICE)
    assert mb.incomingemailstatus == 2 and not mb.enabledforincomingemail  # not tested again
    assert mb.outgoingemailstatus == 1 and mb.enabledforoutgoingemail
    assert [t[3] for t in _tests(o, ALICE)] == ["OUTGOING"]


def test_the_retry_is_never_before_the_minimum_polling_interval(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 20})  # everything tested and running
    o.run_for(60)
    last_start = o.mailbox(ALICE).lastoutgoingstartedon
    assert last_start == START
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert result.retry_at == last_start + timedelta(minutes=20)  # not 5 minutes after the test
    o.run_for(3600)
    assert [e[0] for e in _tests(o, ALICE)] == [(START + timedelta(minutes=20)).isoformat()]
    starts = o.starts(ALICE, "OUTGOING")
    assert all(b - a >= timedelta(minutes=20) for a, b in zip(starts, starts[1:], strict=False))
    assert o.mailbox(ALICE).enabledforoutgoingemail


def test_a_start_date_is_kept_when_the_incoming_test_is_put_off(make_org):
    o = make_org(test=False)
    start_date = START - timedelta(hours=2)
    o.deliver(msg("old enough"), received=START - timedelta(hours=3))
    o.deliver(msg("after the start date"), received=START - timedelta(hours=1))
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE], start_date=start_date)
    assert set(result.scheduled) == {"INCOMING"}
    assert o.mailbox(ALICE).processemailreceivedafter == start_date
    o.run_for(10 * 60)
    assert [e.subject for e in o.received()] == ["after the start date"]


def test_this_org_only_is_kept_for_a_put_off_act_test(make_org):
    o = make_org(test=False)
    o.sb.store.stamp_act_org(ALICE, OTHER_ORG)
    o.sb.add_fault(code="ErrorServerBusy", operation="get_act_org", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE], this_org_only=True)
    assert set(result.scheduled) == {"ACT"} and o.mailbox(ALICE).orgmarkedasprimaryforexchangesync
    o.run_for(10 * 60)
    mb = o.mailbox(ALICE)
    assert mb.enabledforact and mb.actstatus == 1 and mb.isactsyncorgflagset
    assert o.sb.store.act_org(ALICE).org_id != OTHER_ORG


def test_without_this_org_only_a_put_off_act_test_does_not_take_the_claim(make_org):
    o = make_org(test=False)
    o.sb.store.stamp_act_org(ALICE, OTHER_ORG)
    o.sb.add_fault(code="ErrorServerBusy", operation="get_act_org", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert set(result.scheduled) == {"ACT"}
    o.run_for(10 * 60)
    mb = o.mailbox(ALICE)
    assert not mb.enabledforact and mb.actstatus == 2 and mb.lastsyncerrorcode == "ConfiguredWithAnotherOrganization"
    assert o.sb.store.act_org(ALICE).org_id == OTHER_ORG


def test_a_new_test_and_enable_replaces_the_scheduled_one(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", mailbox=ALICE, count=3)
    o.test_and_enable([ALICE])
    [result] = o.test_and_enable([ALICE])  # the administrator tries again at once: it passes
    assert result.ok
    mb = o.mailbox(ALICE)
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0
    o.run_for(10 * 60)
    assert _tests(o) == []


def test_changing_the_address_drops_the_scheduled_test(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", mailbox=ALICE, count=3)
    o.test_and_enable([ALICE])
    o.sb.admin.change_email_address(ADMIN, o.mailboxes[ALICE], "alice.new@contoso.example")
    mb = o.mailbox("alice.new@contoso.example")
    assert not mb.testemailconfigurationscheduled and mb.testemailconfigurationretrycount == 0
    o.run_for(10 * 60)
    assert _tests(o) == []


def test_the_profile_job_reports_a_scheduled_test_apart_from_success_and_failure(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    o.sb.add_fault(code="8005E272", operation="find_new_items", mailbox=BOB, count=1)
    admin: Admin = o.sb.admin
    job = run(admin.run_job(admin.start_profile_test_and_enable(ADMIN, o.profile_id)))
    result = job["result"]
    assert job["state"] == "succeeded"
    assert (result["failed"], result["scheduled"]) == (1, 1)
    by_address = {m["emailaddress"]: m for m in result["mailboxes"]}
    alice = by_address[ALICE]
    assert alice["ok"] is False and alice["retry_scheduled"] is True and alice["errors"] == {}
    assert (alice["incoming"], alice["outgoing"]) == ("SUCCESS", "SCHEDULED")
    assert alice["scheduled"] == {"OUTGOING": "ErrorServerBusy"}
    assert alice["retry_at"] == (START + timedelta(minutes=5)).isoformat()
    assert by_address[BOB]["errors"] == {"INCOMING": "8005E272"} and not by_address[BOB]["retry_scheduled"]
    assert by_address[SUPPORT]["ok"] and not by_address[SUPPORT]["retry_scheduled"]


def test_the_cli_table_shows_a_scheduled_test_and_does_not_count_it_as_a_failure(make_org, capsys, monkeypatch):
    from simulator.cli_setup import _print_tests

    monkeypatch.setenv("COLUMNS", "300")  # one line per row
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    results = o.test_and_enable([ALICE])
    assert _print_tests(results, {o.mailboxes[ALICE]: ALICE}) is True
    out = capsys.readouterr().out
    assert "Scheduled" in out and "ErrorServerBusy (outgoing)" in out and "tested again at" in out
    o.sb.add_fault(code="8005E272", operation="send", mailbox=ALICE, count=1)
    assert _print_tests(o.test_and_enable([ALICE]), {o.mailboxes[ALICE]: ALICE}) is False


@pytest.mark.parametrize("code", ["ErrorTimeoutExpired", "NetworkError", "ErrorMailboxStoreUnavailable"])
def test_other_transient_codes_are_put_off_too(make_org, code):
    o = make_org(test=False)
    o.sb.add_fault(code=code, operation="find_new_items", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert result.scheduled["INCOMING"].code == code and not result.errors
