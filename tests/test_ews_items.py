"""Items of every type over EWS, driven by the unmodified exchangelib client over HTTPS: calendar
items, contacts, tasks, distribution lists, posts and generic items are created, read back with
every field the client set, updated (each update a new change key), filtered and sorted on their
own properties, moved, synchronized and deleted; extended properties are kept on any item; and
what the store keeps survives a replay of its journal."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from exchangelib import (
    Body,
    CalendarItem,
    Contact,
    DistributionList,
    EWSDateTime,
    EWSTimeZone,
    ExtendedProperty,
    HTMLBody,
    Message,
    PostItem,
    Task,
)
from exchangelib.indexed_properties import EmailAddress, PhoneNumber
from exchangelib.items import Item
from exchangelib.properties import Attendee, Mailbox
from test_ews import ALICE, BOB, START, account

from simulator.exchange.store import ExchangeStore

UTC = EWSTimeZone("UTC")


def _at(hours: float) -> EWSDateTime:
    return EWSDateTime.from_datetime(START + timedelta(hours=hours)).astimezone(UTC)


def test_a_calendar_item_comes_back_with_every_field_set(acc, server):
    item = CalendarItem(
        account=acc, folder=acc.calendar, subject="Quarterly review", body=HTMLBody("<p>Agenda</p>"),
        start=_at(26), end=_at(27.5), location="Room 4", is_all_day=False, reminder_is_set=True,
        reminder_minutes_before_start=30, legacy_free_busy_status="Busy", categories=["Review"],
        required_attendees=[Attendee(mailbox=Mailbox(email_address=BOB), response_type="Unknown")],
    )
    item.save()
    got = acc.calendar.get(id=item.id)
    assert isinstance(got, CalendarItem) and got.item_class == "IPM.Appointment"
    assert (got.subject, got.location, got.start, got.end) == ("Quarterly review", "Room 4", _at(26), _at(27.5))
    assert got.body == HTMLBody("<p>Agenda</p>") and isinstance(got.body, HTMLBody)
    assert (got.is_all_day, got.reminder_is_set, got.reminder_minutes_before_start) == (False, True, 30)
    assert got.legacy_free_busy_status == "Busy" and got.categories == ["Review"]
    assert [a.mailbox.email_address for a in got.required_attendees] == [BOB]
    # what Exchange computes for an appointment the mailbox organizes
    assert (got.type, got.is_recurring, got.is_meeting, got.my_response_type) == ("Single", False, True, "Organizer")
    assert got.organizer.email_address == ALICE
    # stored in the Calendar of the mailbox, as an appointment the store keeps
    stored = server.store.mailbox(ALICE).item(item.id)
    assert stored.folder_id == server.store.mailbox(ALICE).distinguished["calendar"]
    assert stored.data.item_type == "CalendarItem"


def test_an_update_changes_the_fields_and_the_change_key(acc):
    item = CalendarItem(account=acc, folder=acc.calendar, subject="Standup", start=_at(1), end=_at(1.25),
                        location="Here")
    item.save()
    first_key = item.changekey
    item.location, item.start, item.end = "There", _at(2), _at(2.5)
    item.subject = "Standup (moved)"
    item.save(update_fields=["location", "start", "end", "subject"])
    assert item.changekey != first_key
    got = acc.calendar.get(id=item.id)
    assert (got.subject, got.location, got.start, got.end) == ("Standup (moved)", "There", _at(2), _at(2.5))
    assert got.changekey == item.changekey
    item.location = None
    item.save(update_fields=["location"])  # a field set to nothing is deleted
    assert acc.calendar.get(id=item.id).location is None


def test_calendar_items_are_filtered_and_sorted_on_their_own_properties(acc):
    for n, (hours, where) in enumerate([(30, "B"), (10, "A"), (50, "C")]):
        CalendarItem(account=acc, folder=acc.calendar, subject=f"Meeting {n}", start=_at(hours),
                     end=_at(hours + 1), location=where).save()
    window = acc.calendar.filter(start__gte=_at(20), start__lt=_at(60)).order_by("start")
    assert [i.subject for i in window] == ["Meeting 0", "Meeting 2"]
    assert [i.location for i in acc.calendar.all().order_by("-location")] == ["C", "B", "A"]
    assert [i.subject for i in acc.calendar.filter(location__icontains="a")] == ["Meeting 1"]


def test_a_contact_with_indexed_properties(acc):
    contact = Contact(account=acc, folder=acc.contacts, given_name="Carl", surname="Contact",
                      display_name="Carl Contact", company_name="Fabrikam",
                      email_addresses=[EmailAddress(email="carl@fabrikam.example", label="EmailAddress1")],
                      phone_numbers=[PhoneNumber(label="BusinessPhone", phone_number="+1 555 0100")])
    contact.save()
    got = acc.contacts.get(id=contact.id)
    assert isinstance(got, Contact) and got.item_class == "IPM.Contact"
    assert (got.given_name, got.surname, got.company_name) == ("Carl", "Contact", "Fabrikam")
    assert [(e.label, e.email) for e in got.email_addresses] == [("EmailAddress1", "carl@fabrikam.example")]
    assert [(p.label, p.phone_number) for p in got.phone_numbers] == [("BusinessPhone", "+1 555 0100")]
    # one entry of an indexed property changes; the others stay
    contact.email_addresses = [EmailAddress(email="carl@fabrikam.example", label="EmailAddress1"),
                               EmailAddress(email="carl.c@fabrikam.example", label="EmailAddress2")]
    contact.save(update_fields=["email_addresses"])
    got = acc.contacts.get(id=contact.id)
    assert sorted((e.label, e.email) for e in got.email_addresses) == [
        ("EmailAddress1", "carl@fabrikam.example"), ("EmailAddress2", "carl.c@fabrikam.example")]
    assert [c.display_name for c in acc.contacts.filter(given_name="carl")] == ["Carl Contact"]
    assert list(acc.contacts.filter(company_name="Contoso")) == []


def test_a_task_is_created_completed_and_found_by_status(acc):
    task = Task(account=acc, folder=acc.tasks, subject="Send the quote", status="NotStarted",
                due_date=_at(48).date(), percent_complete=Decimal(0))
    task.save()
    got = acc.tasks.get(id=task.id)
    assert isinstance(got, Task) and (got.subject, got.status, got.percent_complete) == (
        "Send the quote", "NotStarted", 0)
    assert got.due_date == _at(48).date()
    task.status, task.percent_complete = "Completed", Decimal(100)
    task.save(update_fields=["status", "percent_complete"])
    assert [t.subject for t in acc.tasks.filter(due_date__lt=_at(72).date())] == ["Send the quote"]
    assert acc.tasks.get(id=task.id).status == "Completed"
    assert acc.tasks.get(id=task.id).percent_complete == 100


def test_other_item_types_keep_their_type_and_class(acc):
    dl = DistributionList(account=acc, folder=acc.contacts, display_name="Sales team")
    dl.save()
    post = PostItem(account=acc, folder=acc.inbox, subject="Notice", body=Body("Read me"))
    post.save()
    generic = Item(account=acc, folder=acc.inbox, subject="Plain item", importance="High")
    generic.save()
    assert isinstance(acc.contacts.get(id=dl.id), DistributionList)
    assert acc.contacts.get(id=dl.id).display_name == "Sales team"
    got_post = acc.inbox.get(id=post.id)
    assert isinstance(got_post, PostItem) and (got_post.subject, got_post.body) == ("Notice", "Read me")
    got = acc.inbox.get(id=generic.id)
    assert (got.subject, got.importance, got.item_class) == ("Plain item", "High", "IPM.Note")


class Color(ExtendedProperty):
    property_set_id = "aa3df801-4fc7-401f-bbc1-7c93d6498c2e"
    property_name = "Color"
    property_type = "String"


def test_extended_properties_are_kept_on_any_item(acc):
    Message.register("color", Color)
    CalendarItem.register("color", Color)
    try:
        msg = Message(account=acc, folder=acc.drafts, subject="Tagged", color="blue")
        msg.save()
        meeting = CalendarItem(account=acc, folder=acc.calendar, subject="Tagged too", start=_at(3), end=_at(4),
                               color="green")
        meeting.save()
        assert acc.drafts.get(id=msg.id).color == "blue"
        assert acc.calendar.get(id=meeting.id).color == "green"
        msg.color = "red"
        msg.save(update_fields=["color"])
        assert acc.drafts.get(id=msg.id).color == "red"
        assert [m.subject for m in acc.drafts.filter(color="red")] == ["Tagged"]
        msg.color = None
        msg.save(update_fields=["color"])
        assert acc.drafts.get(id=msg.id).color is None
    finally:
        Message.deregister("color")
        CalendarItem.deregister("color")


def test_moved_synchronized_and_deleted(acc):
    item = CalendarItem(account=acc, folder=acc.calendar, subject="To move", start=_at(5), end=_at(6),
                        location="Room 1")
    item.save()
    sync = list(acc.calendar.sync_items())
    assert [(kind, type(i).__name__, i.subject) for kind, i in sync if kind == "create"] == [
        ("create", "CalendarItem", "To move")]
    item.location = "Room 2"
    item.save(update_fields=["location"])
    assert [(kind, i.location) for kind, i in acc.calendar.sync_items()] == [("update", "Room 2")]
    msg = Message(account=acc, folder=acc.drafts, subject="Read me", is_read=False)
    msg.save()
    list(acc.drafts.sync_items())
    msg.is_read = True
    msg.save(update_fields=["is_read"])
    [(kind, (changed, read))] = list(acc.drafts.sync_items())
    assert (kind, changed.id, read) == ("read_flag_change", msg.id, True)
    item.move(acc.trash)
    moved = acc.trash.get(subject="To move")
    assert isinstance(moved, CalendarItem) and moved.location == "Room 2"
    moved.delete()
    assert list(acc.trash.filter(subject="To move")) == []


def test_what_the_store_keeps_survives_a_replay_of_its_journal(acc, server):
    item = Contact(account=acc, folder=acc.contacts, given_name="Dana", surname="Doe", display_name="Dana Doe",
                   email_addresses=[EmailAddress(email="dana@fabrikam.example", label="EmailAddress1")])
    item.save()
    item.given_name = "Danielle"
    item.save(update_fields=["given_name"])
    before = server.store.mailbox(ALICE).item(item.id)

    from simulator.exchange.persist import message_from_record, message_record

    replayed = ExchangeStore(server.clock)
    for address, mbx in server.store.mailboxes.items():  # made before the journal was listened to
        replayed.apply({"k": "mbx", "a": address, "n": mbx.display_name,
                        "f": [[fid, name] for name, fid in mbx.distinguished.items()]})
    for event in server.journal:
        if "m" in event:  # the world keeps a message as its record: write it and read it back
            event = {**event, "m": message_from_record(message_record(event["m"]))}
        replayed.apply(event)
    after = replayed.mailbox(ALICE).item(item.id)
    assert (after.data.item_type, after.data.kept, after.version) == (
        before.data.item_type, before.data.kept, before.version)
    assert after.version == 1 and "Danielle" in after.data.kept["GivenName"]


def test_reply_reply_all_and_forward_answer_the_original(acc, server):
    original_id = server.deliver("Price list", sender=BOB, to=(ALICE, "carl@fabrikam.example"),
                                 message_id="price-list@contoso.example")
    original = acc.inbox.get(id=original_id)
    original.reply(subject="RE: Price list", body="Thanks.")
    original.reply_all(subject="RE: Price list (all)", body="Thanks, all.")
    original.forward(subject="FW: Price list", body="For you.", to_recipients=["dana@fabrikam.example"])
    replies = {i.data.subject: i.data for i in server.store.mailbox(BOB).folder("inbox").items.values()}
    assert set(replies) == {"RE: Price list", "RE: Price list (all)"}
    answer = replies["RE: Price list"]
    assert answer.in_reply_to == "price-list@contoso.example" and answer.sender == ALICE
    assert answer.body.startswith("Thanks.") and "Original Message" in answer.body
    # reply-all also went to carl (outside the sandbox); the forward only to dana
    external = [(to, data.subject) for _, to, data in server.store.outbound]
    assert (("carl@fabrikam.example",), "RE: Price list (all)") in external
    assert (("dana@fabrikam.example",), "FW: Price list") in external
    sent = sorted(m.subject for m in acc.sent.all())
    assert sent == ["FW: Price list", "RE: Price list", "RE: Price list (all)"]


def test_an_unknown_item_type_is_refused_with_a_response_code(acc):
    from exchangelib.errors import ErrorInvalidRequest
    from exchangelib.items import PostReplyItem

    meeting = CalendarItem(account=acc, folder=acc.calendar, subject="Invite", start=_at(3), end=_at(4))
    meeting.save()
    reply = PostReplyItem(account=acc, folder=acc.calendar, subject="Re: Invite", new_body="Yes")
    with pytest.raises(ErrorInvalidRequest, match="cannot create t:PostReplyItem"):
        reply.save()
    assert [i.subject for i in acc.calendar.all()] == ["Invite"]


def test_file_and_item_attachments_are_kept_listed_fetched_and_removed(acc, server):
    from exchangelib import FileAttachment, ItemAttachment

    msg = Message(account=acc, folder=acc.drafts, subject="With files")
    msg.attach(FileAttachment(name="quote.pdf", content=b"%PDF-1.7 quote", content_type="application/pdf"))
    msg.save()  # CreateItem with its attachments: the answer names them
    assert msg.attachments[0].attachment_id.id and msg.attachments[0].attachment_id.root_id == msg.id
    key_after_create = msg.changekey
    inner = Message(account=acc, subject="Forwarded inside", body=Body("inner text"))
    msg.attach(ItemAttachment(name="inner", item=inner))  # CreateAttachment on the saved item
    got = acc.drafts.get(id=msg.id)
    assert got.has_attachments and got.changekey != key_after_create
    assert sorted(a.name for a in got.attachments) == ["inner", "quote.pdf"]
    pdf = next(a for a in got.attachments if a.name == "quote.pdf")
    assert (pdf.size, pdf.content_type, pdf.content) == (14, "application/pdf", b"%PDF-1.7 quote")  # GetAttachment
    item_attachment = next(a for a in got.attachments if a.name == "inner")
    assert item_attachment.item.subject == "Forwarded inside"
    got.detach(pdf)  # DeleteAttachment
    again = acc.drafts.get(id=msg.id)
    assert [a.name for a in again.attachments] == ["inner"]
    # a sent copy carries the attachment to the recipient
    again.to_recipients = [BOB]
    again.save(update_fields=["to_recipients"])
    again.send()
    [received] = server.store.mailbox(BOB).folder("inbox").items.values()
    assert "inner" in received.data.kept["Attachments"]


def test_an_update_that_sends_sends_the_updated_message(acc, server):
    draft = Message(account=acc, folder=acc.drafts, subject="Draft", to_recipients=[BOB])
    draft.save()
    draft.subject = "Final"
    draft.send_and_save(update_fields=["subject"])  # UpdateItem with MessageDisposition SendAndSaveCopy
    assert list(acc.drafts.all()) == []
    assert [m.subject for m in acc.sent.all()] == ["Final"]
    assert [i.data.subject for i in server.store.mailbox(BOB).folder("inbox").items.values()] == ["Final"]


def test_a_pull_subscription_reports_what_happened_since_its_watermark(acc, server):
    from exchangelib.properties import CreatedEvent, DeletedEvent, ModifiedEvent, NewMailEvent, StatusEvent

    with acc.inbox.pull_subscription() as (subscription_id, watermark):
        [quiet] = list(acc.inbox.get_events(subscription_id, watermark))
        assert [type(e) for e in quiet.events] == [StatusEvent]
        watermark = quiet.events[-1].watermark
        item_id = server.deliver("News")
        [notification] = list(acc.inbox.get_events(subscription_id, watermark))
        assert [(type(e), e.item_id.id) for e in notification.events] == [
            (CreatedEvent, item_id), (NewMailEvent, item_id)]
        watermark = notification.events[-1].watermark
        item = acc.inbox.get(id=item_id)
        item.is_read = True
        item.save(update_fields=["is_read"])
        item.delete()
        [notification] = list(acc.inbox.get_events(subscription_id, watermark))
        assert [type(e) for e in notification.events] == [ModifiedEvent, DeletedEvent]
        # the same watermark gives the same events again: nothing is consumed on the server
        [again] = list(acc.inbox.get_events(subscription_id, watermark))
        assert [type(e) for e in again.events] == [ModifiedEvent, DeletedEvent]
    from exchangelib.errors import ErrorSubscriptionAccessDenied, ErrorSubscriptionNotFound

    with pytest.raises(ErrorSubscriptionNotFound):  # the context manager ended it
        list(acc.inbox.get_events(subscription_id, watermark))
    assert subscription_id in server.store.mailbox(ALICE).settings.ended_subscriptions
    with acc.inbox.pull_subscription() as (other_id, other_watermark), pytest.raises(ErrorSubscriptionAccessDenied):
        list(account(server, BOB).inbox.get_events(other_id, other_watermark))
