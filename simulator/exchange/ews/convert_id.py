"""ConvertId: one id in another format, worked out from the id itself as Exchange does.

Exchange converts ids by their structure and never looks the item or folder up: a well-formed id
of an item that was deleted long ago still converts, and a malformed one gets
ErrorInvalidIdMalformed. Two kinds of source id are understood here:

* the simulator's own ids (``AAMkA...`` text, the ids its store hands out). Their EwsId,
  EwsLegacyId and OwaId are the id itself; EntryId and StoreId are the base64 of its text and
  HexEntryId its upper-case hex, so every format converts back to the store's id;
* ids in Exchange's binary layout, as real Exchange Online hands them out. An EwsId is the base64
  of: a compression byte (0), a storage-type byte, a little-endian 16-bit length and the mailbox
  (its GUID, or its SMTP address in the older layout), a processing byte, then a 16-bit length
  and the MAPI entry id. The entry id alone is the EntryId (base64) and HexEntryId (hex); the
  EwsLegacyId names the mailbox by its SMTP address instead of its GUID.

A source id names its mailbox (the ``Mailbox`` attribute). When a format that carries the
mailbox is built from one that does not, the mailbox must exist in the store
(ErrorNonExistentMailbox otherwise); its GUID is derived from its address, so it is the same on
every run.

exchangelib's version probe sends a ConvertId of the id ``DUMMY``; it only needs the
ServerVersionInfo header, and gets a per-message ErrorInvalidIdMalformed like on Exchange.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import uuid
from dataclasses import dataclass

from lxml import etree

from simulator.exchange.ews.context import Context, Responses
from simulator.exchange.ews.xml import XSI, EwsFault, ResponseError, el, m, t

FORMATS = ("EwsLegacyId", "EwsId", "EntryId", "HexEntryId", "StoreId", "OwaId")
_WHOLE_IDS = ("EwsId", "EwsLegacyId", "OwaId")  # formats that name the mailbox as well as the entry
_BY_GUID, _BY_ADDRESS = 0x03, 0x01  # storage-type bytes of the binary layout
_NATIVE = re.compile(r"AA[A-Za-z]{1,6}A[0-9a-f]{12}[0-9a-f]{8,}")  # IdSource.next()
_GUIDS = uuid.UUID("5e1f0c2a-6d3b-4c55-9a0e-3b7d8f21c640")  # namespace of the mailbox GUIDs

MALFORMED = "Id is malformed."


@dataclass(slots=True)
class ParsedId:
    entry: bytes  # the MAPI entry id (for a simulator id: its text)
    native: str | None = None  # the simulator's id, when it is one
    mailbox: str | None = None  # GUID or address carried by the id itself
    by_address: bool = False
    processing: int = 0


def mailbox_guid(address: str) -> str:
    """The mailbox GUID the simulator gives ``address`` (stable across runs and processes)."""
    return str(uuid.uuid5(_GUIDS, address.lower()))


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ResponseError("ErrorInvalidIdMalformed", MALFORMED) from None


def _unpack(raw: bytes) -> ParsedId:
    """Read Exchange's binary id layout; anything else is malformed."""
    try:
        compressed, storage = raw[0], raw[1]
        (size,) = struct.unpack_from("<H", raw, 2)
        owner = raw[4:4 + size].decode("ascii")
        at = 4 + size
        processing = raw[at]
        (entry_size,) = struct.unpack_from("<H", raw, at + 1)
        entry = raw[at + 3:at + 3 + entry_size]
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ResponseError("ErrorInvalidIdMalformed", MALFORMED) from None
    if compressed != 0 or storage not in (_BY_GUID, _BY_ADDRESS) or not owner or len(entry) != entry_size \
            or at + 3 + entry_size != len(raw) or entry_size == 0:
        raise ResponseError("ErrorInvalidIdMalformed", MALFORMED)
    return ParsedId(entry, mailbox=owner, by_address=storage == _BY_ADDRESS, processing=processing)


def _pack(storage: int, owner: str, entry: bytes, processing: int = 0) -> str:
    name = owner.encode("ascii")
    raw = bytes([0, storage]) + struct.pack("<H", len(name)) + name + bytes([processing]) \
        + struct.pack("<H", len(entry)) + entry
    return base64.b64encode(raw).decode("ascii")


def parse(value: str, fmt: str) -> ParsedId:
    value = (value or "").strip()
    if not value:
        raise ResponseError("ErrorInvalidIdMalformed", MALFORMED)
    if fmt in _WHOLE_IDS:
        if _NATIVE.fullmatch(value):
            return ParsedId(value.encode("ascii"), native=value)
        return _unpack(_b64(value))
    if fmt == "HexEntryId":
        try:
            entry = bytes.fromhex(value)
        except ValueError:
            raise ResponseError("ErrorInvalidIdMalformed", MALFORMED) from None
    else:  # EntryId, StoreId
        entry = _b64(value)
    if not entry:
        raise ResponseError("ErrorInvalidIdMalformed", MALFORMED)
    text = entry.decode("ascii", "replace")
    return ParsedId(entry, native=text if _NATIVE.fullmatch(text) else None)


def render(parsed: ParsedId, fmt: str, address: str) -> str:
    if fmt in ("EntryId", "StoreId"):
        return base64.b64encode(parsed.entry).decode("ascii")
    if fmt == "HexEntryId":
        return parsed.entry.hex().upper()
    if parsed.native is not None:
        return parsed.native
    if fmt == "EwsLegacyId":
        return _pack(_BY_ADDRESS, address, parsed.entry, parsed.processing)
    guid = parsed.mailbox if parsed.mailbox and not parsed.by_address else mailbox_guid(address)
    if fmt == "OwaId":  # OWA's form of the same id: URL-safe base64
        return _pack(_BY_GUID, guid, parsed.entry, parsed.processing).replace("+", "-").replace("/", "_")
    return _pack(_BY_GUID, guid, parsed.entry, parsed.processing)


def convert_id(ctx: Context, req: etree._Element) -> etree._Element:
    destination = req.get("DestinationFormat", "EwsId")
    if destination not in FORMATS:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: the DestinationFormat "
                                                f"{destination!r} is not one of {', '.join(FORMATS)}.")
    out = Responses("ConvertId")
    sources = req.find(m("SourceIds"))
    for alt in (sources if sources is not None else ()):
        if not isinstance(alt.tag, str):
            continue
        if alt.tag != t("AlternateId"):
            out.error("ErrorInvalidIdMalformed", f"{etree.QName(alt).localname}: only mailbox ids (AlternateId) "
                                                 "can be converted")
            continue

        def one(alt: etree._Element = alt) -> list[etree._Element]:
            fmt = alt.get("Format", "")
            if fmt not in FORMATS:
                raise ResponseError("ErrorInvalidIdMalformed", MALFORMED)
            parsed = parse(alt.get("Id") or "", fmt)
            owner = (alt.get("Mailbox") or "").strip().lower()
            mbx = ctx.store.mailboxes.get(owner)
            if mbx is None:
                raise ResponseError("ErrorNonExistentMailbox",
                                    f"The SMTP address {owner!r} has no mailbox associated with it.")
            attrs = {f"{{{XSI}}}type": "t:AlternateIdType", "Format": destination,
                     "Id": render(parsed, destination, mbx.address), "Mailbox": mbx.address}
            return [el("m:AlternateId", attrs)]

        out.run(one)
    return out.root


OPERATIONS = {"ConvertId": convert_id}
