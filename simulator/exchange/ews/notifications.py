"""Pull notifications: Subscribe (PullSubscriptionRequest), GetEvents and Unsubscribe.

The events come from the folders' change journals (the same the SyncFolderItems state reads): a
subscription's id names the mailbox, the folders (or all of them) and the event types, and a
watermark is where each folder's journal stood; the only state kept is which subscriptions were
ended (a store event). All of it survives a restart of the sandbox as the journals do. A journal's ``create`` is a CreatedEvent (and a NewMailEvent in
the Inbox), ``delete`` a DeletedEvent (a move is a delete in one folder and a create in the other),
``update`` and ``read`` a ModifiedEvent. With nothing new, GetEvents answers a StatusEvent.

Push and streaming subscriptions are not served (Subscribe answers ``ErrorInvalidSubscriptionRequest``).
"""

from __future__ import annotations

import base64
import binascii
import json

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key, store_call
from simulator.exchange.ews.xml import ResponseError, el, format_datetime, m, sub, t, xml_bool

EVENT_TYPES = ("CopiedEvent", "CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "NewMailEvent",
               "FreeBusyChangedEvent")
MAX_EVENTS = 50  # events in one GetEvents answer; MoreEvents says when more wait
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
        request = req.find(m("PullSubscriptionRequest"))
        if request is None:
            raise ResponseError("ErrorInvalidSubscriptionRequest",
                                "the simulator serves pull subscriptions only (no push or streaming)")
        types = [e.text or "" for e in request.iter(t("EventType"))]
        unknown = [x for x in types if x not in EVENT_TYPES]
        if not types or unknown:
            raise ResponseError("ErrorInvalidSubscriptionRequest",
                                f"EventTypes must name events among {', '.join(EVENT_TYPES)}")
        timeout = request.findtext(t("Timeout")) or "30"
        if not timeout.isdigit() or not 1 <= int(timeout) <= 1440:
            raise ResponseError("ErrorInvalidPullSubscriptionTimeout", "Timeout is from 1 to 1440 minutes")
        if request.get("SubscribeToAllFolders", "false").lower() in ("true", "1"):
            folders = None
        else:
            folders = [ctx.folder(ref).folder_id for ref in ctx.folder_refs(request.find(t("FolderIds")))]
            if not folders:
                raise ResponseError("ErrorInvalidSubscriptionRequest", "name t:FolderIds or SubscribeToAllFolders")
        mbx = ctx.need_mailbox()
        subscription = _encode({"a": mbx.address, "f": folders, "e": types, "n": ctx.store.ids.next("SUB")})
        given = request.findtext(m("Watermark"))
        watermark = given.strip() if given else _encode(_positions(ctx, folders))
        return [el("m:SubscriptionId", None, subscription), el("m:Watermark", None, watermark)]

    out.run(one)
    return out.root


def _subscription(ctx: Context, text: str) -> dict:
    data = _decode(text, "ErrorSubscriptionNotFound", "the subscription")
    if not isinstance(data, dict) or {"a", "f", "e"} - data.keys():
        raise ResponseError("ErrorSubscriptionNotFound", "the subscription was not issued by this server")
    mbx = ctx.need_mailbox()
    if data["a"] != mbx.address:
        raise ResponseError("ErrorSubscriptionAccessDenied", "the subscription belongs to another mailbox")
    if text in mbx.settings.ended_subscriptions:
        raise ResponseError("ErrorSubscriptionNotFound", "the subscription was ended (Unsubscribe)")
    return data


def get_events(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("GetEvents")

    def one() -> list[etree._Element]:
        subscription_text = (req.findtext(m("SubscriptionId")) or "").strip()
        subscription = _subscription(ctx, subscription_text)
        watermark_text = (req.findtext(m("Watermark")) or "").strip()
        positions = _decode(watermark_text, "ErrorInvalidWatermark", "the watermark")
        if not isinstance(positions, dict) or not all(isinstance(v, int) for v in positions.values()):
            raise ResponseError("ErrorInvalidWatermark", "the watermark was not issued by this server")
        mbx = ctx.need_mailbox()
        wanted = set(subscription["e"])
        if subscription["f"] is None:  # every folder, those made since included
            positions = {fid: positions.get(fid, 0) for fid in sorted(mbx.folders)}
        now = format_datetime(ctx.store.clock.now())
        notification = el("m:Notification")
        sub(notification, "t:SubscriptionId", subscription_text)
        sub(notification, "t:PreviousWatermark", watermark_text)
        more = sub(notification, "t:MoreEvents", "false")
        events = 0
        for fid in list(positions):
            folder = mbx.folders.get(fid)
            if folder is None:
                continue
            journal = folder.journal
            while positions[fid] < len(journal):
                if events >= MAX_EVENTS:
                    more.text = xml_bool(True)
                    break
                change, item_id = journal[positions[fid]]
                positions[fid] += 1
                kinds = [_CHANGE_EVENTS.get(change, "ModifiedEvent")]
                if change == "create" and folder.distinguished == "inbox":
                    kinds.append("NewMailEvent")
                for kind in kinds:
                    if kind not in wanted:
                        continue
                    item = folder.items.get(item_id)
                    event = sub(notification, f"t:{kind}")
                    sub(event, "t:Watermark", _encode(positions))
                    sub(event, "t:TimeStamp", now)
                    key = change_key(item_id, item.version) if item is not None else None
                    sub(event, "t:ItemId", None, {"Id": item_id, **({"ChangeKey": key} if key else {})})
                    sub(event, "t:ParentFolderId", None, {"Id": fid, "ChangeKey": change_key(fid)})
                    events += 1
        if not events:
            status = sub(notification, "t:StatusEvent")
            sub(status, "t:Watermark", _encode(positions))
        return [notification]

    out.run(one)
    return out.root


def unsubscribe(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("Unsubscribe")

    def one() -> list[etree._Element]:
        text = (req.findtext(m("SubscriptionId")) or "").strip()
        _subscription(ctx, text)
        store_call(ctx.store.end_subscription, ctx.need_mailbox().address, text)
        return []

    out.run(one)
    return out.root


OPERATIONS = {"Subscribe": subscribe, "GetEvents": get_events, "Unsubscribe": unsubscribe}
