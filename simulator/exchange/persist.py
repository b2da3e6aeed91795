"""JSON forms of the values the durable world keeps as text, and their checked readers.

The Exchange journal (``simulator/world.py``) writes each message once as a JSON object
(:func:`message_record`) and reads it back with every field checked against its annotation
(:func:`message_from_record`); the fault rules keep their random generator's state
(:func:`rng_state`); saved documents carry a format name and a version (:func:`read_document`).

Values that JSON has no type for are written as one-key objects whose key starts with ``$``:

====================  ==========================================================
``{"$dt": "..."}``    a datetime, ISO 8601 with its UTC offset
``{"$date": "..."}``  a date, ISO 8601
``{"$bytes": "..."}`` bytes, base64
``{"$tuple": [...]}`` a tuple (lists stay JSON arrays)
``{"$deque": [...]}`` a ``collections.deque`` (with ``"maxlen"`` when it has one)
``{"$dict": [...]}``  a dict whose keys are not plain strings, as ``[key, value]`` pairs
``{"$count": n}``     an ``itertools.count`` whose next value is ``n``
====================  ==========================================================

The text is plain ASCII (non-ASCII characters, and the lone surrogates that stand for
undecodable header bytes, are written as ``\\u`` escapes), so any database text column holds
it. Reading refuses anything else with a :class:`PersistError` saying what is wrong and where.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import json
import random
import re
import types
import typing
from collections import deque
from datetime import date, datetime
from typing import Any

from simulator.exchange.mime import MessageData

# Records written inline under a "$<class name>" key (none at present: messages are written by
# message_record, the fault rules by simulator/faults.py).
_RECORDS: dict[str, type] = {}
_COUNT_REPR = re.compile(r"count\((-?\d+)\)")


class PersistError(ValueError):
    """Saved state that cannot be written or read back: the message says what and where."""


class _Bad(Exception):
    """A problem found deep inside the document; the path is added while unwinding."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []

    def at(self, segment: object) -> _Bad:
        self.where.append(str(segment))
        return self

    def located(self) -> str:
        if not self.where:
            return self.problem
        return f"{self.problem} (at {'.'.join(reversed(self.where))})"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- checking values against field annotations -----------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (empty when they cannot be resolved)."""
    hints = _HINTS.get(cls)
    if hints is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation naming something not importable at run time
            hints = {}
        _HINTS[cls] = hints
    return hints


def matches_hint(value: object, hint: Any) -> bool:
    """Whether ``value`` fits the type annotation ``hint``.

    Covers what the saved records use: plain classes, ``X | None`` and unions, and the
    ``list``/``tuple``/``dict``/``deque``/``set`` generics. Anything else is accepted.
    """
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is None:
        if not isinstance(hint, type):
            return True  # a forward reference or type variable: nothing to check against
        if hint is bool:
            return isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(matches_hint(value, arm) for arm in typing.get_args(hint))
    args = typing.get_args(hint)
    if origin in (list, deque, set, frozenset):
        return isinstance(value, origin) and (not args or all(matches_hint(v, args[0]) for v in value))
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches_hint(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches_hint(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            return False
        if not args:
            return True
        key_hint, value_hint = args
        return all(matches_hint(k, key_hint) and matches_hint(v, value_hint) for k, v in value.items())
    return isinstance(value, origin) if isinstance(origin, type) else True


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


# -- writing ---------------------------------------------------------------------------------


def _count_next(counter: itertools.count) -> int:
    """The next value of a counter, read from its repr so that no value is used up."""
    match = _COUNT_REPR.fullmatch(repr(counter))
    if match is None:
        raise _Bad(f"cannot save the counter {counter!r}: only whole-number counters with step 1 are supported")
    return int(match.group(1))


class _Writer:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._message_index: dict[int, int] = {}  # id(MessageData) -> index in the table
        self._keep: list[MessageData] = []  # holds the objects so their ids stay unique

    def value(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self._at(i, v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: self._at(k, v) for k, v in value.items()}
            return {"$dict": [[self._at(_short(k), k), self._at(_short(k), v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"$tuple": [self._at(i, v) for i, v in enumerate(value)]}
        if isinstance(value, datetime):
            return {"$dt": value.isoformat()}
        if isinstance(value, date):
            return {"$date": value.isoformat()}
        if isinstance(value, bytes):
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if isinstance(value, deque):
            out: dict[str, Any] = {"$deque": [self._at(i, v) for i, v in enumerate(value)]}
            if value.maxlen is not None:
                out["maxlen"] = value.maxlen
            return out
        if isinstance(value, itertools.count):
            return {"$count": _count_next(value)}
        if isinstance(value, MessageData):
            return {"$msg": self.message(value)}
        cls = type(value)
        if _RECORDS.get(cls.__name__) is cls:
            return {f"${cls.__name__}": self.record(value)}
        raise _Bad(f"cannot save a value of type {cls.__module__}.{cls.__qualname__}")

    def _at(self, segment: object, value: Any) -> Any:
        try:
            return self.value(value)
        except _Bad as bad:
            raise bad.at(segment) from None

    def record(self, obj: Any) -> dict[str, Any]:
        return {f.name: self._at(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)}

    def message(self, data: MessageData) -> int:
        index = self._message_index.get(id(data))
        if index is None:
            index = len(self.messages)
            self._message_index[id(data)] = index
            self._keep.append(data)
            self.messages.append(None)
            try:
                self.messages[index] = self.record(data)
            except _Bad as bad:
                raise bad.at(f"messages[{index}]") from None
        return index

    def attributes(self, obj: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {name: self._at(name, v) for name, v in vars(obj).items() if name not in skip}


# -- reading ---------------------------------------------------------------------------------


def _iso(text: Any, kind: type) -> Any:
    if not isinstance(text, str):
        raise _Bad(f"a {kind.__name__} must be an ISO 8601 string, not {_short(text)}")
    try:
        value = kind.fromisoformat(text)
    except ValueError:
        raise _Bad(f"{_short(text)} is not an ISO 8601 {kind.__name__}") from None
    return value


class _Reader:
    def __init__(self) -> None:
        self.messages: list[MessageData] = []

    def value(self, raw: Any) -> Any:
        if raw is None or isinstance(raw, (bool, int, float, str)):
            return raw
        if isinstance(raw, list):
            return [self._at(i, v) for i, v in enumerate(raw)]
        if not isinstance(raw, dict):
            raise _Bad(f"unexpected JSON value {_short(raw)}")
        tags = [k for k in raw if k.startswith("$")]
        if not tags:
            return {k: self._at(k, v) for k, v in raw.items()}
        return self.tagged(tags[0], raw)

    def _at(self, segment: object, raw: Any) -> Any:
        try:
            return self.value(raw)
        except _Bad as bad:
            raise bad.at(segment) from None

    def tagged(self, tag: str, raw: dict[str, Any]) -> Any:
        allowed = {tag, "maxlen"} if tag == "$deque" else {tag}
        extra = sorted(set(raw) - allowed)
        if extra:
            raise _Bad(f"a {tag} value has the unexpected key {extra[0]!r}")
        body = raw[tag]
        if tag == "$dt":
            return _iso(body, datetime)
        if tag == "$date":
            return _iso(body, date)
        if tag == "$bytes":
            if not isinstance(body, str):
                raise _Bad(f"$bytes must hold a base64 string, not {_short(body)}")
            try:
                return base64.b64decode(body.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                raise _Bad(f"$bytes holds text that is not base64: {_short(body)}") from None
        if tag in ("$tuple", "$deque", "$dict"):
            if not isinstance(body, list):
                raise _Bad(f"{tag} must hold a JSON array, not {_short(body)}")
            items = [self._at(i, v) for i, v in enumerate(body)]
            if tag == "$tuple":
                return tuple(items)
            if tag == "$deque":
                maxlen = raw.get("maxlen")
                if maxlen is not None and (not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 0):
                    raise _Bad(f"the maxlen of a $deque must be a whole number, not {_short(maxlen)}")
                return deque(items, maxlen)
            out: dict[Any, Any] = {}
            for i, pair in enumerate(items):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _Bad(f"$dict entries must be [key, value] pairs, not {_short(pair)}").at(i)
                key, value = pair
                try:
                    out[key] = value
                except TypeError:
                    raise _Bad(f"{_short(key)} cannot be a dict key").at(i) from None
            return out
        if tag == "$count":
            if not isinstance(body, int) or isinstance(body, bool):
                raise _Bad(f"$count must hold a whole number, not {_short(body)}")
            return itertools.count(body)
        if tag == "$msg":
            if not isinstance(body, int) or isinstance(body, bool) or not 0 <= body < len(self.messages):
                raise _Bad(f"$msg refers to message {_short(body)}, but the table has {len(self.messages)}")
            return self.messages[body]
        cls = _RECORDS.get(tag[1:])
        if cls is None:
            raise _Bad(f"unknown value tag {tag!r}")
        return self.record(cls, body)

    def record(self, cls: type, raw: Any) -> Any:
        name = cls.__name__
        if not isinstance(raw, dict):
            raise _Bad(f"a {name} must be a JSON object, not {_short(raw)}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = [k for k in raw if k not in known]
        if unknown:
            raise _Bad(f"{name} has no field {unknown[0]!r}")
        hints = _hints(cls)
        init: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for f in fields:
            if f.name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _Bad(f"{name} field {f.name!r} is missing")
                continue  # saved before the field existed: it keeps its default
            value = self._at(f.name, raw[f.name])
            hint = hints.get(f.name, Any)
            if not matches_hint(value, hint):
                raise _Bad(f"{name}.{f.name} must be {_type_name(hint)}, not {_short(value)}").at(f.name)
            (init if f.init else later)[f.name] = value
        try:
            obj = cls(**init)
        except (TypeError, ValueError) as exc:
            raise _Bad(f"cannot rebuild a {name}: {exc}") from None
        for key, value in later.items():
            setattr(obj, key, value)
        return obj

    def attributes(self, obj: Any, raw: Any, what: str, skip: frozenset[str] = frozenset()) -> None:
        """Set the saved attributes on a freshly made ``obj``; each must exist there with the same type."""
        if not isinstance(raw, dict):
            raise _Bad(f"the {what} must be a JSON object, not {_short(raw)}")
        fresh = vars(obj)
        values: dict[str, Any] = {}
        for key, item in raw.items():
            if key not in fresh or key in skip:
                raise _Bad(f"the {what} has no attribute {key!r}")
            value = self._at(key, item)
            expected = type(fresh[key])
            if fresh[key] is not None and not isinstance(value, expected):
                raise _Bad(f"{what}.{key} must be {expected.__name__}, not {_short(value)}")
            values[key] = value
        for key, value in values.items():
            setattr(obj, key, value)


_MESSAGE_FIELDS = {f.name: f for f in dataclasses.fields(MessageData)}
_TUPLES = frozenset(n for n, f in _MESSAGE_FIELDS.items() if str(f.type).startswith("tuple"))
_OPTIONAL_TEXT = frozenset(n for n, f in _MESSAGE_FIELDS.items() if str(f.type) == "str | None")


_DEFAULTS = {name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
             for name, f in _MESSAGE_FIELDS.items()}


def message_record(data: MessageData) -> dict:
    """A message as a JSON-able object (the Exchange journal's form of it): the fields that differ
    from their defaults; tuples as arrays, the date as ISO 8601 text, raw bytes as base64."""
    out: dict[str, Any] = {}
    for name, default in _DEFAULTS.items():
        value = getattr(data, name)
        if value == default:
            continue
        if name in _TUPLES:
            value = list(value)
        elif name == "date":
            value = value.isoformat()
        elif name == "raw":
            value = base64.b64encode(value).decode("ascii")
        out[name] = value
    return out


def message_from_record(raw: object) -> MessageData:
    """The message :func:`message_record` wrote, each field checked; :class:`PersistError` if not."""
    def bad(name: str, value: object, what: str) -> PersistError:
        return PersistError(f"cannot load a message: {name} must be {what}, not {_short(value)}")

    if not isinstance(raw, dict):
        raise PersistError(f"cannot load a message: expected a JSON object, not {_short(raw)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _MESSAGE_FIELDS:
            raise PersistError(f"cannot load a message: MessageData has no field {name!r}")
        if name in _TUPLES:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(name, value, "a list of strings")
            value = tuple(value)
        elif name == "date":
            if not isinstance(value, str):
                raise bad(name, value, "an ISO 8601 time")
            try:
                value = _iso(value, datetime)
            except _Bad as exc:
                raise PersistError(f"cannot load a message: {name}: {exc.problem}") from None
        elif name == "raw":
            if not isinstance(value, str):
                raise bad(name, value, "base64 text")
            try:
                value = base64.b64decode(value.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                raise bad(name, value, "base64 text") from None
        elif name == "size":
            if type(value) is not int:
                raise bad(name, value, "a whole number")
        elif name == "extra_headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise bad(name, value, "an object of strings")
        elif not (isinstance(value, str) or (value is None and name in _OPTIONAL_TEXT)):
            raise bad(name, value, "a string")
        values[name] = value
    return MessageData(**values)


def rng_state(rng: random.Random, what: str) -> dict:
    """A random generator's state as JSON-able data (for :func:`read_rng_state`)."""
    try:
        version, internal, gauss_next = rng.getstate()
    except (NotImplementedError, TypeError, ValueError) as exc:  # e.g. a SystemRandom keeps no state
        raise PersistError(f"cannot save {what}: the random generator has no saved state ({exc})") from None
    return {"version": version, "state": list(internal), "gauss_next": gauss_next}


def read_rng_state(raw: object, what: str) -> tuple:
    """The generator state saved by :func:`rng_state`, checked (on a scratch generator) before use."""
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(raw, dict) or set(raw) != {"version", "state", "gauss_next"}:
        raise PersistError(f"cannot load {what}: 'rng' must hold version, state and gauss_next")
    version, internal, gauss_next = raw["version"], raw["state"], raw["gauss_next"]
    if not whole(version) or not isinstance(internal, list) or not all(whole(v) for v in internal):
        raise PersistError(f"cannot load {what}: the random generator state is not a list of whole numbers")
    if gauss_next is not None and (isinstance(gauss_next, bool) or not isinstance(gauss_next, (int, float))):
        raise PersistError(f"cannot load {what}: the random generator's gauss_next is not a number")
    state = (version, tuple(internal), gauss_next)
    try:
        random.Random().setstate(state)
    except (ValueError, TypeError, OverflowError) as exc:
        raise PersistError(f"cannot load {what}: the random generator state is invalid ({exc})") from None
    return state


def read_document(text: object, what: str, fmt: str, version: int, *, kind: str, versioned: str) -> dict:
    """The saved JSON object in ``text`` of format ``fmt`` and ``version``, or :class:`PersistError`
    saying why ``what`` cannot be loaded (``kind``: what the text should be; ``versioned``: what a
    version mismatch names)."""
    def refuse(reason: str) -> PersistError:
        return PersistError(f"cannot load {what}: {reason}")

    if not isinstance(text, str):
        raise refuse(f"expected text, got {type(text).__name__}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise refuse(f"the text is not JSON ({exc})") from None
    except RecursionError:
        raise refuse("the JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise refuse("the text is not a JSON object")
    if doc.get("format") != fmt:
        raise refuse(f"the text is not {kind} (format {_short(doc.get('format'))}, expected {fmt!r})")
    found = doc.get("version")
    if type(found) is not int or found != version:
        raise refuse(f"unsupported {versioned} {_short(found)} (this code reads version {version})")
    return doc
