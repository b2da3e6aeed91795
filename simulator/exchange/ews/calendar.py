"""What Exchange computes for calendar items: recurring series and their occurrences.

A calendar item keeps its properties as the client set them (:mod:`simulator.exchange.ews.fields`);
this module adds what Exchange derives from them:

* **Normalisation on save** (:func:`normalized`): an all-day event starts at the midnight before
  its start and ends at the midnight after its end, in its own time zones; a recurring master
  starts on the first day of its pattern; a recurrence's ``StartDate``/``EndDate`` are written back
  as dates with the time zone's offset (``2016-01-01+01:00``), as Exchange answers them.
* **Occurrences** of a recurring master (``t:Recurrence``: daily, weekly, absolute/relative monthly
  and yearly patterns; numbered, end-date and no-end boundaries) are not stored: each is computed
  from the master when asked for, under an id of its own that names the master and the day of the
  occurrence (:func:`occurrence_id`). A change to one occurrence makes it an *exception*, a
  delete makes it a *deleted occurrence*; both are kept on the master under :data:`KEY`, so they
  are journaled with the master's update and survive a restart. Changing the master's pattern
  drops its exceptions, as Exchange does.
* **Ids** ``t:OccurrenceItemId`` (master and 1-based ``InstanceIndex``) and
  ``t:RecurringMasterItemId`` (an occurrence's id, answered with its master) are resolved by
  :func:`resolve` for every operation that takes item ids.
* **CalendarView** (FindItem): singles and occurrences overlapping the window, by start.
* **Recurring tasks** (:func:`regenerate`): completing an occurrence leaves it as a one-off task.
* **Meeting responses** (CreateItem): ``t:CancelCalendarItem`` sends a cancellation to the
  attendees (never to the organizer: a meeting with no one else is refused) and removes the
  meeting, or the one occurrence it names; accepting, declining or tentatively accepting needs a meeting
  request, which the mailbox's own appointments are not.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
from calendar import monthrange
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP
from lxml import etree

from simulator.exchange.ews.context import change_key, change_key_of, mailbox_element, store_call
from simulator.exchange.ews.fields import keep, revive
from simulator.exchange.ews.xml import (
    TNS,
    EwsFault,
    ResponseError,
    el,
    format_datetime,
    parse_datetime,
    t,
    xml_bool,
)
from simulator.exchange.mime import MessageData
from simulator.exchange.store import Item

KEY = "~Occurrences"  # on a recurring master: its exceptions and deleted occurrences (never served)
# Properties of the series that an occurrence does not have.
SERIES_ONLY = frozenset({"Recurrence", KEY, "FirstOccurrence", "LastOccurrence", "ModifiedOccurrences",
                         "DeletedOccurrences", "CalendarItemType", "IsRecurring"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_GROUPS = {"Day": tuple(range(7)), "Weekday": tuple(range(5)), "WeekendDay": (5, 6)}
WEEK_INDEXES = ("First", "Second", "Third", "Fourth", "Last")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PATTERNS = ("DailyRecurrence", "WeeklyRecurrence", "AbsoluteMonthlyRecurrence", "RelativeMonthlyRecurrence",
            "AbsoluteYearlyRecurrence", "RelativeYearlyRecurrence")
# A task can also regenerate: its next occurrence is due an interval after the last one was completed.
REGENERATIONS = {"DailyRegeneration": "days", "WeeklyRegeneration": "weeks", "MonthlyRegeneration": "months",
                 "YearlyRegeneration": "years"}
BOUNDARIES = ("NoEndRecurrence", "EndDateRecurrence", "NumberedRecurrence")
LAST_YEAR = 4500  # a series without an end is not expanded past this year
_OCCURRENCE_TAG = "OCC:"


# -- small helpers -------------------------------------------------------------------------
def prop(name: str, text: str | None = None) -> etree._Element:
    """``<t:name>text</t:name>`` with the types namespace declared on it (as kept properties are)."""
    e = etree.Element(t(name), nsmap={"t": TNS})
    if text is not None:
        e.text = text
    return e


def kept_text(kept: dict[str, str], key: str) -> str | None:
    text = kept.get(key)
    if not text:
        return None
    value = revive(text).text
    return value.strip() if value else None


def kept_time(kept: dict[str, str], key: str) -> datetime | None:
    value = kept_text(kept, key)
    if value is None:
        return None
    try:
        return parse_datetime(value)
    except ResponseError:
        return None


def _time_prop(name: str, when: datetime) -> str:
    return keep(prop(name, format_datetime(when)))


@lru_cache(maxsize=256)
def _zone(ms_id: str | None) -> tzinfo:
    iana = MS_TIMEZONE_TO_IANA_MAP.get(ms_id or "")
    if iana:
        try:
            return ZoneInfo(iana)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def zone_of(kept: dict[str, str], key: str = "StartTimeZone") -> tzinfo:
    """The time zone a calendar item's start (or end) is in: its ``t:StartTimeZone`` (``EndTimeZone``,
    or the older ``MeetingTimeZone``) by its Windows id; UTC when it names none the server knows."""
    for name in (key, "StartTimeZone", "MeetingTimeZone"):
        text = kept.get(name)
        if text:
            return _zone(revive(text).get("Id"))
    return UTC


def _is_true(kept: dict[str, str], key: str) -> bool:
    return (kept_text(kept, key) or "").lower() in ("true", "1")


# -- recurrence patterns -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """A parsed ``t:Recurrence`` of a calendar item."""

    kind: str
    interval: int
    weekdays: tuple[int, ...]  # WeeklyRecurrence: the days (0 = Monday)
    day_spec: tuple[int, ...]  # relative patterns: the weekdays the DaysOfWeek value stands for
    week_index: int  # relative patterns: 1..4, 5 = the last
    day_of_month: int
    month: int  # yearly patterns: 1..12
    first_day: int  # WeeklyRecurrence: the first day of the week
    start: date
    end: date | None
    count: int | None


def _invalid(why: str) -> ResponseError:
    return ResponseError("ErrorCalendarInvalidRecurrence", f"the recurrence is not valid: {why}")


def _child_text(node: etree._Element, name: str) -> str | None:
    value = node.findtext(t(name))
    return value.strip() if value is not None else None


def _number(node: etree._Element, name: str, low: int, high: int) -> int:
    value = _child_text(node, name)
    try:
        number = int(value or "")
    except ValueError:
        raise _invalid(f"t:{name} {value!r} is not a number") from None
    if not low <= number <= high:
        raise _invalid(f"t:{name} must be between {low} and {high}")
    return number


def _choice(node: etree._Element, name: str, names: tuple[str, ...]) -> int:
    value = _child_text(node, name)
    if value not in names:
        raise _invalid(f"t:{name} {value!r} is not one of {', '.join(names)}")
    return names.index(value)


def _day_spec(node: etree._Element) -> tuple[int, ...]:
    value = _child_text(node, "DaysOfWeek") or ""
    if value in WEEKDAYS:
        return (WEEKDAYS.index(value),)
    if value in DAY_GROUPS:
        return DAY_GROUPS[value]
    raise _invalid(f"t:DaysOfWeek {value!r} is not a day of the week, Day, Weekday or WeekendDay")


def _date(text: str | None, name: str) -> date:
    try:
        return date.fromisoformat((text or "").strip()[:10])
    except ValueError:
        raise _invalid(f"t:{name} {text!r} is not a date") from None


@lru_cache(maxsize=512)
def parse_series(text: str) -> Series:
    """The series a kept ``t:Recurrence`` describes; a malformed one is refused
    (ErrorCalendarInvalidRecurrence)."""
    node = revive(text)
    pattern = next((c for c in node if isinstance(c.tag, str) and (etree.QName(c).localname in PATTERNS
                                                                   or etree.QName(c).localname in REGENERATIONS)), None)
    boundary = next((c for c in node if isinstance(c.tag, str) and etree.QName(c).localname in BOUNDARIES), None)
    if pattern is None or boundary is None:
        raise _invalid(f"it needs one pattern ({', '.join(PATTERNS)}) and one boundary ({', '.join(BOUNDARIES)})")
    kind = etree.QName(pattern).localname
    interval, weekdays, day_spec, week_index, day_of_month, month, first_day = 1, (), (), 0, 0, 0, 0
    if kind in ("DailyRecurrence", "WeeklyRecurrence", "AbsoluteMonthlyRecurrence", "RelativeMonthlyRecurrence"):
        interval = _number(pattern, "Interval", 1, 999)
    if kind in REGENERATIONS:
        interval = _number(pattern, "Interval", 1, 999)
    if kind == "WeeklyRecurrence":
        names = (_child_text(pattern, "DaysOfWeek") or "").split()
        if not names or any(n not in WEEKDAYS for n in names):
            raise _invalid(f"t:DaysOfWeek {' '.join(names)!r} must name days of the week")
        weekdays = tuple(sorted({WEEKDAYS.index(n) for n in names}))
        first_day = _choice(pattern, "FirstDayOfWeek", WEEKDAYS) if pattern.find(t("FirstDayOfWeek")) is not None \
            else 6
    if kind in ("RelativeMonthlyRecurrence", "RelativeYearlyRecurrence"):
        day_spec = _day_spec(pattern)
        week_index = _choice(pattern, "DayOfWeekIndex", WEEK_INDEXES) + 1
    if kind in ("AbsoluteMonthlyRecurrence", "AbsoluteYearlyRecurrence"):
        day_of_month = _number(pattern, "DayOfMonth", 1, 31)
    if kind in ("AbsoluteYearlyRecurrence", "RelativeYearlyRecurrence"):
        month = _choice(pattern, "Month", MONTHS) + 1
    bound = etree.QName(boundary).localname
    start = _date(_child_text(boundary, "StartDate"), "StartDate")
    end = _date(_child_text(boundary, "EndDate"), "EndDate") if bound == "EndDateRecurrence" else None
    count = _number(boundary, "NumberOfOccurrences", 1, 999) if bound == "NumberedRecurrence" else None
    if end is not None and end < start:
        raise ResponseError("ErrorCalendarInvalidRecurrence", "the recurrence ends before it starts")
    return Series(kind, interval, weekdays, day_spec, week_index, day_of_month, month, first_day, start, end, count)


def _nth(year: int, month: int, days: tuple[int, ...], index: int) -> date:
    """The ``index``-th day (5: the last) of ``month`` that falls on one of ``days``."""
    last = monthrange(year, month)[1]
    matching = [d for d in range(1, last + 1) if date(year, month, d).weekday() in days]
    return date(year, month, matching[-1] if index == 5 else matching[index - 1])


def _months(start: date, step: int) -> Iterator[tuple[int, int]]:
    year, month = start.year, start.month
    while year <= LAST_YEAR:
        yield year, month
        month += step
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1


def _pattern_days(s: Series) -> Iterator[date]:
    """The days of the pattern from the month (week) of its start on, in order (some before it)."""
    if s.kind in REGENERATIONS:  # planned from its start; later ones follow completions (regenerate)
        day = s.start
        while day.year <= LAST_YEAR:
            yield day
            day = _after(day, s)
    elif s.kind == "DailyRecurrence":
        day, step = s.start, timedelta(days=s.interval)
        while day.year <= LAST_YEAR:
            yield day
            day += step
    elif s.kind == "WeeklyRecurrence":
        week = s.start - timedelta(days=(s.start.weekday() - s.first_day) % 7)
        offsets = sorted((d - s.first_day) % 7 for d in s.weekdays)
        while week.year <= LAST_YEAR:
            for offset in offsets:
                yield week + timedelta(days=offset)
            week += timedelta(weeks=s.interval)
    elif s.kind == "AbsoluteMonthlyRecurrence":
        for year, month in _months(s.start, s.interval):
            yield date(year, month, min(s.day_of_month, monthrange(year, month)[1]))
    elif s.kind == "RelativeMonthlyRecurrence":
        for year, month in _months(s.start, s.interval):
            yield _nth(year, month, s.day_spec, s.week_index)
    else:
        for year in range(s.start.year, LAST_YEAR + 1):
            if s.kind == "AbsoluteYearlyRecurrence":
                yield date(year, s.month, min(s.day_of_month, monthrange(year, s.month)[1]))
            else:
                yield _nth(year, s.month, s.day_spec, s.week_index)


def _after(day: date, s: Series) -> date:
    """The day a regenerating task is next due when an occurrence is completed on ``day``."""
    unit = REGENERATIONS[s.kind]
    if unit in ("days", "weeks"):
        return day + timedelta(days=s.interval * (7 if unit == "weeks" else 1))
    months = s.interval * (12 if unit == "years" else 1)
    year, month = day.year + (day.month - 1 + months) // 12, (day.month - 1 + months) % 12 + 1
    return date(year, month, min(day.day, monthrange(year, month)[1]))


def series_days(s: Series, until: date | None = None) -> Iterator[date]:
    """The days the series has an occurrence on (deleted ones too), in order, up to ``until``."""
    made = 0
    for day in _pattern_days(s):
        if day < s.start:
            continue
        if (s.end is not None and day > s.end) or (s.count is not None and made >= s.count) or \
                (until is not None and day > until):
            return
        made += 1
        yield day


# -- a recurring master and its occurrences ------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Occurrence:
    day: date  # the local day it was planned on: what names it
    original_start: datetime
    start: datetime
    end: datetime
    modified: bool


class Master:
    """A recurring master's series, with its exceptions and deleted occurrences."""

    def __init__(self, kept: dict[str, str]) -> None:
        self.series = parse_series(kept["Recurrence"])
        self.zone = zone_of(kept)
        start = kept_time(kept, "Start") or datetime.combine(self.series.start, time(), tzinfo=UTC)
        end = kept_time(kept, "End") or start
        self.local_start = start.astimezone(self.zone)
        self.duration = max(end - start, timedelta(0))
        self.modified: dict[date, dict[str, str]] = {}
        self.deleted: set[date] = set()
        text = kept.get(KEY)
        if text:
            for record in revive(text):
                day = date.fromisoformat(record.get("Day"))
                if etree.QName(record).localname == "Deleted":
                    self.deleted.add(day)
                else:
                    self.modified[day] = dict(_record_entry(p) for p in record)

    def original_start(self, day: date) -> datetime:
        return datetime.combine(day, self.local_start.time(), tzinfo=self.zone).astimezone(UTC)

    def occurrence(self, day: date) -> Occurrence:
        original = self.original_start(day)
        record = self.modified.get(day)
        start, end = original, original + self.duration
        if record is not None:
            start = kept_time(record, "Start") or start
            end = kept_time(record, "End") or end
        return Occurrence(day, original, start, end, record is not None)

    def days(self, until: date | None = None) -> Iterator[date]:
        """The days of the occurrences that were not deleted."""
        return (d for d in series_days(self.series, until) if d not in self.deleted)

    def nth_day(self, index: int) -> date:
        for n, day in enumerate(series_days(self.series), start=1):
            if n == index:
                if day in self.deleted:
                    raise ResponseError("ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                                        f"occurrence {index} of the series was deleted")
                return day
            if n > index:
                break
        raise ResponseError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
                            f"the series has no occurrence {index}")

    def has_day(self, day: date) -> bool:
        return any(d == day for d in series_days(self.series, day)) and day not in self.deleted

    def records(self) -> str:
        """The exceptions and deleted occurrences, as kept under :data:`KEY` ('' when there are none)."""
        if not self.modified and not self.deleted:
            return ""
        holder = prop("Occurrences")
        for day in sorted(set(self.modified) | self.deleted):
            if day in self.deleted:
                etree.SubElement(holder, t("Deleted"), Day=day.isoformat())
            else:
                record = etree.SubElement(holder, t("Modified"), Day=day.isoformat())
                for key, text in self.modified[day].items():  # a property removed from it: t:Removed
                    record.append(revive(text) if text else etree.Element(t("Removed"), Name=key))
        return keep(holder)


def _record_entry(node: etree._Element) -> tuple[str, str]:
    """(key, kept text) of one property of an exception; ``t:Removed Name=...``: one it had removed."""
    name = etree.QName(node).localname
    return (node.get("Name"), "") if name == "Removed" else (name, keep(node))


@lru_cache(maxsize=256)
def _master(recurrence: str, start: str | None, end: str | None, zone: str | None, records: str | None) -> Master:
    kept = {"Recurrence": recurrence}
    for key, text in (("Start", start), ("End", end), ("StartTimeZone", zone), (KEY, records)):
        if text:
            kept[key] = text
    return Master(kept)


def master_of(item: Item) -> Master | None:
    """The series of a recurring master (None for any other item, or a recurrence it cannot read)."""
    kept = item.data.kept
    if item.data.item_type != "CalendarItem" or not kept.get("Recurrence") or is_occurrence(item):
        return None
    try:
        return _master(kept["Recurrence"], kept.get("Start"), kept.get("End"),
                       kept.get("StartTimeZone") or kept.get("MeetingTimeZone"), kept.get(KEY))
    except ResponseError:
        return None


def occurrence_id(master_id: str, day: date) -> str:
    return base64.b64encode(f"{_OCCURRENCE_TAG}{master_id}:{day:%Y%m%d}".encode()).decode("ascii")


def parse_occurrence_id(text: str | None) -> tuple[str, date] | None:
    """(master id, day) of an occurrence id; None for any other id."""
    if not text or not text.startswith("T0NDO"):  # base64 of the tag
        return None
    try:
        plain = base64.b64decode(text.encode("ascii"), validate=True).decode("ascii")
        if not plain.startswith(_OCCURRENCE_TAG):
            return None
        master_id, day = plain[len(_OCCURRENCE_TAG):].rsplit(":", 1)
        return master_id, datetime.strptime(day, "%Y%m%d").date()
    except (binascii.Error, UnicodeError, ValueError):
        return None


def is_occurrence(item: Item) -> bool:
    return parse_occurrence_id(item.item_id) is not None


def occurrence_item(master: Item, series: Master, day: date) -> Item:
    """One occurrence of a series as an item of its own: the master's properties but the series
    ones, its own times and id, and what was changed on it (an exception)."""
    occ = series.occurrence(day)
    record = series.modified.get(day, {})
    kept = {k: v for k, v in master.data.kept.items() if k not in SERIES_ONLY}
    kept["Start"] = _time_prop("Start", occ.original_start)
    kept["End"] = _time_prop("End", occ.original_start + series.duration)
    kept.update({k: v for k, v in record.items() if k not in ("Subject",)})
    kept["OriginalStart"] = _time_prop("OriginalStart", occ.original_start)
    kept["RecurrenceId"] = _time_prop("RecurrenceId", occ.original_start)
    kept["CalendarItemType"] = keep(prop("CalendarItemType", "Exception" if occ.modified else "Occurrence"))
    kept["IsRecurring"] = keep(prop("IsRecurring", "true"))
    kept["UID"] = master.data.kept.get("UID") or keep(prop("UID", uid_of(master)))
    subject = kept_text(record, "Subject") or "" if "Subject" in record else master.data.subject
    body = (revive(record["Body"]).text or "" if record["Body"] else "") if "Body" in record else master.data.body
    data = dataclasses.replace(master.data, kept=kept, subject=subject, body=body)
    return Item(occurrence_id(master.item_id, day), master.folder_id, master.received, data, master.seq,
                list(master.categories), master.is_read, master.version)


# -- ids -----------------------------------------------------------------------------------
def needs_resolving(ref: etree._Element) -> bool:
    """Whether an item id element names an occurrence or a master through one (see :func:`resolve`)."""
    return ref.tag in (t("OccurrenceItemId"), t("RecurringMasterItemId")) or \
        parse_occurrence_id(ref.get("Id")) is not None


def resolve(ref: etree._Element, stored: Callable[[str, str | None], Item]) -> Item:
    """The item a ``t:OccurrenceItemId``, ``t:RecurringMasterItemId`` or an occurrence's
    ``t:ItemId`` names; ``stored(id, change key)`` finds a stored item."""
    if ref.tag == t("OccurrenceItemId"):
        master = stored(ref.get("RecurringMasterId") or "", ref.get("ChangeKey"))
        try:
            index = int(ref.get("InstanceIndex") or "")
        except ValueError:
            raise ResponseError("ErrorInvalidIdMalformed", "t:OccurrenceItemId needs a numeric InstanceIndex") from None
        series = master_of(master)
        if series is None or index < 1:
            raise ResponseError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
                                f"item {master.item_id!r} has no occurrence {index}")
        return occurrence_item(master, series, series.nth_day(index))
    if ref.tag == t("RecurringMasterItemId"):
        given = ref.get("OccurrenceId") or ""
        named = parse_occurrence_id(given)
        if named is None:  # the master itself, or an item that has no master
            item = stored(given, ref.get("ChangeKey"))
            if master_of(item) is None:
                raise ResponseError("ErrorItemNotFound", f"item {given!r} is not part of a recurring series")
            return item
        _check_key(ref.get("ChangeKey"), given)
        return stored(named[0], None)
    given = ref.get("Id") or ""
    master_id, day = parse_occurrence_id(given)
    _check_key(ref.get("ChangeKey"), given)
    master = stored(master_id, None)
    series = master_of(master)
    if series is None or not series.has_day(day):
        raise ResponseError("ErrorItemNotFound", f"the occurrence {given!r} does not exist")
    return occurrence_item(master, series, day)


def _check_key(key: str | None, item_id: str) -> None:
    if key is not None and not change_key_of(key, item_id):
        raise ResponseError("ErrorInvalidChangeKey", f"{key!r} is not a change key of item {item_id!r}")


# -- changes to occurrences ----------------------------------------------------------------
def _stored_master(ctx, occurrence: Item) -> tuple[Item, Master, date]:
    master_id, day = parse_occurrence_id(occurrence.item_id)
    master = ctx.need_mailbox().item(master_id)
    return master, master_of(master), day


def update_occurrence(ctx, occurrence: Item, kept: dict[str, str], subject: str | None,
                      body: str | None) -> Item:
    """Change one occurrence: it becomes (or stays) an exception of its series. What is changed is
    kept on the master, so the update is one store event."""
    master, series, day = _stored_master(ctx, occurrence)
    record = dict(series.modified.get(day, {}))
    record.update(kept)
    if subject is not None:
        record["Subject"] = keep(prop("Subject", subject))
    if body is not None and "Body" not in kept:
        record["Body"] = keep(prop("Body", body))
    for key in SERIES_ONLY | {"OriginalStart", "RecurrenceId", "UID"}:
        record.pop(key, None)
    series = _copy(series)
    series.modified[day] = record
    updated = store_call(ctx.store.update, ctx.need_mailbox().address, master.item_id, kept={KEY: series.records()})
    return occurrence_item(updated, master_of(updated), day)


def delete_occurrence(ctx, occurrence: Item) -> None:
    """Delete one occurrence: the series keeps it as a deleted occurrence."""
    master, series, day = _stored_master(ctx, occurrence)
    series = _copy(series)
    series.modified.pop(day, None)
    series.deleted.add(day)
    store_call(ctx.store.update, ctx.need_mailbox().address, master.item_id, kept={KEY: series.records()})


def _copy(series: Master) -> Master:
    twin = copy.copy(series)
    twin.modified = {d: dict(r) for d, r in series.modified.items()}
    twin.deleted = set(series.deleted)
    return twin


# -- normalisation when an item is saved -----------------------------------------------------
def _midnight(when: datetime, zone: tzinfo, up: bool) -> datetime:
    try:
        local = when.astimezone(zone)
        floor = datetime.combine(local.date(), time(), tzinfo=zone)
        if up and local != floor:
            floor = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=zone)
        return floor.astimezone(UTC)
    except OverflowError:
        raise ResponseError("ErrorCalendarOutOfRange", f"{format_datetime(when)} is out of the calendar's range") \
            from None


def _dated(text: str, zone: tzinfo) -> str:
    """A recurrence's StartDate/EndDate as Exchange answers it: the day with the zone's offset."""
    day = date.fromisoformat(text.strip()[:10])
    offset = datetime.combine(day, time(), tzinfo=zone).utcoffset() or timedelta(0)
    if not offset:
        return f"{day.isoformat()}Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{day.isoformat()}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def normalized(item_type: str, changed: dict[str, str], current: dict[str, str] | None = None) -> dict[str, str]:
    """The kept properties Exchange rewrites when a calendar item is created (``changed`` is all of
    them) or updated (``changed`` on top of ``current``): the changed entries to store besides."""
    if item_type == "Task":
        return _task_normalized(changed, current or {})
    if item_type != "CalendarItem":
        return {}
    current = current or {}
    merged = {**current, **changed}
    out: dict[str, str] = {}
    start, end = kept_time(merged, "Start"), kept_time(merged, "End")
    if start is not None and end is not None and end < start:
        raise ResponseError("ErrorCalendarEndDateIsEarlierThanStartDate", "the item ends before it starts")
    if _is_true(merged, "IsAllDayEvent") and start is not None and end is not None:
        start = _midnight(start, zone_of(merged), up=False)
        end = max(_midnight(end, zone_of(merged, "EndTimeZone"), up=True), start + timedelta(days=1))
        out["Start"], out["End"] = _time_prop("Start", start), _time_prop("End", end)
    recurrence = merged.get("Recurrence")
    if recurrence:
        series = parse_series(recurrence)
        zone = zone_of(merged)
        out["Recurrence"] = _redated(recurrence, zone)
        first = next(series_days(series), None)
        if first is None:
            raise ResponseError("ErrorRecurrenceHasNoOccurrence", "the recurrence has no occurrence")
        if start is not None and end is not None:
            local = start.astimezone(zone)
            new_start = datetime.combine(first, local.time(), tzinfo=zone).astimezone(UTC)
            out["Start"], out["End"] = _time_prop("Start", new_start), _time_prop("End", new_start + (end - start))
    pattern_changed = "Recurrence" in changed and _pattern_text(changed.get("Recurrence")) != \
        _pattern_text(current.get("Recurrence"))
    if current.get(KEY) and (pattern_changed or not recurrence):
        out[KEY] = ""  # a new pattern (or none): the exceptions of the old one are gone
    return out


def _redated(recurrence: str, zone: tzinfo, count_change: int = 0) -> str:
    """A recurrence with its boundary dates written as Exchange answers them (and its number of
    occurrences changed by ``count_change``)."""
    node = revive(recurrence)
    for boundary in node:
        if not isinstance(boundary.tag, str):
            continue
        for name in ("StartDate", "EndDate"):
            found = boundary.find(t(name))
            if found is not None and found.text:
                found.text = _dated(found.text, zone)
        number = boundary.find(t("NumberOfOccurrences"))
        if number is not None and count_change:
            number.text = str(int(number.text) + count_change)
    return keep(node)


# -- recurring tasks -----------------------------------------------------------------------
def _task_normalized(changed: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """A recurring task: its recurrence dates in UTC, and (when it has none yet) a start and due date
    on its first occurrence."""
    merged = {**current, **changed}
    recurrence = merged.get("Recurrence")
    if not recurrence or "Recurrence" not in changed:
        return {}
    series = parse_series(recurrence)
    out = {"Recurrence": _redated(recurrence, UTC)}
    first = datetime.combine(series.start, time(), tzinfo=UTC)
    for key in ("StartDate", "DueDate"):
        if not merged.get(key):
            out[key] = _time_prop(key, first)
    return out


def _change_count(kept: dict[str, str]) -> int:
    value = kept_text(kept, "ChangeCount") or ""
    return int(value) if value.isdigit() else 1


def _day_of(kept: dict[str, str], key: str) -> date | None:
    """The day a task's date property names (the local day as written, whatever its offset)."""
    value = kept_text(kept, key)
    try:
        return date.fromisoformat(value[:10]) if value else None
    except ValueError:
        return None


def regenerate(ctx, task: Item, kept: dict[str, str], subject: str | None, body: str | None,
               categories: list[str] | None) -> Item | None:
    """What Exchange does when a recurring task is updated so that its current occurrence is done:
    marked Completed, or (a task that does not regenerate) given other recurrence dates. That
    occurrence goes on as a one-off task of its own (the answer names it), and the recurring task
    moves on to its next occurrence, one fewer left, not started, its ChangeCount one more. None
    when the update is an ordinary one (or the series has no next occurrence)."""
    old = task.data.kept
    if task.data.item_type != "Task" or not old.get("Recurrence"):
        return None
    new = {**old, **kept}
    if not new.get("Recurrence"):
        return None
    try:
        before, after = parse_series(old["Recurrence"]), parse_series(new["Recurrence"])
    except ResponseError:
        return None
    regenerating = before.kind in REGENERATIONS
    completed = kept_text(new, "Status") == "Completed" and kept_text(old, "Status") != "Completed"
    redated = not regenerating and (before.start, before.end) != (after.start, after.end)
    if not (completed or redated):
        return None
    current = _day_of(new, "DueDate") or _day_of(old, "DueDate") or before.start
    if regenerating:
        following: date | None = _after(ctx.now.astimezone(UTC).date(), after)
    else:
        # the next one as planned before this update (new dates count from the one after it)
        following = next((d for d in series_days(before) if d > current), None)
    if following is None or (after.count is not None and after.count <= 1):
        return None  # the last occurrence: the task itself is what is done
    address = ctx.need_mailbox().address
    one_off = {k: v for k, v in new.items() if k not in ("Recurrence", "ChangeCount", KEY)}
    if not completed:  # it keeps the day it was planned on
        for key in ("StartDate", "DueDate"):
            one_off[key] = _time_prop(key, datetime.combine(current, time(), tzinfo=UTC))
    data = dataclasses.replace(task.data, kept=one_off, subject=task.data.subject if subject is None else subject,
                               body=task.data.body if body is None else body)
    done = store_call(ctx.store.save, address, task.folder_id, data,
                      categories=list(task.categories) if categories is None else categories, is_read=task.is_read)
    due = datetime.combine(following, time(), tzinfo=UTC)
    moved_on = {k: v for k, v in kept.items() if k not in ("Status", "PercentComplete", "CompleteDate")}
    moved_on.update({
        "Recurrence": _redated(new["Recurrence"], UTC, -1 if after.count is not None else 0),
        "StartDate": _time_prop("StartDate", due), "DueDate": _time_prop("DueDate", due),
        "Status": keep(prop("Status", "NotStarted")), "PercentComplete": keep(prop("PercentComplete", "0")),
        "CompleteDate": "",
        "ChangeCount": keep(prop("ChangeCount", str(_change_count(old) + 1))),
    })
    store_call(ctx.store.update, address, task.item_id, subject=subject, body=body, categories=categories,
               kept=moved_on)
    return done


def _pattern_text(text: str | None) -> str | None:
    if not text:
        return None
    node = revive(text)
    for boundary in node:
        for name in ("StartDate", "EndDate"):
            found = boundary.find(t(name)) if isinstance(boundary.tag, str) else None
            if found is not None and found.text:
                found.text = found.text.strip()[:10]
    return keep(node)


# -- what the master answers ---------------------------------------------------------------
def _occurrence_element(tag: str, master: Item, occ: Occurrence) -> etree._Element:
    occ_id = occurrence_id(master.item_id, occ.day)
    return el(tag, None, None,
              el("t:ItemId", {"Id": occ_id, "ChangeKey": change_key(occ_id, master.version)}),
              el("t:Start", None, format_datetime(occ.start)), el("t:End", None, format_datetime(occ.end)),
              el("t:OriginalStart", None, format_datetime(occ.original_start)))


def _first(v) -> etree._Element | None:
    series = master_of(v.item)
    day = next(series.days(), None) if series is not None else None
    return _occurrence_element("t:FirstOccurrence", v.item, series.occurrence(day)) if day else None


def _last(v) -> etree._Element | None:
    series = master_of(v.item)
    if series is None or (series.series.end is None and series.series.count is None):
        return None  # a series without an end has no last occurrence
    last = max(series.days(), default=None)
    return _occurrence_element("t:LastOccurrence", v.item, series.occurrence(last)) if last else None


def _modified(v) -> etree._Element | None:
    series = master_of(v.item)
    if series is None or not series.modified:
        return None
    return el("t:ModifiedOccurrences", None, None,
              *(_occurrence_element("t:Occurrence", v.item, series.occurrence(d)) for d in sorted(series.modified)))


def _deleted(v) -> etree._Element | None:
    series = master_of(v.item)
    if series is None or not series.deleted:
        return None
    return el("t:DeletedOccurrences", None, None,
              *(el("t:DeletedOccurrence", None, None, el("t:Start", None, format_datetime(series.original_start(d))))
                for d in sorted(series.deleted)))


def uid_of(item: Item) -> str:
    """The UID Exchange gives a calendar item the client gave none: a Global Object Id style hex text,
    made from the item's id so that it is the same on every read (and for every occurrence)."""
    digest = hashlib.sha256(item.item_id.encode()).hexdigest()[:32].upper()
    return f"040000008200E00074C5B7101A82E00800000000{digest}"


def _flag(tag: str, get):
    return lambda v: el(tag, None, xml_bool(get(v)))


def _attendees(v) -> bool:
    kept = v.item.data.kept
    return bool(kept.get("RequiredAttendees") or kept.get("OptionalAttendees") or kept.get("Resources"))


# What Exchange computes for a calendar item the client did not set (an item the mailbox organizes);
# an occurrence carries its own CalendarItemType and IsRecurring.
RENDERERS = {
    "calendar:CalendarItemType": lambda v: el("t:CalendarItemType", None, "RecurringMaster"
                                              if v.item.data.kept.get("Recurrence") else "Single"),
    "calendar:IsRecurring": _flag("t:IsRecurring", lambda v: False),
    "calendar:IsMeeting": _flag("t:IsMeeting", _attendees),
    "calendar:IsCancelled": _flag("t:IsCancelled", lambda v: False),
    "calendar:MyResponseType": lambda v: el("t:MyResponseType", None, "Organizer"),
    "calendar:Organizer": lambda v: el("t:Organizer", None, None, mailbox_element("t:Mailbox", v.owner, local=True)),
    "calendar:UID": lambda v: el("t:UID", None, uid_of(v.item)),
    "task:IsRecurring": _flag("t:IsRecurring", lambda v: bool(v.item.data.kept.get("Recurrence"))),
    "task:ChangeCount": lambda v: el("t:ChangeCount", None, "1"),  # until the task regenerates (kept then)
    "calendar:FirstOccurrence": _first,
    "calendar:LastOccurrence": _last,
    "calendar:ModifiedOccurrences": _modified,
    "calendar:DeletedOccurrences": _deleted,
}


# -- CalendarView --------------------------------------------------------------------------
def _two_years_after(when: datetime) -> datetime:
    day = min(when.day, monthrange(when.year + 2, when.month)[1])
    return when.replace(year=when.year + 2, day=day)


def in_view(items: list[Item], view: etree._Element) -> tuple[list[Item], bool]:
    """The single items and occurrences of ``items`` a ``m:CalendarView`` shows, by start, and
    whether that is all of them (MaxEntriesReturned); a window longer than two years is refused,
    as Exchange does. An item shows when it starts before the
    window ends and ends at or after the window starts (Exchange shows an item that ends exactly
    where the window starts)."""
    try:
        low, high = parse_datetime(view.get("StartDate") or ""), parse_datetime(view.get("EndDate") or "")
    except ResponseError:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: m:CalendarView needs "
                       "StartDate and EndDate (xs:dateTime)") from None
    if high < low:
        raise ResponseError("ErrorCalendarEndDateIsEarlierThanStartDate", "the view ends before it starts")
    if low.year > LAST_YEAR or high > _two_years_after(low):
        raise ResponseError("ErrorCalendarViewRangeTooBig", "The specified view range exceeds the maximum range of "
                            "two years.")
    limit = view.get("MaxEntriesReturned")
    if limit is not None and (not limit.strip().isdigit() or int(limit) < 1):
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: MaxEntriesReturned {limit!r}")
    shown: list[tuple[datetime, int, Item]] = []
    for item in items:
        if item.data.item_type != "CalendarItem":
            continue
        kept = item.data.kept
        if kept.get("Recurrence"):
            series = master_of(item)
            if series is None:
                continue
            until = high.astimezone(series.zone).date() + timedelta(days=1)
            for n, day in enumerate(series.days(until)):
                occ = series.occurrence(day)
                if occ.start < high and occ.end >= low:
                    shown.append((occ.start, n, occurrence_item(item, series, day)))
            continue
        start, end = kept_time(kept, "Start"), kept_time(kept, "End")
        if start is not None and end is not None and start < high and end >= low:
            shown.append((start, 0, item))
    shown.sort(key=lambda entry: (entry[0], entry[2].seq, entry[1]))
    found = [item for _, _, item in shown]
    if limit is not None and len(found) > int(limit):
        return found[:int(limit)], False
    return found, True


# -- meeting responses (CreateItem) ------------------------------------------------------------
MEETING_RESPONSES = {t("CancelCalendarItem"): "Cancel", t("AcceptItem"): "Accept",
                     t("TentativelyAcceptItem"): "Tentative", t("DeclineItem"): "Decline"}


def _addresses(kept: dict[str, str]) -> list[str]:
    found: list[str] = []
    for key in ("RequiredAttendees", "OptionalAttendees", "Resources"):
        text = kept.get(key)
        if text:
            for address in revive(text).iter(t("EmailAddress")):
                value = (address.text or "").strip().lower()
                if value and value not in found:
                    found.append(value)
    return found


def respond(ctx, obj: etree._Element, save_copy: bool) -> list[etree._Element]:
    """CreateItem of a meeting response: cancel a meeting the mailbox organizes, or accept,
    tentatively accept or decline a meeting request."""
    kind = MEETING_RESPONSES[obj.tag]
    ref = obj.find(t("ReferenceItemId"))
    if ref is None:
        raise ResponseError("ErrorMissingInformationReferenceItemId",
                            f"t:{etree.QName(obj).localname} needs a t:ReferenceItemId")
    item = ctx.item(ref)
    if item.data.item_type != "CalendarItem":
        raise ResponseError("ErrorInvalidReferenceItem",
                            f"item {item.item_id!r} is not a calendar item or meeting request")
    if kind != "Cancel":  # the mailbox's own appointments: it is their organizer
        raise ResponseError(f"ErrorCalendarIsOrganizerFor{'Accept' if kind == 'Accept' else kind}",
                            f"the mailbox organizes {item.data.subject!r}: there is no meeting request to answer")
    me = ctx.need_mailbox()
    attendees = [a for a in _addresses(item.data.kept) if a != me.address]  # the organizer gets no notice
    if not attendees:
        raise ResponseError("ErrorInvalidRecipients", f"{item.data.subject!r} has no attendee to send a cancellation to")
    body = obj.findtext(t("NewBodyContent")) or obj.findtext(t("Body")) or ""
    notice = MessageData(subject=f"Canceled: {item.data.subject}", sender=me.address, to=tuple(attendees), body=body,
                         item_class="IPM.Schedule.Meeting.Canceled")
    notice.size = len(body.encode("utf-8", "replace")) + 200
    _, copy_id = store_call(ctx.store.send, me.address, notice, save_copy=save_copy)
    if is_occurrence(item):  # one occurrence of a series cancelled: the series keeps it as deleted
        delete_occurrence(ctx, item)
    else:
        store_call(ctx.store.move, me.address, item.item_id, me.distinguished["deleteditems"])
    if copy_id is None:
        return [el("m:Items")]
    return [el("m:Items", None, None, el("t:MeetingCancellation", None, None,
                                        el("t:ItemId", {"Id": copy_id, "ChangeKey": change_key(copy_id)})))]
