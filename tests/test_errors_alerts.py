"""Errors and alerts (SPEC section 4): transient vs permanent, the alert walls, the org switches."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from support import ADMIN_ADDR, ALICE, BOB, SUPPORT, build_org, msg

from engine import alerts as alert_rules
from engine.errors import KNOWN_ERRORS, Nature, Scope, SyncError, kind_of
from engine.ports import AlertLevel, MailboxWork, OrgSettings, ProfileSettings, Workload
from simulator.crm.alerts import ITEM_ROW_RETENTION
from simulator.crm.platform_sql import X


def _rows(o, level=None, code=None):
    return [a for a in o.alerts() if (level is None or a.level == level) and (code is None or a.tracecode == code)]


# -- taxonomy -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["8005E272", "8005E274", "8005E259", "8005E273", "8005E276",
                                  "ErrorNonExistentMailbox", "MailboxNotApproved", "AuthenticationFailure",
                                  "ErrorQuotaExceeded"])
def test_permanent_codes(code):
    assert kind_of(code).nature is Nature.PERMANENT
    assert not SyncError(code).transient


@pytest.mark.parametrize("code", ["ErrorExceededConnectionCount", "ErrorServerBusy",
                                  "ErrorSubmissionQuotaExceeded", "ErrorMailboxStoreUnavailable",
                                  "ErrorTimeoutExpired", "HttpServiceUnavailable", "NetworkError"])
def test_transient_codes(code):
    assert kind_of(code).nature is Nature.TRANSIENT
    assert SyncError(code).transient


def test_item_level_codes():
    for code in ("NoCorrelationMatch", "NoRecipientMatch", "IsvAborted"):
        assert KNOWN_ERRORS[code].scope is Scope.ITEM


def test_unknown_code_counts_as_transient_mailbox_error():
    kind = kind_of("SomethingNew")
    assert (kind.nature, kind.scope) == (Nature.TRANSIENT, Scope.MAILBOX)
    assert SyncError("SomethingNew").detail


def test_sync_error_carries_detail_and_backoff():
    err = SyncError("ErrorServerBusy", backoff_ms=2500)
    assert err.backoff_ms == 2500
    assert err.detail == KNOWN_ERRORS["ErrorServerBusy"].summary
    assert SyncError("ErrorServerBusy", "custom").detail == "custom"


# -- alert rules as pure functions -----------------------------------------------------------------------------------
def _work(owner="alice-id"):
    return MailboxWork("mb", ALICE, owner, owner, "systemuser", "p", True, 2, 2, True, True, 1, 1, 1, None,
                       None, None, None, None, 0, 0, 0, None)


def _prof(owner="admin-id"):
    return ProfileSettings("p", "EXO", owner, True, 5, 10, False, None, True, 60000)


def test_mailbox_level_alert_goes_to_mailbox_owner_and_profile_owner():
    alerts = alert_rules.for_error(OrgSettings(), _work(), _prof(), Workload.INCOMING, SyncError("8005E272"),
                                   disabled=True)
    assert [(a.level, a.regardingobjectid, a.ownerid) for a in alerts] == [
        (AlertLevel.ERROR, "mb", "alice-id"), (AlertLevel.ERROR, "mb", "admin-id")]


def test_one_alert_when_the_mailbox_owner_owns_the_profile():
    alerts = alert_rules.for_error(OrgSettings(), _work("admin-id"), _prof("admin-id"), Workload.INCOMING,
                                   SyncError("8005E272"), disabled=True)
    assert len(alerts) == 1


def test_profile_level_alert_goes_on_the_profile():
    err = SyncError("AuthenticationFailure")
    alerts = alert_rules.for_error(OrgSettings(), _work(), _prof(), Workload.INCOMING, err, disabled=True)
    assert [(a.regardingobjectid, a.regardingobjecttypecode, a.ownerid) for a in alerts] == [
        ("p", "emailserverprofile", "admin-id")]
    notify = OrgSettings(notifymailboxownerofemailserverlevelalerts=True)
    alerts = alert_rules.for_error(notify, _work(), _prof(), Workload.INCOMING, err, disabled=True)
    assert [(a.regardingobjecttypecode, a.ownerid) for a in alerts] == [
        ("emailserverprofile", "admin-id"), ("mailbox", "alice-id")]


def test_levels_follow_the_org_switches():
    err = SyncError("ErrorServerBusy")
    assert alert_rules.for_error(OrgSettings(), _work(), _prof(), Workload.INCOMING, err, disabled=False) == []
    warn = OrgSettings(generatealertsforwarnings=True)
    alerts = alert_rules.for_error(warn, _work(), _prof(), Workload.INCOMING, err, disabled=False)
    assert {a.level for a in alerts} == {AlertLevel.WARNING}
    no_errors = OrgSettings(generatealertsforerrors=False)
    assert alert_rules.for_error(no_errors, _work(), _prof(), Workload.INCOMING, err, disabled=True) == []
    assert alert_rules.for_success(OrgSettings(generatealertsforinformation=False), _work(), "ok") == []
    [info] = alert_rules.for_success(OrgSettings(), _work(), "ok")
    assert info.level is AlertLevel.INFORMATION


# -- the engine ------------------------------------------------------------------------------------------------------------
def test_transient_error_without_warnings_writes_no_alert_and_retries(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1)
    org.deliver(msg("waiting"))
    org.run_for(3600)
    assert _rows(org, level=2) == []
    assert _rows(org, level=3) == []
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail and mb.incomingemailstatus == 1
    assert mb.lastsyncerrorcode == "ErrorServerBusy"
    assert mb.incomingtransientfailurecount == 0  # reset by the next successful cycle
    assert [e.subject for e in org.received()] == ["waiting"]  # retried and done


def test_transient_error_with_warnings_writes_a_warning_on_both_walls(make_org):
    o = make_org(org={"generatealertsforwarnings": True})
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1)
    o.run_for(60)
    rows = _rows(o, level=2)
    assert {(r.regardingobjectid, r.ownerid, r.tracecode) for r in rows} == {
        (o.mailboxes[ALICE], o.users[ALICE], "ErrorServerBusy"),
        (o.mailboxes[ALICE], o.mailbox(ADMIN_ADDR).ownerid, "ErrorServerBusy")}
    assert all(r.regardingobjecttypecode == "mailbox" for r in rows)
    assert _rows(o, level=3) == []
    mb = o.mailbox(ALICE)
    assert mb.enabledforincomingemail
    assert mb.incomingtransientfailurecount == 1
    assert mb.receivingpostponeduntil == o.starts(ALICE)[0] + timedelta(minutes=5)


def test_repeated_alert_updates_the_existing_row(make_org):
    o = make_org(org={"generatealertsforwarnings": True})
    o.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=3)
    o.run_for(3600)
    rows = _rows(o, level=2)
    assert len(rows) == 2  # one per wall, not one per failure
    assert all(r.errorcount == 3 for r in rows)
    assert all(r.modifiedon > r.createdon for r in rows)


def test_ten_consecutive_transient_errors_disable_the_workload_with_an_error_alert(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE)
    org.run_for(4 * 3600)
    assert len(org.starts(ALICE, "INCOMING")) == 10
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail is False
    assert mb.incomingemailstatus == 2
    assert mb.mailboxstatus == 2
    assert mb.lastsyncerrorcode == "ErrorServerBusy"
    assert mb.lastsyncerrorcount == 10
    assert mb.receivingpostponeduntil is None
    assert mb.enabledforoutgoingemail  # the other workload carries on
    assert len(org.starts(ALICE, "OUTGOING")) > 10
    errors = _rows(org, level=3, code="ErrorServerBusy")
    assert {r.ownerid for r in errors} == {org.users[ALICE], org.mailbox(ADMIN_ADDR).ownerid}
    assert [e[5] for e in org.errors(ALICE)] == [False] * 9 + [True]


def test_nine_transient_errors_then_success_do_not_disable(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=9)
    org.run_for(4 * 3600)
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail and mb.incomingemailstatus == 1
    assert mb.incomingtransientfailurecount == 0
    assert len(org.errors(ALICE)) == 9
    assert _rows(org, level=3) == []


def test_permanent_error_disables_at_once(org):
    org.sb.add_fault(code="8005E272", operation="find_new_items", mailbox=ALICE)
    org.deliver(msg("never read"))
    org.run_for(3600)
    assert len(org.starts(ALICE, "INCOMING")) == 1
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail is False
    assert mb.incomingemailstatus == 2
    assert mb.mailboxstatus == 2
    assert mb.lastsyncerrorcode == "8005E272"
    assert mb.receivingpostponeduntil is None
    errors = _rows(org, level=3, code="8005E272")
    assert {(r.regardingobjectid, r.ownerid) for r in errors} == {
        (org.mailboxes[ALICE], org.users[ALICE]), (org.mailboxes[ALICE], org.mailbox(ADMIN_ADDR).ownerid)}
    assert org.received() == []
    assert org.mailbox(BOB).enabledforincomingemail


def test_queue_mailbox_alert_lands_once_when_the_queue_owner_owns_the_profile(org):
    org.sb.add_fault(code="8005E274", operation="find_new_items", mailbox=SUPPORT)
    org.run_for(600)
    [row] = _rows(org, level=3)
    assert row.regardingobjectid == org.mailboxes[SUPPORT]
    assert row.ownerid == org.mailbox(ADMIN_ADDR).ownerid  # the queue's owner


def test_profile_level_error_alerts_the_profile(make_org):
    o = make_org(org={"notifymailboxownerofemailserverlevelalerts": True})
    o.sb.add_fault(code="AuthenticationFailure", operation="find_new_items", mailbox=ALICE)
    o.run_for(600)
    rows = _rows(o, level=3, code="AuthenticationFailure")
    assert {(r.regardingobjectid, r.regardingobjecttypecode) for r in rows} == {
        (o.profile_id, "emailserverprofile"), (o.mailboxes[ALICE], "mailbox")}
    assert o.mailbox(ALICE).enabledforincomingemail is False


def test_errors_switch_off_writes_no_rows(make_org):
    o = make_org(org={"generatealertsforerrors": False, "generatealertsforwarnings": False})
    o.sb.add_fault(code="8005E272", operation="find_new_items", mailbox=ALICE)
    o.run_for(600)
    assert o.mailbox(ALICE).enabledforincomingemail is False  # the error still acts
    assert _rows(o, level=3) == []
    assert _rows(o, level=2) == []


def test_unexpected_exception_is_a_transient_error_not_a_crash(org):
    inner = org.sb.engine.exchange

    class Exploding:
        def __init__(self):
            self.armed = True

        def __getattr__(self, name):
            return getattr(inner, name)

        async def find_new_items(self, mailbox, *args):
            if mailbox == ALICE and self.armed:
                self.armed = False
                raise RuntimeError("boom")
            return await inner.find_new_items(mailbox, *args)

    org.sb.engine.exchange = Exploding()
    org.deliver(msg("after the bug"))
    org.run_for(1800)
    [err] = org.errors(ALICE)
    assert err[4] == "UnexpectedError" and err[5] is False
    assert org.mailbox(ALICE).enabledforincomingemail
    assert [e.subject for e in org.received()] == ["after the bug"]


# -- item-level rows: kept three days (SPEC 2.5) -------------------------------------------------------------------------
def _skipped_row(o, subject: str):
    """An uncorrelated email to bob (he tracks replies only): an item-level row NoCorrelationMatch."""
    item = o.deliver(msg(subject, to=(BOB,)))[BOB]
    o.run_for(900)
    [row] = [r for r in o.item_rows() if r.exchangeentryid == item]
    assert row.lastsyncerror == "NoCorrelationMatch"
    return row.exchangesyncidmappingid, row.lastsyncerroroccurredon


def _row_ids(o) -> set[int]:
    return {r.exchangesyncidmappingid for r in o.item_rows()}


def test_item_rows_older_than_three_days_are_removed_and_younger_ones_kept(org):
    first, first_at = _skipped_row(org, "first")
    org.sb.clock.advance(timedelta(days=2).total_seconds())
    second, second_at = _skipped_row(org, "second")
    # the cycles go on; at exactly three days the first row is still there
    org.sb.clock.advance_to(first_at + ITEM_ROW_RETENTION)
    org.run_for(60)
    assert {first, second} <= _row_ids(org)
    # an hour later (the purge runs at most hourly, after a cycle) it is gone; the second is kept
    org.sb.clock.advance(3600)
    org.run_for(60)
    assert first not in _row_ids(org) and second in _row_ids(org)
    org.sb.clock.advance_to(second_at + ITEM_ROW_RETENTION + timedelta(hours=1))
    org.run_for(60)
    assert second not in _row_ids(org)
    assert org.received() == []  # removing the record of a skipped item does not track it


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ages=st.lists(st.integers(0, 5 * 24 * 3600), min_size=1, max_size=8),
       jumps=st.lists(st.integers(0, 2 * 24 * 3600), max_size=4))
def test_retention_never_removes_a_row_younger_than_three_days(ages, jumps):
    """Rows of any age, then cycles at random later times: a row is never removed before it is three
    days old, and once an hour has passed, the next cycle removes every row older than that."""
    o = build_org()
    try:
        now = o.sb.clock.now()
        with o.sb.db.begin() as conn:
            for i, age in enumerate(ages):
                conn.execute(insert(X).values(mailboxid=o.mailboxes[BOB], exchangeentryid=f"item-{i}",
                                              itemstate=2, lastsyncerror="NoCorrelationMatch",
                                              lastsyncerroroccurredon=now - timedelta(seconds=age)))
        written = {r.exchangesyncidmappingid: r.lastsyncerroroccurredon for r in o.item_rows()}
        for jump in [*jumps, 3600]:
            o.sb.clock.advance(jump)
            o.run_for(60)
            now = o.sb.clock.now()
            kept = _row_ids(o)
            for rowid, at in written.items():
                if now - at <= ITEM_ROW_RETENTION:
                    assert rowid in kept, (now - at)
        # after the last jump of an hour: nothing older than three days (give or take the minute run)
        assert all(now - at <= ITEM_ROW_RETENTION + timedelta(seconds=60) for rowid, at in written.items()
                   if rowid in kept)
    finally:
        o.sb.close()
