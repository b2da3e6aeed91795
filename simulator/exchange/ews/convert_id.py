"""ConvertId between EwsId / OwaId (the store's id), EntryId (base64) and HexEntryId (hex).

exchangelib's version probe sends a ConvertId of the id ``DUMMY``; it only needs the
ServerVersionInfo header, and gets a per-message ErrorInvalidIdMalformed like on Exchange.
"""

from __future__ import annotations

import base64
import binascii

from lxml import etree

from simulator.exchange.ews.context import Context, Responses
from simulator.exchange.ews.xml import XSI, ResponseError, el, m

FORMATS = ("EwsLegacyId", "EwsId", "EntryId", "HexEntryId", "StoreId", "OwaId")


def _to_native(value: str, fmt: str) -> str:
    try:
        if fmt in ("EntryId", "StoreId"):
            return base64.b64decode(value, validate=True).decode("ascii")
        if fmt == "HexEntryId":
            return bytes.fromhex(value).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ResponseError("ErrorInvalidIdMalformed", f"{value!r} is not a valid {fmt}") from None
    return value


def _from_native(value: str, fmt: str) -> str:
    if fmt in ("EntryId", "StoreId"):
        return base64.b64encode(value.encode("ascii")).decode("ascii")
    if fmt == "HexEntryId":
        return value.encode("ascii").hex().upper()
    return value


def convert_id(ctx: Context, req: etree._Element) -> etree._Element:
    destination = req.get("DestinationFormat", "EwsId")
    out = Responses("ConvertId")
    sources = req.find(m("SourceIds"))
    for alt in (sources if sources is not None else ()):
        if not isinstance(alt.tag, str):
            continue

        def one(alt: etree._Element = alt) -> list[etree._Element]:
            fmt = alt.get("Format", "EwsId")
            if destination not in FORMATS or fmt not in FORMATS:
                raise ResponseError("ErrorInvalidIdMalformed", f"unknown id format {fmt!r} -> {destination!r}")
            native = _to_native(alt.get("Id") or "", fmt)
            owner = (alt.get("Mailbox") or "").strip().lower()
            mbx = ctx.store.mailboxes.get(owner)
            if mbx is None or (native not in mbx.item_folder and native not in mbx.folders):
                raise ResponseError("ErrorInvalidIdMalformed", f"{alt.get('Id')!r} is not an id in mailbox {owner!r}")
            attrs = {f"{{{XSI}}}type": "t:AlternateIdType", "Format": destination,
                     "Id": _from_native(native, destination), "Mailbox": mbx.address}
            return [el("m:AlternateId", attrs)]

        out.run(one)
    return out.root


OPERATIONS = {"ConvertId": convert_id}

