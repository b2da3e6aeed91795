"""Notifications: Subscribe (pull, push and streaming), GetEvents, GetStreamingEvents, Unsubscribe.

The events come from the folders' change journals (the same the SyncFolderItems state reads): a
subscription's id names the mailbox, the folders (or all of them), the event types and the kind of
subscription. A journal's ``create`` is a CreatedEvent (and a NewMailEvent in the Inbox),
``delete`` a DeletedEvent (a move is a delete in one folder and a create in the other), ``update``
and ``read`` a ModifiedEvent. Everything kept survives a restart of the sandbox as the journals do.

* Pull: the client carries the position in a watermark (where each folder's journal stood); the
  only state is which subscriptions were ended (a store event). With nothing new, GetEvents
  answers a StatusEvent.
* Streaming: Exchange keeps the position itself, so the store does ("subpos" events): where the
  journals stood at Subscribe, then how far the events were delivered. GetStreamingEvents holds
  the connection open and writes one SOAP envelope per batch of notifications (no watermarks, as
  Exchange's streaming notifications have none), an "OK" envelope when the connection opens
  quiet and every so often while it stays quiet, and a last one with ``ConnectionStatus`` Closed.
  The connection lasts ConnectionTimeout minutes of sandbox time; as a virtual clock may not move
  at all meanwhile, it also ends after as many minutes of real time, so that a client never
  waits past the read timeout it set for that length. Events written to a connection count as
  delivered.
* Push: Subscribe answers a subscription id and a watermark; the simulator does not call the
  callback URL back. Unsubscribe refuses a push subscription (``ErrorInvalidSubscription``): as
  with Exchange, a push subscription ends by answering a notification with Unsubscribe.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from datetime import timedelta
from urllib.parse import urlsplit

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, StreamedAnswer, change_key, store_call
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, format_datetime, m, sub, t, xml_bool
from simulator.exchange.store import ExchangeMailbox

EVENT_TYPES = ("CopiedEvent", "CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "NewMailEvent",
               "FreeBusyChangedEvent")
MAX_EVENTS = 50  # events in one GetEvents answer (MoreEvents says when more wait) or one streamed envelope
MAX_CONNECTION_MINUTES = 30  # GetStreamingEvents' ConnectionTimeout is from 1 to 30 minutes
POLL_SECONDS = 0.25  # real time between two looks at the journals while a streaming connection is open
QUIET_SECONDS = 30.0  # real time without events after which an open connection says "OK" again
REAL_SECONDS_PER_MINUTE = 60.0  # the real-time bound of a streaming connection: ConnectionTimeout times this
INVALID_SUBSCRIPTION = "Subscription is invalid."
_KINDS = {"PullSubscriptionRequest": "pull", "PushSubscriptionRequest": "push",
          "StreamingSubscriptionRequest": "stream"}
_CHANGE_EVENTS = {"create": "CreatedEvent", "delete": "DeletedEvent", "update": "ModifiedEvent",
                  "read": "ModifiedEvent"}


def _encode(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _decode(text: str, code: str, what: str) -> object:
    try:
        return json.loads(base64.urlsafe_b64decode(text.strip().encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise ResponseError(code, f"{what} {text[:40]!r} was not issued by this server") from None


def _positions(ctx: Context, folder_ids: list[str] | None) -> dict[str, int]:
    mbx = ctx.need_mailbox()
    ids = folder_ids if folder_ids is not None else sorted(mbx.folders)
    return {fid: len(mbx.folders[fid].journal) for fid in ids if fid in mbx.folders}


def subscribe(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("Subscribe")

    def one() -> list[etree._Element]:
        found = [(kind, req.find(m(tag))) for tag, kind in _KINDS.items() if req.find(m(tag)) is not None]
        if len(found) != 1:
            raise ResponseError("ErrorInvalidSubscriptionRequest",
                                "name one PullSubscriptionRequest, PushSubscriptionRequest or "
                                "StreamingSubscriptionRequest")
        kind, request = found[0]
        types = [e.text or "" for e in request.iter(t("EventType"))]
        unknown = [x for x in types if x not in EVENT_TYPES]
        if not types or unknown:
            raise ResponseError("ErrorInvalidSubscriptionRequest",
                                f"EventTypes must name events among {', '.join(EVENT_TYPES)}")
        if kind == "pull":
            timeout = request.findtext(t("Timeout")) or "30"
            if not timeout.isdigit() or not 1 <= int(timeout) <= 1440:
                raise ResponseError("ErrorInvalidPullSubscriptionTimeout", "Timeout is from 1 to 1440 minutes")
        elif kind == "push":
            frequency = (request.findtext(t("StatusFrequency")) or "30").strip()
            if not frequency.isdigit() or not 1 <= int(frequency) <= 1440:
                raise ResponseError("ErrorInvalidSubscriptionRequest", "StatusFrequency is from 1 to 1440 minutes")
            url = (request.findtext(t("URL")) or "").strip()
            try:
                parts = urlsplit(url)
                host = parts.hostname
            except ValueError:
                parts, host = None, None
            if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
                raise ResponseError("ErrorInvalidPushSubscriptionUrl",
                                    f"the push callback URL {url[:80]!r} is not an absolute http or https URL")
        if request.get("SubscribeToAllFolders", "false").lower() in ("true", "1"):
            folders = None
        else:
            folders = [ctx.folder(ref).folder_id for ref in ctx.folder_refs(request.find(t("FolderIds")))]
            if not folders:
                raise ResponseError("ErrorInvalidSubscriptionRequest", "name t:FolderIds or SubscribeToAllFolders")
        mbx = ctx.need_mailbox()
        data = {"a": mbx.address, "f": folders, "e": types, "n": ctx.store.ids.next("SUB")}
        if kind != "pull":  # a pull subscription's id has no kind (ids issued before push and streaming)
            data["m"] = kind
        subscription = _encode(data)
        if kind == "stream":  # Exchange keeps a streaming subscription's position: it starts here
            store_call(ctx.store.mark_delivered, mbx.address, subscription, _positions(ctx, folders))
            return [el("m:SubscriptionId", None, subscription)]
        given = request.findtext(m("Watermark"))
        watermark = given.strip() if given else _encode(_positions(ctx, folders))
        return [el("m:SubscriptionId", None, subscription), el("m:Watermark", None, watermark)]

    out.run(one)
    return out.root


def _subscription(ctx: Context, text: str, *, malformed: str = "ErrorSubscriptionNotFound") -> dict:
    """The subscription ``text`` names, if it is this mailbox's and was not ended; a text this server
    did not issue is answered with ``malformed``."""
    data = _decode(text, malformed, "the subscription")
    if not isinstance(data, dict) or {"a", "f", "e"} - data.keys() or data.get("m", "pull") not in _KINDS.values():
        raise ResponseError(malformed, f"the subscription {text[:40]!r} was not issued by this server")
    mbx = ctx.need_mailbox()
    if data["a"] != mbx.address:
        raise ResponseError("ErrorSubscriptionAccessDenied", "the subscription belongs to another mailbox")
    if text in mbx.settings.ended_subscriptions:
        raise ResponseError("ErrorSubscriptionNotFound", "the subscription was ended (Unsubscribe)")
    return data


def _collect(mbx: ExchangeMailbox, subscription: dict, positions: dict[str, int], now: str, *,
             watermarks: bool) -> tuple[list[etree._Element], bool]:
    """The events of ``subscription`` after ``positions`` (moved on, in place, past what is read),
    at most MAX_EVENTS of them, and whether more wait."""
    wanted = set(subscription["e"])
    if subscription["f"] is None:  # every folder, those made since included
        for fid in [fid for fid in positions if fid not in mbx.folders]:
            del positions[fid]
        for fid in sorted(mbx.folders):
            positions.setdefault(fid, 0)
    events: list[etree._Element] = []
    for fid in list(positions):
        folder = mbx.folders.get(fid)
        if folder is None:
            continue
        journal = folder.journal
        while positions[fid] < len(journal):
            if len(events) >= MAX_EVENTS:
                return events, True
            change, item_id = journal[positions[fid]]
            positions[fid] += 1
            kinds = [_CHANGE_EVENTS.get(change, "ModifiedEvent")]
            if change == "create" and folder.distinguished == "inbox":
                kinds.append("NewMailEvent")
            for kind in kinds:
                if kind not in wanted:
                    continue
                item = folder.items.get(item_id)
                event = el(f"t:{kind}")
                if watermarks:
                    sub(event, "t:Watermark", _encode(positions))
                sub(event, "t:TimeStamp", now)
                key = change_key(item_id, item.version) if item is not None else None
                sub(event, "t:ItemId", None, {"Id": item_id, **({"ChangeKey": key} if key else {})})
                sub(event, "t:ParentFolderId", None, {"Id": fid, "ChangeKey": change_key(fid)})
                events.append(event)
    return events, False


def get_events(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("GetEvents")

    def one() -> list[etree._Element]:
        subscription_text = (req.findtext(m("SubscriptionId")) or "").strip()
        subscription = _subscription(ctx, subscription_text)
        if subscription.get("m", "pull") != "pull":
            raise ResponseError("ErrorInvalidPullSubscriptionId",
                                "GetEvents reads pull subscriptions; this one is a push or streaming subscription")
        watermark_text = (req.findtext(m("Watermark")) or "").strip()
        positions = _decode(watermark_text, "ErrorInvalidWatermark", "the watermark")
        if not isinstance(positions, dict) or not all(isinstance(v, int) for v in positions.values()):
            raise ResponseError("ErrorInvalidWatermark", "the watermark was not issued by this server")
        events, more = _collect(ctx.need_mailbox(), subscription, positions, format_datetime(ctx.store.clock.now()),
                                watermarks=True)
        notification = el("m:Notification")
        sub(notification, "t:SubscriptionId", subscription_text)
        sub(notification, "t:PreviousWatermark", watermark_text)
        sub(notification, "t:MoreEvents", xml_bool(more))
        for event in events:
            notification.append(event)
        if not events:
            status = sub(notification, "t:StatusEvent")
            sub(status, "t:Watermark", _encode(positions))
        return [notification]

    out.run(one)
    return out.root


def _streaming_part(status: str, notifications: list[etree._Element] = (), *, code: str = "NoError",
                    text: str | None = None, bad: list[str] = ()) -> etree._Element:
    """One envelope's worth of a GetStreamingEvents answer, children in the schema's order."""
    out = Responses("GetStreamingEvents")
    msg = out.success() if code == "NoError" else out.error(code, text or code)
    if notifications:
        container = sub(msg, "m:Notifications")
        for notification in notifications:
            container.append(notification)
    if bad:
        ids = sub(msg, "m:ErrorSubscriptionIds")
        for subscription_id in bad:
            sub(ids, "m:SubscriptionId", subscription_id)
    sub(msg, "m:ConnectionStatus", status)
    return out.root


def get_streaming_events(ctx: Context, req: etree._Element) -> etree._Element | StreamedAnswer:
    container = req.find(m("SubscriptionIds"))
    texts = [(e.text or "").strip() for e in container.iter(t("SubscriptionId"))] if container is not None else []
    timeout_text = (req.findtext(m("ConnectionTimeout")) or "").strip()
    if not texts or not timeout_text.lstrip("-").isdigit():
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: GetStreamingEvents needs "
                                                "m:SubscriptionIds and an integer m:ConnectionTimeout.")
    minutes = int(timeout_text)
    if not 1 <= minutes <= MAX_CONNECTION_MINUTES:
        return _streaming_part("Closed", code="ErrorInvalidArgument",
                               text=f"ConnectionTimeout is from 1 to {MAX_CONNECTION_MINUTES} minutes")
    mbx = ctx.need_mailbox()
    subscriptions: dict[str, dict] = {}
    bad: list[str] = []
    first_error: ResponseError | None = None
    for text in texts:
        try:
            data = _subscription(ctx, text, malformed="ErrorInvalidSubscription")
            if data.get("m") != "stream":
                raise ResponseError("ErrorInvalidSubscription", INVALID_SUBSCRIPTION)
            if text not in mbx.settings.delivered:
                raise ResponseError("ErrorSubscriptionNotFound", "the subscription is not known to this server")
        except ResponseError as exc:
            bad.append(text)
            first_error = first_error or exc
            continue
        subscriptions[text] = data
    if first_error is not None:
        # Exchange gives no notifications of the good subscriptions then, only the failing ids
        message = INVALID_SUBSCRIPTION if first_error.code == "ErrorInvalidSubscription" else first_error.message
        return _streaming_part("Closed", code=first_error.code, text=message, bad=bad)
    return StreamedAnswer(lambda refresh, gone: _stream(ctx, subscriptions, minutes, refresh, gone))


async def _stream(ctx: Context, subscriptions: dict[str, dict], minutes: int, refresh, gone):
    """The parts of one streaming connection (see the module's documentation)."""
    loop = asyncio.get_running_loop()
    clock = ctx.store.clock
    ends = clock.now() + timedelta(minutes=minutes)
    real_end = loop.time() + minutes * REAL_SECONDS_PER_MINUTE
    said_ok = None  # real time of the last envelope sent
    address = ctx.need_mailbox().address
    while not gone():
        refresh()
        mbx = ctx.store.mailboxes.get(address)
        if mbx is None:
            break
        live = [s for s in subscriptions
                if s not in mbx.settings.ended_subscriptions and s in mbx.settings.delivered]
        if not live:  # every subscription was ended meanwhile
            break
        now = format_datetime(clock.now())
        notifications: list[etree._Element] = []
        moved: dict[str, dict[str, int]] = {}
        for text in live:
            positions = dict(mbx.settings.delivered[text])
            events, _more = _collect(mbx, subscriptions[text], positions, now, watermarks=False)
            if positions != mbx.settings.delivered[text]:
                moved[text] = positions
            if events:
                notification = el("m:Notification")
                sub(notification, "t:SubscriptionId", text)
                for event in events:
                    notification.append(event)
                notifications.append(notification)
        if notifications or said_ok is None or loop.time() - said_ok >= QUIET_SECONDS:
            yield _streaming_part("OK", notifications)  # resumed: the envelope was written
            said_ok = loop.time()
        for text, positions in moved.items():  # delivered, or of event types nobody asked for
            ctx.store.mark_delivered(address, text, positions)
        if clock.now() >= ends or loop.time() >= real_end:
            break
        if not moved:
            await asyncio.sleep(POLL_SECONDS)
    yield _streaming_part("Closed")  # written unless the client is gone already


def unsubscribe(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("Unsubscribe")

    def one() -> list[etree._Element]:
        text = (req.findtext(m("SubscriptionId")) or "").strip()
        data = _subscription(ctx, text)
        if data.get("m") == "push":
            raise ResponseError("ErrorInvalidSubscription",
                                "a push subscription cannot be ended by Unsubscribe: answer a notification "
                                "sent to its callback URL with Unsubscribe instead")
        store_call(ctx.store.end_subscription, ctx.need_mailbox().address, text)
        return []

    out.run(one)
    return out.root


OPERATIONS = {"Subscribe": subscribe, "GetEvents": get_events, "GetStreamingEvents": get_streaming_events,
              "Unsubscribe": unsubscribe}
