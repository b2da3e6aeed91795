"""Folder operations: GetFolder, FindFolder, CreateFolder, DeleteFolder, UpdateFolder, SyncFolderHierarchy.

The folder tree is the store's (:data:`simulator.exchange.store.MAILBOX_TREE`: ``root`` above the Top of
Information Store, the distinguished folders, Recoverable Items, Junk Email, ...). A folder's change key
follows its version (rename, move, new properties).

Properties: a folder keeps its ``FolderClass`` (given at creation; it cannot be changed afterwards:
``ErrorObjectTypeChanged``), its ``PermissionSet`` and any extended property as the client wrote them
(:mod:`simulator.exchange.ews.fields` keys). Two extended properties are not kept that way: the
organization claim of SPEC 1.11 on ``msgfolderroot`` (named properties in the property set
:data:`engine.act.ACT_PROPERTY_SET_ID`, see :mod:`engine.act`), which is the store's ACT claim, and the
folder's size (``PropertyTag`` 0x0E08, ``Long``), which is computed: the bytes of the items in the folder
and its subfolders.
"""

from __future__ import annotations

import base64
import zlib

from lxml import etree

from engine.act import ACT_CLAIM_FOLDER, ACT_ORG_ID_NAME, ACT_PROPERTY_SET_ID, ACT_STAMPED_ON_NAME
from simulator.exchange.ews.context import Context, Responses, change_key, parse_shape, store_call
from simulator.exchange.ews.fields import extended_key as property_key
from simulator.exchange.ews.fields import keep, revive
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

_TAGS = (("IPF.Appointment", "t:CalendarFolder"), ("IPF.Contact", "t:ContactsFolder"), ("IPF.Task", "t:TasksFolder"))
# the class a folder created as one of these elements gets when the request names none
CLASS_OF_TAG = {t("Folder"): None, t("CalendarFolder"): "IPF.Appointment", t("ContactsFolder"): "IPF.Contact",
                t("TasksFolder"): "IPF.Task", t("SearchFolder"): "IPF.Note"}
DEFAULT_FIELDS = ("folder:FolderId", "folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount",
                  "folder:UnreadCount")
ALL_FIELDS = ("folder:FolderId", "folder:ParentFolderId", "folder:FolderClass", "folder:DisplayName",
              "folder:TotalCount", "folder:ChildFolderCount", "folder:EffectiveRights", "folder:UnreadCount")
_RIGHTS = ("CreateAssociated", "CreateContents", "CreateHierarchy", "Delete", "Modify", "Read", "ViewPrivateItems")
PERMISSION_SET = "PermissionSet"  # the key a folder's permission set is kept under
SIZE_KEY = "ext:PropertyTag=3592;PropertyType=Long"  # PR_MESSAGE_SIZE: computed, never kept


def folder_tag(folder: Folder) -> str:
    """The element a folder is answered as: t:CalendarFolder for IPF.Appointment[.*], ..."""
    cls = folder.folder_class or ""
    for prefix, tag in _TAGS:
        if cls == prefix or cls.startswith(prefix + "."):
            return tag
    return "t:Folder"


def folder_id_element(folder: Folder, tag: str = "t:FolderId") -> etree._Element:
    return el(tag, {"Id": folder.folder_id, "ChangeKey": change_key(folder.folder_id, folder.version)})


def _children(ctx: Context, folder: Folder) -> list[Folder]:
    return [f for f in ctx.need_mailbox().folders.values() if f.parent_id == folder.folder_id]


# -- extended properties: the organization claim (the store's), the size (computed), the rest kept --
ORG_ID_KEY = "x:" + ACT_ORG_ID_NAME
STAMPED_ON_KEY = "x:" + ACT_STAMPED_ON_NAME
CLAIM = {
    (ACT_PROPERTY_SET_ID, ACT_ORG_ID_NAME): ("String", ORG_ID_KEY),
    (ACT_PROPERTY_SET_ID, ACT_STAMPED_ON_NAME): ("SystemTime", STAMPED_ON_KEY),
}
_CLAIM_BY_KEY = {key: (set_id, name, ptype) for (set_id, name), (ptype, key) in CLAIM.items()}


def extended_key(uri: etree._Element, error=ResponseError) -> str:
    """The key of the folder property an ``ExtendedFieldURI`` names: one of the claim's two (their type
    checked), else the generic key under which folders keep extended properties."""
    set_id = (uri.get("PropertySetId") or "").strip().lower()
    name = uri.get("PropertyName")
    claim = CLAIM.get((set_id, name)) if set_id and name and uri.get("PropertyTag") is None else None
    if claim is None:
        try:
            return property_key(uri)
        except ResponseError as exc:
            raise error(exc.code, exc.message) from None
    ptype, key = claim
    if uri.get("PropertyType") != ptype:
        raise error("ErrorInvalidPropertyRequest",
                    f"the extended property {name} has the type {ptype}, not {uri.get('PropertyType')!r}")
    return key


_ATTRS = ("DistinguishedPropertySetId", "PropertySetId", "PropertyTag", "PropertyName", "PropertyId", "PropertyType")


def _describe(uri: etree._Element) -> str:
    return "ExtendedFieldURI(" + ", ".join(f"{a}={uri.get(a)!r}" for a in _ATTRS if uri.get(a) is not None) + ")"


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


def _claim_property(key: str, value: str) -> etree._Element:
    set_id, name, ptype = _CLAIM_BY_KEY[key]
    return el("t:ExtendedProperty", None, None,
              el("t:ExtendedFieldURI", {"PropertySetId": set_id, "PropertyName": name, "PropertyType": ptype}),
              el("t:Value", None, value))


def _size(ctx: Context, folder: Folder) -> int:
    return sum(item.data.stored_size for f in [folder, *_descendants(ctx, folder)] for item in f.items.values())


def folder_element(ctx: Context, folder: Folder, fields: list[str]) -> etree._Element:
    cls = folder.folder_class
    e = el(folder_tag(folder))
    wanted = set(fields)
    kept = folder.kept or {}
    e.append(folder_id_element(folder))
    if "folder:ParentFolderId" in wanted and folder.parent_id:
        parent = ctx.need_mailbox().folders.get(folder.parent_id)
        e.append(el("t:ParentFolderId", {"Id": folder.parent_id,
                                         "ChangeKey": change_key(folder.parent_id, parent.version if parent else 0)}))
    if "folder:FolderClass" in wanted and cls:
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
                e.append(_claim_property(ORG_ID_KEY, claim.org_id))
            if STAMPED_ON_KEY in wanted and claim.stamped_on is not None:
                e.append(_claim_property(STAMPED_ON_KEY, format_datetime(claim.stamped_on)))
    for key in fields:
        if key == SIZE_KEY:
            e.append(el("t:ExtendedProperty", None, None,
                        el("t:ExtendedFieldURI", {"PropertyTag": "0xe08", "PropertyType": "Long"}),
                        el("t:Value", None, str(_size(ctx, folder)))))
        elif key.startswith("ext:") and key in kept:
            e.append(revive(kept[key]))
    if "folder:EffectiveRights" in wanted:
        rights = sub(e, "t:EffectiveRights")
        for right in _RIGHTS:
            sub(rights, f"t:{right}", "true")
    if "folder:PermissionSet" in wanted:
        e.append(revive(kept[PERMISSION_SET]) if PERMISSION_SET in kept else _default_permissions())
    if "folder:UnreadCount" in wanted:
        sub(e, "t:UnreadCount", str(sum(1 for i in folder.items.values() if not i.is_read)))
    if "folder:DistinguishedFolderId" in wanted and folder.distinguished:
        sub(e, "t:DistinguishedFolderId", folder.distinguished)
    return e


def _default_permissions() -> etree._Element:
    """A new folder's permissions in Exchange Online: the Default and Anonymous users, none."""
    perms = el("t:PermissionSet")
    entries = sub(perms, "t:Permissions")
    for user in ("Default", "Anonymous"):
        entry = sub(entries, "t:Permission")
        uid = sub(entry, "t:UserId")
        sub(uid, "t:DistinguishedUser", user)
        sub(entry, "t:PermissionLevel", "None")
    return perms


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


def _written_properties(spec: etree._Element) -> dict[str, str]:
    """The properties a folder element of a request carries that folders keep as written."""
    kept: dict[str, str] = {}
    for child in spec:
        if child.tag == t("PermissionSet"):
            kept[PERMISSION_SET] = keep(child)
        elif child.tag == t("ExtendedProperty"):
            uri = child.find(t("ExtendedFieldURI"))
            if uri is None:
                raise ResponseError("ErrorInvalidExtendedProperty", "t:ExtendedProperty needs its t:ExtendedFieldURI")
            key = extended_key(uri)
            if not key.startswith("ext:") or key == SIZE_KEY:
                raise ResponseError("ErrorInvalidPropertySet", f"{_describe(uri)} cannot be written on a new folder")
            kept[key] = keep(child)
    return kept


def create_folder(ctx: Context, req: etree._Element) -> etree._Element:
    parent = ctx.only_folder(req.find(m("ParentFolderId")), "CreateFolder ParentFolderId")
    out = Responses("CreateFolder")
    container = req.find(m("Folders"))
    for spec in (container if container is not None else ()):
        if not isinstance(spec.tag, str):
            continue

        def one(spec: etree._Element = spec) -> list[etree._Element]:
            if spec.tag not in CLASS_OF_TAG:
                raise ResponseError("ErrorInvalidFolderTypeForOperation",
                                    f"{etree.QName(spec).localname} is not a folder type CreateFolder makes")
            name = spec.findtext(t("DisplayName")) or ""
            cls = (spec.findtext(t("FolderClass")) or "").strip() or CLASS_OF_TAG[spec.tag]
            kept = _written_properties(spec)
            address = ctx.need_mailbox().address
            with ctx.store.operation():
                folder = store_call(ctx.store.create_folder, address, parent.folder_id, name, cls)
                if kept:
                    folder = store_call(ctx.store.set_folder_properties, address, folder.folder_id, kept)
            return _folders(el(folder_tag(folder), None, None, folder_id_element(folder)))

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
    try:
        folder = ctx.folder(ref)
    except ResponseError as exc:  # a deleted folder's id: Exchange answers as for an item it cannot find
        if exc.code == "ErrorFolderNotFound" and ref.tag == t("FolderId"):
            raise ResponseError("ErrorItemNotFound", exc.message) from None
        raise
    address = ctx.need_mailbox().address
    org_id: object = _UNSET
    stamped_on: object = _UNSET
    name: str | None = None
    kept: dict[str, str] = {}
    updates = change.find(t("Updates"))
    for upd in (updates if updates is not None else ()):
        if not isinstance(upd.tag, str):
            continue
        kind = etree.QName(upd).localname
        if kind not in ("SetFolderField", "DeleteFolderField"):
            raise ResponseError("ErrorInvalidPropertySet", f"{kind} is not a folder update (SetFolderField, "
                                                           "DeleteFolderField)")
        path = next((c for c in upd if c.tag in _PATHS), None)
        holder = next((c for c in upd if isinstance(c.tag, str) and c.tag not in _PATHS), None)
        if path is None:
            raise ResponseError("ErrorInvalidPropertySet", f"{kind} needs a t:FieldURI or t:ExtendedFieldURI")
        if path.tag == t("FieldURI"):
            uri = path.get("FieldURI")
            if uri == "folder:DisplayName":
                name = holder.findtext(t("DisplayName")) if holder is not None else None
                if kind != "SetFolderField" or name is None:
                    raise ResponseError("ErrorInvalidPropertySet" if kind == "SetFolderField"
                                        else "ErrorInvalidPropertyDelete",
                                        "a folder's DisplayName can only be set, to a non-empty name")
                if folder.distinguished or folder.system:
                    raise ResponseError("ErrorInvalidPropertySet",
                                        f"folder:DisplayName of the mailbox's own folder {folder.name!r} cannot be "
                                        "changed")
            elif uri == "folder:FolderClass":
                given = (holder.findtext(t("FolderClass")) or "").strip() if holder is not None else ""
                if kind != "SetFolderField" or given != (folder.folder_class or ""):
                    raise ResponseError("ErrorObjectTypeChanged",
                                        f"the class of folder {folder.name!r} is {folder.folder_class!r}: a folder's "
                                        "FolderClass cannot be changed")
            elif uri == "folder:PermissionSet":
                perms = holder.find(t("PermissionSet")) if holder is not None else None
                if kind == "SetFolderField" and perms is None:
                    raise ResponseError("ErrorInvalidPropertySet", "SetFolderField of folder:PermissionSet needs "
                                                                   "a t:PermissionSet")
                kept[PERMISSION_SET] = keep(perms) if kind == "SetFolderField" else ""
            else:
                raise ResponseError("ErrorInvalidPropertySet",
                                    f"{uri} cannot be changed with UpdateFolder: DisplayName, PermissionSet and "
                                    "extended properties can")
            continue
        if path.tag != t("ExtendedFieldURI"):
            raise ResponseError("ErrorInvalidPropertySet", "folders have no indexed properties")
        key = extended_key(path)
        if key == SIZE_KEY:
            raise ResponseError("ErrorInvalidPropertySet", "the size of a folder is computed: it cannot be written")
        if key.startswith("ext:"):
            if kind == "SetFolderField":
                prop = holder.find(t("ExtendedProperty")) if holder is not None else None
                if prop is None:
                    raise ResponseError("ErrorInvalidPropertySet",
                                        "SetFolderField of an extended property needs a t:ExtendedProperty")
                kept[key] = keep(prop)
            else:
                kept[key] = ""
            continue
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
        else:
            if key == STAMPED_ON_KEY:
                raise ResponseError("ErrorInvalidPropertySet",
                                    f"{ACT_STAMPED_ON_NAME} cannot be removed alone: remove {ACT_ORG_ID_NAME} "
                                    "to remove the claim")
            org_id = None
    if org_id is _UNSET and stamped_on is not _UNSET:  # only the time: the claim must exist
        claim = store_call(ctx.store.act_org, address)
        if claim is None:
            raise ResponseError("ErrorInvalidPropertySet",
                                f"{ACT_STAMPED_ON_NAME} needs {ACT_ORG_ID_NAME}: the mailbox is not claimed")
        org_id = claim.org_id
    with ctx.store.operation():  # every change of the request, or (a refusal above) none
        if name is not None:
            store_call(ctx.store.rename_folder, address, folder.folder_id, name)
        if kept:
            store_call(ctx.store.set_folder_properties, address, folder.folder_id, kept)
        if org_id is None:
            store_call(ctx.store.clear_act_org, address)
        elif org_id is not _UNSET:
            store_call(ctx.store.stamp_act_org, address, org_id, None if stamped_on is _UNSET else stamped_on)
    return _folders(el(folder_tag(folder), None, None, folder_id_element(folder)))


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


# -- SyncFolderHierarchy: the state is the folders the client has seen, each with its version --------
def _encode_hierarchy_state(seen: dict[str, int]) -> str:
    raw = "\n".join(f"{folder_id} {version}" for folder_id, version in sorted(seen.items())).encode()
    return "H2" + base64.b64encode(zlib.compress(raw)).decode()


def _decode_hierarchy_state(state: str) -> dict[str, int]:
    if state[:2] not in ("H1", "H2"):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState was not issued by SyncFolderHierarchy")
    try:
        raw = zlib.decompress(base64.b64decode(state[2:], validate=True), bufsize=1 << 16).decode()
        seen: dict[str, int] = {}
        for line in raw.split("\n") if raw else ():
            folder_id, _, version = line.partition(" ")
            seen[folder_id] = int(version) if version else -1  # (H1 states kept no versions)
    except (ValueError, zlib.error, UnicodeError):
        raise ResponseError("ErrorInvalidSyncStateData", "the SyncState is corrupt") from None
    return seen


def sync_folder_hierarchy(ctx: Context, req: etree._Element) -> etree._Element:
    fields = folder_fields(req.find(m("FolderShape")))
    out = Responses("SyncFolderHierarchy")

    def one() -> list[etree._Element]:
        mbx = ctx.need_mailbox()
        refs = ctx.folder_refs(req.find(m("SyncFolderId")))
        top = ctx.folder(refs[0]) if refs else mbx.folders[mbx.root_id]
        state = (req.findtext(m("SyncState")) or "").strip()
        seen = _decode_hierarchy_state(state) if state else {}
        current = _descendants(ctx, top)
        changes = el("m:Changes")
        for f in current:
            if f.folder_id not in seen:
                changes.append(el("t:Create", None, None, folder_element(ctx, f, fields)))
            elif seen[f.folder_id] not in (f.version, -1):
                changes.append(el("t:Update", None, None, folder_element(ctx, f, fields)))
        gone = set(seen) - {f.folder_id for f in current}
        for folder_id in sorted(gone):
            changes.append(el("t:Delete", None, None, el("t:FolderId", {"Id": folder_id,
                                                                          "ChangeKey": change_key(folder_id)})))
        now = {f.folder_id: f.version for f in current}
        return [el("m:SyncState", None, _encode_hierarchy_state(now)),
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
