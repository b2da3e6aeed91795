"""GetUserAvailability: free/busy of mailboxes, worked out from the calendar items in the store.

For each mailbox asked about (``t:MailboxData``, at most 100 per request) the answer is one
``m:FreeBusyResponse``: a response message, then a ``m:FreeBusyView`` built from the items of the
mailbox's Calendar folder that overlap the request's time window (an item that starts before the
window or ends after it is given whole, as Exchange does):

* ``MergedFreeBusy`` (views ``MergedOnly``, ``FreeBusyMerged``, ``DetailedMerged``): one digit per
  ``MergedFreeBusyIntervalInMinutes`` slice of the window, the strongest status of the items
  overlapping it (0 free, 1 tentative, 2 busy, 3 out of office, 4 working elsewhere);
* ``CalendarEventArray`` (every view but ``MergedOnly``): start, end and busy type of each item,
  and for the ``Detailed`` views its details (id as a HexEntryId, subject, location, meeting,
  recurring, reminder and private flags). Items marked free or cancelled are left out;
* ``WorkingHours``: the mailbox's working hours. The sandbox's mailboxes have no calendar settings,
  so every one has Exchange Online's defaults: Monday to Friday 08:00-17:00, Pacific Standard Time
  (its rules described as GetServerTimeZones describes them).

Recurring items are not expanded (the simulator serves no recurrence expansion): a recurring item
counts once, at its own start and end.

Times in the answer are local times of the time zone the request gives (``t:TimeZone``: a bias and
the standard/daylight rules), written without an offset as Exchange writes them; times of the
request's window without an offset are read in that zone too.

Refusals: an address with no mailbox -> ``ErrorMailRecipientNotFound`` in its own response (the
others are answered); a window that does not end after it starts -> ``ErrorInvalidTimeInterval``,
one longer than 42 days -> ``ErrorTimeIntervalTooBig``, more than 100 mailboxes ->
``ErrorTooManyObjectsOpened``, all three as SOAP faults for the whole request; a merge interval
outside 5..1440 minutes, an unknown view or a malformed time zone -> ``ErrorSchemaValidation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from lxml import etree

from simulator.exchange.ews.context import response_message
from simulator.exchange.ews.convert_id import ParsedId, render
from simulator.exchange.ews.fields import revive
from simulator.exchange.ews.mailbox_info import _zone_rules
from simulator.exchange.ews.xml import (
    EwsFault,
    ResponseError,
    el,
    parse_bool,
    parse_datetime,
    sub,
    t,
    xml_bool,
)
from simulator.exchange.store import ExchangeMailbox, Item

MAX_MAILBOXES = 100
MAX_WINDOW = timedelta(days=42)
VIEWS = ("MergedOnly", "FreeBusy", "FreeBusyMerged", "Detailed", "DetailedMerged")
STATUSES = ("Free", "Tentative", "Busy", "OOF", "WorkingElsewhere")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WORK_DAYS = _DAYS[:5]
WORK_START, WORK_END = 8 * 60, 17 * 60  # minutes after midnight
WORK_ZONE = "Pacific Standard Time"  # Exchange Online's working-hours zone until the owner picks one


def _schema(message: str) -> EwsFault:
    return EwsFault("ErrorSchemaValidation", f"The request failed schema validation: {message}")


# -- the request's time zone -----------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Rule:
    """A yearly switch to standard or daylight time: on the ``order``-th ``weekday`` of ``month``
    (5: the last one) at ``at`` local time; ``bias`` is added to the zone's bias after it."""

    bias: int
    at: timedelta
    order: int
    month: int
    weekday: int  # 0 = Monday

    def day(self, year: int) -> date:
        first = date(year, self.month, 1)
        day = first + timedelta(days=(self.weekday - first.weekday()) % 7 + 7 * (self.order - 1))
        while day.month != self.month:  # "the fifth" of a month with four: the last one
            day -= timedelta(days=7)
        return day


@dataclass(slots=True, frozen=True)
class Zone:
    bias: int  # minutes: UTC = local time + bias
    standard: Rule | None = None
    daylight: Rule | None = None

    def _daylight_between(self, year: int) -> tuple[datetime, datetime] | None:
        """When daylight time starts and ends in ``year`` (UTC, naive); None without daylight time."""
        std, dst = self.standard, self.daylight
        if std is None or dst is None or std.month == 0 or dst.month == 0 or dst.bias == std.bias:
            return None
        begins = datetime.combine(dst.day(year), datetime.min.time()) + dst.at \
            + timedelta(minutes=self.bias + std.bias)
        ends = datetime.combine(std.day(year), datetime.min.time()) + std.at + timedelta(minutes=self.bias + dst.bias)
        return (begins, ends) if begins != ends else None

    def offset(self, utc: datetime) -> timedelta:
        """Local time minus UTC at the instant ``utc`` (naive UTC)."""
        extra = self.standard.bias if self.standard is not None else 0
        span = self._daylight_between(utc.year)
        if span is not None:
            begins, ends = span
            in_daylight = begins <= utc < ends if begins < ends else (utc >= begins or utc < ends)
            if in_daylight:
                extra = self.daylight.bias
        return -timedelta(minutes=self.bias + extra)

    def to_local(self, value: datetime) -> datetime:
        utc = value.astimezone(UTC).replace(tzinfo=None)
        return utc + self.offset(utc)

    def to_utc(self, local: datetime) -> datetime:
        guess = local - self.offset(local)  # the offset an hour away from a switch is the right one
        return (local - self.offset(guess)).replace(tzinfo=UTC)


def _int(parent: etree._Element, tag: str) -> int:
    text = parent.findtext(t(tag))
    try:
        return int((text or "").strip())
    except ValueError:
        raise _schema(f"t:{tag} of the time zone must be an integer, not {text!r}") from None


def _rule(elem: etree._Element | None) -> Rule | None:
    if elem is None:
        return None
    when = (elem.findtext(t("Time")) or "").strip()
    try:
        hours, minutes, seconds = (int(part) for part in when.split(":"))
    except ValueError:
        raise _schema(f"t:Time of the time zone must be hh:mm:ss, not {when!r}") from None
    weekday = (elem.findtext(t("DayOfWeek")) or "").strip()
    if weekday not in _DAYS:
        raise _schema(f"{weekday!r} is not a day of the week")
    month, order = _int(elem, "Month"), _int(elem, "DayOrder")
    if not 0 <= month <= 12 or (month and not 1 <= order <= 5):
        raise _schema(f"month {month} / day order {order} is not a time zone rule")
    return Rule(_int(elem, "Bias"), timedelta(hours=hours, minutes=minutes, seconds=seconds), order, month,
                _DAYS.index(weekday))


def parse_zone(elem: etree._Element | None) -> Zone:
    if elem is None:
        raise _schema("GetUserAvailabilityRequest needs a t:TimeZone")
    return Zone(_int(elem, "Bias"), _rule(elem.find(t("StandardTime"))), _rule(elem.find(t("DaylightTime"))))


def _instant(text: str | None, zone: Zone, what: str) -> datetime:
    text = (text or "").strip()
    try:
        value = parse_datetime(text)
    except ResponseError:
        raise _schema(f"{what} {text!r} is not an xs:dateTime") from None
    if value.tzinfo is None:
        return zone.to_utc(value)
    return value.astimezone(UTC)


def _local_text(zone: Zone, value: datetime) -> str:
    return zone.to_local(value).replace(microsecond=0).isoformat()


# -- the calendar ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Event:
    item: Item
    start: datetime
    end: datetime
    status: str


def _kept_text(item: Item, key: str) -> str | None:
    kept = item.data.kept.get(key)
    if kept is None:
        return None
    return (revive(kept).text or "").strip()


def _events(mbx: ExchangeMailbox, start: datetime, end: datetime) -> list[Event]:
    calendar = mbx.folders[mbx.distinguished["calendar"]]
    out = []
    for item in calendar.items.values():
        if item.data.item_type != "CalendarItem" or parse_bool(_kept_text(item, "IsCancelled")):
            continue
        try:
            begins = parse_datetime(_kept_text(item, "Start") or "")
            ends = parse_datetime(_kept_text(item, "End") or "") if item.data.kept.get("End") else begins
        except ResponseError:
            continue
        begins, ends = (v if v.tzinfo else v.replace(tzinfo=UTC) for v in (begins, ends))
        status = _kept_text(item, "LegacyFreeBusyStatus") or "Busy"
        if status not in STATUSES or status == "Free":
            continue
        if begins < end and (ends > start or begins == ends == start):
            out.append(Event(item, begins, ends, status))
    out.sort(key=lambda e: (e.start, e.end, e.item.item_id))
    return out


def _merged(events: list[Event], start: datetime, end: datetime, interval: int) -> str:
    step = timedelta(minutes=interval)
    slots = math.ceil((end - start) / step)
    digits = []
    for n in range(slots):
        low, high = start + n * step, min(start + (n + 1) * step, end)
        strongest = 0
        for event in events:
            if event.start < high and event.end > low:
                strongest = max(strongest, STATUSES.index(event.status))
        digits.append(str(strongest))
    return "".join(digits)


def _details(mbx: ExchangeMailbox, event: Event) -> etree._Element:
    item = event.item
    details = el("t:CalendarEventDetails")
    sub(details, "t:ID", render(ParsedId(item.item_id.encode("ascii"), native=item.item_id), "HexEntryId",
                               mbx.address))
    sub(details, "t:Subject", item.data.subject or "")
    sub(details, "t:Location", _kept_text(item, "Location") or "")
    sub(details, "t:IsMeeting", xml_bool(bool(item.data.kept.get("RequiredAttendees")
                                             or item.data.kept.get("OptionalAttendees")
                                             or item.data.kept.get("Resources"))))
    sub(details, "t:IsRecurring", xml_bool("Recurrence" in item.data.kept))
    sub(details, "t:IsException", "false")
    sub(details, "t:IsReminderSet", xml_bool(parse_bool(_kept_text(item, "ReminderIsSet"))))
    sub(details, "t:IsPrivate", xml_bool((_kept_text(item, "Sensitivity") or "Normal") in ("Private",
                                                                                         "Confidential")))
    return details


def _zone_rule(tag: str, bias: int, transition: tuple | None) -> etree._Element:
    rule = el(tag)
    sub(rule, "t:Bias", str(bias))
    if transition is None:  # a zone without daylight time: no switch (month 0)
        for name, value in (("t:Time", "00:00:00"), ("t:DayOrder", "0"), ("t:Month", "0"),
                            ("t:DayOfWeek", "Sunday")):
            sub(rule, name, value)
        return rule
    _, local, month, weekday, occurrence = transition
    sub(rule, "t:Time", local.strftime("%H:%M:%S"))
    sub(rule, "t:DayOrder", str(5 if occurrence == -1 else occurrence))
    sub(rule, "t:Month", str(month))
    sub(rule, "t:DayOfWeek", _DAYS[weekday - 1])
    return rule


def _working_hours(year: int) -> etree._Element:
    """The mailbox's working hours, with their time zone described the way GetServerTimeZones
    describes it (the rules of ``year``)."""
    hours = el("t:WorkingHours")
    _, _, std, dst, transitions = next(z for z in _zone_rules(year) if z[0] == WORK_ZONE)
    zone = sub(hours, "t:TimeZone")
    sub(zone, "t:Bias", str(-int(std.total_seconds()) // 60))
    to_std = next((tr for tr in transitions if not tr[0]), None)
    to_dst = next((tr for tr in transitions if tr[0]), None)
    zone.append(_zone_rule("t:StandardTime", 0, to_std))
    zone.append(_zone_rule("t:DaylightTime", -int((dst - std).total_seconds()) // 60, to_dst))
    periods = sub(hours, "t:WorkingPeriodArray")
    period = sub(periods, "t:WorkingPeriod")
    sub(period, "t:DayOfWeek", " ".join(WORK_DAYS))
    sub(period, "t:StartTimeInMinutes", str(WORK_START))
    sub(period, "t:EndTimeInMinutes", str(WORK_END))
    return hours


def _view(mbx: ExchangeMailbox, zone: Zone, start: datetime, end: datetime, interval: int,
          view: str) -> etree._Element:
    events = _events(mbx, start, end)
    out = el("m:FreeBusyView")
    sub(out, "t:FreeBusyViewType", view)
    if view.endswith("Merged") or view == "MergedOnly":
        sub(out, "t:MergedFreeBusy", _merged(events, start, end, interval))
    if view != "MergedOnly" and events:
        array = sub(out, "t:CalendarEventArray")
        for event in events:
            one = sub(array, "t:CalendarEvent")
            sub(one, "t:StartTime", _local_text(zone, event.start))
            sub(one, "t:EndTime", _local_text(zone, event.end))
            sub(one, "t:BusyType", event.status)
            if view.startswith("Detailed"):
                one.append(_details(mbx, event))
    out.append(_working_hours(start.year))
    return out


def _address(data: etree._Element) -> str:
    return (data.findtext(f"{t('Email')}/{t('Address')}") or "").strip().lower()


def get_user_availability(ctx, req: etree._Element) -> etree._Element:
    zone = parse_zone(req.find(t("TimeZone")))
    array = req.find(f"{{{etree.QName(req).namespace}}}MailboxDataArray")
    mailboxes = [d for d in (array if array is not None else ()) if d.tag == t("MailboxData")]
    if not mailboxes:
        raise _schema("GetUserAvailabilityRequest needs m:MailboxDataArray with a t:MailboxData")
    options = req.find(t("FreeBusyViewOptions"))
    if options is None:
        raise EwsFault("ErrorInvalidRequest", "The request is invalid: the simulator answers free/busy requests "
                                              "(t:FreeBusyViewOptions), not meeting suggestions.")
    window = options.find(t("TimeWindow"))
    if window is None:
        raise _schema("t:FreeBusyViewOptions needs a t:TimeWindow")
    start = _instant(window.findtext(t("StartTime")), zone, "StartTime")
    end = _instant(window.findtext(t("EndTime")), zone, "EndTime")
    view = (options.findtext(t("RequestedView")) or "").strip()
    if view not in VIEWS:
        raise _schema(f"{view!r} is not a requested free/busy view ({', '.join(VIEWS)})")
    interval_text = (options.findtext(t("MergedFreeBusyIntervalInMinutes")) or "30").strip()
    try:
        interval = int(interval_text)
    except ValueError:
        raise _schema(f"MergedFreeBusyIntervalInMinutes {interval_text!r} is not an integer") from None
    if not 5 <= interval <= 1440:
        raise _schema(f"MergedFreeBusyIntervalInMinutes {interval} is outside 5..1440")
    if end <= start:
        raise EwsFault("ErrorInvalidTimeInterval", "The time window's end must come after its start.")
    if end - start > MAX_WINDOW:
        raise EwsFault("ErrorTimeIntervalTooBig",
                       f"The time window is longer than the {MAX_WINDOW.days} days free/busy data can be asked for.")
    if len(mailboxes) > MAX_MAILBOXES:
        raise EwsFault("ErrorTooManyObjectsOpened",
                       f"A free/busy request can name at most {MAX_MAILBOXES} mailboxes, not {len(mailboxes)}.")
    root = el("m:GetUserAvailabilityResponse")
    responses = sub(root, "m:FreeBusyResponseArray")
    for data in mailboxes:
        answer = sub(responses, "m:FreeBusyResponse")
        address = _address(data)
        mbx = ctx.store.mailboxes.get(address)
        if mbx is None:
            response_message("m:ResponseMessage", "ErrorMailRecipientNotFound",
                             f"The mail recipient {address!r} was not found in the directory.", parent=answer)
            view_elem = sub(answer, "m:FreeBusyView")
            sub(view_elem, "t:FreeBusyViewType", "None")
            continue
        response_message("m:ResponseMessage", parent=answer)
        answer.append(_view(mbx, zone, start, end, interval, view))
    return root


OPERATIONS = {"GetUserAvailabilityRequest": get_user_availability}
