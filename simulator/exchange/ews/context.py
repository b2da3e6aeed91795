"""What one EWS request works on, and the helpers every operation shares."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from simulator.exchange.ews.xml import EwsFault, ResponseError, el, sub, t
from simulator.exchange.store import ExchangeMailbox, ExchangeStore, Folder, Item, StoreError

# A mailbox of a journal older than the whole folder tree has the Top of Information Store on top:
# there, "root" names that folder.
FOLDER_ALIASES = {"root": "msgfolderroot"}

# The shape of every id the store hands out (IdSource.next): a kind, "A", then hex digits. Exchange
# answers an id that cannot be one of its own with ErrorInvalidIdMalformed, before looking anything up.
_ISSUED_ID = re.compile(r"[A-Za-z0-9]+A[0-9a-f]{20,}")  # (the kind of a folder made on first look has digits)


def well_formed_id(value: str) -> bool:
    """Whether ``value`` could be an id this server issued (known or not)."""
    return _ISSUED_ID.fullmatch(value) is not None


def need_well_formed(value: str, what: str = "id") -> str:
    """``value``, or ErrorInvalidIdMalformed when it cannot be an id of this server."""
    if not well_formed_id(value):
        raise ResponseError("ErrorInvalidIdMalformed", f"{value!r} is not a valid {what}")
    return value


@dataclass(slots=True)
class Context:
    store: ExchangeStore
    address: str | None
    mailbox: ExchangeMailbox | None
    now: datetime
    operation: str

    def need_mailbox(self) -> ExchangeMailbox:
        if self.mailbox is None:
            raise EwsFault("ErrorMissingEmailAddress",
                           f"{self.operation} needs a mailbox: send an X-AnchorMailbox header or an "
                           "ExchangeImpersonation SOAP header naming its primary SMTP address")
        return self.mailbox

    # -- folders ---------------------------------------------------------------------------
    def folder(self, ref: etree._Element) -> Folder:
        """Resolve a ``t:FolderId`` or ``t:DistinguishedFolderId`` element."""
        mbx = self.need_mailbox()
        if ref.tag == t("DistinguishedFolderId"):
            name = (ref.get("Id") or "").strip()
            owner = ref.findtext(f"{t('Mailbox')}/{t('EmailAddress')}")
            if owner and owner.strip().lower() != mbx.address:
                raise ResponseError("ErrorAccessDenied",
                                    f"the request acts on {mbx.address}; it cannot open folders of {owner.strip()}")
            folder_id = mbx.distinguished.get(name) or mbx.distinguished.get(FOLDER_ALIASES.get(name, name))
            if folder_id is None and name == "publicfoldersroot":
                raise ResponseError("ErrorNoPublicFolderReplicaAvailable",
                                    "the organization has no public folders")
            if folder_id is None:
                raise ResponseError("ErrorFolderNotFound",
                                    f"the distinguished folder {name!r} does not exist in {mbx.address}")
            return mbx.folders[folder_id]
        if ref.tag == t("FolderId"):
            folder = mbx.folder_by_id(need_well_formed((ref.get("Id") or "").strip(), "folder id"))
            if folder is None:
                raise ResponseError("ErrorFolderNotFound", f"folder id {ref.get('Id')!r} does not exist in {mbx.address}")
            return folder
        raise ResponseError("ErrorInvalidIdMalformed", f"{etree.QName(ref).localname} is not a folder id")

    def folder_refs(self, container: etree._Element | None) -> list[etree._Element]:
        if container is None:
            return []
        return [c for c in container if c.tag in (t("FolderId"), t("DistinguishedFolderId"))]

    def only_folder(self, container: etree._Element | None, what: str) -> Folder:
        refs = self.folder_refs(container)
        if len(refs) != 1:
            raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: {what} needs one folder id")
        return self.folder(refs[0])

    # -- items -----------------------------------------------------------------------------
    def item(self, ref: etree._Element) -> Item:
        """The item an ``t:ItemId`` names, or the occurrence (master) an ``t:OccurrenceItemId``
        (``t:RecurringMasterItemId``) or an occurrence's id names (simulator.exchange.ews.calendar)."""
        from simulator.exchange.ews import calendar  # it builds on this module

        if calendar.needs_resolving(ref):
            return calendar.resolve(ref, self.stored_item)
        return self.stored_item(ref.get("Id") or "", ref.get("ChangeKey"))

    def stored_item(self, item_id: str, key: str | None) -> Item:
        mbx = self.need_mailbox()
        item_id = need_well_formed(item_id, "item id")
        try:
            item = mbx.item(item_id)
        except StoreError as exc:
            raise ResponseError(exc.code, exc.message) from None
        if key is not None and not change_key_of(key, item_id):
            raise ResponseError("ErrorInvalidChangeKey", f"{key!r} is not a change key of item {item_id!r}")
        return item

    def item_refs(self, container: etree._Element | None) -> list[etree._Element]:
        if container is None:
            return []
        return [c for c in container if c.tag in (t("ItemId"), t("OccurrenceItemId"), t("RecurringMasterItemId"))]


def response_message(tag: str, code: str = "NoError", text: str | None = None,
                     parent: etree._Element | None = None) -> etree._Element:
    """A response message ``tag`` (under ``parent``, if given): its ResponseClass, and for an error
    its MessageText, ResponseCode and DescriptiveLinkKey, in the schema's order."""
    attrib = {"ResponseClass": "Success" if code == "NoError" else "Error"}
    msg = sub(parent, tag, attrib=attrib) if parent is not None else el(tag, attrib)
    if code != "NoError":
        sub(msg, "m:MessageText", text or code)
    sub(msg, "m:ResponseCode", code)
    if code != "NoError":
        sub(msg, "m:DescriptiveLinkKey", "0")
    return msg


def flat_response(operation: str, code: str = "NoError", text: str | None = None) -> etree._Element:
    """``m:<Op>Response`` of an operation that answers once, without response messages (GetInboxRules,
    GetServerTimeZones style): its ResponseClass and ResponseCode on the element itself."""
    return response_message(f"m:{operation}Response", code, text)


class Responses:
    """The ``m:<Op>Response`` element with one response message per requested id, in order."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.root = el(f"m:{operation}Response")
        self.messages = sub(self.root, "m:ResponseMessages")

    def success(self) -> etree._Element:
        return response_message(f"m:{self.operation}ResponseMessage", parent=self.messages)

    def error(self, code: str, text: str) -> etree._Element:
        return response_message(f"m:{self.operation}ResponseMessage", code, text, parent=self.messages)

    def run(self, func, *args) -> None:
        """Answer one requested id: ``func(*args)`` returns the children of a success message;
        a per-message error (ResponseError, StoreError) becomes an error message instead."""
        try:
            result = func(*args)
        except ResponseError as exc:
            self.error(exc.code, exc.message)
            return
        except StoreError as exc:
            self.error(exc.code, exc.message)
            return
        msg = self.success()
        for child in result or ():
            msg.append(child)


class StreamedAnswer:
    """An answer written in parts over one HTTP response, as Exchange sends GetStreamingEvents.

    ``parts(refresh, gone)`` is an async generator of ``m:<Op>Response`` elements; the service
    sends each as a SOAP envelope of its own as soon as it is yielded, and the answer ends with the
    generator. ``refresh()`` shows what other processes wrote to the store; ``gone()`` tells that
    the client closed the connection or the server is shutting down: the generator should then
    yield its last part and end. A part counts as sent once the generator resumes after it
    (a failed write closes the generator at its ``yield`` instead).
    """

    def __init__(self, parts: Callable[[Callable[[], None], Callable[[], bool]], AsyncIterator[etree._Element]]):
        self.parts = parts


def store_call(func, *args, **kwargs):
    """Call the store; its errors become per-message errors."""
    try:
        return func(*args, **kwargs)
    except StoreError as exc:
        raise ResponseError(exc.code, exc.message) from None


def change_key(obj_id: str, version: int = 0) -> str:
    """The change key of version ``version`` of an item or folder: it changes with every update."""
    return base64.b64encode(f"CK{version}:{obj_id[-8:]}".encode()).decode()


def change_key_of(key: str, obj_id: str) -> bool:
    """Whether ``key`` is a change key this server gave ``obj_id`` (of any version)."""
    try:
        text = base64.b64decode(key.encode("ascii"), validate=True).decode("ascii")
    except (ValueError, UnicodeError):
        return False
    version, _, suffix = text.partition(":")
    return version.startswith("CK") and version[2:].isdigit() and suffix == obj_id[-8:]


def mailbox_element(tag: str, address: str | None, name: str | None = None, *, local: bool = False):
    box = el(tag)
    sub(box, "t:Name", name or address or "")
    sub(box, "t:EmailAddress", address or "")
    sub(box, "t:RoutingType", "SMTP")
    sub(box, "t:MailboxType", "Mailbox" if local else "OneOff")
    return box


def parse_shape(shape: etree._Element | None) -> tuple[str, list[str]]:
    """(base shape, requested field URIs) of an ItemShape / FolderShape element."""
    if shape is None:
        return "Default", []
    base = (shape.findtext(t("BaseShape")) or "Default").strip()
    fields: list[str] = []
    props = shape.find(t("AdditionalProperties"))
    if props is not None:
        for p in props:
            uri = p.get("FieldURI")
            if uri:
                fields.append(uri)
    return base, fields

