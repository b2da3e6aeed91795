"""Attachments: in CreateItem, and CreateAttachment, GetAttachment and DeleteAttachment.

An item's attachments are one kept property (``Attachments``, see :mod:`simulator.exchange.ews.fields`):
the ``t:FileAttachment`` and ``t:ItemAttachment`` elements as the client sent them, each given a
``t:AttachmentId`` and, for a file, its ``Size`` and ``LastModifiedTime``. Adding or deleting one
is an update of the item (a new change key, returned as ``RootItemChangeKey``). GetItem lists the
attachments without their content; GetAttachment returns them whole.
"""

from __future__ import annotations

import base64
import binascii
from copy import deepcopy

from lxml import etree

from simulator.exchange.ews import bodies
from simulator.exchange.ews.context import (
    Context,
    Responses,
    change_key,
    need_well_formed,
    parse_shape,
    store_call,
)
from simulator.exchange.ews.fields import keep, revive
from simulator.exchange.ews.xml import TNS, EwsFault, ResponseError, el, format_datetime, m, parse_bool, t
from simulator.exchange.store import Item

KEY = "Attachments"
KINDS = (t("FileAttachment"), t("ItemAttachment"))
# what GetItem leaves out of an attachment: a file's content, an attached item
_HEAVY = frozenset(t(n) for n in ("Content", "Message", "CalendarItem", "Contact", "Task", "Item", "PostItem",
                                  "DistributionList", "MeetingRequest", "MeetingResponse", "MeetingCancellation"))


def _attachment_id(attachment: etree._Element) -> str:
    found = attachment.find(t("AttachmentId"))
    return found.get("Id", "") if found is not None else ""


def attached(item: Item) -> list[etree._Element]:
    """The item's attachments, whole."""
    text = item.data.kept.get(KEY)
    return list(revive(text)) if text else []


def has_attachments(item: Item) -> bool:
    return bool(item.data.kept.get(KEY))


def listed(item: Item) -> etree._Element | None:
    """``t:Attachments`` as GetItem shows it: each attachment without its content."""
    attachments = attached(item)
    if not attachments:
        return None
    holder = el("t:Attachments")
    for attachment in attachments:
        for part in list(attachment):
            if part.tag in _HEAVY:
                attachment.remove(part)
        _root_ids(attachment, item)
        holder.append(attachment)
    return holder


def _root_ids(attachment: etree._Element, item: Item) -> None:
    found = attachment.find(t("AttachmentId"))
    if found is not None:
        found.set("RootItemId", item.item_id)
        found.set("RootItemChangeKey", change_key(item.item_id, item.version))


def _prepared(ctx: Context, given: etree._Element) -> etree._Element:
    """A copy of a new attachment with its id, and for a file its size and time."""
    if given.tag not in KINDS:
        raise ResponseError("ErrorInvalidAttachmentType", f"t:{etree.QName(given).localname} is not an attachment "
                                                          "(t:FileAttachment or t:ItemAttachment)")
    attachment = deepcopy(given)
    old = attachment.find(t("AttachmentId"))
    if old is not None:
        attachment.remove(old)
    attachment.insert(0, etree.Element(t("AttachmentId"), Id=ctx.store.ids.next("AAMkAt"), nsmap={"t": TNS}))
    if attachment.tag == t("FileAttachment"):
        content = attachment.findtext(t("Content")) or ""
        try:
            size = len(base64.b64decode(content.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise ResponseError("ErrorInvalidRequest", "t:Content of a file attachment is not base64") from None
        for name, value in (("Size", str(size)), ("LastModifiedTime", format_datetime(ctx.store.clock.now()))):
            stale = attachment.find(t(name))
            if stale is not None:
                attachment.remove(stale)
            attachment.append(etree.Element(t(name), nsmap={"t": TNS}))
            attachment[-1].text = value
    return attachment


def add(ctx: Context, item: Item, new: list[etree._Element]) -> tuple[Item, list[etree._Element]]:
    """Attach ``new`` (request elements) to ``item``: the updated item and the stored attachments."""
    prepared = [_prepared(ctx, a) for a in new]
    return _save(ctx, item, attached(item) + prepared), prepared


def _save(ctx: Context, item: Item, attachments: list[etree._Element]) -> Item:
    """Give ``item`` these attachments (an update of the item: a new change key)."""
    holder = etree.Element(t(KEY), nsmap={"t": TNS})
    holder.extend(attachments)
    return store_call(ctx.store.update, ctx.need_mailbox().address, item.item_id,
                      kept={KEY: keep(holder) if attachments else ""})


def ids_of(item: Item, stored: list[etree._Element]) -> list[etree._Element]:
    """Each attachment as an answer names it: its kind and its id (with the item's id and change key)."""
    out = []
    for attachment in stored:
        short = etree.Element(attachment.tag, nsmap={"t": TNS})
        short.append(deepcopy(attachment.find(t("AttachmentId"))))
        _root_ids(short, item)
        out.append(short)
    return out


def find(ctx: Context, attachment_id: str) -> tuple[Item, etree._Element]:
    """The item holding an attachment of this mailbox, and the attachment."""
    mbx = ctx.need_mailbox()
    need_well_formed(attachment_id, "attachment id")
    for folder in mbx.folders.values():
        for item in folder.items.values():
            text = item.data.kept.get(KEY)
            if text and attachment_id in text:
                for attachment in attached(item):
                    if _attachment_id(attachment) == attachment_id:
                        return item, attachment
    raise ResponseError("ErrorInvalidAttachmentId", f"no attachment has the id {attachment_id!r}")


def create_attachment(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("CreateAttachment")
    parent = req.find(m("ParentItemId"))
    container = req.find(m("Attachments"))

    def one() -> list[etree._Element]:
        if parent is None:
            raise ResponseError("ErrorInvalidRequest", "CreateAttachment needs m:ParentItemId")
        item, stored = add(ctx, ctx.item(parent), [a for a in (container if container is not None else ())
                                                    if isinstance(a.tag, str)])
        return [el("m:Attachments", None, None, *ids_of(item, stored))]

    out.run(one)
    return out.root


_BODY_TYPES = ("Best", "HTML", "Text")


def _shaped(attachment: etree._Element, shape: etree._Element | None) -> None:
    """Serve an attached item in the form ``m:AttachmentShape`` asks: its body converted to
    ``t:BodyType`` (filtered when ``t:FilterHtmlContent``), and a ``t:TextBody`` when one is asked for."""
    if shape is None or attachment.tag != t("ItemAttachment"):
        return
    body_type = (shape.findtext(t("BodyType")) or "Best").strip()
    if body_type not in _BODY_TYPES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: BodyType {body_type!r} is "
                                                f"not one of {', '.join(_BODY_TYPES)}")
    filtered = parse_bool(shape.findtext(t("FilterHtmlContent")))
    _, uris = parse_shape(shape)
    for attached_item in attachment:
        if attached_item.tag not in _HEAVY or attached_item.tag == t("Content"):
            continue
        body = attached_item.find(t("Body"))
        text = body.text or "" if body is not None else ""
        is_html = body is not None and body.get("BodyType", "Text") == "HTML"
        if "item:TextBody" in uris and attached_item.find(t("TextBody")) is None and body is not None:
            text_body = etree.SubElement(attached_item, t("TextBody"), BodyType="Text")
            text_body.text = bodies.html_to_text(text) if is_html else text
        if body is None:
            continue
        if body_type == "Text" and is_html:
            body.text, body.attrib["BodyType"] = bodies.html_to_text(text), "Text"
        elif body_type == "HTML" and not is_html:
            body.text, body.attrib["BodyType"] = bodies.text_to_html(text), "HTML"
        if filtered and body.get("BodyType") == "HTML":
            body.text = bodies.filtered_html(body.text or "")


def get_attachment(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("GetAttachment")
    shape = req.find(m("AttachmentShape"))
    ids = req.find(m("AttachmentIds"))
    for ref in (ids if ids is not None else ()):
        if not isinstance(ref.tag, str):
            continue

        def one(ref: etree._Element = ref) -> list[etree._Element]:
            item, attachment = find(ctx, ref.get("Id", ""))
            _root_ids(attachment, item)
            _shaped(attachment, shape)
            return [el("m:Attachments", None, None, attachment)]
        out.run(one)
    return out.root


def delete_attachment(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("DeleteAttachment")
    ids = req.find(m("AttachmentIds"))
    for ref in (ids if ids is not None else ()):
        if not isinstance(ref.tag, str):
            continue

        def one(ref: etree._Element = ref) -> list[etree._Element]:
            wanted = ref.get("Id", "")
            item, _ = find(ctx, wanted)
            updated = _save(ctx, item, [a for a in attached(item) if _attachment_id(a) != wanted])
            root = el("m:RootItemId", {"RootItemId": updated.item_id,
                                       "RootItemChangeKey": change_key(updated.item_id, updated.version)})
            return [root]
        out.run(one)
    return out.root


OPERATIONS = {"CreateAttachment": create_attachment, "GetAttachment": get_attachment,
              "DeleteAttachment": delete_attachment}
