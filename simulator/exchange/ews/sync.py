"""SyncFolderItems: the sync state is a position in the folder's append-only change journal.

A state names its folder and an offset (``S1.<folder id>.<offset>``, base64). Changes after the
offset are replayed, netted against the current contents: a creation whose item has since left
the folder is not reported, a deletion of an item the client never saw (created after the
state) is not reported either, and an update is reported once, only for items the client
already had. ``MaxChangesReturned`` bounds one page; ``IncludesLastItemInRange`` tells whether the
journal's end was reached.
"""

from __future__ import annotations

import base64
import binascii

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key
from simulator.exchange.ews.items import item_element, item_fields
from simulator.exchange.ews.xml import ResponseError, el, m, t, xml_bool
from simulator.exchange.store import Folder

MAX_CHANGES = 512


def encode_state(folder: Folder, position: int) -> str:
    return base64.b64encode(f"S1.{folder.folder_id}.{position}".encode()).decode()


def decode_state(folder: Folder, state: str) -> int:
    try:
        tag, folder_id, position = base64.b64decode(state, validate=True).decode().split(".")
        pos = int(position)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState is corrupt") from None
    if tag != "S1" or folder_id != folder.folder_id or not 0 <= pos <= len(folder.journal):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState was issued for another folder")
    return pos


def sync_folder_items(ctx: Context, req: etree._Element) -> etree._Element:
    fields = item_fields(req.find(m("ItemShape")))
    out = Responses("SyncFolderItems")

    def one() -> list[etree._Element]:
        folder = ctx.only_folder(req.find(m("SyncFolderId")), "SyncFolderItems SyncFolderId")
        state = (req.findtext(m("SyncState")) or "").strip()
        start = decode_state(folder, state) if state else 0
        try:
            max_changes = int(req.findtext(m("MaxChangesReturned")) or MAX_CHANGES)
        except ValueError:
            raise ResponseError("ErrorInvalidRequest", "MaxChangesReturned is not a number") from None
        if not 1 <= max_changes <= MAX_CHANGES:
            raise ResponseError("ErrorInvalidRequest", f"MaxChangesReturned must be between 1 and {MAX_CHANGES}")
        ignore_el = req.find(m("Ignore"))
        ignore = {i.get("Id") for i in ignore_el.iter(t("ItemId"))} if ignore_el is not None else set()
        journal = folder.journal
        created_since = {item_id for change, item_id in journal[start:] if change == "create"}
        # an item also updated otherwise since the state is answered with an Update, not a ReadFlagChange
        updated_since = {item_id for change, item_id in journal[start:] if change == "update"}
        changes = el("m:Changes")
        emitted, pos, updated = 0, start, set()
        while pos < len(journal) and emitted < max_changes:
            change, item_id = journal[pos]
            pos += 1
            if item_id in ignore:
                continue
            item = folder.items.get(item_id)
            if change == "create":
                if item is None:
                    continue
                changes.append(el("t:Create", None, None, item_element(ctx, item, fields)))
            elif change == "delete":
                if item_id in created_since:
                    continue
                changes.append(el("t:Delete", None, None, el("t:ItemId", {"Id": item_id})))
            else:
                if item is None or item_id in created_since or item_id in updated:
                    continue
                updated.add(item_id)
                if change == "read" and item_id not in updated_since:
                    changes.append(el("t:ReadFlagChange", None, None, el("t:ItemId", {
                        "Id": item_id, "ChangeKey": change_key(item_id, item.version)}),
                        el("t:IsRead", None, xml_bool(item.is_read))))
                else:
                    changes.append(el("t:Update", None, None, item_element(ctx, item, fields)))
            emitted += 1
        return [el("m:SyncState", None, encode_state(folder, pos)),
                el("m:IncludesLastItemInRange", None, xml_bool(pos >= len(journal))), changes]

    out.run(one)
    return out.root


OPERATIONS = {"SyncFolderItems": sync_folder_items}
