"""EmptyFolder and MoveFolder, and the two item operations that move items: MarkAsJunk, ArchiveItem.

EmptyFolder deletes a folder's items (``DeleteSubFolders``: and its subfolders) in one store
operation; Exchange Online refuses to empty the root of the hierarchy (``ErrorCannotEmptyFolder``),
and distinguished folders under the emptied one stay. ``MoveToDeletedItems`` moves the items to
Deleted Items instead. MoveFolder keeps the folder's id (as Exchange does) and gives a new change key.

MarkAsJunk: an item marked as not junk with ``MoveItem="true"`` goes back to the Inbox (a new id, as
for MoveItem, answered as ``MovedItemId``); an item marked as junk stays where it is and keeps its id,
even with ``MoveItem="true"``, as Exchange Online does (exchangelib's own tests record that), and the
answer then has no ``MovedItemId``. ArchiveItem moves each item to the folder named by
``ArchiveSourceFolderId`` with the store's move (a new id, as for MoveItem).
"""

from __future__ import annotations

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key, store_call
from simulator.exchange.ews.folders import folder_id_element, folder_tag
from simulator.exchange.ews.items import item_id_only
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, m, parse_bool

DELETE_TYPES = ("HardDelete", "SoftDelete", "MoveToDeletedItems")


def empty_folder(ctx: Context, req: etree._Element) -> etree._Element:
    delete_type = req.get("DeleteType", "")
    if delete_type not in DELETE_TYPES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: DeleteType {delete_type!r} "
                                                f"is not one of {', '.join(DELETE_TYPES)}")
    sub_folders = parse_bool(req.get("DeleteSubFolders"))
    out = Responses("EmptyFolder")
    for ref in ctx.folder_refs(req.find(m("FolderIds"))):
        def one(r: etree._Element = ref) -> list:
            folder = ctx.folder(r)
            if folder.distinguished in ("root", "msgfolderroot"):
                raise ResponseError("ErrorCannotEmptyFolder", "the root of the folder hierarchy cannot be emptied")
            address = ctx.need_mailbox().address
            if delete_type == "MoveToDeletedItems" and folder.distinguished != "deleteditems":
                for item_id in list(folder.items):
                    store_call(ctx.store.move, address, item_id, "deleteditems")
            store_call(ctx.store.empty_folder, address, folder.folder_id, sub_folders=sub_folders)
            return []

        out.run(one)
    return out.root


def move_folder(ctx: Context, req: etree._Element) -> etree._Element:
    to_folder = req.find(m("ToFolderId"))
    out = Responses("MoveFolder")
    for ref in ctx.folder_refs(req.find(m("FolderIds"))):
        def one(r: etree._Element = ref) -> list[etree._Element]:
            dest = ctx.only_folder(to_folder, "MoveFolder ToFolderId")
            folder = ctx.folder(r)
            moved = store_call(ctx.store.move_folder, ctx.need_mailbox().address, folder.folder_id, dest.folder_id)
            return [el("m:Folders", None, None, el(folder_tag(moved), None, None, folder_id_element(moved)))]

        out.run(one)
    return out.root


def _item_ids(ctx: Context, req: etree._Element) -> list[etree._Element]:
    refs = ctx.item_refs(req.find(m("ItemIds")))
    if not refs:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: m:ItemIds needs an item id")
    return refs


def mark_as_junk(ctx: Context, req: etree._Element) -> etree._Element:
    for attr in ("IsJunk", "MoveItem"):
        if req.get(attr) is None:
            raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: MarkAsJunk needs {attr}")
    is_junk, move = parse_bool(req.get("IsJunk")), parse_bool(req.get("MoveItem"))
    out = Responses("MarkAsJunk")
    for ref in _item_ids(ctx, req):
        def one(r: etree._Element = ref) -> list[etree._Element]:
            item = ctx.item(r)
            mbx = ctx.need_mailbox()
            dest = mbx.distinguished["inbox"]
            if move and not is_junk and item.folder_id != dest:
                new_id = store_call(ctx.store.move, mbx.address, item.item_id, dest)
                return [el("m:MovedItemId", {"Id": new_id, "ChangeKey": change_key(new_id)})]
            return []  # not moved: no MovedItemId

        out.run(one)
    return out.root


def archive_item(ctx: Context, req: etree._Element) -> etree._Element:
    to_folder = req.find(m("ArchiveSourceFolderId"))
    out = Responses("ArchiveItem")
    for ref in _item_ids(ctx, req):
        def one(r: etree._Element = ref) -> list[etree._Element]:
            dest = ctx.only_folder(to_folder, "ArchiveItem ArchiveSourceFolderId")
            item = ctx.item(r)
            new_id = store_call(ctx.store.move, ctx.need_mailbox().address, item.item_id, dest.folder_id)
            return [el("m:Items", None, None, item_id_only(new_id, 0, item.data.item_type))]

        out.run(one)
    return out.root


OPERATIONS = {
    "EmptyFolder": empty_folder,
    "MoveFolder": move_folder,
    "MarkAsJunk": mark_as_junk,
    "ArchiveItem": archive_item,
}
