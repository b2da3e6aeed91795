"""EWS restrictions (``m:Restriction``) compiled into Python predicates.

Supported: And, Or, Not, Exists, IsEqualTo, IsNotEqualTo, IsGreaterThan(OrEqualTo),
IsLessThan(OrEqualTo) against a ``t:Constant`` (or another field), and Contains with the
containment modes FullString, Prefixed, Substring, PrefixOnWords, ExactPhrase and the comparisons
Exact / IgnoreCase (and the IgnoreNonSpacingCharacters / Loose variants, treated as IgnoreCase).
Strings compare case-insensitively, as Exchange does; a multi-valued property (Categories,
recipients) matches when one of its values matches. Any other operator or field is refused with
``ErrorUnsupportedPathForQuery`` / ``ErrorInvalidRestriction`` naming it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lxml import etree

from simulator.exchange.ews.fields import key_of_path, revive
from simulator.exchange.ews.xml import ResponseError, parse_bool, parse_datetime, t
from simulator.exchange.store import Folder, Item


def _mid(value: str | None) -> str | None:
    return value.strip().strip("<>").strip().lower() if value else None


def _as_sent(item: Item, name: str) -> str | None:
    """The text of a simple property as the client set it (a Contains matches what it wrote)."""
    text = item.data.kept.get(name)
    return revive(text).text if text else None


# field URI -> (getter, kind); kinds: str, datetime, int, bool, list (of str), mid (message id)
ITEM_FIELDS: dict[str, tuple[Callable[[Item], Any], str]] = {
    "item:Subject": (lambda i: i.data.subject, "str"),
    "message:ConversationTopic": (lambda i: i.data.subject, "str"),
    "item:DateTimeReceived": (lambda i: i.received, "datetime"),
    "item:DateTimeCreated": (lambda i: i.received, "datetime"),
    "item:DateTimeSent": (lambda i: i.data.date or i.received, "datetime"),
    "item:Size": (lambda i: i.data.stored_size, "int"),
    "item:Categories": (lambda i: i.categories, "list"),
    "item:ItemClass": (lambda i: i.item_class, "str"),
    "item:Body": (lambda i: i.data.body, "str"),
    "item:TextBody": (lambda i: i.data.body, "str"),
    "item:HasAttachments": (lambda i: False, "bool"),
    "item:InReplyTo": (lambda i: _as_sent(i, "InReplyTo") or i.data.in_reply_to, "mid"),
    "message:From": (lambda i: i.data.sender, "str"),
    "message:Sender": (lambda i: i.data.sender, "str"),
    "message:ToRecipients": (lambda i: list(i.data.to), "list"),
    "message:CcRecipients": (lambda i: list(i.data.cc), "list"),
    "message:IsRead": (lambda i: i.is_read, "bool"),
    "message:InternetMessageId": (lambda i: _as_sent(i, "InternetMessageId") or i.data.message_id, "mid"),
}
FOLDER_FIELDS: dict[str, tuple[Callable[[Folder], Any], str]] = {
    "folder:DisplayName": (lambda f: f.name, "str"),
    "folder:TotalCount": (lambda f: len(f.items), "int"),
    "folder:FolderClass": (lambda f: f.folder_class, "str"),
    "folder:UnreadCount": (lambda f: sum(1 for i in f.items.values() if not i.is_read), "int"),
}
_COMPARE = {
    "IsEqualTo": operator.eq, "IsNotEqualTo": operator.ne, "IsGreaterThan": operator.gt,
    "IsGreaterThanOrEqualTo": operator.ge, "IsLessThan": operator.lt, "IsLessThanOrEqualTo": operator.le,
}


class Predicate:
    """A compiled restriction; ``received_after`` is a lower bound on DateTimeReceived (fast path)."""

    def __init__(self, func: Callable[[Any], bool], received_after: tuple[datetime, bool] | None = None,
                 bound_only: bool = False) -> None:
        self.func = func
        self.received_after = received_after  # (bound, inclusive)
        self.bound_only = bound_only  # the whole restriction is that bound: items past it need no other test

    def __call__(self, obj: Any) -> bool:
        return self.func(obj)


def kept_getter(path: etree._Element) -> Callable[[Item], list[str] | None]:
    """The values of a property kept as the client sent it (simulator.exchange.ews.fields): the text
    of the element, of each of its values (a list, an extended property's t:Value), or of the entry
    an indexed path names; None when the item does not have it."""
    key = key_of_path(path)
    index = path.get("FieldIndex") if path.tag == t("IndexedFieldURI") else None

    def get(item: Item) -> list[str] | None:
        text = item.data.kept.get(key)
        if not text:  # not set, or deleted
            return None
        element = revive(text)
        if index is not None:
            element = next((e for e in element if e.get("Key") == index), None)
            if element is None:
                return None
        if element.tag == t("ExtendedProperty"):
            return [v.text or "" for v in element.iter(t("Value"))]
        leaves = [e.text or "" for e in element.iter() if isinstance(e.tag, str) and not len(e)]
        return leaves
    return get


def typed(text: str) -> Any:
    """A kept value as what it reads as, so that dates, numbers and flags compare as such."""
    lowered = text.strip().casefold()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return float(lowered)
    except ValueError:
        pass
    if len(lowered) >= 10 and lowered[4:5] == "-" and lowered[7:8] == "-":
        try:
            return parse_datetime(text.strip())
        except (ResponseError, ValueError):
            pass
    return lowered


def _flag_as_number(value: Any) -> Any:
    return float(value) if isinstance(value, bool) else value


def _same_kind(a: Any, b: Any) -> bool:
    return type(a) is type(b) or (isinstance(a, float) and isinstance(b, float))


def _convert(raw: str, kind: str, uri: str) -> Any:
    if kind == "kept":
        return typed(raw)
    if kind == "datetime":
        return parse_datetime(raw)
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ResponseError("ErrorInvalidValueForProperty", f"{raw!r} is not a number for {uri}") from None
    if kind == "bool":
        return parse_bool(raw)
    if kind == "mid":
        return _mid(raw)
    return raw.casefold()


def _norm(value: Any, kind: str) -> Any:
    if kind in ("str", "list") and isinstance(value, str):
        return value.casefold()
    if kind == "mid":
        return _mid(value)
    return value


class _Compiler:
    def __init__(self, kind: str, fields: dict[str, tuple[Callable[[Any], Any], str]] | None = None) -> None:
        self.fields = fields if fields is not None else ITEM_FIELDS if kind == "item" else FOLDER_FIELDS

    def field(self, elem: etree._Element | None) -> tuple[str, Callable[[Any], Any], str]:
        if elem is None:
            raise ResponseError("ErrorInvalidRestriction", "a comparison needs a t:FieldURI")
        uri = elem.get("FieldURI") or ""
        if elem.tag == t("FieldURI") and uri in self.fields:
            getter, kind = self.fields[uri]
            return uri, getter, kind
        if self.fields is ITEM_FIELDS and elem.tag in (t("FieldURI"), t("ExtendedFieldURI"), t("IndexedFieldURI")):
            return uri or "an extended property", kept_getter(elem), "kept"
        if elem.tag != t("FieldURI"):
            raise ResponseError("ErrorUnsupportedPathForQuery",
                                f"{etree.QName(elem).localname} paths are not supported in restrictions by the simulator")
        raise ResponseError("ErrorUnsupportedPathForQuery", f"the simulator cannot restrict on {uri!r}")

    def compile(self, elem: etree._Element) -> Callable[[Any], bool]:
        name = etree.QName(elem).localname
        kids = [c for c in elem if isinstance(c.tag, str)]
        if name in ("And", "Or"):
            parts = [self.compile(c) for c in kids]
            if name == "And":
                return lambda o: all(p(o) for p in parts)
            return lambda o: any(p(o) for p in parts)
        if name == "Not":
            if len(kids) != 1:
                raise ResponseError("ErrorInvalidRestriction", "Not takes exactly one restriction")
            inner = self.compile(kids[0])
            return lambda o: not inner(o)
        if name == "Exists":
            _, getter, _ = self.field(kids[0] if kids else None)
            return lambda o: getter(o) not in (None, "", [], ())
        if name in _COMPARE:
            return self._compare(name, kids)
        if name == "Contains":
            return self._contains(elem, kids)
        raise ResponseError("ErrorInvalidRestriction", f"the simulator does not support the {name} restriction")

    def _operand(self, kids: list[etree._Element]) -> etree._Element:
        holder = next((c for c in kids if c.tag == t("FieldURIOrConstant")), None)
        inner = [c for c in holder if isinstance(c.tag, str)] if holder is not None else []
        if not inner:
            raise ResponseError("ErrorInvalidRestriction", "a comparison needs a t:FieldURIOrConstant")
        return inner[0]

    def _compare(self, name: str, kids: list[etree._Element]) -> Callable[[Any], bool]:
        uri, getter, kind = self.field(kids[0] if kids else None)
        cmp = _COMPARE[name]
        operand = self._operand(kids)
        if operand.tag == t("Constant"):
            constant = _convert(operand.get("Value") or "", "str" if kind == "list" else kind, uri)

            def other(_o: Any) -> Any:
                return constant
        else:
            _, other_get, other_kind = self.field(operand)

            def other(o: Any) -> Any:
                return _norm(other_get(o), other_kind)

        def test(o: Any) -> bool:
            value, expected = getter(o), other(o)
            if kind == "kept":
                # a flag may come as 1/0 (exchangelib writes booleans so) or as true/false
                values = [_flag_as_number(typed(v)) for v in value] if value is not None else []
                expected = _flag_as_number(expected)
                comparable = [v for v in values if _same_kind(v, expected)]
                if name == "IsNotEqualTo":
                    return expected not in comparable
                return any(cmp(v, expected) for v in comparable)
            if kind == "list":
                values = [_norm(v, "str") for v in value]
                if name == "IsNotEqualTo":
                    return expected not in values
                return any(cmp(v, expected) for v in values)
            value = _norm(value, kind)
            if value is None or expected is None:
                return name == "IsNotEqualTo" and value != expected
            try:
                return cmp(value, expected)
            except TypeError:
                return False
        return test

    def _contains(self, elem: etree._Element, kids: list[etree._Element]) -> Callable[[Any], bool]:
        uri, getter, kind = self.field(kids[0] if kids else None)
        constant = next((c for c in kids if c.tag == t("Constant")), None)
        if constant is None:
            raise ResponseError("ErrorInvalidRestriction", "Contains needs a t:Constant")
        mode = elem.get("ContainmentMode", "FullString")
        exact = elem.get("ContainmentComparison", "Exact") == "Exact"
        wanted = constant.get("Value") or ""
        wanted = wanted if exact else wanted.casefold()

        def match(text: str) -> bool:
            text = text if exact else text.casefold()
            if mode == "FullString":
                return text == wanted
            if mode == "Prefixed":
                return text.startswith(wanted)
            if mode == "PrefixOnWords":
                return any(w.startswith(wanted) for w in text.split()) or text.startswith(wanted)
            return wanted in text  # Substring, ExactPhrase

        def test(o: Any) -> bool:
            value = getter(o)
            if value is None:
                return False
            if kind in ("list", "kept"):
                return any(match(str(v)) for v in value)
            return match(str(value))
        return test


def _received_bound(elem: etree._Element) -> tuple[datetime, bool] | None:
    """A lower bound on DateTimeReceived implied by the whole restriction, if there is one."""
    name = etree.QName(elem).localname
    kids = [c for c in elem if isinstance(c.tag, str)]
    if name == "And":
        bounds = [b for b in (_received_bound(c) for c in kids) if b is not None]
        return max(bounds, key=lambda b: (b[0], not b[1])) if bounds else None
    if name in ("IsGreaterThan", "IsGreaterThanOrEqualTo") and kids and kids[0].tag == t("FieldURI") \
            and kids[0].get("FieldURI") == "item:DateTimeReceived":
        holder = next((c for c in kids if c.tag == t("FieldURIOrConstant")), None)
        const = holder.find(t("Constant")) if holder is not None else None
        if const is not None:
            return parse_datetime(const.get("Value") or ""), name.endswith("OrEqualTo")
    return None


def compile_restriction(restriction: etree._Element, kind: str = "item",
                        fields: dict[str, tuple[Callable[[Any], Any], str]] | None = None) -> Predicate:
    """``fields`` replaces the properties of ``kind`` (field URI -> (getter, kind of value)): FindPeople
    restricts on ``persona:`` properties."""
    kids = [c for c in restriction if isinstance(c.tag, str)]
    if len(kids) != 1:
        raise ResponseError("ErrorInvalidRestriction", "m:Restriction takes exactly one search expression")
    func = _Compiler(kind, fields).compile(kids[0])
    bound = _received_bound(kids[0]) if kind == "item" and fields is None else None
    # outside an And, a bound is found only on a lone IsGreaterThan(OrEqualTo) DateTimeReceived vs a constant
    bound_only = bound is not None and etree.QName(kids[0]).localname in ("IsGreaterThan", "IsGreaterThanOrEqualTo")
    return Predicate(func, bound, bound_only)
