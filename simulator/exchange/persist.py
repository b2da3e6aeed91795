"""JSON forms of the values the durable world keeps as text, and their checked readers.

The Exchange journal (``simulator/world.py``) writes each message as a JSON object of the fields
that differ from their defaults (:func:`message_record`: tuples as arrays, the date as ISO 8601
text, raw bytes as base64) and reads it back with every field checked (:func:`message_from_record`);
the fault rules (``simulator/faults.py``) keep their random generator's state (:func:`rng_state`),
check their fields against their annotations (:func:`matches_hint`) and carry a format name and
a version (:func:`read_document`). Reading refuses anything else with a :class:`PersistError`
saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import random
import types
import typing
from collections import deque
from typing import Any

from engine.clock import parse_instant
from simulator.exchange.mime import MessageData


class PersistError(ValueError):
    """Saved state that cannot be written or read back: the message says what and where."""


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- checking values against field annotations -----------------------------------------------

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
                value = parse_instant(value, utc=False)
            except ValueError:
                raise PersistError(f"cannot load a message: {name}: {_short(value)} is not an ISO 8601 "
                                   "datetime") from None
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
        elif name in ("extra_headers", "kept"):
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
