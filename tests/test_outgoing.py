"""The outgoing cycle (SPEC 3.5 and choice 10.4)."""

from __future__ import annotations

import pytest
from support import ALICE, BOB, CARL, STRANGER

from engine.outgoing import MAX_SEND_ATTEMPTS, SUBJECT_MAX, subject_with_token


def _send(o, subject="Quote", to=(CARL,), sender=ALICE, **kw):
    aid = o.sb.crm.create_email(sender_userid=o.users[sender], to=list(to), subject=subject, **kw)
    token = o.sb.crm.send_email(aid)
    return aid, token


def _sends(o):
    return [e for e in o.sb.events if e[0] == "send"]


# -- subject and token ----------------------------------------------------------------------------------
def test_token_appended_to_the_subject():
    assert subject_with_token("Quote", "CRM:0000001") == "Quote CRM:0000001"
    assert subject_with_token("", "CRM:0000001") == "CRM:0000001"
    assert subject_with_token("Quote", None) == "Quote"


def test_token_not_added_twice():
    assert subject_with_token("RE: Quote CRM:0000001", "CRM:0000001") == "RE: Quote CRM:0000001"


@pytest.mark.parametrize("length", [240, 243, 244, 255, 300, 1000])
def test_subject_with_token_fits_in_255(length):
    result = subject_with_token("x" * length, "CRM:0000042")
    assert len(result) <= SUBJECT_MAX
    assert result.endswith(" CRM:0000042")
    assert result.startswith("x" * min(length, 200))


def test_subject_without_token_is_cut_to_255():
    assert len(subject_with_token("y" * 400, None)) == SUBJECT_MAX


# -- the cycle --------------------------------------------------------------------------------------------
def test_send_makes_the_email_pending_send_with_a_token(org):
    aid, token = _send(org)
    assert token == "CRM:0000001"
    email = org.email(aid)
    assert email.statuscode == 6 and email.statecode == 1
    assert email.trackingtoken == token
    assert email.sendermailboxid == org.mailboxes[ALICE]
    _, second = _send(org, subject="Another")
    assert second == "CRM:0000002"


def test_pending_send_becomes_sent_with_token_in_subject_and_copy_in_sent_items(org):
    aid, token = _send(org, subject="Quote")
    org.run_for(600)
    email = org.email(aid)
    assert email.statuscode == 3
    assert email.statecode == 1
    assert email.subject == f"Quote {token}"
    assert email.deliveryattempts == 1
    assert email.messageid
    assert email.senton is not None
    sent_items = org.sb.store.mailbox(ALICE).folder("sentitems").items.values()
    assert [i.data.subject for i in sent_items] == [f"Quote {token}"]
    sender, recipients, data = org.sb.store.outbound[-1]
    assert (sender, recipients, data.subject) == (ALICE, (CARL,), f"Quote {token}")
    assert data.message_id == email.messageid
    assert _sends(org) == [("send", ALICE, aid, True, None, False)]


def test_long_subject_sent_within_255(org):
    aid, token = _send(org, subject="z" * 300)
    org.run_for(600)
    email = org.email(aid)
    assert email.statuscode == 3
    assert len(email.subject) <= 255
    assert email.subject.endswith(token)
    assert len(org.sb.store.outbound[-1][2].subject) <= 255


def test_internal_recipient_gets_it_in_the_inbox_and_it_is_not_tracked_twice(org):
    aid, _ = _send(org, to=(BOB,))
    org.run_for(1800)
    assert org.email(aid).statuscode == 3
    assert len(org.inbox_ids(BOB)) == 1
    assert org.sb.store.outbound == []
    assert [e.activityid for e in org.emails()] == [aid]  # bob's copy is a duplicate of the sent email
    assert ("SKIPPED", "Duplicate") in [(e[4], e[5]) for e in org.item_events(BOB)]


def test_token_off_sends_the_subject_unchanged(make_org):
    o = make_org(org={"trackingtokenenabled": False})
    aid, token = _send(o, subject="Plain")
    assert token is None
    o.run_for(600)
    assert o.email(aid).subject == "Plain"
    assert o.sb.store.outbound[-1][2].subject == "Plain"


def test_only_draft_or_failed_email_can_be_sent(org):
    aid, _ = _send(org)
    with pytest.raises(ValueError, match="statuscode"):
        org.sb.crm.send_email(aid)
    with pytest.raises(ValueError, match="activityid"):
        org.sb.crm.send_email("no-such-email")
    with pytest.raises(ValueError, match="sender_userid"):
        org.sb.crm.create_email(sender_userid="nobody", to=[CARL], subject="x")


def test_transient_failure_keeps_pending_send_and_counts_an_attempt(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=1)
    aid, _ = _send(org)
    org.run_for(60)
    email = org.email(aid)
    assert email.statuscode == 6
    assert email.deliveryattempts == 1
    assert org.sb.store.outbound == []
    org.run_for(600)
    email = org.email(aid)
    assert email.statuscode == 3
    assert email.deliveryattempts == 2
    assert len(org.sb.store.outbound) == 1
    assert [s[3] for s in _sends(org)] == [False, True]


def test_submission_quota_is_transient_and_the_rest_goes_later(org):
    ids = [_send(org, subject=f"n{i}")[0] for i in range(35)]
    org.run_for(60)  # one cycle; Test & Enable's own test message used one of the minute's 30
    statuses = [org.email(a).statuscode for a in ids]
    assert statuses.count(3) == 29
    assert statuses.count(6) == 6
    assert [s[4] for s in _sends(org) if not s[3]] == ["ErrorSubmissionQuotaExceeded"]
    assert org.mailbox(ALICE).enabledforoutgoingemail
    org.run_for(1800)
    assert {org.email(a).statuscode for a in ids} == {3}
    assert len(org.sb.store.outbound) == 35


def test_submission_quota_from_exchange_is_retried_without_an_alert(org):
    """SPEC 3.5: submission quota exceeded is transient: retried later; with warnings off (the
    default) no alert is written."""
    org.sb.add_fault(code="ErrorSubmissionQuotaExceeded", operation="send", mailbox=ALICE, count=2)
    aid, _ = _send(org)
    org.run_for(60)
    assert org.email(aid).statuscode == 6 and org.email(aid).deliveryattempts == 1
    org.run_for(3600)
    assert org.email(aid).statuscode == 3
    assert org.email(aid).deliveryattempts == 3
    assert [a for a in org.alerts() if a.tracecode == "ErrorSubmissionQuotaExceeded"] == []
    assert org.mailbox(ALICE).enabledforoutgoingemail


def test_submission_quota_every_time_fails_the_email_after_ten_attempts(org):
    org.sb.add_fault(code="ErrorSubmissionQuotaExceeded", operation="send", mailbox=ALICE)
    aid, _ = _send(org)
    org.run_for(6 * 3600)
    email = org.email(aid)
    assert (email.statuscode, email.deliveryattempts) == (8, MAX_SEND_ATTEMPTS)


def test_storage_quota_alerts_and_keeps_the_email_pending_send(org):
    """SPEC 3.5: 403 ErrorQuotaExceeded raises an alert (an Error, written with warnings off) and the
    email stays Pending Send: no attempt is counted, so it never becomes Failed."""
    assert not org.sb.crm.org_settings().generatealertsforwarnings
    org.sb.add_fault(code="ErrorQuotaExceeded", operation="send", mailbox=ALICE)
    aid, _ = _send(org)
    org.run_for(6 * 3600)
    email = org.email(aid)
    assert (email.statuscode, email.statecode, email.deliveryattempts) == (6, 1, 0)
    assert org.sb.store.outbound == []
    alerts = [a for a in org.alerts() if a.tracecode == "ErrorQuotaExceeded"]
    assert alerts and {a.level for a in alerts} == {3}
    assert {a.regardingobjectid for a in alerts} == {org.mailboxes[ALICE]}
    assert "storage quota" in alerts[0].text
    mb = org.mailbox(ALICE)
    assert mb.enabledforoutgoingemail is False and mb.outgoingemailstatus == 2
    assert mb.lastsyncerrorcode == "ErrorQuotaExceeded"
    assert mb.enabledforincomingemail is True
    assert len(org.starts(ALICE, "OUTGOING")) == 1  # not retried: the owner must free space first
    assert [r for r in org.item_rows() if r.objectid == aid] == []


def test_storage_quota_email_goes_once_space_is_freed_and_the_mailbox_tested_again(org):
    org.sb.add_fault(code="ErrorQuotaExceeded", operation="send", mailbox=ALICE, count=1)
    aid, _ = _send(org)
    org.run_for(3600)
    assert org.email(aid).statuscode == 6
    org.test_and_enable([ALICE])
    org.run_for(600)
    assert org.email(aid).statuscode == 3 and org.email(aid).deliveryattempts == 1
    assert len(org.sb.store.outbound) == 1


def test_failed_after_ten_transient_attempts(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE)
    aid, _ = _send(org)
    org.run_for(6 * 3600)
    email = org.email(aid)
    assert email.statuscode == 8
    assert email.statecode == 0
    assert email.deliveryattempts == MAX_SEND_ATTEMPTS
    [row] = [r for r in org.item_rows() if r.lastsyncerror == "SendFailed"]
    assert row.objectid == aid and row.itemstate == 3 and row.retries == MAX_SEND_ATTEMPTS
    assert [s[5] for s in _sends(org)] == [False] * (MAX_SEND_ATTEMPTS - 1) + [True]
    assert org.sb.store.outbound == []


def test_failed_email_can_be_sent_again(org):
    org.sb.add_fault(code="ErrorServerBusy", operation="send", mailbox=ALICE, count=MAX_SEND_ATTEMPTS)
    aid, _ = _send(org)
    org.run_for(6 * 3600)
    assert org.email(aid).statuscode == 8
    org.sb.crm.send_email(aid)
    assert org.email(aid).deliveryattempts == 0
    org.test_and_enable([ALICE])  # the workload was disabled by the same ten failures
    org.run_for(600)
    assert org.email(aid).statuscode == 3


def test_permanent_error_keeps_pending_send_without_counting_and_disables_outgoing(org):
    org.sb.add_fault(code="8005E272", operation="send", mailbox=ALICE)
    aid, _ = _send(org)
    org.run_for(3600)
    email = org.email(aid)
    assert email.statuscode == 6
    assert email.deliveryattempts == 0
    mb = org.mailbox(ALICE)
    assert mb.enabledforoutgoingemail is False and mb.outgoingemailstatus == 2
    assert mb.enabledforincomingemail is True
    assert len(org.starts(ALICE, "OUTGOING")) == 1


def test_one_failure_ends_the_cycle_and_the_rest_wait(org):
    org.sb.add_fault(code="ErrorMailboxStoreUnavailable", operation="send", mailbox=ALICE, count=1)
    first, _ = _send(org, subject="one")
    second, _ = _send(org, subject="two")
    org.run_for(60)
    # one of the two (same instant: the order is by id) failed; the other was not tried
    assert sorted(org.email(a).deliveryattempts for a in (first, second)) == [0, 1]
    assert {org.email(a).statuscode for a in (first, second)} == {6}
    assert len(_sends(org)) == 1
    org.run_for(600)
    assert org.email(first).statuscode == 3 and org.email(second).statuscode == 3


def test_mail_to_an_unknown_external_address_is_recorded_as_outbound(org):
    aid, _ = _send(org, to=(STRANGER,), cc=[CARL])
    org.run_for(600)
    assert org.email(aid).statuscode == 3
    assert org.sb.store.outbound[-1][1] == (STRANGER, CARL)


# -- a cycle cut short between Exchange's send and the CRM's record of it ----------------------------------
def _mailbox_work(o, address):
    return o.sb.crm.mailbox_work([o.mailboxes[address]])[0]


def _copies_to_carl(o, subject):
    return [d for _, rcpts, d in o.sb.store.outbound if CARL in rcpts and d.subject == subject]


def test_an_email_left_in_sending_after_its_send_is_recorded_not_sent_again(org):
    aid, token = _send(org, subject="Quote")
    mailbox = _mailbox_work(org, ALICE)
    message_id = org.sb.crm.start_send(mailbox, aid)  # committed: Sending, with its Message-ID
    assert org.email(aid).statuscode == 7 and org.email(aid).messageid == message_id
    from simulator.exchange.mime import MessageData

    # the process submitted it, then stopped before recording the outcome
    org.sb.store.send(ALICE, MessageData(subject=f"Quote {token}", to=(CARL,), message_id=message_id))
    org.run_for(600)
    email = org.email(aid)
    assert email.statuscode == 3 and email.messageid == message_id
    assert len(_copies_to_carl(org, f"Quote {token}")) == 1  # Carl got it once
    assert len(org.sb.store.mailbox(ALICE).folder("sentitems").items) == 1


def test_an_email_left_in_sending_before_its_send_is_sent_once(org):
    aid, token = _send(org, subject="Offer")
    message_id = org.sb.crm.start_send(_mailbox_work(org, ALICE), aid)  # stopped before the submit
    org.run_for(600)
    email = org.email(aid)
    assert email.statuscode == 3 and email.messageid == message_id
    copies = _copies_to_carl(org, f"Offer {token}")
    assert len(copies) == 1 and copies[0].message_id == message_id
