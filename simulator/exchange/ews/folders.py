"""Folder operations: GetFolder, FindFolder, CreateFolder, DeleteFolder, UpdateFolder, SyncFolderHierarchy.

Extended properties: the simulator keeps exactly two, the organization claim of SPEC 1.11 on the
mailbox's ``msgfolderroot`` folder (named properties in the property set
:data:`engine.act.ACT_PROPERTY_SET_ID`, see :mod:`engine.act`). GetFolder and FindFolder return
them when ``AdditionalProperties`` asks for them by ``ExtendedFieldURI`` (and the mailbox is
claimed); UpdateFolder sets them (``SetFolderField``) or removes the claim (``DeleteFolderField``
of the organization id). Any other extended property, and any other field UpdateFolder is asked
to change, is refused with an EWS error code naming it rather than silently ignored.
"""

from __future__ import annotations

import base64
import zlib

from lxml import etree

from engine.act import ACT_CLAIM_FOLDER, ACT_ORG_ID_NAME, ACT_PROPERTY_SET_ID, ACT_STAMPED_ON_NAME
from simulator.exchange.ews.context import Context, Responses, change_key, parse_shape, store_call
from simulator.exchange.ews.restrictions import compile_restriction
from simulator.exchange.ews.xml import (
    EwsFault,
    ResponseError,
    el,
    format_datetime,
    m,
    parse_datetime,
    sub,
    t,
    xml_bool,
)
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


# -- the extended properties the simulator keeps: (property set id, name) -> (type, field key) --
ORG_ID_KEY = "x:" + ACT_ORG_ID_NAME
STAMPED_ON_KEY = "x:" + ACT_STAMPED_ON_NAME
EXTENDED = {
    (ACT_PROPERTY_SET_ID, ACT_ORG_ID_NAME): ("String", ORG_ID_KEY),
    (ACT_PROPERTY_SET_ID, ACT_STAMPED_ON_NAME): ("SystemTime", STAMPED_ON_KEY),
}
_EXTENDED_BY_KEY = {key: (set_id, name, ptype) for (set_id, name), (ptype, key) in EXTENDED.items()}
_ATTRS = ("DistinguishedPropertySetId", "PropertySetId", "PropertyTag", "PropertyName", "PropertyId", "PropertyType")


def _describe(uri: etree._Element) -> str:
    return "ExtendedFieldURI(" + ", ".join(f"{a}={uri.get(a)!r}" for a in _ATTRS if uri.get(a) is not None) + ")"


def extended_key(uri: etree._Element, error=ResponseError) -> str:
    """The field key of an ``ExtendedFieldURI`` the simulator keeps; ``error`` (a class) otherwise."""
    set_id = (uri.get("PropertySetId") or "").strip().lower()
    name = uri.get("PropertyName")
    known = EXTENDED.get((set_id, name)) if set_id and name and uri.get("PropertyTag") is None else None
    if known is None:
        kept = ", ".join(f"{n} in {s}" for s, n in EXTENDED)
        raise error("ErrorInvalidPropertyRequest",
                    f"the simulator keeps no extended property {_describe(uri)} on folders; it keeps {kept}")
    ptype, key = known
    if uri.get("PropertyType") != ptype:
        raise error("ErrorInvalidPropertyRequest",
                    f"the extended property {name} has the type {ptype}, not {uri.get('PropertyType')!r}")
    return key


def asks_act_claim(req: etree._Element) -> bool:
    """Does the request name the organization claim's property set (for the fault rules)?"""
    for uri in req.iter(t("ExtendedFieldURI")):
        if (uri.get("PropertySetId") or "").strip().lower() == ACT_PROPERTY_SET_ID:
            return True
    return False


def folder_fields(shape: etree._Element | None) -> list[str]:
    base, extra = parse_shape(shape)
    fields = list(ALL_FIELDS if base == "AllProperties" else ("folder:FolderId",) if base == "IdOnly" else DEFAULT_FIELDS)
    for uri in extra:
        if uri not in fields:
            fields.append(uri)
    props = shape.find(t("AdditionalProperties")) if shape is not None else None
    if props is not None:
        for uri in props.iter(t("ExtendedFieldURI")):
            key = extended_key(uri, EwsFault)
            if key not in fields:
                fields.append(key)
    return fields


def _extended_property(key: str, value: str) -> etree._Element:
    set_id, name, ptype = _EXTENDED_BY_KEY[key]
    return el("t:ExtendedProperty", None, None,
              el("t:ExtendedFieldURI", {"PropertySetId": set_id, "PropertyName": name, "PropertyType": ptype}),
              el("t:Value", None, value))


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
    if folder.distinguished == ACT_CLAIM_FOLDER and (ORG_ID_KEY in wanted or STAMPED_ON_KEY in wanted):
        claim = ctx.store.act_org(ctx.need_mailbox().address)
        if claim is not None:  # an unclaimed mailbox has no such properties (none is returned)
            if ORG_ID_KEY in wanted:
                e.append(_extended_property(ORG_ID_KEY, claim.org_id))
            if STAMPED_ON_KEY in wanted and claim.stamped_on is not None:
                e.append(_extended_property(STAMPED_ON_KEY, format_datetime(claim.stamped_on)))
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


# -- UpdateFolder: the organization claim on msgfolderroot -------------------------------
_UNSET = object()
_PATHS = (t("FieldURI"), t("IndexedFieldURI"), t("ExtendedFieldURI"))


def _set_value(change: etree._Element, key: str) -> str:
    """The ``t:Value`` of the ``t:ExtendedProperty`` inside the folder element of a SetFolderField."""
    holder = next((c for c in change if isinstance(c.tag, str) and c.tag not in _PATHS), None)
    prop = holder.find(t("ExtendedProperty")) if holder is not None else None
    value = prop.find(t("Value")) if prop is not None else None
    if value is None:
        raise ResponseError("ErrorInvalidPropertySet",
                            f"SetFolderField for {key[2:]} needs a folder element with a t:ExtendedProperty/t:Value")
    return value.text or ""


def _apply_folder_change(ctx: Context, change: etree._Element) -> list[etree._Element]:
    ref = next((c for c in change if c.tag in (t("FolderId"), t("DistinguishedFolderId"))), None)
    if ref is None:
        raise ResponseError("ErrorInvalidIdMalformed", "FolderChange needs a t:FolderId or t:DistinguishedFolderId")
    folder = ctx.folder(ref)
    address = ctx.need_mailbox().address
    org_id: object = _UNSET
    stamped_on: object = _UNSET
    updates = change.find(t("Updates"))
    for upd in (updates if updates is not None else ()):
        if not isinstance(upd.tag, str):
            continue
        kind = etree.QName(upd).localname
        path = next((c for c in upd if c.tag in _PATHS), None)
        if path is not None and path.tag == t("FieldURI") and path.get("FieldURI") == "folder:DisplayName":
            holder = next((c for c in upd if isinstance(c.tag, str) and c.tag not in _PATHS), None)
            name = holder.findtext(t("DisplayName")) if holder is not None else None
            if kind != "SetFolderField" or name is None:
                raise ResponseError("ErrorInvalidPropertySet" if kind == "SetFolderField" else "ErrorInvalidPropertyDelete",
                                    "a folder's DisplayName can only be set, to a non-empty name")
            if folder.distinguished:
                raise ResponseError("ErrorInvalidPropertySet",
                                    f"folder:DisplayName of the distinguished folder {folder.name!r} cannot be changed")
            store_call(ctx.store.rename_folder, address, folder.folder_id, name)
            continue
        if path is not None and path.tag == t("FieldURI"):
            uri = path.get("FieldURI")
            holder = next((c for c in upd if isinstance(c.tag, str) and c.tag not in _PATHS), None)
            if uri == "folder:PermissionSet" and kind == "DeleteFolderField":
                continue  # the simulator keeps no permissions: there is nothing to remove
            if (uri == "folder:FolderClass" and kind == "SetFolderField" and holder is not None
                    and (holder.findtext(t("FolderClass")) or "").strip() == folder_class(folder)):
                continue  # unchanged
        if path is None or path.tag != t("ExtendedFieldURI"):
            name = path.get("FieldURI") if path is not None else "?"
            raise ResponseError("ErrorInvalidPropertySet",
                                f"the simulator can only set the display name and the extended properties "
                                f"{ACT_ORG_ID_NAME} and {ACT_STAMPED_ON_NAME} with UpdateFolder, not {name}")
        key = extended_key(path)
        if folder.distinguished != ACT_CLAIM_FOLDER:
            raise ResponseError("ErrorInvalidPropertySet",
                                f"the simulator keeps {key[2:]} on the {ACT_CLAIM_FOLDER} folder only, "
                                f"not on {folder.name!r}")
        if kind == "SetFolderField":
            text = _set_value(upd, key)
            if key == ORG_ID_KEY:
                org_id = text
            else:
                stamped_on = parse_datetime(text)
        elif kind == "DeleteFolderField":
            if key == STAMPED_ON_KEY:
                raise ResponseError("ErrorInvalidPropertySet",
                                    f"{ACT_STAMPED_ON_NAME} cannot be removed alone: remove {ACT_ORG_ID_NAME} "
                                    "to remove the claim")
            org_id = None
        else:
            raise ResponseError("ErrorInvalidPropertySet", f"{kind} is not an update of an extended property")
    if org_id is None:
        store_call(ctx.store.clear_act_org, address)
    elif org_id is not _UNSET or stamped_on is not _UNSET:
        if org_id is _UNSET:  # only the time: the claim must exist
            claim = store_call(ctx.store.act_org, address)
            if claim is None:
                raise ResponseError("ErrorInvalidPropertySet",
                                    f"{ACT_STAMPED_ON_NAME} needs {ACT_ORG_ID_NAME}: the mailbox is not claimed")
            org_id = claim.org_id
        store_call(ctx.store.stamp_act_org, address, org_id, None if stamped_on is _UNSET else stamped_on)
    tag = FOLDER_TAGS.get(folder_class(folder), "t:Folder")
    return _folders(el(tag, None, None, folder_id_element(folder)))


def update_folder(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("UpdateFolder")
    changes = req.find(m("FolderChanges"))
    for change in (changes if changes is not None else ()):
        if not isinstance(change.tag, str):
            continue
        if change.tag != t("FolderChange"):
            raise EwsFault("ErrorSchemaValidation",
                           f"The request failed schema validation: {etree.QName(change).localname} in FolderChanges")
        out.run(_apply_folder_change, ctx, change)
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
    "UpdateFolder": update_folder,
    "SyncFolderHierarchy": sync_folder_hierarchy,
}
