"""Item rendering (the properties Exchange serves for a message) and GetItem."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from lxml import etree

from simulator.exchange.ews import attachments, calendar
from simulator.exchange.ews.context import Context, Responses, change_key, mailbox_element, parse_shape
from simulator.exchange.ews.fields import key_of_path, revive
from simulator.exchange.ews.xml import el, format_datetime, m, sub, t, xml_bool
from simulator.exchange.store import ExchangeStore, Item

ID_FIELDS = ("item:ItemId",)
DEFAULT_FIELDS = (
    "item:ItemId", "item:ParentFolderId", "item:ItemClass", "item:Subject", "item:Sensitivity", "item:DateTimeReceived",
    "item:Size", "item:Importance", "item:IsSubmitted", "item:IsDraft", "item:IsFromMe", "item:IsResend",
    "item:IsUnmodified", "item:DateTimeSent", "item:DateTimeCreated", "item:DisplayCc", "item:DisplayTo",
    "item:HasAttachments", "message:Sender", "message:IsReadReceiptRequested", "message:ConversationIndex",
    "message:ConversationTopic", "message:From", "message:InternetMessageId", "message:IsRead",
    "message:IsResponseRequested", "message:References", "message:ReceivedBy", "message:ReceivedRepresenting",
)
ALL_FIELDS = DEFAULT_FIELDS[:3] + ("item:MimeContent",) + DEFAULT_FIELDS[3:] + (
    "item:Body", "item:Categories", "item:InReplyTo", "item:InternetMessageHeaders", "item:LastModifiedTime",
    "message:ToRecipients", "message:CcRecipients",
)
# The order of the EWS schema (exchangelib does not care, strict clients do).
SCHEMA_ORDER = (
    "item:MimeContent", "item:ItemId", "item:ParentFolderId", "item:ItemClass", "item:Subject", "item:Sensitivity",
    "item:Body", "item:Attachments", "item:DateTimeReceived", "item:Size", "item:Categories", "item:Importance",
    "item:InReplyTo",
    "item:IsSubmitted", "item:IsDraft", "item:IsFromMe", "item:IsResend", "item:IsUnmodified",
    "item:InternetMessageHeaders", "item:DateTimeSent", "item:DateTimeCreated", "item:DisplayCc", "item:DisplayTo",
    "item:HasAttachments", "item:Culture", "item:LastModifiedTime", "item:IsAssociated", "item:ConversationId",
    "item:TextBody", "message:Sender", "message:ToRecipients", "message:CcRecipients", "message:BccRecipients",
    "message:IsReadReceiptRequested", "message:IsDeliveryReceiptRequested", "message:ConversationIndex",
    "message:ConversationTopic", "message:From", "message:InternetMessageId", "message:IsRead",
    "message:IsResponseRequested", "message:References", "message:ReplyTo", "message:ReceivedBy",
    "message:ReceivedRepresenting",
)
_RANK = {uri: i for i, uri in enumerate(SCHEMA_ORDER)}


class ItemView:
    """One stored item seen from one mailbox (for rendering and restrictions)."""

    __slots__ = ("item", "owner", "store")

    def __init__(self, item: Item, owner: str, store: ExchangeStore) -> None:
        self.item = item
        self.owner = owner
        self.store = store

    def is_local(self, address: str | None) -> bool:
        return bool(address) and address in self.store.mailboxes


def bracket(message_id: str | None) -> str | None:
    return f"<{message_id}>" if message_id else None


def _text(tag: str, get: Callable[[ItemView], Any]) -> Callable[[ItemView], etree._Element | None]:
    def render(v: ItemView) -> etree._Element | None:
        value = get(v)
        if value is None:
            return None
        if isinstance(value, bool):
            value = xml_bool(value)
        return el(tag, None, str(value))
    return render


def _mailbox(tag: str, get: Callable[[ItemView], str | None]):
    def render(v: ItemView) -> etree._Element | None:
        address = get(v)
        if not address:
            return None
        return el(tag, None, None, mailbox_element("t:Mailbox", address, local=v.is_local(address)))
    return render


def _mailboxes(tag: str, get: Callable[[ItemView], tuple[str, ...]]):
    def render(v: ItemView) -> etree._Element | None:
        addresses = get(v)
        if not addresses:
            return None
        return el(tag, None, None, *(mailbox_element("t:Mailbox", a, local=v.is_local(a)) for a in addresses))
    return render


def _mime(v: ItemView) -> etree._Element:
    return el("t:MimeContent", {"CharacterSet": "UTF-8"}, base64.b64encode(v.item.data.render()).decode("ascii"))


def _categories(v: ItemView) -> etree._Element | None:
    if not v.item.categories:
        return None
    return el("t:Categories", None, None, *(el("t:String", None, c) for c in v.item.categories))


def _headers(v: ItemView) -> etree._Element:
    d = v.item.data
    pairs = [("From", d.sender), ("To", ", ".join(d.to) or None), ("Cc", ", ".join(d.cc) or None),
             ("Subject", d.subject), ("Message-ID", bracket(d.message_id)), ("In-Reply-To", bracket(d.in_reply_to)),
             ("References", " ".join(f"<{r}>" for r in d.references) or None), ("Thread-Index", d.thread_index)]
    pairs += list(d.extra_headers.items())
    box = el("t:InternetMessageHeaders")
    for name, value in pairs:
        if value:
            sub(box, "t:InternetMessageHeader", value, {"HeaderName": name})
    return box


def _sent(v: ItemView):
    return v.item.data.date or v.item.received


RENDERERS: dict[str, Callable[[ItemView], etree._Element | None]] = {
    "item:MimeContent": _mime,
    "item:ItemId": lambda v: el("t:ItemId", {"Id": v.item.item_id,
                                             "ChangeKey": change_key(v.item.item_id, v.item.version)}),
    "item:ParentFolderId": lambda v: el("t:ParentFolderId", {"Id": v.item.folder_id,
                                                            "ChangeKey": change_key(v.item.folder_id)}),
    "item:ItemClass": _text("t:ItemClass", lambda v: v.item.item_class),
    "item:Subject": _text("t:Subject", lambda v: v.item.data.subject),
    "item:Sensitivity": _text("t:Sensitivity", lambda v: "Normal"),
    "item:Body": lambda v: el("t:Body", {"BodyType": "Text"}, v.item.data.body),
    "item:TextBody": lambda v: el("t:TextBody", {"BodyType": "Text"}, v.item.data.body),
    "item:DateTimeReceived": _text("t:DateTimeReceived", lambda v: format_datetime(v.item.received)),
    "item:Size": _text("t:Size", lambda v: v.item.data.stored_size),
    "item:Categories": _categories,
    "item:Importance": _text("t:Importance", lambda v: "Normal"),
    "item:InReplyTo": _text("t:InReplyTo", lambda v: bracket(v.item.data.in_reply_to)),
    "item:IsSubmitted": _text("t:IsSubmitted", lambda v: False),
    "item:IsDraft": _text("t:IsDraft", lambda v: v.store.mailboxes[v.owner].distinguished.get("drafts")
                          == v.item.folder_id),
    "item:IsFromMe": _text("t:IsFromMe", lambda v: v.item.data.sender == v.owner),
    "item:IsResend": _text("t:IsResend", lambda v: False),
    "item:IsUnmodified": _text("t:IsUnmodified", lambda v: True),
    "item:InternetMessageHeaders": _headers,
    "item:DateTimeSent": _text("t:DateTimeSent", lambda v: format_datetime(_sent(v))),
    "item:DateTimeCreated": _text("t:DateTimeCreated", lambda v: format_datetime(v.item.received)),
    "item:LastModifiedTime": _text("t:LastModifiedTime",
                                   lambda v: format_datetime(v.item.modified or v.item.received)),
    "item:DisplayCc": _text("t:DisplayCc", lambda v: "; ".join(v.item.data.cc)),
    "item:DisplayTo": _text("t:DisplayTo", lambda v: "; ".join(v.item.data.to)),
    "item:HasAttachments": _text("t:HasAttachments", lambda v: attachments.has_attachments(v.item)),
    "item:Attachments": lambda v: attachments.listed(v.item),
    "item:IsAssociated": _text("t:IsAssociated", lambda v: False),
    "message:Sender": _mailbox("t:Sender", lambda v: v.item.data.sender),
    "message:From": _mailbox("t:From", lambda v: v.item.data.sender),
    "message:ToRecipients": _mailboxes("t:ToRecipients", lambda v: v.item.data.to),
    "message:CcRecipients": _mailboxes("t:CcRecipients", lambda v: v.item.data.cc),
    "message:BccRecipients": _mailboxes("t:BccRecipients", lambda v: v.item.data.bcc if v.item.data.sender == v.owner
                                        else ()),
    "message:IsReadReceiptRequested": _text("t:IsReadReceiptRequested", lambda v: False),
    "message:IsDeliveryReceiptRequested": _text("t:IsDeliveryReceiptRequested", lambda v: False),
    "message:ConversationIndex": _text("t:ConversationIndex", lambda v: v.item.data.thread_index),
    "message:ConversationTopic": _text("t:ConversationTopic", lambda v: v.item.data.subject),
    "message:InternetMessageId": _text("t:InternetMessageId", lambda v: bracket(v.item.data.message_id)),
    "message:IsRead": _text("t:IsRead", lambda v: v.item.is_read),
    "message:IsResponseRequested": _text("t:IsResponseRequested", lambda v: False),
    "message:References": _text("t:References", lambda v: " ".join(f"<{r}>" for r in v.item.data.references) or None),
    "message:ReceivedBy": _mailbox("t:ReceivedBy", lambda v: v.owner if v.item.data.sender != v.owner else None),
    "message:ReceivedRepresenting": _mailbox("t:ReceivedRepresenting",
                                             lambda v: v.owner if v.item.data.sender != v.owner else None),
}


class Wanted:
    """What a shape asks for: field URIs rendered in schema order, whether every kept property is
    wanted (AllProperties), and the kept properties asked for by name (extended properties, and
    field URIs the store has no renderer of: ``calendar:Start``)."""

    __slots__ = ("uris", "all_kept", "kept")

    def __init__(self, uris: list[str], all_kept: bool, kept: dict[str, None]) -> None:
        self.uris, self.all_kept, self.kept = uris, all_kept, kept


RENDERERS.update(calendar.RENDERERS)  # what Exchange computes for calendar items
_OWN_PREFIX = {"message:": "Message", "calendar:": "CalendarItem", "task:": "Task"}  # renderers of one item type only


def _serves(uri: str, item_type: str) -> bool:
    for prefix, owner in _OWN_PREFIX.items():
        if uri.startswith(prefix):
            return item_type == owner
    return True


def item_fields(shape: etree._Element | None) -> Wanted:
    """What to render of each item for ``shape`` (an ``m:ItemShape``)."""
    base, _ = parse_shape(shape)
    uris = set(ID_FIELDS if base == "IdOnly" else ALL_FIELDS if base == "AllProperties" else DEFAULT_FIELDS)
    kept: dict[str, None] = {}
    props = shape.find(t("AdditionalProperties")) if shape is not None else None
    for path in (props if props is not None else ()):
        if not isinstance(path.tag, str):
            continue
        if path.tag == t("FieldURI") and path.get("FieldURI") in RENDERERS:
            uris.add(path.get("FieldURI"))
        else:
            kept[key_of_path(path)] = None
    uris.add("item:ItemId")
    return Wanted(sorted(uris, key=lambda uri: _RANK.get(uri, len(_RANK))), base == "AllProperties", kept)


# Kept properties holding mailboxes: a mailbox the client sent without a name is served with one,
# as Exchange resolves it (the user's display name, else the address).
RECIPIENT_KEYS = frozenset({"ToRecipients", "CcRecipients", "BccRecipients", "From", "Sender", "ReplyTo"})


def _revived(key: str, text: str, store: ExchangeStore) -> etree._Element:
    element = revive(text)
    if key in RECIPIENT_KEYS:
        for box in element.iter(t("Mailbox")):
            address = (box.findtext(t("EmailAddress")) or "").strip()
            if address and not (box.findtext(t("Name")) or "").strip():
                stale = box.find(t("Name"))
                if stale is not None:
                    box.remove(stale)
                local = store.mailboxes.get(address.lower())
                box.insert(0, el("t:Name", None, local.display_name if local is not None else address))
    return element


def item_element(ctx: Context, item: Item, fields: Wanted) -> etree._Element:
    """The item as ``t:Message`` (or ``t:CalendarItem``, ``t:Contact``, ...) with the wanted properties:
    a property the client set comes back as it was set; the others as the store models them."""
    view = ItemView(item, ctx.need_mailbox().address, ctx.store)
    data = item.data
    kept = data.kept
    e = el(f"t:{data.item_type}")
    done: set[str] = set()
    for uri in fields.uris:
        name = uri.rsplit(":", 1)[-1]
        if name in kept and name != attachments.KEY:  # as the client set it (an empty text: deleted)
            if kept[name]:
                e.append(_revived(name, kept[name], ctx.store))
            done.add(name)
        elif _serves(uri, data.item_type):
            child = RENDERERS[uri](view)
            if child is not None:
                e.append(child)
    if kept:
        for key, text in kept.items():
            if text and key not in done and key not in (attachments.KEY, calendar.KEY) and \
                    (fields.all_kept or key in fields.kept):
                e.append(_revived(key, text, ctx.store))
    return e


def item_id_only(item_id: str, version: int = 0, item_type: str = "Message") -> etree._Element:
    return el(f"t:{item_type}", None, None, el("t:ItemId", {"Id": item_id, "ChangeKey": change_key(item_id, version)}))


def get_item(ctx: Context, req: etree._Element) -> etree._Element:
    fields = item_fields(req.find(m("ItemShape")))
    out = Responses("GetItem")
    for ref in ctx.item_refs(req.find(m("ItemIds"))):
        out.run(lambda r=ref: [el("m:Items", None, None, item_element(ctx, ctx.item(r), fields))])
    return out.root


OPERATIONS = {"GetItem": get_item}
