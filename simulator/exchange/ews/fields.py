"""Properties the fake Exchange keeps as the client sent them.

The store models what the sync engine and the simulator reason about (subject, body, sender,
recipients, Message-ID, categories, read flag). Every other property a client sets on an item -
the start and end of an appointment, a contact's phone numbers, a task's status, an item's
sensitivity, an extended property - is kept verbatim in :attr:`MessageData.kept` under a **key**
and served back when it is asked for, so that what a client writes is what it reads:

* a property named by ``t:FieldURI`` (``calendar:Start``) or written as a child of the item
  (``<t:Start>``): its element name, ``Start``;
* an extended property: ``ext:`` and the identifying attributes of its ``t:ExtendedFieldURI``
  (property set or tag, name or id, type), the property tag as a number;
* an indexed property (``contacts:EmailAddress`` with ``FieldIndex="EmailAddress1"``): the
  element that holds its entries, ``EmailAddresses``.

The fake knows no meaning of these properties (no knowledge of any CRM either): it keeps them.
"""

from __future__ import annotations

from copy import deepcopy

from lxml import etree

from simulator.exchange.ews.xml import TNS, ResponseError, t

# The item types CreateItem takes, and the distinguished folder an item of that type is saved in
# when the request names none.
ITEM_TYPES = {"Message": "drafts", "Item": "drafts", "PostItem": "drafts", "CalendarItem": "calendar",
              "Contact": "contacts", "DistributionList": "contacts", "Task": "tasks"}

# Elements of an item in a request that are not properties to keep: ids the server assigns, the
# MIME content (parsed into the model), attachments (a feature of their own), and what the store
# models with a state of its own that later calls change (class, subject, categories, read flag).
NOT_KEPT = frozenset({"ItemId", "ParentFolderId", "MimeContent", "Attachments", "ItemClass", "Subject",
                      "Categories", "IsRead"})

# The indexed properties of a contact: FieldURI -> the element holding its entries.
INDEXED_CONTAINERS = {"contacts:EmailAddress": "EmailAddresses", "contacts:PhoneNumber": "PhoneNumbers",
                      "contacts:ImAddress": "ImAddresses", "contacts:PhysicalAddress": "PhysicalAddresses"}

MAX_TEXT = 255  # the longest subject Exchange keeps (longer ones are cut), and the longest name part
NAME_PARTS = frozenset({"GivenName", "MiddleName", "Surname"})  # longer ones are refused (ErrorPropertyUpdate)


def limited_subject(text: str) -> str:
    return text[:MAX_TEXT]


_EXT_ATTRIBUTES = ("DistinguishedPropertySetId", "PropertySetId", "PropertyTag", "PropertyName", "PropertyId",
                   "PropertyType")


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def extended_key(uri: etree._Element) -> str:
    """The key of the extended property a ``t:ExtendedFieldURI`` names."""
    parts = []
    for name in _EXT_ATTRIBUTES:
        value = uri.get(name)
        if value is None:
            continue
        if name == "PropertyTag":
            try:
                value = str(int(value, 0))
            except ValueError:
                raise ResponseError("ErrorInvalidExtendedProperty",
                                    f"PropertyTag {value!r} is not a number (e.g. 0x0E07)") from None
        elif name == "PropertySetId":
            value = value.lower()
        parts.append(f"{name}={value}")
    if not parts:
        raise ResponseError("ErrorInvalidExtendedProperty", "t:ExtendedFieldURI names no property")
    return "ext:" + ";".join(parts)


def key_of_child(child: etree._Element) -> str:
    """The key of a property written as a child of an item (``<t:Start>``, ``<t:ExtendedProperty>``)."""
    if child.tag == t("ExtendedProperty"):
        uri = child.find(t("ExtendedFieldURI"))
        if uri is None:
            raise ResponseError("ErrorInvalidExtendedProperty", "t:ExtendedProperty needs its t:ExtendedFieldURI")
        return extended_key(uri)
    return local(child)


def key_of_path(path: etree._Element) -> str:
    """The key of the property a path (``t:FieldURI``, ``t:IndexedFieldURI``, ``t:ExtendedFieldURI``) names."""
    if path.tag == t("ExtendedFieldURI"):
        return extended_key(path)
    uri = path.get("FieldURI") or ""
    if path.tag == t("IndexedFieldURI"):
        container = INDEXED_CONTAINERS.get(uri.split(":", 1)[0] + ":" + uri.split(":", 1)[-1].split(":")[0])
        if container is None:
            raise ResponseError("ErrorInvalidIndexedPagingParameters", f"{uri!r} is not an indexed property")
        return container
    return uri.rsplit(":", 1)[-1] if ":" in uri else uri


# Properties of type xs:boolean, which clients may write as 1/0 and Exchange answers as true/false.
BOOLEANS = frozenset({
    "ReminderIsSet", "IsResponseRequested", "IsReadReceiptRequested", "IsDeliveryReceiptRequested", "IsAllDayEvent",
    "AllowNewTimeProposal", "IsOnlineMeeting", "IsMeeting", "IsCancelled", "IsRecurring", "MeetingRequestWasSent",
    "IsDraft", "IsSubmitted", "IsFromMe", "IsResend", "IsUnmodified", "HasAttachments", "IsAssociated", "IsComplete",
    "IsTeamTask", "HasPicture", "IsInline", "IsContactPhoto", "IsDelegated", "IsOutOfDate", "HasBeenProcessed",
    "IsOrganizer", "IsHidden", "IsPrivate", "DoNotForwardMeeting",
})
_BOOLEAN_TEXT = {"1": "true", "0": "false", "true": "true", "false": "false"}


def keep(element: etree._Element) -> str:
    """The text a property is kept as: a copy without the request's unused namespace declarations,
    its xs:boolean values in Exchange's form."""
    copy = deepcopy(element)
    for node in copy.iter():
        if isinstance(node.tag, str) and not len(node) and etree.QName(node).localname in BOOLEANS:
            node.text = _BOOLEAN_TEXT.get((node.text or "").strip().lower(), node.text)
    etree.cleanup_namespaces(copy)
    return etree.tostring(copy, encoding="unicode")


def revive(text: str) -> etree._Element:
    """A kept property as an element again (a fresh copy each time)."""
    return etree.fromstring(text)


def merge_entries(current: str | None, given: etree._Element | None, index: str | None = None,
                  remove: bool = False, part: str | None = None) -> str | None:
    """An indexed property after setting (or removing) the entries of ``given`` in ``current``.

    Entries are matched by their ``Key``; the entries of a physical address merge field by field.
    With ``remove``, the entry ``index`` (``EmailAddress1``) goes; with a ``part`` too (``Street`` of
    the ``Business`` address), only that part goes, and the entry with its last part."""
    if current is None and (remove or given is None):
        return None
    holder = revive(current) if current is not None else etree.Element(given.tag, nsmap={"t": TNS})
    by_key = {entry.get("Key"): entry for entry in holder}
    if remove:
        entry = by_key.get(index)
        if entry is not None and part is not None:
            for stale in entry.findall(t(part)):
                entry.remove(stale)
        if entry is not None and (part is None or not any(isinstance(c.tag, str) for c in entry)):
            holder.remove(entry)
        return keep(holder) if len(holder) else None
    for entry in given:
        if not isinstance(entry.tag, str):
            continue
        old = by_key.get(entry.get("Key"))
        if old is None:
            holder.append(entry)
            by_key[entry.get("Key")] = entry
        elif len(entry):  # a physical address: its parts, one by one
            for part in entry:
                stale = old.find(part.tag)
                if stale is not None:
                    old.remove(stale)
                old.append(part)
        else:
            holder.replace(old, entry)
            by_key[entry.get("Key")] = entry
    return keep(holder)
