"""Test & Enable (SPEC 1.9, 3.3, section 4): statuses, alerts, approval, re-enabling."""

from __future__ import annotations

from datetime import timedelta

from support import ADMIN_ADDR, ALICE, BOB, START, SUPPORT, msg

from engine.mailbox_test import TEST_SUBJECT
from engine.ports import Status


def test_success_sets_statuses_enables_and_raises_an_information_alert(make_org):
    o = make_org(test=False)
    [result] = o.test_and_enable([ALICE])
    assert (result.incoming, result.outgoing, result.ok) == (Status.SUCCESS, Status.SUCCESS, True)
    mb = o.mailbox(ALICE)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.mailboxstatus) == (1, 1, 1)
    assert mb.enabledforincomingemail and mb.enabledforoutgoingemail
    assert mb.testmailboxaccesscompletedon == START
    assert mb.receivingpostponeduntil == START and mb.postponesendinguntil == START
    assert mb.postponemailboxprocessinguntil == START
    [alert] = o.alerts()
    assert (alert.level, alert.tracecode, alert.regardingobjectid, alert.ownerid) == (
        1, "MailboxEnabled", o.mailboxes[ALICE], o.users[ALICE])
    assert ALICE in alert.text
    # untested mailboxes stay Not Run
    assert o.mailbox(BOB).incomingemailstatus == 0


def test_outgoing_test_message_is_sent_to_itself_and_removed(make_org):
    o = make_org(test=False)
    o.test_and_enable([ALICE])
    mbx = o.sb.store.mailbox(ALICE)
    assert list(mbx.folder("inbox").items) == []
    assert list(mbx.folder("sentitems").items) == []
    assert len(mbx.sent_times) == 1  # it did go through Exchange
    o.run_for(600)
    assert o.received() == []
    assert all(e.subject != TEST_SUBJECT for e in o.emails())


def test_not_approved_fails_both_workloads_with_an_error_alert(make_org):
    o = make_org(approve=False, test=False)
    [result] = o.test_and_enable([ALICE])
    assert (result.incoming, result.outgoing) == (Status.FAILURE, Status.FAILURE)
    assert {e.code for e in result.errors.values()} == {"MailboxNotApproved"}
    mb = o.mailbox(ALICE)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.mailboxstatus) == (2, 2, 2)
    assert not mb.enabledforincomingemail and not mb.enabledforoutgoingemail
    assert mb.lastsyncerrorcode == "MailboxNotApproved"
    assert mb.postponemailboxprocessinguntil is None
    levels = {(a.level, a.tracecode) for a in o.alerts()}
    assert levels == {(3, "MailboxNotApproved")}
    assert {a.ownerid for a in o.alerts()} == {o.users[ALICE], o.mailbox(ADMIN_ADDR).ownerid}
    # nothing is fetched for it afterwards
    o.deliver(msg("waiting"))
    o.run_for(3600)
    assert o.starts(ALICE) == [] and o.received() == []


def test_approval_then_test_and_enable_again_succeeds(make_org):
    o = make_org(approve=False, test=False)
    o.test_and_enable([ALICE])
    o.sb.admin.approve("admin", [o.mailboxes[ALICE]])
    [result] = o.test_and_enable([ALICE])
    assert result.ok
    o.deliver(msg("now it flows"))
    o.run_for(600)
    assert [e.subject for e in o.received()] == ["now it flows"]


def test_unapproved_mailbox_passes_when_the_org_does_not_require_approval(make_org):
    o = make_org(approve=False, test=False, org={"requireapprovalforuseremail": False})
    [result] = o.test_and_enable([ALICE])
    assert result.ok


def test_outgoing_failure_leaves_incoming_enabled_and_no_information_alert(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="8005E272", operation="send", mailbox=ALICE, count=1)
    [result] = o.test_and_enable([ALICE])
    assert (result.incoming, result.outgoing) == (Status.SUCCESS, Status.FAILURE)
    assert result.errors["OUTGOING"].code == "8005E272"
    mb = o.mailbox(ALICE)
    assert mb.enabledforincomingemail and not mb.enabledforoutgoingemail
    assert mb.mailboxstatus == 2
    assert {a.level for a in o.alerts()} == {3}


def test_missing_exchange_mailbox_fails_the_test(make_org):
    o = make_org(test=False)
    del o.sb.store.mailboxes[ALICE]
    [result] = o.test_and_enable([ALICE])
    assert {e.code for e in result.errors.values()} == {"ErrorNonExistentMailbox"}
    assert o.mailbox(ALICE).mailboxstatus == 2


def test_information_switch_off_means_no_information_alert(make_org):
    o = make_org(test=False, org={"generatealertsforinformation": False})
    [result] = o.test_and_enable([ALICE])
    assert result.ok
    assert o.alerts() == []


def test_re_enabling_after_a_permanent_error_clears_the_failure_and_resumes(org):
    org.sb.add_fault(code="8005E272", operation="find_new_items", mailbox=ALICE, count=1)
    org.run_for(600)
    assert org.mailbox(ALICE).enabledforincomingemail is False
    before = len(org.starts(ALICE))
    org.test_and_enable([ALICE])
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail and mb.incomingemailstatus == 1 and mb.mailboxstatus == 1
    assert mb.lastsyncerrorcount == 0
    org.deliver(msg("back"))
    org.run_for(600)
    assert len(org.starts(ALICE)) > before
    assert [e.subject for e in org.received()] == ["back"]


def test_re_enabling_after_ten_transient_errors_resets_the_count(org):
    rule = org.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE)
    org.run_for(4 * 3600)
    assert org.mailbox(ALICE).enabledforincomingemail is False
    rule.count = rule.fired  # the cause is fixed
    org.test_and_enable([ALICE])
    mb = org.mailbox(ALICE)
    assert mb.incomingtransientfailurecount == 0 and mb.transientfailurecount == 0
    org.sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, count=1)
    org.run_for(3600)
    mb = org.mailbox(ALICE)
    assert mb.enabledforincomingemail  # one new failure does not count as the eleventh
    assert mb.incomingtransientfailurecount == 0


def test_first_watermark_is_the_profile_date_and_a_second_test_keeps_it(org):
    org.deliver(msg("one"))
    org.run_for(600)
    watermark = org.mailbox(ALICE).processemailreceivedafter
    assert watermark > START - timedelta(days=1)
    org.test_and_enable([ALICE])  # without a start date: the watermark is not rewound
    assert org.mailbox(ALICE).processemailreceivedafter == watermark


def test_one_error_of_several_workloads_is_one_alert_naming_them_all(make_org):
    o = make_org(approve=False)  # every workload of every mailbox fails with MailboxNotApproved
    alice = o.mailboxes[ALICE]
    on_alice = [a for a in o.alerts() if a.regardingobjectid == alice and a.level == 3]
    assert {a.ownerid for a in on_alice} == {o.users[ALICE], o.profile().ownerid}  # mailbox and profile owner
    for a in on_alice:
        assert a.tracecode == "MailboxNotApproved" and a.errorcount == 1
        assert ("Incoming email, outgoing email and appointments, contacts and tasks are disabled"
                in a.text), a.text
    support = [a for a in o.alerts() if a.regardingobjectid == o.mailboxes[SUPPORT] and a.level == 3]
    assert support and all("Incoming email and outgoing email are disabled" in a.text for a in support)


def test_a_test_message_left_by_a_failed_clean_up_is_never_tracked(make_org):
    o = make_org(test=False)
    o.sb.add_fault(code="ErrorServerBusy", operation="delete_item", mailbox=ALICE, count=1)
    o.test_and_enable([ALICE])
    left = [i for i in o.sb.store.mailbox(ALICE).folder("inbox").items.values() if i.data.subject == TEST_SUBJECT]
    assert len(left) == 1  # the clean-up failed: the message is still in the Inbox
    o.deliver(msg("After the test", to=ALICE))
    o.run_for(30 * 60)
    assert [e.subject for e in o.received()] == ["After the test"]
    assert all(r.exchangeentryid != left[0].item_id for r in o.item_rows())
