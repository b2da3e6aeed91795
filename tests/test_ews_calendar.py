"""Calendar behaviour over EWS, driven by the unmodified exchangelib client over HTTPS: a recurring
series unfolds into occurrences (CalendarView) with ids of their own, an occurrence changed becomes
an exception and one deleted a deleted occurrence (both on the master, through OccurrenceItemId and
RecurringMasterItemId too), all-day events span whole local days, a meeting can be cancelled, and
the refusals Exchange gives (a view that ends before it starts, a restricted view, an occurrence
index past the series, a response without a reference item)."""

from __future__ import annotations

import datetime

import pytest
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.errors import (
    ErrorCalendarIsOrganizerForAccept,
    ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange,
    ErrorCalendarOccurrenceIsDeletedFromRecurrence,
    ErrorInvalidOperation,
    ErrorInvalidRecipients,
    ErrorItemNotFound,
    ErrorMissingInformationReferenceItemId,
)
from exchangelib.items.calendar_item import AcceptItem
from exchangelib.properties import Attendee, Mailbox, ReferenceItemId
from exchangelib.recurrence import (
    DailyPattern,
    DeletedOccurrence,
    NoEndPattern,
    Recurrence,
    RelativeMonthlyPattern,
    WeeklyPattern,
)
from test_ews import ALICE, BOB

from simulator.exchange.persist import message_from_record, message_record
from simulator.exchange.store import ExchangeStore

CPH = EWSTimeZone("Europe/Copenhagen")
UTC = EWSTimeZone("UTC")


def _at(day: int, hour: int) -> EWSDateTime:
    return EWSDateTime(2026, 3, day, hour, 0, tzinfo=CPH)


def _series(acc, number: int = 4, **kw) -> CalendarItem:
    start, end = _at(2, 9), _at(2, 10)
    item = CalendarItem(account=acc, folder=acc.calendar, subject="Standup", start=start, end=end,
                        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date(), number=number), **kw)
    item.save()
    return item


def _view(acc, first: int, last: int) -> list[CalendarItem]:
    return list(acc.calendar.view(start=_at(first, 0), end=_at(last, 23)))


def test_a_recurring_series_unfolds_into_its_occurrences(acc):
    master = _series(acc)
    master.refresh()
    assert (master.type, master.is_recurring) == ("RecurringMaster", False)
    assert master.first_occurrence.start == _at(2, 9) and master.last_occurrence.start == _at(5, 9)
    assert master.modified_occurrences is None and master.deleted_occurrences is None
    assert master.recurrence.boundary.start == datetime.date(2026, 3, 2)  # a date again, not a time
    unfolded = _view(acc, 1, 31)
    assert [(o.type, o.is_recurring, o.start, o.subject) for o in unfolded] == [
        ("Occurrence", True, _at(day, 9), "Standup") for day in (2, 3, 4, 5)]
    assert len({o.id for o in unfolded}) == 4 and master.id not in {o.id for o in unfolded}
    assert unfolded[0].id == master.first_occurrence.id and unfolded[0].recurrence is None
    # only what overlaps the window; an item ending where the window starts shows, as in Exchange
    assert [o.start for o in acc.calendar.view(start=_at(3, 10), end=_at(4, 9))] == [_at(3, 9)]
    assert acc.calendar.view(start=_at(1, 0), end=_at(31, 0), max_items=2).count() == 2
    # an occurrence is read back by its own id
    again = acc.calendar.get(id=unfolded[2].id)
    assert again.start == _at(4, 9) and again.original_start == _at(4, 9)


def test_a_weekly_and_a_relative_monthly_series_fall_on_their_days(acc):
    start = EWSDateTime(2026, 3, 2, 12, 0, tzinfo=CPH)  # a Monday
    CalendarItem(account=acc, folder=acc.calendar, subject="Gym", start=start, end=start + datetime.timedelta(hours=1),
                 recurrence=Recurrence(pattern=WeeklyPattern(interval=2, weekdays=[2, 4]), start=start.date(),
                                       number=4)).save()
    CalendarItem(account=acc, folder=acc.calendar, subject="Board", start=start, end=start + datetime.timedelta(hours=1),
                 recurrence=Recurrence(pattern=RelativeMonthlyPattern(interval=1, weekday=5, week_number=5),
                                       boundary=NoEndPattern(start=start.date()))).save()
    view = acc.calendar.view(start=start, end=start + datetime.timedelta(days=70))
    gym = [o.start.astimezone(CPH).date().isoformat() for o in view if o.subject == "Gym"]
    board = [o.start.astimezone(CPH).date().isoformat() for o in view if o.subject == "Board"]
    assert gym == ["2026-03-03", "2026-03-05", "2026-03-17", "2026-03-19"]  # every other Tuesday and Thursday
    assert board == ["2026-03-27", "2026-04-24"]  # the last Friday of each month, with no end


def test_a_changed_occurrence_becomes_an_exception_and_a_deleted_one_is_listed(acc, server):
    master = _series(acc)
    second, third = _view(acc, 1, 31)[1:3]
    second.start, second.end, second.location = _at(3, 11), _at(3, 12), "Room 2"
    second.save()
    third_id = third.id
    third.delete()
    master.refresh()
    assert [(o.id, o.start, o.original_start) for o in master.modified_occurrences] == [
        (second.id, _at(3, 11), _at(3, 9))]
    assert isinstance(master.deleted_occurrences[0], DeletedOccurrence)
    assert [d.start for d in master.deleted_occurrences] == [_at(4, 9)]
    unfolded = _view(acc, 1, 31)
    assert [(o.type, o.start, o.location) for o in unfolded] == [
        ("Occurrence", _at(2, 9), None), ("Exception", _at(3, 11), "Room 2"), ("Occurrence", _at(5, 9), None)]
    # the same through the occurrence index, and the series from an occurrence
    fourth = master.occurrence(index=4)
    fourth.refresh()
    assert fourth.start == _at(5, 9) and fourth.subject == "Standup"
    with pytest.raises(ErrorCalendarOccurrenceIsDeletedFromRecurrence):
        master.occurrence(index=3).refresh()
    with pytest.raises(ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange):
        master.occurrence(index=5).refresh()
    found = unfolded[0].recurring_master()
    found.refresh()
    assert found.id == master.id and found.recurrence == master.recurrence
    # a deleted occurrence is gone for good
    assert isinstance(list(acc.fetch(ids=[(third_id, None)]))[0], ErrorItemNotFound)
    # what the master keeps survives a replay of the journal
    replayed = ExchangeStore(server.clock)
    for address, mbx in server.store.mailboxes.items():  # made before the journal was listened to
        replayed.apply({"k": "mbx", "a": address, "n": mbx.display_name,
                        "f": [[fid, name] for name, fid in mbx.distinguished.items()]})
    for event in server.journal:
        if "m" in event:  # the world keeps a message as its record: write it and read it back
            event = {**event, "m": message_from_record(message_record(event["m"]))}
        replayed.apply(event)
    assert replayed.mailbox("alice@contoso.example").item(master.id).data.kept == \
        server.store.mailbox("alice@contoso.example").item(master.id).data.kept
    # a new pattern drops the exceptions; deleting the master deletes its occurrences
    master.recurrence = Recurrence(pattern=DailyPattern(interval=2), start=master.start.date(), number=2)
    master.save()
    master.refresh()
    assert master.modified_occurrences is None and master.deleted_occurrences is None
    assert [o.start for o in _view(acc, 1, 31)] == [_at(2, 9), _at(4, 9)]
    master.delete()
    assert _view(acc, 1, 31) == []
    assert isinstance(list(acc.fetch(ids=[(unfolded[0].id, None)]))[0], ErrorItemNotFound)


def test_an_all_day_event_spans_whole_local_days(acc, server):
    item = CalendarItem(account=acc, folder=acc.calendar, subject="Offsite", start=_at(10, 15), end=_at(11, 9),
                        is_all_day=True)
    item.save()
    got = acc.calendar.all().only("is_all_day", "start", "end").get(id=item.id)
    assert (got.is_all_day, got.start, got.end) == (True, datetime.date(2026, 3, 10), datetime.date(2026, 3, 11))
    stored = server.store.mailbox("alice@contoso.example").item(item.id).data.kept
    assert "2026-03-09T23:00:00Z" in stored["Start"] and "2026-03-11T23:00:00Z" in stored["End"]
    dated = CalendarItem(account=acc, folder=acc.calendar, subject="Holiday", start=datetime.date(2026, 3, 20),
                         end=datetime.date(2026, 3, 20), is_all_day=True)
    dated.save()
    got = acc.calendar.get(id=dated.id)
    assert (got.start, got.end) == (datetime.date(2026, 3, 20), datetime.date(2026, 3, 20))


def test_views_and_responses_are_refused_as_exchange_does(acc):
    _series(acc)
    with pytest.raises(ErrorInvalidOperation):
        acc.calendar.view(start=_at(1, 0), end=_at(31, 0)).filter(subject="Standup").count()
    with pytest.raises(ErrorMissingInformationReferenceItemId):
        AcceptItem(account=acc).send()
    single = CalendarItem(account=acc, folder=acc.calendar, subject="Mine", start=_at(6, 9), end=_at(6, 10))
    single.save()
    with pytest.raises(ErrorCalendarIsOrganizerForAccept):
        AcceptItem(account=acc, reference_item_id=ReferenceItemId(id=single.id, changekey=single.changekey)).send()
    with pytest.raises(ErrorInvalidRecipients):  # no attendee to tell
        single.cancel()
    single.required_attendees = [Attendee(mailbox=Mailbox(email_address=ALICE), response_type="Accept")]
    single.save()
    with pytest.raises(ErrorInvalidRecipients):  # nor when the organizer is the only one
        single.cancel()


def test_cancelling_a_meeting_tells_the_attendees_and_removes_it(acc, server):
    meeting = CalendarItem(account=acc, folder=acc.calendar, subject="Review", start=_at(6, 9), end=_at(6, 10),
                           required_attendees=[Attendee(mailbox=Mailbox(email_address=BOB), response_type="Unknown")])
    meeting.save()
    result = meeting.cancel()
    assert result.id
    with pytest.raises(ErrorItemNotFound):
        meeting.cancel()
    bob = server.store.mailbox(BOB)
    notices = [i.data for i in bob.folders[bob.distinguished["inbox"]].items.values()]
    assert [(n.subject, n.item_class) for n in notices] == [("Canceled: Review", "IPM.Schedule.Meeting.Canceled")]


def test_a_recurrence_that_ends_before_it_starts_is_refused(acc):
    from exchangelib.errors import ErrorCalendarInvalidRecurrence

    day = datetime.date(2026, 3, 2)
    item = CalendarItem(account=acc, folder=acc.calendar, subject="Never", start=_at(2, 9), end=_at(2, 10),
                        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=day,
                                              end=day - datetime.timedelta(days=1)))
    with pytest.raises(ErrorCalendarInvalidRecurrence):
        item.save()
    assert list(acc.calendar.all()) == []


def test_a_recurring_task_moves_on_when_an_occurrence_is_done(acc, server):
    from exchangelib import Task
    from exchangelib.recurrence import DailyRegeneration, TaskRecurrence

    task = Task(account=acc, folder=acc.tasks, subject="Water the plants",
                recurrence=TaskRecurrence(pattern=DailyPattern(interval=2), start=datetime.date(2026, 3, 2), number=3))
    task.save()
    task.refresh()
    assert (task.is_recurring, task.change_count, task.due_date) == (True, 1, datetime.date(2026, 3, 2))
    master_id = task.id
    task.status = "Completed"
    done = task.save()  # the answer names the occurrence that was done, a one-off task of its own
    assert done.id != master_id
    done.refresh()
    assert (done.is_recurring, done.status) == (False, "Completed")
    master = acc.tasks.get(id=master_id)
    assert (master.status, master.due_date, master.change_count) == ("NotStarted", datetime.date(2026, 3, 4), 2)
    assert master.recurrence.boundary.number == 2
    assert sorted(t.subject for t in acc.tasks.all()) == ["Water the plants", "Water the plants"]
    # a regenerating task is next due an interval after the day it was completed (the server's clock)
    chore = Task(account=acc, folder=acc.tasks, subject="Backup",
                 recurrence=TaskRecurrence(pattern=DailyRegeneration(interval=3), start=datetime.date(2026, 3, 2),
                                           number=5))
    chore.save()
    chore.recurrence.boundary.start = datetime.date(2026, 3, 3)  # new dates alone: an ordinary update
    assert chore.save().id == chore.id
    chore.status = "Completed"
    chore.save()
    moved = next(t for t in acc.tasks.filter(subject="Backup") if t.status == "NotStarted")
    assert moved.due_date == server.clock.now().date() + datetime.timedelta(days=3)


def test_one_occurrence_of_a_meeting_is_cancelled_and_an_occurrence_does_not_move_alone(acc, server):
    from exchangelib.errors import ErrorCalendarCannotMoveOrCopyOccurrence

    master = _series(acc, required_attendees=[Attendee(mailbox=Mailbox(email_address=BOB), response_type="Unknown")])
    second = master.occurrence(index=2)
    second.refresh()
    with pytest.raises(ErrorCalendarCannotMoveOrCopyOccurrence):
        second.move(acc.drafts)
    second.cancel()
    master.refresh()
    assert [d.start for d in master.deleted_occurrences] == [_at(3, 9)]
    assert [o.start for o in _view(acc, 1, 31)] == [_at(2, 9), _at(4, 9), _at(5, 9)]
    bob = server.store.mailbox(BOB)
    assert [i.data.subject for i in bob.folders[bob.distinguished["inbox"]].items.values()] == ["Canceled: Standup"]


def _soap(operation: str) -> bytes:
    return (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            b'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body>' + operation
            + b"</s:Body></s:Envelope>")


@pytest.mark.parametrize("operation, code", [
    (b'<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
     b'<m:CalendarView StartDate="2026-03-02T00:00:00Z" EndDate="9999-12-31T23:59:59Z"/>'
     b'<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
     b"ErrorCalendarViewRangeTooBig"),
    (b'<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
     b'<m:CalendarView StartDate="2026-03-09T00:00:00Z" EndDate="2026-03-02T00:00:00Z"/>'
     b'<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
     b"ErrorCalendarEndDateIsEarlierThanStartDate"),
    (b'<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
     b'<m:CalendarView StartDate="soon" EndDate="later"/>'
     b'<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
     b"ErrorSchemaValidation"),
    (b'<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds>'
     b'<t:OccurrenceItemId RecurringMasterId="{master}" InstanceIndex="x"/></m:ItemIds></m:GetItem>',
     b"ErrorInvalidIdMalformed"),
    (b'<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds>'
     b'<t:RecurringMasterItemId OccurrenceId="T0NDOkFBTWtBMDAwMDAwMDAwMDAxMDBmZmZmZjA6MjAyNjAzMDI="/></m:ItemIds></m:GetItem>',
     b"ErrorItemNotFound"),
    (b'<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds>'
     b'<t:ItemId Id="{occurrence}" ChangeKey="bm90IGEga2V5"/></m:ItemIds></m:GetItem>', b"ErrorInvalidChangeKey"),
], ids=["far-end", "ends-before-start", "not-times", "index-not-a-number", "unknown-occurrence", "wrong-change-key"])
def test_malformed_calendar_requests_get_a_response_code_not_a_traceback(acc, server, operation, code, caplog):
    from test_ews import post

    master = _series(acc)
    occurrence = _view(acc, 1, 31)[0]
    body = operation.replace(b"{master}", master.id.encode()).replace(b"{occurrence}", occurrence.id.encode())
    answer = post(server, _soap(body))
    assert code in answer.content and b"ErrorInternalServerError" not in answer.content
    assert "Traceback" not in caplog.text
