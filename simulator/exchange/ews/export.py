"""ExportItems and UploadItems: an item as an opaque stream, and the item made again from it.

Exchange exports an item as a binary "full-fidelity" stream that only Exchange reads back. The
simulator's stream is its own: a short signature, then the item as the store keeps it (the message
record of :mod:`simulator.exchange.persist`, categories, read flag, received time) as compressed
JSON, all of it base64 in ``m:Data``. A client treats it as opaque, as it must with Exchange.

UploadItems takes such streams back: ``CreateAction="CreateNew"`` makes a new item in the parent
folder (new id, the original received time, its attachments under new ids); ``Update`` replaces
what an update can change of the item named by ``t:ItemId`` (new change key, same id);
``UpdateOrCreate`` updates when the item still exists and creates otherwise. A stream that is not
one of these is answered ``ErrorCorruptData``.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from datetime import datetime

from lxml import etree

from engine.clock import parse_instant
from simulator.exchange import persist
from simulator.exchange.ews import attachments
from simulator.exchange.ews.context import Context, Responses, change_key, store_call
from simulator.exchange.ews.fields import keep, revive
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, m, t
from simulator.exchange.store import Item

SIGNATURE = b"SSSX\x01"  # what every exported stream of this server starts with (format 1)
CREATE_ACTIONS = ("CreateNew", "Update", "UpdateOrCreate")


def export_stream(item: Item) -> str:
    """The item as the base64 text of ``m:Data``."""
    record = {"m": persist.message_record(item.data), "c": list(item.categories), "r": item.is_read,
              "t": item.received.isoformat()}
    packed = zlib.compress(json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8"), 6)
    return base64.b64encode(SIGNATURE + packed).decode("ascii")


def read_stream(text: str) -> tuple:
    """(message, categories, is_read, received) of a stream :func:`export_stream` wrote."""
    corrupt = ResponseError("ErrorCorruptData", "the data is not an item exported by this server")
    try:
        raw = base64.b64decode((text or "").strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise corrupt from None
    if not raw.startswith(SIGNATURE):
        raise corrupt
    try:
        record = json.loads(zlib.decompress(raw[len(SIGNATURE):]).decode("utf-8"))
        data = persist.message_from_record(record["m"])
        categories = [str(c) for c in record["c"]]
        is_read = bool(record["r"])
        received: datetime = parse_instant(record["t"])
    except (zlib.error, UnicodeDecodeError, ValueError, KeyError, TypeError, persist.PersistError):
        raise corrupt from None
    return data, categories, is_read, received


def export_items(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("ExportItems")
    for ref in ctx.item_refs(req.find(m("ItemIds"))):
        def one(r: etree._Element = ref) -> list[etree._Element]:
            item = ctx.item(r)
            return [el("m:ItemId", {"Id": item.item_id, "ChangeKey": change_key(item.item_id, item.version)}),
                    el("m:Data", None, export_stream(item))]
        out.run(one)
    return out.root


def _fresh_attachment_ids(ctx: Context, kept: dict[str, str]) -> None:
    """Give the attachments of an item made from a stream ids of their own (an attachment id names
    one attachment of one item)."""
    text = kept.get(attachments.KEY)
    if not text:
        return
    holder = revive(text)
    for found in holder.iter(t("AttachmentId")):
        found.attrib.clear()
        found.set("Id", ctx.store.ids.next("AAMkAt"))
    kept[attachments.KEY] = keep(holder)


def _create(ctx: Context, folder_ref: etree._Element | None, stream: tuple) -> Item:
    data, categories, is_read, received = stream
    if folder_ref is None:
        raise ResponseError("ErrorInvalidRequest", "an uploaded item needs its t:ParentFolderId")
    # t:ParentFolderId names a folder as t:FolderId does
    folder = ctx.folder(el("t:FolderId", {"Id": folder_ref.get("Id") or ""}))
    _fresh_attachment_ids(ctx, data.kept)
    return store_call(ctx.store.save, ctx.need_mailbox().address, folder.folder_id, data, categories=categories,
                      is_read=is_read, received=received)


def _update(ctx: Context, item: Item, stream: tuple) -> Item:
    data, categories, is_read, _ = stream
    kept = {key: "" for key in item.data.kept}  # what the stream does not have goes
    _fresh_attachment_ids(ctx, data.kept)
    kept.update(data.kept)
    addresses = {"to": list(data.to), "cc": list(data.cc), "bcc": list(data.bcc), "sender": data.sender}
    return store_call(ctx.store.update, ctx.need_mailbox().address, item.item_id, categories=categories,
                      is_read=is_read, subject=data.subject, body=data.body, kept=kept, addresses=addresses)


def upload_items(ctx: Context, req: etree._Element) -> etree._Element:
    ctx.need_mailbox()
    out = Responses("UploadItems")
    container = req.find(m("Items"))
    for given in (container if container is not None else ()):
        if not isinstance(given.tag, str):
            continue
        action = given.get("CreateAction", "")
        if given.tag != t("Item") or action not in CREATE_ACTIONS:
            raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: each m:Items child is a "
                                                    f"t:Item with a CreateAction of {', '.join(CREATE_ACTIONS)}")

        def one(given: etree._Element = given, action: str = action) -> list[etree._Element]:
            stream = read_stream(given.findtext(t("Data")) or "")
            ref = given.find(t("ItemId"))
            parent = given.find(t("ParentFolderId"))
            if action == "CreateNew":
                item = _create(ctx, parent, stream)
            elif ref is None:
                raise ResponseError("ErrorInvalidRequest", f"CreateAction {action} needs the t:ItemId to update")
            elif action == "Update":
                item = _update(ctx, ctx.item(ref), stream)
            else:
                try:
                    existing = ctx.item(ref)
                except ResponseError as exc:
                    if exc.code != "ErrorItemNotFound":
                        raise
                    existing = None
                item = _update(ctx, existing, stream) if existing is not None else _create(ctx, parent, stream)
            return [el("m:ItemId", {"Id": item.item_id, "ChangeKey": change_key(item.item_id, item.version)})]
        out.run(one)
    return out.root


OPERATIONS = {"ExportItems": export_items, "UploadItems": upload_items}
