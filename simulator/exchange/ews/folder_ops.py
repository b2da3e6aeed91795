"""EmptyFolder and MoveFolder, and the two item operations that move items: MarkAsJunk, ArchiveItem.

EmptyFolder deletes a folder's items (``DeleteSubFolders``: and its subfolders) in one store
operation; Exchange Online refuses to empty the root of the hierarchy (``ErrorCannotEmptyFolder``),
and distinguished folders under the emptied one stay. ``MoveToDeletedItems`` moves the items to
Deleted Items instead. MoveFolder keeps the folder's id (as Exchange does) and gives a new change key.

MarkAsJunk: the sandbox has no Junk Email folder, and Exchange Online leaves the item where it is
even with ``MoveItem="true"`` (exchangelib's own tests record that), so the item keeps its id and the
answer's ``MovedItemId`` is that id. ArchiveItem moves each item to the folder named by
``ArchiveSourceFolderId`` with the store's move (a new id, as for MoveItem).
"""

from __future__ import annotations

import zlib

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key, store_call
from simulator.exchange.ews.folders import FOLDER_TAGS, folder_class
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
            if folder.distinguished == "msgfolderroot":
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
            version = zlib.crc32(moved.parent_id.encode()) % 9973 + 1  # a change key that changes with the parent
            tag = FOLDER_TAGS.get(folder_class(moved), "t:Folder")
            return [el("m:Folders", None, None, el(tag, None, None, el(
                "t:FolderId", {"Id": moved.folder_id, "ChangeKey": change_key(moved.folder_id, version)})))]

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
    out = Responses("MarkAsJunk")
    for ref in _item_ids(ctx, req):
        def one(r: etree._Element = ref) -> list[etree._Element]:
            item = ctx.item(r)
            return [el("m:MovedItemId", {"Id": item.item_id, "ChangeKey": change_key(item.item_id)})]

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
