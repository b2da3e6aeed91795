"""MoveItem, CopyItem, DeleteItem and UpdateItem."""

from __future__ import annotations

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, store_call
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
                new_id = store_call(ctx.store.move, address, item.item_id, dest.folder_id, copy=copy)
                return [el("m:Items", None, None, item_id_only(new_id))]
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
            if delete_type == "MoveToDeletedItems" and item.folder_id != trash:
                store_call(ctx.store.move, mbx.address, item.item_id, trash)
            else:
                store_call(ctx.store.delete, mbx.address, item.item_id)
            return []
        out.run(one)
    return out.root


def _value_element(change: etree._Element) -> etree._Element | None:
    holder = next((c for c in change if isinstance(c.tag, str) and c.tag not in (
        t("FieldURI"), t("IndexedFieldURI"), t("ExtendedFieldURI"))), None)
    if holder is None:
        return None
    return next((c for c in holder if isinstance(c.tag, str)), None)


UPDATABLE = ("item:Categories", "message:IsRead")


def _apply_changes(ctx: Context, item_change: etree._Element) -> list[etree._Element]:
    ref = next((c for c in item_change if c.tag in (t("ItemId"), t("OccurrenceItemId"))), None)
    if ref is None:
        raise ResponseError("ErrorInvalidIdMalformed", "ItemChange needs a t:ItemId")
    item = ctx.item(ref)
    categories: list[str] | None = None
    is_read: bool | None = None
    updates = item_change.find(t("Updates"))
    for change in (updates if updates is not None else ()):
        if not isinstance(change.tag, str):
            continue
        kind = etree.QName(change).localname
        path = next((c for c in change if c.tag in (t("FieldURI"), t("IndexedFieldURI"), t("ExtendedFieldURI"))), None)
        uri = path.get("FieldURI") if path is not None and path.tag == t("FieldURI") else None
        if uri not in UPDATABLE:
            name = uri or (etree.QName(path).localname if path is not None else "?")
            raise ResponseError("ErrorInvalidPropertySet",
                                f"the simulator can only update {', '.join(UPDATABLE)} with UpdateItem, not {name}")
        value = _value_element(change)
        current = categories if categories is not None else list(item.categories)
        if uri == "item:Categories":
            new = [s.text or "" for s in value.iter(t("String"))] if value is not None else []
            if kind == "SetItemField":
                categories = new
            elif kind == "AppendToItemField":
                categories = current + new
            elif kind == "DeleteItemField":
                categories = []
        else:
            text = value.text if value is not None and value.tag == t("IsRead") else None
            if kind in ("SetItemField", "AppendToItemField"):
                if text is None:
                    raise ResponseError("ErrorInvalidPropertySet", "SetItemField for message:IsRead needs t:IsRead")
                is_read = parse_bool(text)
            elif kind == "DeleteItemField":
                is_read = False
    store_call(ctx.store.update, ctx.need_mailbox().address, item.item_id, categories=categories, is_read=is_read)
    return [el("m:Items", None, None, item_id_only(item.item_id)), el("m:ConflictResults", None, None,
                                                                      el("t:Count", None, "0"))]


def update_item(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("UpdateItem")
    changes = req.find(m("ItemChanges"))
    for change in (changes if changes is not None else ()):
        if isinstance(change.tag, str):
            out.run(_apply_changes, ctx, change)
    return out.root


OPERATIONS = {
    "MoveItem": _move_or_copy("MoveItem", copy=False),
    "CopyItem": _move_or_copy("CopyItem", copy=True),
    "DeleteItem": delete_item,
    "UpdateItem": update_item,
}
