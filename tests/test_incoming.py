"""The incoming cycle (SPEC 3.3, 3.4, choices 10.2 and 10.8)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import ALICE, BOB, CARL, FABRIKAM, LENA, START, STRANGER, SUPPORT, msg

from engine.incoming import effective_after
from engine.ports import MailboxWork, ProfileSettings
from simulator.crm.correlation import conversation_base

D1 = datetime(2026, 1, 1, tzinfo=UTC)
D2 = datetime(2026, 1, 2, tzinfo=UTC)


def _profile(after):
    return ProfileSettings("p", "p", "o", True, 5, 10, False, after, True, 60000)


def _mailbox(after):
    return MailboxWork("m", "a@b", "o", "u", "systemuser", "p", True, 2, 2, True, True, 1, 1, 1, after,
                       None, None, None, None, 0, 0, 0, None)


def _outcomes(o, address=None) -> list[tuple[str, str | None]]:
    return [(e[4], e[5]) for e in o.item_events(address)]


# -- "process email from" and the watermark ---------------------------------------------------------
@pytest.mark.parametrize("profile_after, mailbox_after, expected", [
    (None, None, None), (D1, None, D1), (None, D1, D1), (D1, D2, D2), (D2, D1, D2), (D1, D1, D1),
])
def test_effective_date_is_the_later_of_profile_and_watermark(profile_after, mailbox_after, expected):
    assert effective_after(_profile(profile_after), _mailbox(mailbox_after)) == expected


def test_first_test_and_enable_starts_the_watermark_from_the_profile_date(org):
    assert org.mailbox(ALICE).processemailreceivedafter == START - timedelta(days=1)


def test_profile_date_later_than_watermark_wins(org):
    org.set_profile(processemailsreceivedafter=START - timedelta(hours=6))
    old = org.deliver(msg("before both"), received=START - timedelta(days=2))[ALICE]
    between = org.deliver(msg("between"), received=START - timedelta(hours=12))[ALICE]
    new = org.deliver(msg("after both"), received=START - timedelta(hours=1))[ALICE]
    org.run_for(600)
    assert [e[3] for e in org.item_events(ALICE)] == [new]
    assert [e.subject for e in org.received()] == ["after both"]
    assert {old, between} <= set(org.inbox_ids(ALICE))  # untouched


def test_mailbox_watermark_later_than_profile_date_wins(make_org):
    o = make_org(test=False)
    o.test_and_enable([ALICE], start_date=START - timedelta(hours=6))
    assert o.mailbox(ALICE).processemailreceivedafter == START - timedelta(hours=6)
    o.deliver(msg("between"), received=START - timedelta(hours=12))
    o.deliver(msg("after both"), received=START - timedelta(hours=1))
    o.run_for(600)
    assert [e.subject for e in o.received()] == ["after both"]


def test_watermark_advances_to_the_last_processed_item(org):
    org.deliver(msg("one"))
    org.sb.clock.advance(30)
    last = org.deliver(msg("two"))[ALICE]
    received = org.sb.store.get(ALICE, last).received
    org.run_for(60)
    assert org.mailbox(ALICE).processemailreceivedafter == received


def test_earlier_profile_date_does_not_rewind_an_existing_watermark(org):
    org.deliver(msg("now"))
    org.run_for(600)
    org.set_profile(processemailsreceivedafter=START - timedelta(days=30))
    org.deliver(msg("old mail"), received=START - timedelta(days=10))
    org.run_for(3600)
    assert [e.subject for e in org.received()] == ["now"]


def test_test_and_enable_with_a_start_date_re_evaluates_inbox_mail_without_tracking_twice(org):
    org.deliver(msg("first"))
    org.run_for(600)
    assert len(org.received()) == 1
    org.test_and_enable([ALICE], start_date=START - timedelta(minutes=1))
    org.run_for(600)
    assert len(org.received()) == 1
    assert _outcomes(org, ALICE) == [("TRACKED", None), ("SKIPPED", "Duplicate")]


def test_nothing_before_the_date_on_an_empty_profile_date(make_org):
    o = make_org(profile={"processemailsreceivedafter": None})
    o.deliver(msg("ancient"), received=START - timedelta(days=365))
    o.run_for(600)
    assert [e.subject for e in o.received()] == ["ancient"]  # no date at all: everything counts


# -- scope: the Inbox root only ------------------------------------------------------------------------
def test_items_in_inbox_subfolders_are_not_picked_up_even_when_moved_back(org):
    store = org.sb.store
    sub = store.create_folder(ALICE, "inbox", "Projects")
    filed = org.deliver(msg("filed away"))[ALICE]
    moved_id = store.move(ALICE, filed, sub.folder_id)
    org.sb.clock.advance(10)
    org.deliver(msg("in the inbox"))
    org.run_for(600)
    assert [e.subject for e in org.received()] == ["in the inbox"]
    store.move(ALICE, moved_id, "inbox")  # moved back after the watermark passed it
    org.run_for(3600)
    assert [e.subject for e in org.received()] == ["in the inbox"]
    assert len(org.item_events(ALICE)) == 1


def test_sent_items_are_not_scanned_unless_the_org_tracks_them(org):
    org.sb.store.send(ALICE, msg("typed in Outlook", sender=ALICE, to=(CARL,), message_id=None))
    org.run_for(600)
    assert org.received() == []


def test_sent_items_tracked_as_outgoing_when_the_org_asks(make_org):
    o = make_org(org={"tracksentitems": True})
    o.sb.store.send(ALICE, msg("typed in Outlook", sender=ALICE, to=(CARL,), message_id=None))
    o.run_for(600)
    [email] = o.received()
    assert email.subject == "typed in Outlook"
    assert email.directioncode is True
    assert email.acceptingentityid == o.users[ALICE]


def test_crm_sent_email_copy_in_sent_items_is_not_tracked_again(make_org):
    o = make_org(org={"tracksentitems": True})
    aid = o.sb.crm.create_email(sender_userid=o.users[ALICE], to=[CARL], subject="Quote")
    o.sb.crm.send_email(aid)
    o.run_for(3600)
    assert o.email(aid).statuscode == 3
    assert o.received() == []
    assert ("SKIPPED", "Duplicate") in _outcomes(o, ALICE)


# -- duplicates ---------------------------------------------------------------------------------------------
def test_same_message_id_in_two_mailboxes_is_tracked_once(org):
    org.deliver(msg("to both", to=(ALICE, SUPPORT), message_id="shared@fabrikam.example"))
    org.run_for(600)
    assert len(org.received()) == 1
    outcomes = sorted(_outcomes(org))
    assert outcomes == [("SKIPPED", "Duplicate"), ("TRACKED", None)]


def test_same_message_id_delivered_twice_is_tracked_once_even_in_one_cycle(org):
    org.deliver(msg("v1", message_id="<Same@Fabrikam.example>"))
    org.deliver(msg("v2", message_id="same@fabrikam.example"))
    org.run_for(600)
    assert [e.subject for e in org.received()] == ["v1"]
    assert _outcomes(org, ALICE) == [("TRACKED", None), ("SKIPPED", "Duplicate")]


def test_duplicate_across_cycles(org):
    org.deliver(msg("v1", message_id="again@fabrikam.example"))
    org.run_for(600)
    org.deliver(msg("v1", message_id="again@fabrikam.example"))
    org.run_for(600)
    assert len(org.received()) == 1
    [row] = [r for r in org.item_rows() if r.lastsyncerror == "Duplicate"]
    assert row.itemstate == 2


def test_without_message_id_the_hash_of_sender_date_subject_body_decides(org):
    when = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    org.deliver(msg("no id", message_id=None, date=when, body="same"))
    org.deliver(msg("no id", message_id=None, date=when, body="same"))
    org.deliver(msg("no id", message_id=None, date=when, body="different"))
    org.deliver(msg("no id", message_id=None, date=when + timedelta(seconds=1), body="same"))
    org.run_for(600)
    assert len(org.received()) == 3
    assert _outcomes(org, ALICE) == [("TRACKED", None), ("SKIPPED", "Duplicate"), ("TRACKED", None),
                                     ("TRACKED", None)]


# -- recipients and track settings ---------------------------------------------------------------------------
def test_no_recipient_match_is_skipped_and_left_in_place(org):
    item = org.deliver(msg("bcc to alice", to=(STRANGER,)), recipients=[ALICE])[ALICE]
    org.run_for(600)
    assert org.received() == []
    assert _outcomes(org, ALICE) == [("SKIPPED", "NoRecipientMatch")]
    [row] = org.item_rows()
    assert (row.itemstate, row.lastsyncerror, row.exchangeentryid, row.mailboxid) == (
        2, "NoRecipientMatch", item, org.mailboxes[ALICE])
    assert org.inbox_ids(ALICE) == [item]
    assert org.sb.store.get(ALICE, item).categories == []


@pytest.mark.parametrize("setting, sender, expected", [
    (0, STRANGER, None),
    (0, CARL, None),
    (1, CARL, "NoCorrelationMatch"),
    (2, CARL, None),
    (2, FABRIKAM, None),
    (2, LENA, None),
    (2, BOB, "NoSenderMatch"),
    (2, STRANGER, "NoSenderMatch"),
    (3, BOB, None),
    (3, LENA, None),
    (3, STRANGER, "NoSenderMatch"),
    (4, CARL, "TrackingDisabled"),
    (4, BOB, "TrackingDisabled"),
])
def test_track_setting_of_the_receiving_user(make_org, setting, sender, expected):
    o = make_org(alice_track=setting)
    o.deliver(msg("hello", sender=sender, to=(ALICE,)))
    o.run_for(600)
    if expected is None:
        assert _outcomes(o, ALICE) == [("TRACKED", None)]
        assert len(o.received()) == 1
    else:
        assert _outcomes(o, ALICE) == [("SKIPPED", expected)]
        assert o.received() == []
        assert [r.lastsyncerror for r in o.item_rows()] == [expected]


def test_replies_only_setting_tracks_a_reply_to_crm_email(org):
    # bob tracks replies to CRM email only (1)
    org.deliver(msg("original", to=(SUPPORT,), message_id="orig@fabrikam.example"))
    org.run_for(600)
    org.deliver(msg("RE: original", to=(BOB,), in_reply_to="orig@fabrikam.example"))
    org.deliver(msg("unrelated", to=(BOB,)))
    org.run_for(600)
    assert _outcomes(org, BOB) == [("TRACKED", None), ("SKIPPED", "NoCorrelationMatch")]


# -- correlation ----------------------------------------------------------------------------------------------
def _sent_quote(o):
    aid = o.sb.crm.create_email(sender_userid=o.users[BOB], to=[CARL], subject="Quote",
                                regarding=("account", o.records[FABRIKAM]))
    token = o.sb.crm.send_email(aid)
    o.run_for(600)
    sent = o.email(aid)
    assert sent.statuscode == 3
    return aid, token, sent.messageid


def test_correlation_by_in_reply_to_copies_regarding(org):
    aid, _, message_id = _sent_quote(org)
    org.deliver(msg("RE: Quote", to=(BOB,), in_reply_to=message_id))
    org.run_for(600)
    [reply] = org.received()
    assert reply.correlationmethod == 3
    assert reply.correlatedactivityid == aid
    assert (reply.regardingobjecttypecode, reply.regardingobjectid) == ("account", org.records[FABRIKAM])


def test_correlation_by_references_when_in_reply_to_is_unknown(org):
    aid, _, message_id = _sent_quote(org)
    org.deliver(msg("RE: Quote", to=(BOB,), in_reply_to="unknown@x", references=("unknown@x", message_id)))
    org.run_for(600)
    [reply] = org.received()
    assert reply.correlatedactivityid == aid
    assert reply.correlationmethod == 3


def test_correlation_by_tracking_token_copies_regarding(org):
    aid, token, _ = _sent_quote(org)
    assert token == "CRM:0000001"
    org.deliver(msg(f"RE: Quote {token}", to=(BOB,)))
    org.run_for(600)
    [reply] = org.received()
    assert reply.correlationmethod == 4
    assert reply.correlatedactivityid == aid
    assert reply.regardingobjectid == org.records[FABRIKAM]


def test_correlation_off_makes_replies_only_users_skip_replies(make_org):
    o = make_org(org={"emailcorrelationenabled": False})
    _, token, message_id = _sent_quote(o)
    o.deliver(msg(f"RE: Quote {token}", to=(BOB,), in_reply_to=message_id))
    o.run_for(600)
    assert o.received() == []
    assert _outcomes(o, BOB)[-1] == ("SKIPPED", "NoCorrelationMatch")


def _thread_index(header: bytes, *children: bytes) -> str:
    """A Thread-Index header value: the 22-byte conversation header, then one 5-byte block per reply."""
    assert len(header) == 22 and all(len(c) == 5 for c in children)
    return base64.b64encode(header + b"".join(children)).decode("ascii")


CONVERSATION = bytes(range(1, 23))
OTHER_CONVERSATION = bytes(range(101, 123))


@pytest.mark.parametrize("child", [b"\x00\x00\x00\x00\x01", b"\xf3\x9a\x10\x42\x07"])
def test_correlation_by_conversation_index_alone(org, child):
    """SPEC 3.4: a reply with no In-Reply-To, References or token, a new subject, and the Thread-Index
    of a tracked email's conversation (its 22-byte header and a reply block of any value) correlates."""
    org.deliver(msg("Order 17", to=(SUPPORT,), thread_index=_thread_index(CONVERSATION)))
    org.run_for(600)
    [first] = org.received()
    org.deliver(msg("Delivery date?", to=(BOB,), thread_index=_thread_index(CONVERSATION, child)))
    org.run_for(600)
    [reply] = [e for e in org.received() if e.subject == "Delivery date?"]
    assert reply.correlationmethod == 5
    assert reply.correlatedactivityid == first.activityid


def test_conversation_index_correlates_with_a_message_tracked_in_the_same_cycle(org):
    """Like In-Reply-To, the conversation lookup sees what the current batch tracked before it."""
    org.deliver(msg("Order 17", to=(SUPPORT,), thread_index=_thread_index(CONVERSATION)))
    org.sb.clock.advance(1)
    org.deliver(msg("Delivery date?", to=(BOB,), thread_index=_thread_index(CONVERSATION, b"\x01\x00\x00\x00\x01")))
    org.run_for(60)
    by_subject = {e.subject: e for e in org.received()}
    assert by_subject["Delivery date?"].correlationmethod == 5
    assert by_subject["Delivery date?"].correlatedactivityid == by_subject["Order 17"].activityid


@given(header=st.binary(min_size=22, max_size=22), other=st.binary(min_size=22, max_size=22),
       children=st.lists(st.binary(min_size=5, max_size=5), max_size=4))
def test_every_reply_of_a_conversation_has_the_conversation_of_its_first_message(header, other, children):
    first = conversation_base(_thread_index(header))
    assert first is not None
    assert conversation_base(_thread_index(header, *children)) == first
    assert (conversation_base(_thread_index(other, *children)) == first) == (other == header)


@pytest.mark.parametrize("value", [None, "", "not base64 at all!", base64.b64encode(b"short").decode()])
def test_a_thread_index_without_a_conversation_header_has_no_conversation(value):
    assert conversation_base(value) is None


def test_conversation_index_of_another_conversation_does_not_correlate(org):
    org.deliver(msg("Order 17", to=(SUPPORT,), thread_index=_thread_index(CONVERSATION)))
    org.run_for(600)
    org.deliver(msg("Delivery date?", to=(BOB,),
                    thread_index=_thread_index(OTHER_CONVERSATION, b"\x00\x00\x00\x00\x01")))
    org.run_for(600)
    assert _outcomes(org, BOB) == [("SKIPPED", "NoCorrelationMatch")]


def test_in_reply_to_is_tried_before_the_conversation_index(org):
    aid, _, message_id = _sent_quote(org)
    org.deliver(msg("Order 17", to=(SUPPORT,), thread_index=_thread_index(CONVERSATION)))
    org.run_for(600)
    org.deliver(msg("RE: Quote", to=(BOB,), in_reply_to=message_id,
                    thread_index=_thread_index(CONVERSATION, b"\x00\x00\x00\x00\x01")))
    org.run_for(600)
    [reply] = [e for e in org.received() if e.subject == "RE: Quote"]
    assert (reply.correlationmethod, reply.correlatedactivityid) == (3, aid)


# smart matching (org setting enablesmartmatching, off by default): the subject without its reply
# prefixes and tracking token, and the reply's sender among the tracked email's sender and recipients
@pytest.mark.parametrize("token_on", [True, False])
def test_smart_matching_correlates_on_subject_and_recipients(make_org, token_on):
    o = make_org(org={"enablesmartmatching": True, "trackingtokenenabled": token_on})
    aid, _, _ = _sent_quote(o)
    o.deliver(msg("RE: Quote", sender=CARL, to=(BOB,)))  # no In-Reply-To, the token removed
    o.run_for(600)
    [reply] = o.received()
    assert reply.correlationmethod == 6
    assert reply.correlatedactivityid == aid
    assert reply.regardingobjectid == o.records[FABRIKAM]


def test_smart_matching_is_off_by_default(org):
    _sent_quote(org)
    org.deliver(msg("RE: Quote", sender=CARL, to=(BOB,)))
    org.run_for(600)
    assert org.received() == []
    assert _outcomes(org, BOB)[-1] == ("SKIPPED", "NoCorrelationMatch")


def test_smart_matching_is_off_when_correlation_is_off(make_org):
    o = make_org(org={"enablesmartmatching": True, "emailcorrelationenabled": False})
    _sent_quote(o)
    o.deliver(msg("RE: Quote", sender=CARL, to=(BOB,)))
    o.run_for(600)
    assert _outcomes(o, BOB)[-1] == ("SKIPPED", "NoCorrelationMatch")


@pytest.mark.parametrize("subject, sender", [
    ("RE: Quotes", CARL),  # another subject
    ("RE: Quote", STRANGER),  # the sender took no part in the tracked email
    ("RE: Quote", "arl@fabrikam.example"),  # a part of a participant's address is not the participant
])
def test_smart_matching_needs_the_same_subject_and_a_participant(make_org, subject, sender):
    o = make_org(org={"enablesmartmatching": True})
    _sent_quote(o)
    o.deliver(msg(subject, sender=sender, to=(BOB,)))
    o.run_for(600)
    assert o.received() == []
    assert _outcomes(o, BOB)[-1] == ("SKIPPED", "NoCorrelationMatch")


def test_uncorrelated_mail_has_no_regarding(org):
    org.deliver(msg("fresh"))
    org.run_for(600)
    [email] = org.received()
    assert email.correlationmethod == 0
    assert email.regardingobjectid is None and email.correlatedactivityid is None


# -- the activity -------------------------------------------------------------------------------------------------
def test_tracked_activity_fields(org):
    item = org.deliver(msg("hello", to=(ALICE,), message_id="hello@fabrikam.example"))[ALICE]
    org.run_for(1)  # the first cycle only
    [email] = org.received()
    assert email.statuscode == 4
    assert email.statecode == 1
    assert email.directioncode is False
    assert email.acceptingentityid == org.users[ALICE]
    assert email.acceptingentitytypecode == "systemuser"
    assert email.receivingmailboxid == org.mailboxes[ALICE]
    assert email.exchangeitemid == item
    assert email.messageid == "hello@fabrikam.example"
    assert email.sender == CARL
    assert email.ownerid == org.users[ALICE]
    mb = org.mailbox(ALICE)
    assert mb.itemsprocessedforlastsync == 1 and mb.itemsfailedforlastsync == 0
    assert mb.noemailcount == 0
    assert mb.lastsuccessfulsynccompletedon == START


def test_queue_mail_is_accepted_by_the_queue(org):
    org.deliver(msg("help", to=(SUPPORT,)))
    org.run_for(600)
    [email] = org.received()
    assert email.acceptingentityid == org.queues[SUPPORT]
    assert email.acceptingentitytypecode == "queue"
    assert email.receivingmailboxid == org.mailboxes[SUPPORT]


def test_items_stay_in_the_inbox_after_tracking(org):
    item = org.deliver(msg("hello"))[ALICE]
    org.run_for(600)
    assert org.inbox_ids(ALICE) == [item]


# -- failures: undeliverable -------------------------------------------------------------------------------------------
def test_malformed_message_moves_to_undeliverable_folder_when_the_profile_says_so(make_org):
    o = make_org(profile={"moveundeliveredemails": True})
    store = o.sb.store
    bad = o.deliver(b"garbage without headers\r\n", [ALICE])[ALICE]
    good = o.deliver(msg("fine"))[ALICE]
    o.run_for(1)  # the first cycle only
    assert _outcomes(o, ALICE) == [("FAILED", "MalformedMessage"), ("TRACKED", None)]
    folder = store.find_child(ALICE, "inbox", "Undeliverable")
    assert folder is not None
    assert o.mailbox(ALICE).undeliverablefolder == folder.folder_id
    assert o.inbox_ids(ALICE) == [good]
    [moved] = list(folder.items)
    assert moved != bad
    [row] = o.item_rows()
    assert (row.itemstate, row.lastsyncerror, row.exchangeentryid) == (3, "MalformedMessage", bad)
    mb = o.mailbox(ALICE)
    assert mb.itemsfailedforlastsync == 1 and mb.itemsprocessedforlastsync == 1
    # a second failure later reuses the same folder
    o.deliver(b"\x00\x01 still garbage", [ALICE])
    o.run_for(600)
    assert len(folder.items) == 2
    assert o.mailbox(ALICE).undeliverablefolder == folder.folder_id
    assert len(store.child_folders(ALICE, "inbox")) == 1
    # and it is not retried
    o.run_for(3600)
    assert len([e for e in o.item_events(ALICE) if e[4] == "FAILED"]) == 2


def test_malformed_message_gets_the_undeliverable_category_otherwise(org):
    bad = org.deliver(b"garbage without headers\r\n", [ALICE])[ALICE]
    org.run_for(600)
    assert org.inbox_ids(ALICE) == [bad]
    assert org.sb.store.get(ALICE, bad).categories == ["Undeliverable"]
    assert org.sb.store.find_child(ALICE, "inbox", "Undeliverable") is None
    assert org.mailbox(ALICE).undeliverablefolder is None
    [row] = org.item_rows()
    assert (row.itemstate, row.lastsyncerror) == (3, "MalformedMessage")
    org.run_for(3600)
    assert len(org.item_events(ALICE)) == 1


def test_undeliverable_folder_recreated_when_the_known_one_was_deleted(make_org):
    o = make_org(profile={"moveundeliveredemails": True})
    store = o.sb.store
    o.deliver(b"garbage", [ALICE])
    o.run_for(600)
    first = o.mailbox(ALICE).undeliverablefolder
    store.delete_folder(ALICE, first)
    o.deliver(b"garbage again", [ALICE])
    o.run_for(600)
    second = o.mailbox(ALICE).undeliverablefolder
    assert second != first
    assert store.find_child(ALICE, "inbox", "Undeliverable").folder_id == second


def test_oversized_message_is_not_turned_into_an_activity(org):
    big = msg("huge")
    big.size = 150 * 1024 * 1024 + 1
    org.deliver(big)
    org.run_for(600)
    assert org.received() == []
    assert _outcomes(org, ALICE) == [("FAILED", "MessageTooLarge")]


@pytest.mark.parametrize("move", [True, False])
def test_plugin_failure_is_isv_aborted_and_other_items_go_on(make_org, move):
    o = make_org(profile={"moveundeliveredemails": move})
    o.sb.add_fault(code="IsvAborted", operation="create_email", mailbox=ALICE, count=1)
    first = o.deliver(msg("refused"))[ALICE]
    o.deliver(msg("accepted"))
    o.run_for(600)
    assert _outcomes(o, ALICE) == [("FAILED", "IsvAborted"), ("TRACKED", None)]
    assert [e.subject for e in o.received()] == ["accepted"]
    [row] = o.item_rows()
    assert (row.itemstate, row.lastsyncerror, row.exchangeentryid) == (3, "IsvAborted", first)
    if move:
        folder = o.sb.store.find_child(ALICE, "inbox", "Undeliverable")
        assert len(folder.items) == 1 and first not in folder.items
    else:
        assert o.sb.store.get(ALICE, first).categories == ["Undeliverable"]
    # a plug-in failure is an item-level error: the workload is not affected
    assert o.mailbox(ALICE).enabledforincomingemail
    assert o.errors(ALICE) == []


def test_move_failure_is_recorded_and_the_watermark_still_passes_the_item(make_org):
    o = make_org(profile={"moveundeliveredemails": True})
    o.sb.add_fault(code="ErrorMailboxStoreUnavailable", operation="move_item", mailbox=ALICE, count=1)
    bad = o.deliver(b"garbage", [ALICE])[ALICE]
    o.run_for(3600)
    [row] = o.item_rows()
    assert row.itemstate == 3 and row.exchangeentryid == bad
    assert "ErrorMailboxStoreUnavailable" in row.lastsyncerrordetail
    assert len(o.item_events(ALICE)) == 1  # not handed to the CRM a second time
    assert o.mailbox(ALICE).enabledforincomingemail


def test_find_item_page_of_1000_then_the_rest_next_cycle(org):
    for i in range(1005):
        org.deliver(msg(f"n{i}", to=(SUPPORT,)))
    org.run_for(120)
    assert len(org.received()) == 1000
    org.run_for(600)
    assert len(org.received()) == 1005
