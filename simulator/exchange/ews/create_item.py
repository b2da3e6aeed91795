"""CreateItem (MessageDisposition SaveOnly / SendOnly / SendAndSaveCopy) and SendItem.

Sending goes through :meth:`ExchangeStore.send`, so the sending quotas apply, local recipients
get the message in their Inbox and external recipients are recorded in ``store.outbound``.
"""

from __future__ import annotations

import base64
import binascii

from lxml import etree

from simulator.exchange.ews import attachments, calendar
from simulator.exchange.ews.context import Context, Responses, store_call
from simulator.exchange.ews.fields import ITEM_TYPES, NOT_KEPT, keep, key_of_child, limited_subject, local
from simulator.exchange.ews.items import item_id_only
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, m, parse_bool, t
from simulator.exchange.mime import MessageData, normalize_address, normalize_message_id, parse_message
from simulator.exchange.store import Folder, Item

DISPOSITIONS = ("SaveOnly", "SendOnly", "SendAndSaveCopy")


def addresses_in(msg: etree._Element, tag: str) -> tuple[str, ...]:
    box = msg.find(t(tag))
    if box is None:
        return ()
    out: list[str] = []
    for mailbox in box.iter(t("Mailbox")):
        raw = mailbox.findtext(t("EmailAddress"))
        addr = normalize_address(raw)
        if addr is None:
            raise ResponseError("ErrorInvalidRecipients", f"{tag}: {raw!r} is not an SMTP address")
        if addr not in out:
            out.append(addr)
    return tuple(out)


def message_from_xml(msg: etree._Element) -> tuple[MessageData, list[str] | None, bool | None]:
    """(item data, categories, is_read) of an item in a CreateItem request: a ``t:Message`` or an item
    of another type of :data:`~simulator.exchange.ews.fields.ITEM_TYPES`; every property the store does
    not model is kept as sent (:mod:`simulator.exchange.ews.fields`)."""
    item_type = etree.QName(msg).localname
    if msg.tag != t(item_type) or item_type not in ITEM_TYPES:
        raise ResponseError("ErrorInvalidRequest",
                            f"the simulator cannot create t:{item_type} items (it creates "
                            f"{', '.join('t:' + k for k in ITEM_TYPES)})")
    data, categories, is_read = _modeled(msg)
    data.item_type = item_type
    data.item_class = (msg.findtext(t("ItemClass")) or "").strip() or None
    kept: dict[str, str] = {}
    for child in msg:
        if isinstance(child.tag, str) and local(child) not in NOT_KEPT:
            kept[key_of_child(child)] = keep(child)
    kept.update(calendar.normalized(item_type, kept))
    data.kept = kept
    if item_type != "Message":
        is_read = None
    return data, categories, is_read


def _modeled(msg: etree._Element) -> tuple[MessageData, list[str] | None, bool | None]:
    """What the store models of an item: the message fields, categories and read flag."""
    mime = msg.findtext(t("MimeContent"))
    if mime is not None and mime.strip():
        try:
            raw = base64.b64decode(mime.strip(), validate=False)
        except (binascii.Error, ValueError):
            raise ResponseError("ErrorMimeContentConversionFailed", "MimeContent is not base64") from None
        data = parse_message(raw)
    else:
        data = MessageData()
    subject = msg.findtext(t("Subject"))
    if subject is not None:
        data.subject = limited_subject(subject)
    body = msg.findtext(t("Body"))
    if body is not None:
        data.body = body
    for tag, attr in (("ToRecipients", "to"), ("CcRecipients", "cc"), ("BccRecipients", "bcc")):
        found = addresses_in(msg, tag)
        if found:
            setattr(data, attr, found)
    sender = addresses_in(msg, "From") or addresses_in(msg, "Sender")
    if sender:
        data.sender = sender[0]
    for tag, attr in (("InternetMessageId", "message_id"), ("InReplyTo", "in_reply_to")):
        value = msg.findtext(t(tag))
        if value:
            setattr(data, attr, normalize_message_id(value))
    refs = msg.findtext(t("References"))
    if refs:
        data.references = tuple(r for r in (normalize_message_id(x) for x in refs.split()) if r)
    if mime is None or not mime.strip():
        data.raw = None
        data.size = len(data.body.encode("utf-8", "replace")) + 200
    cats = msg.find(t("Categories"))
    categories = [s.text or "" for s in cats.iter(t("String"))] if cats is not None else None
    is_read_text = msg.findtext(t("IsRead"))
    return data, categories, (parse_bool(is_read_text) if is_read_text is not None else None)


RESPONSE_OBJECTS = {t("ReplyToItem"): "RE", t("ReplyAllToItem"): "RE", t("ForwardItem"): "FW"}


def response_from_xml(ctx: Context, obj: etree._Element) -> tuple[MessageData, None, None]:
    """The message a reply, reply-all or forward of an existing item makes (``t:ReplyToItem``,
    ``t:ReplyAllToItem``, ``t:ForwardItem`` with its ``t:ReferenceItemId``): addressed to the sender
    (and, for reply-all, every other recipient but the mailbox itself) or to the recipients given,
    answering the original's Message-ID, with the original's text below the new one."""
    ref = obj.find(t("ReferenceItemId"))
    if ref is None:
        raise ResponseError("ErrorInvalidReferenceItem", f"t:{etree.QName(obj).localname} needs a t:ReferenceItemId")
    original = ctx.item(ref).data
    me = ctx.need_mailbox().address
    given, _, _ = _modeled(obj)
    prefix = RESPONSE_OBJECTS[obj.tag]
    to: tuple[str, ...] = given.to
    cc: tuple[str, ...] = given.cc
    if prefix == "RE" and not to:
        to = (original.sender,) if original.sender else ()
        if obj.tag == t("ReplyAllToItem"):
            to += tuple(a for a in original.to if a != me and a not in to)
            cc = cc or tuple(a for a in original.cc if a != me and a not in to)
    if not to and not cc and not given.bcc:
        raise ResponseError("ErrorInvalidRecipients", "the response has no recipient")
    subject = obj.findtext(t("Subject"))
    if subject is None:
        subject = f"{prefix}: {original.subject}"
    references = original.references + ((original.message_id,) if original.message_id else ())
    quoted = f"\n\n-----Original Message-----\nFrom: {original.sender or ''}\nSubject: {original.subject}\n\n" \
             f"{original.body}"
    data = MessageData(subject=limited_subject(subject), sender=me, to=to, cc=cc, bcc=given.bcc,
                       in_reply_to=original.message_id, references=references,
                       thread_index=original.thread_index,
                       body=(given.body or obj.findtext(t("NewBodyContent")) or "") + quoted)
    data.size = len(data.body.encode("utf-8", "replace")) + 200
    return data, None, None


def save(ctx: Context, folder: Folder, data: MessageData, categories: list[str] | None = None,
         is_read: bool = True) -> Item:
    """Store a message in a folder without sending it (a draft)."""
    mbx = ctx.need_mailbox()
    return store_call(ctx.store.save, mbx.address, folder.folder_id, data, categories=categories, is_read=is_read)


def _send(ctx: Context, data: MessageData, save_to: Folder | None, categories: list[str] | None) -> str | None:
    mbx = ctx.need_mailbox()
    _, sent_id = store_call(ctx.store.send, mbx.address, data, save_copy=save_to is not None)
    if sent_id is not None and save_to is not None and save_to.folder_id != mbx.distinguished["sentitems"]:
        sent_id = store_call(ctx.store.move, mbx.address, sent_id, save_to.folder_id)
    if sent_id is not None and categories:
        store_call(ctx.store.update, mbx.address, sent_id, categories=categories)
    return sent_id


def create_item(ctx: Context, req: etree._Element) -> etree._Element:
    disposition = req.get("MessageDisposition", "SaveOnly")
    if disposition not in DISPOSITIONS:
        raise EwsFault("ErrorSchemaValidation",
                       f"The request failed schema validation: MessageDisposition {disposition!r}")
    mbx = ctx.need_mailbox()
    saved_ref = ctx.folder_refs(req.find(m("SavedItemFolderId")))
    out = Responses("CreateItem")
    container = req.find(m("Items"))
    for msg in (container if container is not None else ()):
        if not isinstance(msg.tag, str):
            continue

        def one(msg: etree._Element = msg) -> list[etree._Element]:
            if msg.tag in calendar.MEETING_RESPONSES:
                return calendar.respond(ctx, msg, save_copy=disposition != "SendOnly")
            if msg.tag in RESPONSE_OBJECTS:
                data, categories, is_read = response_from_xml(ctx, msg)
            else:
                data, categories, is_read = message_from_xml(msg)
            if disposition == "SaveOnly" or data.item_type != "Message":
                home = mbx.distinguished[ITEM_TYPES[data.item_type]]
                folder = ctx.folder(saved_ref[0]) if saved_ref else mbx.folders[home]
                item = save(ctx, folder, data, categories, True if is_read is None else is_read)
                answer = item_id_only(item.item_id, item.version, data.item_type)
                given = msg.find(t("Attachments"))
                if given is not None and len(given):
                    item, stored = attachments.add(ctx, item, [a for a in given if isinstance(a.tag, str)])
                    answer = item_id_only(item.item_id, item.version, data.item_type)
                    answer.append(el("t:Attachments", None, None, *attachments.ids_of(item, stored)))
                return [el("m:Items", None, None, answer)]
            save_to = None
            if disposition == "SendAndSaveCopy":
                save_to = ctx.folder(saved_ref[0]) if saved_ref else mbx.folders[mbx.distinguished["sentitems"]]
            _send(ctx, data, save_to, categories)
            return [el("m:Items")]

        out.run(one)
    return out.root


def send_item(ctx: Context, req: etree._Element) -> etree._Element:
    ctx.need_mailbox()  # the mailbox is checked before anything else
    save_copy = parse_bool(req.get("SaveItemToFolder", "true"))
    saved_ref = ctx.folder_refs(req.find(m("SavedItemFolderId")))
    out = Responses("SendItem")
    for ref in ctx.item_refs(req.find(m("ItemIds"))):
        def one(r: etree._Element = ref) -> list:
            send_draft(ctx, ctx.item(r), save_copy, saved_ref)
            return []
        out.run(one)
    return out.root


def send_draft(ctx: Context, draft: Item, save_copy: bool, saved_ref: list[etree._Element]) -> None:
    """Send a saved item (SendItem, or UpdateItem with a sending MessageDisposition): the draft goes."""
    mbx = ctx.need_mailbox()
    save_to = None
    if save_copy:
        save_to = ctx.folder(saved_ref[0]) if saved_ref else mbx.folders[mbx.distinguished["sentitems"]]
    _send(ctx, draft.data, save_to, list(draft.categories))
    store_call(ctx.store.delete, mbx.address, draft.item_id)


OPERATIONS = {"CreateItem": create_item, "SendItem": send_item}
