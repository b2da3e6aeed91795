"""Directory and mailbox information: ResolveNames, ExpandDL, GetServerTimeZones, GetMailTips,
GetDelegate, GetRooms, GetRoomLists, GetSearchableMailboxes.

The sandbox's directory is its set of mailboxes: it has no distribution lists, rooms, room lists
or delegates, and the applications that call EWS hold no eDiscovery role. So ExpandDL and GetRooms
answer ``ErrorNameResolutionNoResults`` as Exchange Online does for a name it cannot find,
GetRoomLists an empty list, GetSearchableMailboxes ``ErrorAccessDenied``, and GetDelegate an empty
list (``ErrorNotDelegate`` / ``ErrorDelegateNoUser`` / ``ErrorInvalidUserSid`` for a named user).

GetServerTimeZones describes the Windows time zones (the CLDR mapping that exchangelib carries) from
the IANA database, with the rules of the sandbox clock's year.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP
from lxml import etree

from simulator.exchange.ews.context import Context, Responses, flat_response
from simulator.exchange.ews.xml import (
    EwsFault,
    ResponseError,
    el,
    format_datetime,
    m,
    parse_bool,
    sub,
    t,
    xml_bool,
)
from simulator.exchange.store import MAX_MESSAGE_BYTES, ExchangeMailbox

NO_RESULTS = "No results were found."
_SID = re.compile(r"^S-1-\d+(-\d+)+$", re.IGNORECASE)


def _mailbox_element(mbx: ExchangeMailbox, tag: str = "t:Mailbox") -> etree._Element:
    box = el(tag)
    sub(box, "t:Name", mbx.display_name)
    sub(box, "t:EmailAddress", mbx.address)
    sub(box, "t:RoutingType", "SMTP")
    sub(box, "t:MailboxType", "Mailbox")
    return box


# -- ResolveNames --------------------------------------------------------------------------
def _matches(ctx: Context, entry: str) -> list[ExchangeMailbox]:
    text = entry.strip()
    if text.lower().startswith("smtp:"):
        text = text[5:]
    text = text.strip().lower()
    if not text:
        return []
    exact = ctx.store.mailboxes.get(text)
    if exact is not None:
        return [exact]
    if "@" in text:
        return []
    found = []
    for mbx in ctx.store.mailboxes.values():
        local = mbx.address.split("@", 1)[0]
        names = [mbx.display_name.lower(), *mbx.display_name.lower().split()]
        if local.startswith(text) or any(n.startswith(text) for n in names):
            found.append(mbx)
    return found


def _contact_element(mbx: ExchangeMailbox) -> etree._Element:
    contact = el("t:Contact")
    sub(contact, "t:DisplayName", mbx.display_name)
    parts = mbx.display_name.split()
    if len(parts) > 1:
        sub(contact, "t:GivenName", parts[0])
        sub(contact, "t:Surname", " ".join(parts[1:]))
    addresses = sub(contact, "t:EmailAddresses")
    sub(addresses, "t:Entry", f"SMTP:{mbx.address}", {"Key": "EmailAddress1"})
    sub(contact, "t:ContactSource", "ActiveDirectory")
    return contact


def resolve_names(ctx: Context, req: etree._Element) -> etree._Element:
    full = parse_bool(req.get("ReturnFullContactData"))
    scope = req.get("SearchScope", "ActiveDirectoryContacts")
    if scope not in ("ActiveDirectory", "ActiveDirectoryContacts", "Contacts", "ContactsActiveDirectory"):
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: SearchScope {scope!r}")
    entries = req.findall(m("UnresolvedEntry"))
    if not entries:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: ResolveNames needs an "
                                                "m:UnresolvedEntry")
    out = Responses("ResolveNames")
    for entry in entries:
        found = _matches(ctx, entry.text or "") if scope != "Contacts" else []
        if not found:
            out.error("ErrorNameResolutionNoResults", NO_RESULTS)
            continue
        found = found[:100]
        if len(found) > 1:
            msg = sub(out.messages, "m:ResolveNamesResponseMessage", attrib={"ResponseClass": "Warning"})
            sub(msg, "m:MessageText", "Multiple results were found.")
            sub(msg, "m:ResponseCode", "ErrorNameResolutionMultipleResults")
            sub(msg, "m:DescriptiveLinkKey", "0")
        else:
            msg = out.success()
        resolution_set = sub(msg, "m:ResolutionSet", attrib={"TotalItemsInView": str(len(found)),
                                                              "IncludesLastItemInRange": "true"})
        for mbx in found:
            resolution = sub(resolution_set, "t:Resolution")
            resolution.append(_mailbox_element(mbx))
            if full:
                resolution.append(_contact_element(mbx))
    return out.root


# -- ExpandDL, GetRooms, GetRoomLists, GetSearchableMailboxes -------------------------------
def expand_dl(ctx: Context, req: etree._Element) -> etree._Element:
    box = req.find(m("Mailbox"))
    if box is None:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: ExpandDL needs m:Mailbox")
    out = Responses("ExpandDL")
    out.error("ErrorNameResolutionNoResults", NO_RESULTS)  # the sandbox's directory has no distribution lists
    return out.root


def get_room_lists(ctx: Context, req: etree._Element) -> etree._Element:
    out = flat_response("GetRoomLists")
    sub(out, "m:RoomLists")
    return out


def get_rooms(ctx: Context, req: etree._Element) -> etree._Element:
    if req.find(m("RoomList")) is None:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: GetRooms needs m:RoomList")
    return flat_response("GetRooms", "ErrorNameResolutionNoResults", NO_RESULTS)


def get_searchable_mailboxes(ctx: Context, req: etree._Element) -> etree._Element:
    return flat_response("GetSearchableMailboxes", "ErrorAccessDenied",
                "The caller does not have the Discovery Management role needed to search mailboxes.")


# -- GetServerTimeZones ------------------------------------------------------------------------
def _bias(offset: timedelta) -> str:
    minutes = -int(offset.total_seconds()) // 60
    return f"-PT{-minutes}M" if minutes < 0 else f"PT{minutes}M"


def _offset_label(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"(UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"


def _transition_instant(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first UTC minute in (low, high] at which the zone's offset differs from its offset at low."""
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(minutes=1):
        mid = low + (high - low) / 2
        mid = mid.replace(second=0, microsecond=0)
        if mid <= low:
            mid = low + timedelta(minutes=1)
        if mid.astimezone(zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return high


@lru_cache(maxsize=4)
def _zone_rules(year: int) -> tuple[tuple[str, str, timedelta, timedelta, tuple], ...]:
    """(Windows id, IANA name, standard offset, daylight offset, transitions) per zone for ``year``; a transition is
    (to daylight?, local time before it, month, weekday 1=Monday, occurrence: 1..4 or -1 for last)."""
    out = []
    for ms_id, iana in sorted(MS_TIMEZONE_TO_IANA_MAP.items()):
        try:
            zone = ZoneInfo(iana)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        days = [datetime(year, 1, 1, 12, tzinfo=UTC) + timedelta(days=d) for d in range(366)]
        offsets = [d.astimezone(zone).utcoffset() for d in days]
        std, dst = min(offsets), max(offsets)
        transitions = []
        if std != dst:
            wanted = {True: None, False: None}
            for i in range(1, len(days)):
                if offsets[i] != offsets[i - 1]:
                    to_dst = offsets[i] == dst
                    if wanted[to_dst] is None:
                        at = _transition_instant(zone, days[i - 1], days[i])
                        local = at + offsets[i - 1]
                        last = (local + timedelta(days=7)).month != local.month
                        wanted[to_dst] = (to_dst, local.replace(tzinfo=None), local.month, local.isoweekday(),
                                          -1 if last else (local.day - 1) // 7 + 1)
            transitions = [wanted[False], wanted[True]]
            if None in transitions:
                transitions = []
                dst = std
        out.append((ms_id, iana, std, dst, tuple(transitions)))
    return tuple(out)


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _zone_element(ms_id: str, iana: str, std: timedelta, dst: timedelta, transitions: tuple,
                  full: bool) -> etree._Element:
    zone = el("t:TimeZoneDefinition", {"Id": ms_id, "Name": f"{_offset_label(std)} {iana.replace('_', ' ')}"})
    if not full:
        return zone
    periods = sub(zone, "t:Periods")
    sub(periods, "t:Period", attrib={"Bias": _bias(std), "Name": "Standard", "Id": "std"})
    if transitions:
        sub(periods, "t:Period", attrib={"Bias": _bias(dst), "Name": "Daylight", "Id": "dlt"})
    groups = sub(zone, "t:TransitionsGroups")
    group = sub(groups, "t:TransitionsGroup", attrib={"Id": "0"})
    if not transitions:
        one = sub(group, "t:Transition")
        sub(one, "t:To", "std", {"Kind": "Period"})
    for to_dst, local, month, weekday, occurrence in transitions:
        rule = sub(group, "t:RecurringDayTransition")
        sub(rule, "t:To", "dlt" if to_dst else "std", {"Kind": "Period"})
        sub(rule, "t:TimeOffset", f"PT{local.hour * 60 + local.minute}M")
        sub(rule, "t:Month", str(month))
        sub(rule, "t:DayOfWeek", _DAYS[weekday - 1])
        sub(rule, "t:Occurrence", str(occurrence))
    top = sub(zone, "t:Transitions")
    first = sub(top, "t:Transition")
    sub(first, "t:To", "0", {"Kind": "Group"})
    return zone


def get_server_time_zones(ctx: Context, req: etree._Element) -> etree._Element:
    full = parse_bool(req.get("ReturnFullTimeZoneData", "true"))
    ids_elem = req.find(m("Ids"))
    wanted = [(i.text or "").strip() for i in ids_elem.findall(t("Id"))] if ids_elem is not None else None
    rules = {z[0]: z for z in _zone_rules(ctx.now.year)}
    out = Responses("GetServerTimeZones")

    def one() -> list[etree._Element]:
        if wanted is not None:
            unknown = [w for w in wanted if w not in rules]
            if unknown:
                raise ResponseError("ErrorTimeZone", f"the time zone {unknown[0]!r} is not a Windows time zone id")
        definitions = el("m:TimeZoneDefinitions")
        for ms_id in (wanted if wanted is not None else list(rules)):
            definitions.append(_zone_element(*rules[ms_id], full=full))
        return [definitions]

    out.run(one)
    return out.root


# -- GetMailTips -------------------------------------------------------------------------------
def _oof_tip(ctx: Context, mbx: ExchangeMailbox) -> etree._Element:
    tip = el("t:OutOfOffice")
    oof = mbx.settings.oof or {}
    state = oof.get("state", "Disabled")
    active = state == "Enabled"
    if state == "Scheduled":
        start, end = oof.get("start"), oof.get("end")
        active = bool(start and end) and format_datetime(ctx.now) >= start and format_datetime(ctx.now) < end
    reply = sub(tip, "t:ReplyBody")
    sub(reply, "t:Message", oof.get("internal", "") if active else None)
    if active and state == "Scheduled":
        duration = sub(tip, "t:Duration")
        sub(duration, "t:StartTime", oof["start"])
        sub(duration, "t:EndTime", oof["end"])
    return tip


def get_mail_tips(ctx: Context, req: etree._Element) -> etree._Element:
    recipients = req.find(m("Recipients"))
    if recipients is None or req.find(m("SendingAs")) is None:
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: GetMailTips needs m:SendingAs and m:Recipients")
    out = flat_response("GetMailTips")
    messages = sub(out, "m:ResponseMessages")
    for box in recipients:
        if not isinstance(box.tag, str):
            continue
        address = (box.findtext(t("EmailAddress")) or "").strip()
        mbx = ctx.store.mailboxes.get(address.lower())
        msg = sub(messages, "m:MailTipsResponseMessageType", attrib={"ResponseClass": "Success"})
        sub(msg, "m:ResponseCode", "NoError")
        tips = sub(msg, "m:MailTips")
        recipient = sub(tips, "t:RecipientAddress")
        if mbx is not None:
            sub(recipient, "t:Name", mbx.display_name)
        sub(recipient, "t:EmailAddress", mbx.address if mbx is not None else address)
        sub(recipient, "t:RoutingType", "SMTP")
        if mbx is not None:
            tips.append(_oof_tip(ctx, mbx))
        sub(tips, "t:MailboxFull", "false")
        sub(tips, "t:TotalMemberCount", "1")
        sub(tips, "t:ExternalMemberCount", "0" if mbx is not None or not address else "1")
        sub(tips, "t:MaxMessageSize", str(MAX_MESSAGE_BYTES))
        sub(tips, "t:DeliveryRestricted", "false")
        sub(tips, "t:IsModerated", "false")
        sub(tips, "t:InvalidRecipient", xml_bool("@" not in address))
    return out


# -- GetDelegate -------------------------------------------------------------------------------
def get_delegate(ctx: Context, req: etree._Element) -> etree._Element:
    owner = ctx.need_mailbox()
    user_ids = req.find(m("UserIds"))
    users = [u for u in user_ids if isinstance(u.tag, str)] if user_ids is not None else []
    if not users:
        out = flat_response("GetDelegate")  # the sandbox's mailboxes have no delegates
        sub(out, "m:DeliverMeetingRequests", "DelegatesAndMe")
        return out
    errors: list[tuple[str, str]] = []
    for user in users:
        sid = (user.findtext(t("SID")) or "").strip()
        address = (user.findtext(t("PrimarySmtpAddress")) or "").strip().lower()
        if sid and not _SID.match(sid):
            errors.append(("ErrorInvalidUserSid", "The user SID is invalid or does not map to a user in the "
                                                  "Active Directory."))
        elif sid or address not in ctx.store.mailboxes:
            errors.append(("ErrorDelegateNoUser", "The delegate does not map to a user in the Active Directory."))
        else:
            errors.append(("ErrorNotDelegate", f"The user {address} is not a delegate of {owner.address}."))
    out = flat_response("GetDelegate", errors[0][0], errors[0][1])
    messages = sub(out, "m:ResponseMessages")
    for code, text in errors:
        msg = sub(messages, "m:DelegateUserResponseMessageType", attrib={"ResponseClass": "Error"})
        sub(msg, "m:MessageText", text)
        sub(msg, "m:ResponseCode", code)
        sub(msg, "m:DescriptiveLinkKey", "0")
    sub(out, "m:DeliverMeetingRequests", "DelegatesAndMe")
    return out


OPERATIONS = {
    "ResolveNames": resolve_names,
    "ExpandDL": expand_dl,
    "GetRoomLists": get_room_lists,
    "GetRooms": get_rooms,
    "GetSearchableMailboxes": get_searchable_mailboxes,
    "GetServerTimeZones": get_server_time_zones,
    "GetMailTips": get_mail_tips,
    "GetDelegate": get_delegate,
}
