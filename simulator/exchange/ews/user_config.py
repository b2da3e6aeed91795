"""User configurations: GetUserConfiguration, CreateUserConfiguration, UpdateUserConfiguration,
DeleteUserConfiguration.

A user configuration is a named, hidden object of a folder (Exchange keeps it as an associated item
of class ``IPM.Configuration.<name>``) holding up to three parts: a dictionary of typed keys and
values, an XML document and a binary blob. Names are unique per folder, compared without regard to
case. Each one lives in the store as a ``ucfg`` event (:meth:`ExchangeStore.set_user_configuration`),
so it is journaled and survives a restart; the record is JSON:

``{"id": item id, "v": version, "name": name as created, "d": dictionary or None,
"x": XML data (base64) or None, "b": binary data (base64) or None}``

where the dictionary is a list of ``[[key type, [key values]], [value type, [values]]]``, every
value written the canonical way Exchange answers it (``true``/``false``, decimal integers, UTC
times, base64 re-encoded).

Answers, as Exchange gives them: an unknown name -> ErrorItemNotFound; creating a name the folder
already has -> ErrorItemSave; a name longer than 236 characters, with characters other than
``A-Z a-z 0-9 .`` or starting with ``IPM.Configuration`` -> ErrorInvalidRequest; a dictionary entry
of an unknown type or with a value its type cannot hold -> ErrorInvalidRequest; two entries with
the same key -> ErrorInvalidRequest; an unknown folder -> ErrorFolderNotFound.
"""

from __future__ import annotations

import base64
import binascii
import re

from lxml import etree

from simulator.exchange.ews.context import Context, Responses, change_key
from simulator.exchange.ews.xml import (
    EwsFault,
    ResponseError,
    el,
    format_datetime,
    m,
    parse_datetime,
    sub,
    t,
)
from simulator.exchange.store import Folder

MAX_NAME = 236
_NAME = re.compile(r"[A-Za-z0-9.]+")
_RESERVED_PREFIX = "ipm.configuration"
PROPERTIES = ("Id", "Dictionary", "XmlData", "BinaryData", "All")
_INT_RANGES = {
    "Byte": (0, 0xFF),
    "Integer32": (-(1 << 31), (1 << 31) - 1),
    "UnsignedInteger32": (0, (1 << 32) - 1),
    "Integer64": (-(1 << 63), (1 << 63) - 1),
    "UnsignedInteger64": (0, (1 << 64) - 1),
}
_BOOLEANS = {"true": "true", "1": "true", "false": "false", "0": "false"}
VALUE_TYPES = ("Boolean", "Byte", "ByteArray", "DateTime", "Integer32", "UnsignedInteger32", "Integer64",
               "UnsignedInteger64", "String", "StringArray")


def _invalid(message: str) -> ResponseError:
    return ResponseError("ErrorInvalidRequest", f"The request is invalid: {message}")


# -- names and folders -------------------------------------------------------------------------
def _name_and_folder(ctx: Context, elem: etree._Element | None) -> tuple[str, Folder]:
    """The name and folder of a ``UserConfigurationName`` element (types or messages namespace)."""
    if elem is None:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: {ctx.operation} needs a "
                                                "UserConfigurationName")
    name = elem.get("Name")
    if name is None:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: the required attribute "
                                                "'Name' of UserConfigurationName is missing")
    refs = ctx.folder_refs(elem)
    if len(refs) != 1:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: UserConfigurationName "
                                                "needs one FolderId or DistinguishedFolderId")
    folder = ctx.folder(refs[0])
    if not name or len(name) > MAX_NAME or not _NAME.fullmatch(name) or name.lower().startswith(_RESERVED_PREFIX):
        raise _invalid(f"{name!r} is not a valid user configuration name (at most {MAX_NAME} characters "
                       "A-Z, a-z, 0-9 and '.', not starting with 'IPM.Configuration')")
    return name, folder


def _existing(ctx: Context, folder: Folder, name: str) -> dict | None:
    configs = ctx.need_mailbox().settings.user_configs.get(folder.folder_id, {})
    record = configs.get(name.lower())
    return dict(record) if record is not None else None


def _not_found(name: str) -> ResponseError:
    return ResponseError("ErrorItemNotFound", f"The user configuration {name!r} was not found in this folder.")


def _stored(ctx: Context, folder: Folder, name: str) -> dict:
    """The user configuration ``name`` of ``folder``; ErrorItemNotFound when it has none."""
    record = _existing(ctx, folder, name)
    if record is None:
        raise _not_found(name)
    return record


# -- typed values -----------------------------------------------------------------------------
def _canonical(kind: str, text: str) -> str:
    """``text`` as Exchange writes a value of ``kind``; ErrorInvalidRequest if it cannot be one."""
    text = text.strip() if kind not in ("String", "StringArray") else text
    if kind in ("String", "StringArray"):
        return text
    if kind == "Boolean":
        if text.lower() not in _BOOLEANS:
            raise _invalid(f"{text!r} is not a Boolean")
        return _BOOLEANS[text.lower()]
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        try:
            number = int(text)
        except ValueError:
            raise _invalid(f"{text!r} is not an {kind}") from None
        if not low <= number <= high:
            raise _invalid(f"{text} is out of the range of {kind}")
        return str(number)
    if kind == "DateTime":
        try:
            return format_datetime(parse_datetime(text))
        except ResponseError:
            raise _invalid(f"{text!r} is not a DateTime") from None
    if kind == "ByteArray":
        try:
            return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii")
        except (binascii.Error, ValueError):
            raise _invalid(f"{text!r} is not base64") from None
    raise _invalid(f"{kind!r} is not a dictionary object type")


def _typed(elem: etree._Element | None, what: str) -> list:
    """``[type, [values]]`` of a DictionaryKey / DictionaryValue element."""
    if elem is None:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: a DictionaryEntry needs a "
                                                f"{what}")
    kind = (elem.findtext(t("Type")) or "").strip()
    if kind not in VALUE_TYPES:
        raise _invalid(f"{kind!r} is not a dictionary object type")
    values = [_canonical(kind, v.text or "") for v in elem.findall(t("Value"))]
    if not values:
        raise _invalid(f"the {what} has no value")
    if len(values) > 1 and kind != "StringArray":
        raise _invalid(f"a {kind} {what} has one value")
    return [kind, values]


def _dictionary(elem: etree._Element) -> list:
    entries: list = []
    keys: set[tuple] = set()
    for entry in elem.findall(t("DictionaryEntry")):
        key = _typed(entry.find(t("DictionaryKey")), "DictionaryKey")
        marker = (key[0], tuple(key[1]))
        if marker in keys:
            raise _invalid(f"the dictionary has the key {key[1][0]!r} twice")
        keys.add(marker)
        value_elem = entry.find(t("DictionaryValue"))
        value = _typed(value_elem, "DictionaryValue") if value_elem is not None else None
        entries.append([key, value])
    return entries


def _base64(elem: etree._Element) -> str:
    try:
        return base64.b64encode(base64.b64decode((elem.text or "").strip(), validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _invalid(f"the {etree.QName(elem).localname} is not base64") from None


def _parts(spec: etree._Element) -> dict:
    """The parts a UserConfiguration element sets: keys "d", "x", "b" (absent: not given)."""
    parts: dict = {}
    dictionary = spec.find(t("Dictionary"))
    if dictionary is not None:
        parts["d"] = _dictionary(dictionary)
    for tag, key in (("XmlData", "x"), ("BinaryData", "b")):
        found = spec.find(t(tag))
        if found is not None:
            parts[key] = _base64(found)
    return parts


# -- answers ------------------------------------------------------------------------------------
def _typed_element(tag: str, typed: list) -> etree._Element:
    e = el(tag)
    sub(e, "t:Type", typed[0])
    for value in typed[1]:
        sub(e, "t:Value", value)
    return e


def _configuration_element(folder: Folder, record: dict, properties: str) -> etree._Element:
    out = el("m:UserConfiguration")
    name = sub(out, "t:UserConfigurationName", attrib={"Name": record["name"]})
    name.append(el("t:FolderId", {"Id": folder.folder_id, "ChangeKey": change_key(folder.folder_id)}))
    every = properties == "All"
    if every or properties == "Id":
        out.append(el("t:ItemId", {"Id": record["id"], "ChangeKey": change_key(record["id"], record["v"])}))
    if (every or properties == "Dictionary") and record.get("d") is not None:
        dictionary = sub(out, "t:Dictionary")
        for key, value in record["d"]:
            entry = sub(dictionary, "t:DictionaryEntry")
            entry.append(_typed_element("t:DictionaryKey", key))
            if value is not None:
                entry.append(_typed_element("t:DictionaryValue", value))
    if (every or properties == "XmlData") and record.get("x") is not None:
        sub(out, "t:XmlData", record["x"])
    if (every or properties == "BinaryData") and record.get("b") is not None:
        sub(out, "t:BinaryData", record["b"])
    return out


# -- operations ---------------------------------------------------------------------------------
def get_user_configuration(ctx: Context, req: etree._Element) -> etree._Element:
    properties = (req.findtext(m("UserConfigurationProperties")) or "").strip()
    if properties not in PROPERTIES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: {properties!r} is not "
                                                f"one of {', '.join(PROPERTIES)}")
    out = Responses("GetUserConfiguration")

    def one() -> list[etree._Element]:
        name, folder = _name_and_folder(ctx, req.find(m("UserConfigurationName")))
        record = _stored(ctx, folder, name)
        return [_configuration_element(folder, record, properties)]

    out.run(one)
    return out.root


def _spec(req: etree._Element) -> etree._Element:
    spec = req.find(m("UserConfiguration"))
    if spec is None:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: a UserConfiguration "
                                                "element is required")
    return spec


def create_user_configuration(ctx: Context, req: etree._Element) -> etree._Element:
    spec = _spec(req)
    out = Responses("CreateUserConfiguration")

    def one() -> list[etree._Element]:
        name, folder = _name_and_folder(ctx, spec.find(t("UserConfigurationName")))
        parts = _parts(spec)
        if _existing(ctx, folder, name) is not None:
            raise ResponseError("ErrorItemSave", f"The user configuration {name!r} already exists in this folder.")
        record = {"id": ctx.store.ids.next(), "v": 0, "name": name,
                  "d": parts.get("d"), "x": parts.get("x"), "b": parts.get("b")}
        ctx.store.set_user_configuration(ctx.need_mailbox().address, folder.folder_id, name, record)
        return []

    out.run(one)
    return out.root


def update_user_configuration(ctx: Context, req: etree._Element) -> etree._Element:
    """The parts the request names replace the stored ones; parts it leaves out stay as they were."""
    spec = _spec(req)
    out = Responses("UpdateUserConfiguration")

    def one() -> list[etree._Element]:
        name, folder = _name_and_folder(ctx, spec.find(t("UserConfigurationName")))
        parts = _parts(spec)
        record = _stored(ctx, folder, name)
        record.update(parts)
        record["v"] += 1
        ctx.store.set_user_configuration(ctx.need_mailbox().address, folder.folder_id, record["name"], record)
        return []

    out.run(one)
    return out.root


def delete_user_configuration(ctx: Context, req: etree._Element) -> etree._Element:
    out = Responses("DeleteUserConfiguration")

    def one() -> list[etree._Element]:
        name, folder = _name_and_folder(ctx, req.find(m("UserConfigurationName")))
        record = _stored(ctx, folder, name)
        ctx.store.set_user_configuration(ctx.need_mailbox().address, folder.folder_id, record["name"], None)
        return []

    out.run(one)
    return out.root


OPERATIONS = {
    "GetUserConfiguration": get_user_configuration,
    "CreateUserConfiguration": create_user_configuration,
    "UpdateUserConfiguration": update_user_configuration,
    "DeleteUserConfiguration": delete_user_configuration,
}
