"""Folder operations: GetFolder, FindFolder, CreateFolder, DeleteFolder, SyncFolderHierarchy."""

from __future__ import annotations

import base64
import zlib

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key, parse_shape, store_call
from simulator.exchange.ews.restrictions import compile_restriction
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, m, sub, t, xml_bool
from simulator.exchange.store import Folder

FOLDER_CLASSES = {"calendar": "IPF.Appointment", "contacts": "IPF.Contact", "tasks": "IPF.Task"}
FOLDER_TAGS = {"IPF.Appointment": "t:CalendarFolder", "IPF.Contact": "t:ContactsFolder", "IPF.Task": "t:TasksFolder"}
DEFAULT_FIELDS = ("folder:FolderId", "folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount",
                  "folder:UnreadCount")
ALL_FIELDS = ("folder:FolderId", "folder:ParentFolderId", "folder:FolderClass", "folder:DisplayName",
              "folder:TotalCount", "folder:ChildFolderCount", "folder:EffectiveRights", "folder:UnreadCount")
_RIGHTS = ("CreateAssociated", "CreateContents", "CreateHierarchy", "Delete", "Modify", "Read", "ViewPrivateItems")


def folder_class(folder: Folder) -> str:
    return FOLDER_CLASSES.get(folder.distinguished or "", "IPF.Note")


def folder_id_element(folder: Folder, tag: str = "t:FolderId") -> etree._Element:
    return el(tag, {"Id": folder.folder_id, "ChangeKey": change_key(folder.folder_id)})


def _children(ctx: Context, folder: Folder) -> list[Folder]:
    return [f for f in ctx.need_mailbox().folders.values() if f.parent_id == folder.folder_id]


def folder_fields(shape: etree._Element | None) -> list[str]:
    base, extra = parse_shape(shape)
    fields = list(ALL_FIELDS if base == "AllProperties" else ("folder:FolderId",) if base == "IdOnly" else DEFAULT_FIELDS)
    for uri in extra:
        if uri not in fields:
            fields.append(uri)
    return fields


def folder_element(ctx: Context, folder: Folder, fields: list[str]) -> etree._Element:
    cls = folder_class(folder)
    e = el(FOLDER_TAGS.get(cls, "t:Folder"))
    wanted = set(fields)
    e.append(folder_id_element(folder))
    if "folder:ParentFolderId" in wanted and folder.parent_id:
        e.append(el("t:ParentFolderId", {"Id": folder.parent_id, "ChangeKey": change_key(folder.parent_id)}))
    if "folder:FolderClass" in wanted:
        sub(e, "t:FolderClass", cls)
    if "folder:DisplayName" in wanted:
        sub(e, "t:DisplayName", folder.name)
    if "folder:TotalCount" in wanted:
        sub(e, "t:TotalCount", str(len(folder.items)))
    if "folder:ChildFolderCount" in wanted:
        sub(e, "t:ChildFolderCount", str(len(_children(ctx, folder))))
    if "folder:EffectiveRights" in wanted:
        rights = sub(e, "t:EffectiveRights")
        for right in _RIGHTS:
            sub(rights, f"t:{right}", "true")
    if "folder:UnreadCount" in wanted:
        sub(e, "t:UnreadCount", str(sum(1 for i in folder.items.values() if not i.is_read)))
    if "folder:DistinguishedFolderId" in wanted and folder.distinguished:
        sub(e, "t:DistinguishedFolderId", folder.distinguished)
    return e


def _folders(*children: etree._Element, tag: str = "m:Folders") -> list[etree._Element]:
    return [el(tag, None, None, *children)]


# -- operations ----------------------------------------------------------------------------
def get_folder(ctx: Context, req: etree._Element) -> etree._Element:
    fields = folder_fields(req.find(m("FolderShape")))
    out = Responses("GetFolder")
    for ref in ctx.folder_refs(req.find(m("FolderIds"))):
        out.run(lambda r=ref: _folders(folder_element(ctx, ctx.folder(r), fields)))
    return out.root


def _descendants(ctx: Context, folder: Folder) -> list[Folder]:
    out: list[Folder] = []
    for child in _children(ctx, folder):
        out.append(child)
        out.extend(_descendants(ctx, child))
    return out


def find_folder(ctx: Context, req: etree._Element) -> etree._Element:
    fields = folder_fields(req.find(m("FolderShape")))
    traversal = req.get("Traversal", "Shallow")
    if traversal not in ("Shallow", "Deep", "SoftDeleted"):
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: Traversal {traversal!r}")
    view = req.find(m("IndexedPageFolderView"))
    restriction = req.find(m("Restriction"))
    predicate = compile_restriction(restriction, kind="folder") if restriction is not None else None
    out = Responses("FindFolder")

    def one(ref: etree._Element) -> list[etree._Element]:
        parent = ctx.folder(ref)
        if traversal == "SoftDeleted":
            found: list[Folder] = []
        elif traversal == "Deep":
            found = _descendants(ctx, parent)
        else:
            found = _children(ctx, parent)
        if predicate is not None:
            found = [f for f in found if predicate(f)]
        offset, limit = 0, len(found)
        if view is not None:
            limit = int(view.get("MaxEntriesReturned") or len(found) or 1)
            offset = int(view.get("Offset") or 0)
            if view.get("BasePoint") == "End":
                offset = max(0, len(found) - offset - limit)
        page = found[offset:offset + limit]
        end = offset + len(page)
        root = el("m:RootFolder", {"IndexedPagingOffset": str(end), "TotalItemsInView": str(len(found)),
                                   "IncludesLastItemInRange": xml_bool(end >= len(found))})
        folders = sub(root, "t:Folders")
        for f in page:
            folders.append(folder_element(ctx, f, fields))
        return [root]

    for ref in ctx.folder_refs(req.find(m("ParentFolderIds"))):
        out.run(one, ref)
    return out.root


def create_folder(ctx: Context, req: etree._Element) -> etree._Element:
    parent = ctx.only_folder(req.find(m("ParentFolderId")), "CreateFolder ParentFolderId")
    out = Responses("CreateFolder")
    container = req.find(m("Folders"))
    for spec in (container if container is not None else ()):
        if not isinstance(spec.tag, str):
            continue
        name = spec.findtext(t("DisplayName")) or ""

        def one(name: str = name, tag: str = spec.tag) -> list[etree._Element]:
            folder = store_call(ctx.store.create_folder, ctx.need_mailbox().address, parent.folder_id, name)
            return _folders(el(tag, None, None, folder_id_element(folder)))

        out.run(one)
    return out.root


def delete_folder(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("DeleteFolder")
    for ref in ctx.folder_refs(req.find(m("FolderIds"))):
        def one(r: etree._Element = ref) -> list:
            folder = ctx.folder(r)
            store_call(ctx.store.delete_folder, ctx.need_mailbox().address, folder.folder_id)
            return []

        out.run(one)
    return out.root


# -- SyncFolderHierarchy: the state is the set of folder ids the client has seen ----------
def _encode_hierarchy_state(folder_ids: list[str]) -> str:
    raw = "\n".join(sorted(folder_ids)).encode()
    return "H1" + base64.b64encode(zlib.compress(raw)).decode()


def _decode_hierarchy_state(state: str) -> set[str]:
    if not state.startswith("H1"):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState was not issued by SyncFolderHierarchy")
    try:
        raw = zlib.decompress(base64.b64decode(state[2:], validate=True), bufsize=1 << 16)
    except (ValueError, zlib.error):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState is corrupt") from None
    return set(raw.decode().split("\n")) if raw else set()


def sync_folder_hierarchy(ctx: Context, req: etree._Element) -> etree._Element:
    fields = folder_fields(req.find(m("FolderShape")))
    out = Responses("SyncFolderHierarchy")

    def one() -> list[etree._Element]:
        mbx = ctx.need_mailbox()
        refs = ctx.folder_refs(req.find(m("SyncFolderId")))
        top = ctx.folder(refs[0]) if refs else mbx.folders[mbx.root_id]
        state = (req.findtext(m("SyncState")) or "").strip()
        seen = _decode_hierarchy_state(state) if state else set()
        current = _descendants(ctx, top)
        current_ids = {f.folder_id for f in current}
        changes = el("m:Changes")
        for f in current:
            if f.folder_id not in seen:
                changes.append(el("t:Create", None, None, folder_element(ctx, f, fields)))
        for folder_id in sorted(seen - current_ids):
            changes.append(el("t:Delete", None, None, el("t:FolderId", {"Id": folder_id,
                                                                          "ChangeKey": change_key(folder_id)})))
        return [el("m:SyncState", None, _encode_hierarchy_state(sorted(current_ids))),
                el("m:IncludesLastFolderInRange", None, "true"), changes]

    out.run(one)
    return out.root


OPERATIONS = {
    "GetFolder": get_folder,
    "FindFolder": find_folder,
    "CreateFolder": create_folder,
    "DeleteFolder": delete_folder,
    "SyncFolderHierarchy": sync_folder_hierarchy,
}
