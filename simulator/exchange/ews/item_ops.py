"""MoveItem, CopyItem, DeleteItem and UpdateItem."""

from __future__ import annotations

from lxml import etree

from simulator.exchange.ews import calendar
from simulator.exchange.ews.context import Context, Responses, store_call
from simulator.exchange.ews.create_item import DISPOSITIONS, addresses_in, send_draft
from simulator.exchange.ews.fields import (
    MAX_TEXT,
    NAME_PARTS,
    keep,
    key_of_path,
    limited_subject,
    local,
    merge_entries,
    revive,
)
from simulator.exchange.ews.items import item_id_only
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, m, parse_bool, t

DELETE_TYPES = ("HardDelete", "SoftDelete", "MoveToDeletedItems")


def _move_or_copy(operation: str, copy: bool):
    def handler(ctx: Context, req: etree._Element) -> etree._Element:
        to_folder = req.find(m("ToFolderId"))
        out = Responses(operation)
        address = ctx.need_mailbox().address
        for ref in ctx.item_refs(req.find(m("ItemIds"))):
            def one(r: etree._Element = ref) -> list[etree._Element]:
                # a missing destination is answered per item (ErrorFolderNotFound), as Exchange does
                dest = ctx.only_folder(to_folder, f"{operation} ToFolderId")
                item = ctx.item(r)
                if calendar.is_occurrence(item):
                    raise ResponseError("ErrorCalendarCannotMoveOrCopyOccurrence",
                                        "an occurrence moves with its series: move the recurring master")
                new_id = store_call(ctx.store.move, address, item.item_id, dest.folder_id, copy=copy)
                return [el("m:Items", None, None, item_id_only(new_id, 0, item.data.item_type))]
            out.run(one)
        return out.root
    return handler


def delete_item(ctx: Context, req: etree._Element) -> etree._Element:
    delete_type = req.get("DeleteType", "HardDelete")
    if delete_type not in DELETE_TYPES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: DeleteType {delete_type!r}")
    out = Responses("DeleteItem")
    mbx = ctx.need_mailbox()
    for ref in ctx.item_refs(req.find(m("ItemIds"))):
        def one(r: etree._Element = ref) -> list:
            item = ctx.item(r)
            trash = mbx.distinguished["deleteditems"]
            recoverable = mbx.distinguished.get("recoverableitemsdeletions")
            if calendar.is_occurrence(item):  # the series keeps it as a deleted occurrence
                calendar.delete_occurrence(ctx, item)
            elif delete_type == "MoveToDeletedItems" and item.folder_id != trash:
                store_call(ctx.store.move, mbx.address, item.item_id, trash)
            elif delete_type == "SoftDelete" and recoverable is not None and item.folder_id != recoverable:
                store_call(ctx.store.move, mbx.address, item.item_id, recoverable)  # kept in Recoverable Items
            else:
                store_call(ctx.store.delete, mbx.address, item.item_id)
            return []
        out.run(one)
    return out.root


def _value_element(change: etree._Element) -> etree._Element | None:
    """The property element of a Set/AppendTo change: the child of the item that holds it."""
    holder = next((c for c in change if isinstance(c.tag, str) and c.tag not in _PATHS), None)
    if holder is None:
        return None
    return next((c for c in holder if isinstance(c.tag, str)), None)


_PATHS = (t("FieldURI"), t("IndexedFieldURI"), t("ExtendedFieldURI"))
# recipients and sender: kept as sent, and modeled too (sending reads them)
ADDRESS_FIELDS = {"message:ToRecipients": "to", "message:CcRecipients": "cc", "message:BccRecipients": "bcc",
                  "message:From": "sender", "message:Sender": "sender"}
KINDS = ("SetItemField", "AppendToItemField", "DeleteItemField")


class _Changes:
    """The changes of one ItemChange, gathered before the store is asked to make them at once."""

    def __init__(self, item) -> None:
        self.item = item
        self.categories: list[str] | None = None
        self.is_read: bool | None = None
        self.subject: str | None = None
        self.body: str | None = None
        self.addresses: dict[str, list[str] | str | None] = {}  # recipients and sender the store models
        self.kept: dict[str, str] = {}

    def current(self, key: str) -> str | None:
        return self.kept.get(key, self.item.data.kept.get(key)) or None

    def put(self, key: str, text: str | None) -> None:
        """Set a kept property; None deletes it: kept as an empty text, so that what the store models
        of it (a message's References, say) is not served either."""
        self.kept[key] = text or ""


def _change(changes: _Changes, kind: str, path: etree._Element, value: etree._Element | None) -> None:
    uri = path.get("FieldURI") if path.tag != t("ExtendedFieldURI") else None
    if kind != "DeleteItemField" and value is None:
        raise ResponseError("ErrorInvalidPropertySet", f"{kind} for {uri or 'an extended property'} has no value")
    if uri == "item:Categories":
        new = [s.text or "" for s in value.iter(t("String"))] if value is not None else []
        current = changes.categories if changes.categories is not None else list(changes.item.categories)
        changes.categories = new if kind == "SetItemField" else current + new if kind == "AppendToItemField" else []
        return
    if uri == "message:IsRead":
        if kind == "DeleteItemField":
            changes.is_read = False
        elif value.tag != t("IsRead"):
            raise ResponseError("ErrorInvalidPropertySet", "SetItemField for message:IsRead needs t:IsRead")
        else:
            changes.is_read = parse_bool(value.text or "")
        return
    if uri == "item:Subject":
        changes.subject = limited_subject(value.text or "") if kind != "DeleteItemField" else ""
        return
    if value is not None and local(value) in NAME_PARTS and len(value.text or "") > MAX_TEXT:
        raise ResponseError("ErrorPropertyUpdate", f"{uri} takes at most {MAX_TEXT} characters")
    if uri in ADDRESS_FIELDS:
        name = ADDRESS_FIELDS[uri]
        found = list(addresses_in(value.getparent(), local(value))) if value is not None else []
        if kind == "AppendToItemField":
            current = changes.addresses.get(name, getattr(changes.item.data, name))
            found = list(dict.fromkeys([*(current or ()), *found]))
        changes.addresses[name] = (found[0] if found else None) if name == "sender" else found
    key = key_of_path(path)
    if path.tag == t("IndexedFieldURI"):
        index = path.get("FieldIndex")
        part = uri.split(":")[2] if uri and uri.count(":") == 2 else None  # contacts:PhysicalAddress:Street
        changes.put(key, merge_entries(changes.current(key), value, index, remove=kind == "DeleteItemField",
                                       part=part)
                    if value is not None or kind == "DeleteItemField" else None)
        return
    if uri == "item:Body":
        text = "" if kind == "DeleteItemField" else (value.text or "")
        if kind == "AppendToItemField":
            text = changes.item.data.body + text
        changes.body = text
    if kind == "DeleteItemField":
        changes.put(key, None)
    elif kind == "AppendToItemField" and changes.current(key) is not None:
        merged = revive(changes.current(key))
        if uri == "item:Body":
            merged.text = (merged.text or "") + (value.text or "")
        else:
            merged.extend(list(value))
        changes.put(key, keep(merged))
    else:
        changes.put(key, keep(value))


def _apply_changes(ctx: Context, item_change: etree._Element) -> list[etree._Element]:
    ref = next((c for c in item_change if c.tag in (t("ItemId"), t("OccurrenceItemId"), t("RecurringMasterItemId"))),
               None)
    if ref is None:
        raise ResponseError("ErrorInvalidIdMalformed", "ItemChange needs a t:ItemId")
    item = ctx.item(ref)
    changes = _Changes(item)
    updates = item_change.find(t("Updates"))
    for change in (updates if updates is not None else ()):
        if not isinstance(change.tag, str):
            continue
        kind = etree.QName(change).localname
        if kind not in KINDS:
            raise ResponseError("ErrorInvalidPropertySet", f"t:{kind} is not an item change ({', '.join(KINDS)})")
        path = next((c for c in change if c.tag in _PATHS), None)
        if path is None:
            raise ResponseError("ErrorInvalidPropertySet", f"t:{kind} names no property (t:FieldURI)")
        _change(changes, kind, path, _value_element(change))
    if calendar.is_occurrence(item):  # the occurrence becomes an exception of its series
        return _updated(calendar.update_occurrence(ctx, item, changes.kept, changes.subject, changes.body))
    changes.kept.update(calendar.normalized(item.data.item_type, changes.kept, item.data.kept))
    one_off = calendar.regenerate(ctx, item, changes.kept, changes.subject, changes.body, changes.categories)
    if one_off is not None:  # a recurring task moved on: the answer names the occurrence that was done
        return _updated(one_off)
    updated = store_call(ctx.store.update, ctx.need_mailbox().address, item.item_id, categories=changes.categories,
                        is_read=changes.is_read, subject=changes.subject, body=changes.body, kept=changes.kept,
                        addresses=changes.addresses)
    return _updated(updated)


def _updated(item) -> list[etree._Element]:
    """The answer to one ItemChange: the item it made (its new change key), and no conflicts."""
    return [el("m:Items", None, None, item_id_only(item.item_id, item.version, item.data.item_type)),
            el("m:ConflictResults", None, None, el("t:Count", None, "0"))]


def update_item(ctx: Context, req: etree._Element) -> etree._Element:
    """UpdateItem; with MessageDisposition SendOnly or SendAndSaveCopy the updated message is then
    sent, and the answer names no item (as for CreateItem)."""
    disposition = req.get("MessageDisposition", "SaveOnly")
    if disposition not in DISPOSITIONS:
        raise EwsFault("ErrorSchemaValidation",
                       f"The request failed schema validation: MessageDisposition {disposition!r}")
    saved_ref = ctx.folder_refs(req.find(m("SavedItemFolderId")))
    out = Responses("UpdateItem")
    changes = req.find(m("ItemChanges"))
    for change in (changes if changes is not None else ()):
        if not isinstance(change.tag, str):
            continue

        def one(change: etree._Element = change) -> list[etree._Element]:
            answer = _apply_changes(ctx, change)
            if disposition == "SaveOnly":
                return answer
            updated = ctx.item(answer[0][0].find(t("ItemId")))
            send_draft(ctx, updated, disposition == "SendAndSaveCopy", saved_ref)
            return [el("m:Items"), answer[1]]
        out.run(one)
    return out.root


OPERATIONS = {
    "MoveItem": _move_or_copy("MoveItem", copy=False),
    "CopyItem": _move_or_copy("CopyItem", copy=True),
    "DeleteItem": delete_item,
    "UpdateItem": update_item,
}
