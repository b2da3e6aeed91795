"""Scenario files: a whole sandbox run written down in TOML, checked, run and judged.

A scenario file describes an organization, its email server profiles and settings, its mailboxes,
the mail that arrives and is sent, the faults Exchange Online shows, how long to run, and what
must be true at the end. :func:`load_scenario` reads and checks a file (a :class:`ScenarioError`
names the file, the line and the key of the first problem); :func:`run_scenario` builds the
organization through the administrator's operations (``sandbox.admin``, as a person would), runs
the engine on the sandbox clock, in process ("direct") or over loopback HTTPS with exchangelib
("wire"), and returns a :class:`ScenarioResult` with the counts and one :class:`Check` per
expectation. ``sss scenario run FILE`` is the command for it (:mod:`simulator.cli_scenario`).

The file (keys of the CRM parts are the Dataverse column names their input models in
:mod:`simulator.crm.inputs` declare, and are checked by those models)::

    name = "basic-flow"           # optional; the file name otherwise
    description = "..."           # optional
    seed = 7                      # optional (0); the same seed gives the same event log
    mode = "direct"               # or "wire"
    duration = "6h"               # how long the engine runs: "90m", "6h", "1d12h"
    start = 2026-01-05T08:00:00Z  # optional: the sandbox clock at the start

    [organization]                # OrganizationInput: name, admin_email, admin_domain, tenant_id, ...
    [[users]]                     # UserInput: fullname, internalemailaddress, incomingemailfilteringmethod, ...
    [[queues]]                    # QueueInput: name, emailaddress, owner, incomingemailfilteringmethod
    [[records]]                   # RecordInput: kind (contact, account, lead), name, emailaddress1
    [[profiles]]                  # ProfileInput: name, processemailsreceivedafter, minpollingintervalinminutes, ...
    [settings]                    # SettingsInput: defaultemailserverprofileid (a profile name), switches, ...
    [[mailboxes]]                 # MailboxEditInput + TestEnableInput: mailboxes = [...], delivery methods,
                                  #   emailserverprofile, start_date, this_org_only, and approved, test_and_enable
    [traffic]                     # seeded traffic (simulator.traffic.TrafficMix) and the mailboxes it reaches
    [[mail]]                      # one message: at, from, to, subject, reply_to, received, malformed, ...
    [[send]]                      # one email a user sends from the CRM: at, from, to, subject
    [[faults]]                    # FaultInput (code, operation, mailbox, count, ...) + active_from/active_until
    [expect]                      # tracked, skipped, undeliverable, sent, ...: 5, ">= 5", "<= 5", "3..8"
    [expect.alerts]               # alert counts by level: information, warning, error
    [[expect.alert]]              # an alert was raised: mailbox, profile, level, code, text, count
    [[expect.mailbox]]            # a mailbox's columns at the end: incomingemailstatus = "Success", ...

Times in the file (``processemailsreceivedafter``, ``start_date``, a message's ``received``) are
TOML dates or date-times (UTC unless they give an offset), ISO 8601 text, or an offset from the
start such as ``"-1d"`` or ``"+2h"``. Everything before the run (the organization, S2S in wire
mode, profiles, settings, approval, Test & Enable) happens at the start time; the traffic, the
messages, the sends and the faults happen during the run.

Determinism: all randomness comes from generators seeded by the scenario's seed, and time only
from the sandbox clock, so the same file and seed give the same event log (``result.events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import json
import random
import re
import smtplib
import tomllib
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar
from xml.etree import ElementTree as ET

from pydantic import BaseModel, Field, PlainValidator, field_validator
from pydantic import ValidationError as PydanticError
from sqlalchemy import select

from engine.clock import as_utc, parse_instant
from engine.ports import ActMethod, IncomingMethod, OutgoingMethod
from simulator.crm.admin_settings import METHODS, method_value
from simulator.crm.db import MEMORY_URL
from simulator.crm.errors import AdminError
from simulator.crm.inputs import (
    EMAIL_PATTERN,
    CrmDateTime,
    FaultInput,
    Input,
    MailboxEditInput,
    OrganizationInput,
    ProfileInput,
    QueueInput,
    RecordInput,
    SettingsInput,
    TestEnableInput,
    Text,
    UserInput,
    refusal,
    show,
)
from simulator.crm.models import (
    Email,
    EmailServerProfile,
    EmailStatus,
    Mailbox,
    TraceLog,
    TrackSetting,
)
from simulator.crm.outcomes import ALERT_LEVEL_NAMES, mail_outcomes
from simulator.exchange.mime import MessageData
from simulator.faults import FaultRule, FaultRuleError
from simulator.sandbox import DEFAULT_START, Sandbox
from simulator.traffic import Party, TrafficMix, TrafficPlan

MODES = ("direct", "wire")
MAX_DURATION = timedelta(days=366)
EXAMPLES_PACKAGE = "simulator"
EXAMPLES_FOLDER = "examples"

STATUS_NAMES = {0: "Not Run", 1: "Success", 2: "Failure"}
APPROVAL_NAMES = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
# the words of `sss user add --track`, besides the numbers of SPEC 3.4
TRACK_NAMES = {"all": TrackSetting.ALL, "replies": TrackSetting.REPLIES_TO_CRM_EMAIL,
               "leads-contacts-accounts": TrackSetting.FROM_LEADS_CONTACTS_ACCOUNTS,
               "email-enabled": TrackSetting.FROM_EMAIL_ENABLED_RECORDS, "none": TrackSetting.NONE}
COUNTS = ("tracked", "skipped", "undeliverable", "sent", "pending_send", "failed_to_send", "polls")
REPLY_WAYS = ("in-reply-to", "tracking-token")


# ================================================================================== errors
class ScenarioError(ValueError):
    """A scenario file that cannot be run: where (file, line, key as written) and what to do."""

    def __init__(self, file: str, line: int | None, key: str | None, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = file if line is None else f"{file}:{line}"
        super().__init__(" ".join(f"{where}: {key + ': ' if key else ''}{message}".split()))


def _key_text(path: tuple) -> str:
    """A key path as the user wrote it in TOML terms: ``users[2].fullname``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += ("." if out else "") + name
    return out


class _KeyLines:
    """Where each key of a TOML text is: ``(table, index, key, ...) -> line``.

    ``tomllib`` gives values without positions, so this walks the text once more (it is known to
    be valid TOML) and records the line of every key, table header and array entry."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[tuple, int] = {}
        self._starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        with contextlib.suppress(IndexError, ValueError):  # a construct it does not know: keep what it found
            self._scan()

    def line_of(self, path: tuple) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    # -- the walk -------------------------------------------------------------------------
    def _line(self, pos: int) -> int:
        lo, hi = 0, len(self._starts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._starts[mid] <= pos:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def _note(self, path: tuple, pos: int) -> None:
        self.lines.setdefault(path, self._line(pos))

    def _blank(self, pos: int, newlines: bool = True) -> int:
        t = self.text
        while pos < len(t):
            c = t[pos]
            if c in " \t\r" or (newlines and c == "\n"):
                pos += 1
            elif c == "#":
                end = t.find("\n", pos)
                pos = len(t) if end < 0 else end
            else:
                break
        return pos

    def _key(self, pos: int) -> tuple[tuple[str, ...], int]:
        t, parts = self.text, []
        while True:
            pos = self._blank(pos, newlines=False)
            if t[pos] == '"':
                end = self._basic_end(pos)
                raw = t[pos:end]
                try:
                    parts.append(json.loads(raw))
                except ValueError:
                    parts.append(raw[1:-1])
                pos = end
            elif t[pos] == "'":
                end = t.index("'", pos + 1)
                parts.append(t[pos + 1:end])
                pos = end + 1
            else:
                m = re.compile(r"[A-Za-z0-9_-]+").match(t, pos)
                if m is None:
                    raise ValueError("no key here")
                parts.append(m.group())
                pos = m.end()
            pos = self._blank(pos, newlines=False)
            if pos < len(t) and t[pos] == ".":
                pos += 1
                continue
            return tuple(parts), pos

    def _basic_end(self, pos: int) -> int:
        """The position after the basic string that starts at ``pos``."""
        t, i = self.text, pos + 1
        while t[i] != '"':
            i += 2 if t[i] == "\\" else 1
        return i + 1

    def _value(self, pos: int, path: tuple) -> int:
        t = self.text
        if t.startswith('"""', pos) or t.startswith("'''", pos):
            quote = t[pos:pos + 3]
            i = pos + 3
            while True:
                i = t.index(quote, i)
                if quote == '"""' and t[i - 1] == "\\":
                    i += 1
                    continue
                end = i + 3
                while end < len(t) and t[end] == quote[0]:  # up to two quotes may end the content
                    end += 1
                return end
        if t[pos] == '"':
            return self._basic_end(pos)
        if t[pos] == "'":
            return t.index("'", pos + 1) + 1
        if t[pos] == "[":
            pos, index = pos + 1, 0
            while True:
                pos = self._blank(pos)
                if t[pos] == "]":
                    return pos + 1
                self._note(path + (index,), pos)
                pos = self._blank(self._value(pos, path + (index,)))
                if t[pos] == ",":
                    pos, index = pos + 1, index + 1
        if t[pos] == "{":
            pos += 1
            while True:
                pos = self._blank(pos)
                if t[pos] == "}":
                    return pos + 1
                start = pos
                keys, pos = self._key(pos)
                self._note(path + keys, start)
                pos = self._blank(pos)
                pos = self._blank(self._value(self._blank(pos + 1), path + keys))  # after "="
                if t[pos] == ",":
                    pos += 1
        m = re.compile(r"[^,\]}\n#]*").match(t, pos)
        return m.end() if m and m.end() > pos else pos + 1

    def _scan(self) -> None:
        t, pos = self.text, 0
        table: tuple = ()
        arrays: dict[tuple[str, ...], int] = {}

        def resolve(names: tuple[str, ...]) -> tuple:
            out: list = []
            for i, name in enumerate(names):
                out.append(name)
                if names[:i + 1] in arrays:
                    out.append(arrays[names[:i + 1]])
            return tuple(out)

        while True:
            pos = self._blank(pos)
            if pos >= len(t):
                return
            start = pos
            if t.startswith("[[", pos):
                names, pos = self._key(pos + 2)
                arrays[names] = arrays.get(names, -1) + 1
                table = resolve(names)
                self._note(table[:-1], start)
                self._note(table, start)
                pos = t.index("]]", pos) + 2
            elif t[pos] == "[":
                names, pos = self._key(pos + 1)
                table = resolve(names)
                self._note(table, start)
                pos = t.index("]", pos) + 1
            else:
                keys, pos = self._key(pos)
                for i in range(1, len(keys) + 1):
                    self._note(table + keys[:i], start)
                pos = self._blank(pos, newlines=False)
                if t[pos] != "=":
                    raise ValueError("no '=' after a key")
                pos = self._value(self._blank(pos + 1, newlines=False), table + keys)


class _Source:
    """A scenario's text and name, to say where a problem is."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self._keys: _KeyLines | None = None

    def error(self, path: tuple, message: str) -> ScenarioError:
        if self._keys is None:
            self._keys = _KeyLines(self.text)
        line = self._keys.line_of(path) or 1
        return ScenarioError(self.file, line, _key_text(path) or None, message)


# ================================================================================== value types
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_SPAN_TEXT = re.compile(r"^\s*([+-]?)\s*((?:\d+(?:\.\d+)?\s*[dhmsDHMS]\s*)+)$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_HELP = 'write it as text with units, e.g. "90m", "6h" or "1d12h"'


def parse_span(text: str) -> timedelta:
    """``"1d12h"``, ``"-90m"``, ``"+2h"``, ``"30s"`` as a (signed) time span; ``ValueError`` otherwise."""
    m = _SPAN_TEXT.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{show(text)} is not a time span")
    seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _SPAN.findall(m.group(2)))
    return timedelta(seconds=-seconds if m.group(1) == "-" else seconds)


def _duration(value: Any) -> timedelta:
    if isinstance(value, str) and not value.strip().startswith(("-", "+")):
        try:
            return parse_span(value)
        except (ValueError, OverflowError):
            pass
    raise ValueError(f"{show(value)} is not a duration: {_DURATION_HELP}")


Duration = Annotated[timedelta, PlainValidator(_duration)]


@dataclass(frozen=True)
class Count:
    """An expected count: exact (``5``) or a range (``">= 5"``, ``"< 3"``, ``"3..8"``)."""

    low: int
    high: int | None  # None: no upper bound
    text: str

    def holds(self, n: int) -> bool:
        return n >= self.low and (self.high is None or n <= self.high)

    def __str__(self) -> str:
        return self.text


_COUNT = re.compile(r"^\s*(?:(>=|<=|==|=|>|<)\s*(\d+)|(\d+)\s*\.\.\s*(\d+)|(\d+))\s*$")
_COUNT_HELP = 'write 5, ">= 5", "<= 5", "> 4", "< 6" or "3..8"'


def _count(value: Any) -> Count:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Count(value, value, str(value))
    m = _COUNT.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{show(value)} is not a count: {_COUNT_HELP}")
    op, n, a, b, exact = m.groups()
    if exact is not None:
        return Count(int(exact), int(exact), exact)
    if a is not None:
        if int(a) > int(b):
            raise ValueError(f"{show(value)} is an empty range: put the smaller number first")
        return Count(int(a), int(b), f"{int(a)}..{int(b)}")
    n = int(n)
    if op in ("==", "="):
        return Count(n, n, str(n))
    if op == "<" and n == 0:
        raise ValueError(f"{show(value)} can never hold: a count is 0 or more")
    low, high = {">=": (n, None), ">": (n + 1, None), "<=": (0, n), "<": (0, n - 1)}[op]
    return Count(low, high, f"{op} {n}")


CountSpec = Annotated[Count, PlainValidator(_count)]


def _named(names: dict[int, str], what: str, **aliases: int) -> Callable[[Any], int]:
    lookup = {v.lower(): k for k, v in names.items()} | aliases

    def check(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value in names:
            return value
        if isinstance(value, str):
            key = " ".join(value.strip().lower().replace("-", " ").replace("_", " ").split())
            if key in lookup:
                return lookup[key]
        options = ", ".join(f'"{v}" ({k})' for k, v in names.items())
        raise ValueError(f"{show(value)} is not {what}: use {options}")
    return check


StatusValue = Annotated[int, PlainValidator(_named(STATUS_NAMES, "a status"))]
ApprovalValue = Annotated[int, PlainValidator(_named(APPROVAL_NAMES, "an approval state", pending=2))]
LevelValue = Annotated[int, PlainValidator(_named(ALERT_LEVEL_NAMES, "an alert level"))]


def _track(value: Any) -> Any:
    """A track setting by number (0-4) or by the words of ``sss user add --track``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in {t.value for t in TrackSetting}:
        return value
    if isinstance(value, str) and value.strip().lower() in TRACK_NAMES:
        return int(TRACK_NAMES[value.strip().lower()])
    options = ", ".join(f'"{k}" ({int(v)})' for k, v in TRACK_NAMES.items())
    raise ValueError(f"{show(value)} is not a track setting: use {options}")


def _method(field_name: str, value: Any) -> Any:
    """A delivery method checked (and turned into its number) the way the CRM's operations do."""
    if value is None:
        return None
    try:
        return method_value(field_name, value)
    except AdminError as exc:
        raise ValueError(str(exc).removeprefix(f"{field_name}: ")) from None


EmailAddress = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320, json_schema_extra={"shape": "an email address"})]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# ================================================================================== the file's parts
class _Head(Input):
    what: ClassVar[str] = "a scenario file"
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    mode: str = "direct"
    duration: Duration = Field(default=...)
    start: CrmDateTime | None = None
    organization: dict[str, Any] = Field(default=...)
    users: list[dict[str, Any]] = []
    queues: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    population: dict[str, Any] | None = None
    profiles: Annotated[list[dict[str, Any]], Field(min_length=1)] = Field(default=...)
    settings: dict[str, Any] = {}
    mailboxes: list[dict[str, Any]] = []
    traffic: dict[str, Any] | None = None
    mail: list[dict[str, Any]] = []
    send: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    expect: dict[str, Any] = {}

    @field_validator("mode")
    @classmethod
    def check_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f'{show(value)} is not a mode: write "direct" (in process) or "wire" '
                             "(exchangelib over loopback HTTPS)")
        return value

    @field_validator("duration")
    @classmethod
    def check_duration(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= MAX_DURATION:
            raise ValueError(f"is out of range: give more than 0 and at most {MAX_DURATION.days}d")
        return value


class UserEntry(UserInput):
    what: ClassVar[str] = "a [[users]] entry"
    @field_validator("incomingemailfilteringmethod")
    @classmethod
    def check_track(cls, value: Any) -> Any:
        return _track(value)


class QueueEntry(QueueInput):
    what: ClassVar[str] = "a [[queues]] entry"
    @field_validator("incomingemailfilteringmethod")
    @classmethod
    def check_track(cls, value: Any) -> Any:
        return _track(value)


class RecordEntry(RecordInput):
    what: ClassVar[str] = "a [[records]] entry"


class ProfileEntry(ProfileInput):
    what: ClassVar[str] = "a [[profiles]] entry"


class SettingsEntry(SettingsInput):
    what: ClassVar[str] = "the [settings] section"

    @field_validator("incomingemaildeliverymethod", "outgoingemaildeliverymethod", "actdeliverymethod")
    @classmethod
    def check_methods(cls, value: Any, info) -> Any:
        return _method(info.field_name, value)


class MailboxEntry(MailboxEditInput, TestEnableInput):
    """Settings of some mailboxes: the fields of "Edit several mailboxes" and of Test & Enable,
    and whether they are approved and tested (both yes unless said otherwise)."""

    what: ClassVar[str] = "a [[mailboxes]] entry"
    mailboxes: Annotated[list[EmailAddress], Field(min_length=1, max_length=10_000)] = Field(default=...)
    approved: bool | None = None
    test_and_enable: bool | None = None

    @field_validator("mailboxes", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return _one_or_many(value)

    @field_validator("incomingemaildeliverymethod", "outgoingemaildeliverymethod", "actdeliverymethod")
    @classmethod
    def check_methods(cls, value: Any, info) -> Any:
        return _method(info.field_name, value)


class TrafficEntry(Input):
    """Seeded traffic (:class:`simulator.traffic.TrafficMix`, whose defaults apply to what is not given)."""

    what: ClassVar[str] = "the [traffic] section"
    inbound_per_mailbox_day: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] | None = None
    stranger_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    outgoing_per_user_day: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] | None = None
    reply_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    old_mail: Annotated[int, Field(ge=0, le=100_000)] | None = None
    duplicates: Annotated[int, Field(ge=0, le=100_000)] | None = None
    malformed: Annotated[int, Field(ge=0, le=100_000)] | None = None
    mailboxes: Annotated[list[EmailAddress], Field(min_length=1, max_length=100_000)] | None = None


class PopulationEntry(Input):
    """Many users, queues and contacts at once (for capacity runs), named in order: user001@domain, ..."""

    what: ClassVar[str] = "the [population] section"
    users: Annotated[int, Field(ge=0, le=100_000)] = 0
    queues: Annotated[int, Field(ge=0, le=1_000)] = 0
    contacts: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", max_length=200,
                                 json_schema_extra={"shape": "a domain name such as contoso.example"})] = \
        "contoso.example"
    contact_domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", max_length=200,
                                         json_schema_extra={"shape": "a domain name such as fabrikam.example"})] = \
        "fabrikam.example"
    track_all_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.3  # the others track replies


class MailEntry(Input):
    """One message arriving in Exchange (from outside, as over SMTP)."""

    what: ClassVar[str] = "a [[mail]] entry"
    at: Duration = Field(default=...)
    sender: EmailAddress = Field(default=..., alias="from")
    to: Annotated[list[EmailAddress], Field(min_length=1, max_length=500)] = Field(default=...)
    cc: Annotated[list[EmailAddress], Field(max_length=500)] = []
    subject: Annotated[str, Field(max_length=400)] = "Hello"
    body: Annotated[str, Field(max_length=1_000_000)] = "Some text."
    message_id: Annotated[str, Field(min_length=3, max_length=400, pattern=r"^[^\s<>]+@[^\s<>]+$")] | None = None
    in_reply_to: Annotated[str, Field(min_length=3, max_length=400)] | None = None
    reply_to: Text | None = None  # the subject of an email the CRM sent: this message answers it
    reply_by: str = "in-reply-to"
    received: CrmDateTime | None = None
    malformed: bool = False

    @field_validator("to", "cc", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return _one_or_many(value)

    @field_validator("reply_by")
    @classmethod
    def check_reply_by(cls, value: str) -> str:
        if value not in REPLY_WAYS:
            raise ValueError(f'{show(value)} is not a way to reply: use "in-reply-to" or "tracking-token"')
        return value


class SendEntry(Input):
    """One email a CRM user writes and sends (it becomes Pending Send; the engine sends it)."""

    what: ClassVar[str] = "a [[send]] entry"
    at: Duration = Field(default=...)
    sender: EmailAddress = Field(default=..., alias="from")
    to: Annotated[list[EmailAddress], Field(min_length=1, max_length=500)] = Field(default=...)
    cc: Annotated[list[EmailAddress], Field(max_length=500)] = []
    subject: Annotated[str, Field(min_length=1, max_length=200)] = Field(default=...)
    body: Annotated[str, Field(max_length=1_000_000)] = ""

    @field_validator("to", "cc", mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        return _one_or_many(value)


# the time window of a fault rule, unless the rule's own input model has fields of these names
WINDOW_KEYS = ("active_from", "active_until")


class _FaultWindow(Input):
    what: ClassVar[str] = "a [[faults]] entry"
    active_from: Duration | None = None
    active_until: Duration | None = None


class ExpectEntry(Input):
    what: ClassVar[str] = "the [expect] section"
    tracked: CountSpec | None = None
    skipped: CountSpec | None = None
    undeliverable: CountSpec | None = None
    sent: CountSpec | None = None
    pending_send: CountSpec | None = None
    failed_to_send: CountSpec | None = None
    polls: CountSpec | None = None
    skipped_reasons: dict[str, Any] | None = None
    undeliverable_reasons: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    alert: list[dict[str, Any]] = []
    mailbox: list[dict[str, Any]] = []
    min_polling_interval_respected: bool | None = None


class AlertCounts(Input):
    what: ClassVar[str] = "the [expect.alerts] section (alerts by level)"
    information: CountSpec | None = None
    warning: CountSpec | None = None
    error: CountSpec | None = None


class AlertExpect(Input):
    what: ClassVar[str] = "an [[expect.alert]] entry"
    mailbox: EmailAddress | None = None
    profile: Text | None = None
    level: LevelValue | None = None
    code: Text | None = None
    text: Text | None = None
    count: CountSpec | None = None


class MailboxExpect(Input):
    what: ClassVar[str] = "an [[expect.mailbox]] entry"
    mailbox: EmailAddress = Field(default=...)
    incomingemailstatus: StatusValue | None = None
    outgoingemailstatus: StatusValue | None = None
    actstatus: StatusValue | None = None
    mailboxstatus: StatusValue | None = None
    enabledforincomingemail: bool | None = None
    enabledforoutgoingemail: bool | None = None
    enabledforact: bool | None = None
    emailrouteraccessapproval: ApprovalValue | None = None
    lastsyncerrorcode: Annotated[str, Field(max_length=100)] | None = None  # "" for none


MAILBOX_CHECKS = tuple(k for k in MailboxExpect.model_fields if k != "mailbox")


@dataclass
class Expectations:
    counts: dict[str, Count] = field(default_factory=dict)
    skipped_reasons: dict[str, Count] = field(default_factory=dict)
    undeliverable_reasons: dict[str, Count] = field(default_factory=dict)
    alert_levels: dict[int, Count] = field(default_factory=dict)
    alerts: list[AlertExpect] = field(default_factory=list)
    mailboxes: list[MailboxExpect] = field(default_factory=list)
    min_polling_interval_respected: bool | None = None

    def __len__(self) -> int:
        return (len(self.counts) + len(self.skipped_reasons) + len(self.undeliverable_reasons)
                + len(self.alert_levels) + len(self.alerts)
                + sum(len(m.model_fields_set - {"mailbox"}) for m in self.mailboxes)
                + (self.min_polling_interval_respected is not None))


@dataclass
class FaultEntry:
    """A fault rule's fields as read by :class:`~simulator.crm.inputs.FaultInput`, and its window."""

    fields: dict[str, Any]
    active_from: timedelta | None = None
    active_until: timedelta | None = None

    def rule(self, begin: datetime | None = None) -> FaultRule:
        """The rule; with the run's ``begin``, its window (``active_from``/``active_until``, relative to
        the start of the run) becomes the rule's own ``start`` and ``minutes``."""
        fields = dict(self.fields)
        if begin is not None and (self.active_from is not None or self.active_until is not None):
            opens = self.active_from or timedelta(0)
            fields["start"] = begin + opens
            if self.active_until is not None:
                fields["minutes"] = (self.active_until - opens).total_seconds() / 60
        return FaultRule(**fields)


@dataclass
class Scenario:
    """A checked scenario file; :func:`run_scenario` runs it."""

    name: str
    description: str
    seed: int
    mode: str
    duration: timedelta
    start: datetime
    organization: OrganizationInput
    users: list[UserEntry]
    queues: list[QueueEntry]
    records: list[RecordEntry]
    population: PopulationEntry | None
    profiles: list[ProfileEntry]
    settings: SettingsEntry
    mailboxes: list[MailboxEntry]
    traffic: TrafficEntry | None
    mail: list[MailEntry]
    send: list[SendEntry]
    faults: list[FaultEntry]
    expect: Expectations
    file: str = "<scenario>"
    source: _Source | None = field(default=None, repr=False)

    def error(self, path: tuple, message: str) -> ScenarioError:
        if self.source is None:
            return ScenarioError(self.file, None, _key_text(path) or None, message)
        return self.source.error(path, message)


# ================================================================================== reading a file
def load_scenario(path: str | Path) -> Scenario:
    """Read and check the scenario file at ``path``; :class:`ScenarioError` names what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(p), None, None, "no such file (give a path, or a shipped example's name: "
                            "see sss scenario list)") from None
    except IsADirectoryError:
        raise ScenarioError(str(p), None, None, "is a folder, not a scenario file") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(p), None, None, "is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ScenarioError(str(p), None, None, f"cannot be read ({exc.strerror or exc})") from None
    return parse_scenario(text, file=str(path), default_name=p.stem)


_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$|\s*\(at end of document\)\s*$")


def parse_scenario(text: str, *, file: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    """Check the scenario written in ``text`` (``file`` names it in errors)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_WHERE.search(message)
        line = int(m.group(1)) if m and m.group(1) else max(1, text.count("\n") + (not text.endswith("\n")))
        column = f" at column {m.group(2)}" if m and m.group(2) else " at the end"
        reason = message[:m.start()] if m else message
        reason = reason[:1].lower() + reason[1:]
        raise ScenarioError(file, line, None, f"not valid TOML{column}: {reason}; check the quotes, brackets "
                            "and '=' of this line (text values need quotes, e.g. duration = \"6h\")") from None
    return _Reader(_Source(file, text)).read(doc, default_name)


def _field_of(model: type[BaseModel], key: str):
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def _takes_instant(annotation: Any) -> bool:
    if annotation is datetime:
        return True
    return any(_takes_instant(arg) for arg in typing.get_args(annotation))


def _as_text(model: type[BaseModel], key: str, value: Any) -> Any:
    """A TOML date or date-time given for a text field (a time the model reads as ISO 8601 text)."""
    info = _field_of(model, key)
    if not isinstance(value, date) or info is None or _takes_instant(info.annotation):
        return value
    if not _takes_text(info.annotation):
        return value
    return as_utc(value).isoformat() if isinstance(value, datetime) else value.isoformat()


def _takes_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    return any(_takes_text(arg) for arg in typing.get_args(annotation))


class _Reader:
    def __init__(self, source: _Source) -> None:
        self.src = source
        self.start: datetime | None = None

    def error(self, path: tuple, message: str) -> ScenarioError:
        return self.src.error(path, message)

    # -- one table, checked by its model ----------------------------------------------------
    def model(self, model: type[Input], values: Any, path: tuple, *, section: str | None = None) -> Any:
        if not isinstance(values, dict):
            header = f"[{_key_text(path)}]" if section is None else section
            raise self.error(path, f"{show(values)} is not a table: write {header} and its keys on the lines below")
        values = self._instants(model, values, path)
        try:
            return model.model_validate(values, strict=True)
        except PydanticError as exc:
            raise self._refused(model, exc, path) from None

    def _instants(self, model: type[Input], values: dict, path: tuple) -> dict:
        """Times as the file may write them (a TOML date, an offset from the start) made instants."""
        out = dict(values)
        for key, value in values.items():
            info = _field_of(model, key)
            if info is None or not _takes_instant(info.annotation):
                continue
            if isinstance(value, date) and not isinstance(value, datetime):
                out[key] = datetime(value.year, value.month, value.day, tzinfo=UTC)
            elif isinstance(value, datetime):
                out[key] = as_utc(value)
            elif isinstance(value, str) and value.strip()[:1] in ("+", "-"):
                if self.start is None:
                    raise self.error(path + (key,), f"{show(value)} is an offset, but there is no start to count "
                                     "from here: write a date and time such as 2026-01-05T08:00:00Z")
                try:
                    out[key] = self.start + parse_span(value)
                except (ValueError, OverflowError):
                    raise self.error(path + (key,), f"{show(value)} is neither a date and time nor an offset from "
                                     'the start such as "-1d" or "+2h"') from None
        return out

    def _refused(self, model: type[Input], exc: PydanticError, path: tuple) -> ScenarioError:
        errors = exc.errors(include_url=False)
        extra = next((e for e in errors if e.get("type") == "extra_forbidden"), None)
        if extra is not None:
            key = str(extra["loc"][0])
            return self.error(path + (key,), self._unknown(model, key))
        first = errors[0]
        loc = first.get("loc", ())
        kind = first.get("type", "")
        if kind == "list_type" and loc and model is _Head and str(loc[0]) in _SECTIONS_OF_ENTRIES:
            return self.error(path + (str(loc[0]),), f"write [[{loc[0]}]] (double brackets) for each entry")
        if kind in ("dict_type", "model_type"):
            where = path + tuple(loc)
            header = f"[{_key_text(where)}]"
            if isinstance(where[-1], int):
                header = f"each entry as [[{_key_text(where[:-1])}]]"
            return self.error(where, f"{show(first.get('input'))} is not a table: write {header} and its keys on "
                              "the lines below")
        refused = refusal(model, exc)
        name = refused.field
        message = str(refused)
        if name and message.startswith(f"{name}: "):
            message = message[len(name) + 2:]
        where = path + ((name,) if name else ())
        if len(loc) > 1 and isinstance(loc[1], int):
            where += (loc[1],)
        if message == "is required" and name:
            message = _REQUIRED.get(name, "") if model is _Head else ""
            message = message or f"is required in {model.what}: add {name} = ..."
        return self.error(where, message)

    def _unknown(self, model: type[Input], key: str) -> str:
        known = [info.alias or name for name, info in model.model_fields.items()]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f"is not a key of {model.what}: did you mean {close[0]!r}?"
        return f"is not a key of {model.what}; remove it or use one of: {', '.join(known)}"

    def ref(self, name: str, known: set[str], path: tuple, what: str) -> None:
        if name not in known:
            raise self.error(path, f"{name!r} is not {what} of this file (known: {', '.join(sorted(known))})")

    # -- the whole file ---------------------------------------------------------------------
    def read(self, doc: dict, default_name: str) -> Scenario:
        head = self.model(_Head, doc, ())
        self.start = as_utc(head.start) if head.start is not None else DEFAULT_START
        org = self.model(OrganizationInput, head.organization, ("organization",))
        users = [self.model(UserEntry, v, ("users", i), section="[[users]]") for i, v in enumerate(head.users)]
        queues = [self.model(QueueEntry, v, ("queues", i), section="[[queues]]") for i, v in enumerate(head.queues)]
        records = [self.model(RecordEntry, v, ("records", i), section="[[records]]")
                   for i, v in enumerate(head.records)]
        population = (self.model(PopulationEntry, head.population, ("population",))
                      if head.population is not None else None)
        profiles = [self.model(ProfileEntry, v, ("profiles", i), section="[[profiles]]")
                    for i, v in enumerate(head.profiles)]
        names: dict[str, int] = {}
        for i, p in enumerate(profiles):
            if not p.name:
                raise self.error(("profiles", i, "name"), "is required in a [[profiles]] entry: give the profile a name")
            if p.name in names:
                raise self.error(("profiles", i, "name"), f"{p.name!r} is the name of profile {names[p.name] + 1} "
                                 "already: give each profile its own name")
            names[p.name] = i
        settings = self.model(SettingsEntry, head.settings, ("settings",))
        default = settings.defaultemailserverprofileid
        if default is not None:
            self.ref(default, set(names), ("settings", "defaultemailserverprofileid"), "a profile")
        mailboxes = [self.model(MailboxEntry, v, ("mailboxes", i), section="[[mailboxes]]")
                     for i, v in enumerate(head.mailboxes)]
        for i, m in enumerate(mailboxes):
            if m.emailserverprofile is not None:
                self.ref(m.emailserverprofile, set(names), ("mailboxes", i, "emailserverprofile"), "a profile")
        traffic = self.model(TrafficEntry, head.traffic, ("traffic",)) if head.traffic is not None else None
        mail = [self.model(MailEntry, v, ("mail", i), section="[[mail]]") for i, v in enumerate(head.mail)]
        send = [self.model(SendEntry, v, ("send", i), section="[[send]]") for i, v in enumerate(head.send)]
        for kind, entries in (("mail", mail), ("send", send)):
            for i, e in enumerate(entries):
                if e.at > head.duration:
                    raise self.error((kind, i, "at"), f"{_span_text(e.at)} is after the end of the run "
                                     f"(duration {_span_text(head.duration)}): make it earlier or the run longer")
        faults = [self.fault(v, ("faults", i)) for i, v in enumerate(head.faults)]
        expect = self.expectations(head.expect, names)
        return Scenario(
            name=head.name or default_name, description=head.description or "", seed=head.seed, mode=head.mode,
            duration=head.duration, start=self.start, organization=org, users=users, queues=queues,
            records=records, population=population, profiles=profiles, settings=settings, mailboxes=mailboxes,
            traffic=traffic, mail=mail, send=send, faults=faults, expect=expect, file=self.src.file, source=self.src)

    def fault(self, values: Any, path: tuple) -> FaultEntry:
        """A fault rule read through its input model (whatever fields it has), then built as a rule."""
        if not isinstance(values, dict):
            raise self.error(path, f"{show(values)} is not a table: write [[faults]] and its keys on the lines below")
        window_keys = [k for k in WINDOW_KEYS if k not in FaultInput.model_fields]
        window = self.model(_FaultWindow, {k: v for k, v in values.items() if k in window_keys}, path)
        rest = {k: _as_text(FaultInput, k, v) for k, v in values.items() if k not in window_keys}
        try:
            given = FaultInput.model_validate(self._instants(FaultInput, rest, path), strict=True)
        except PydanticError as exc:
            errors = exc.errors(include_url=False)
            extra = next((e for e in errors if e.get("type") == "extra_forbidden"), None)
            if extra is not None:
                key = str(extra["loc"][0])
                known = [*FaultInput.model_fields, *window_keys]
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"remove it or use one of: {', '.join(known)}"
                raise self.error(path + (key,), f"is not a key of a fault rule: {hint}") from None
            raise self._refused(FaultInput, exc, path) from None
        fields = {k: v for k, v in given.given().items() if v is not None}
        both = [k for k in ("start", "minutes") if k in fields]
        if both and (window.active_from is not None or window.active_until is not None):
            raise self.error(path + (both[0],), "give the window either as active_from/active_until (from the "
                             "start of the run) or as start/minutes (a date and time), not both")
        try:
            FaultRule(**fields)  # the rule's own checks, the same for every way a rule comes in
        except FaultRuleError as exc:
            key, _, text = str(exc).partition(": ")
            raise self.error(path + ((key,) if text else ()), text or key) from None
        except TypeError as exc:  # a field of the input model that the rule does not take
            raise self.error(path, f"cannot become a fault rule ({exc})") from None
        if (window.active_from is not None and window.active_until is not None
                and window.active_until <= window.active_from):
            raise self.error(path + ("active_until",), "must be later than active_from")
        return FaultEntry(fields, window.active_from, window.active_until)

    def expectations(self, values: Any, profile_names: dict[str, int]) -> Expectations:
        path = ("expect",)
        e = self.model(ExpectEntry, values, path)
        out = Expectations(min_polling_interval_respected=e.min_polling_interval_respected)
        for name in COUNTS:
            value = getattr(e, name)
            if value is not None:
                out.counts[name] = value
        for key in ("skipped_reasons", "undeliverable_reasons"):
            table = getattr(e, key) or {}
            for reason, value in table.items():
                try:
                    getattr(out, key)[reason] = _count(value)
                except ValueError as exc:
                    raise self.error(path + (key, reason), str(exc)) from None
        if e.alerts is not None:
            levels = self.model(AlertCounts, e.alerts, path + ("alerts",))
            for level, name in ALERT_LEVEL_NAMES.items():
                value = getattr(levels, name)
                if value is not None:
                    out.alert_levels[level] = value
        for i, v in enumerate(e.alert):
            a = self.model(AlertExpect, v, path + ("alert", i), section="[[expect.alert]]")
            if a.profile is not None:
                self.ref(a.profile, set(profile_names), path + ("alert", i, "profile"), "a profile")
            out.alerts.append(a)
        for i, v in enumerate(e.mailbox):
            m = self.model(MailboxExpect, v, path + ("mailbox", i), section="[[expect.mailbox]]")
            if not m.model_fields_set - {"mailbox"}:
                raise self.error(path + ("mailbox", i), "says nothing about the mailbox: add a column to check, e.g. "
                                 'incomingemailstatus = "Success"')
            out.mailboxes.append(m)
        return out


_REQUIRED = {
    "duration": 'is required: say how long the engine runs, e.g. duration = "6h"',
    "organization": "is required: add an [organization] table with its name",
    "profiles": "is required: add a [[profiles]] entry (an email server profile) with its name",
}
_SECTIONS_OF_ENTRIES = ("users", "queues", "records", "profiles", "mailboxes", "mail", "send", "faults")


def _span_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


# ================================================================================== shipped examples
def examples_folder() -> Path:
    return Path(str(resources.files(EXAMPLES_PACKAGE).joinpath(EXAMPLES_FOLDER)))


def examples() -> dict[str, Path]:
    """The shipped example scenarios by name (file name without ``.toml``), in name order."""
    folder = examples_folder()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def find_scenario(target: str | Path) -> Scenario:
    """A scenario file by path, or a shipped example by name."""
    path = Path(target)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return load_scenario(path)
    shipped = examples()
    if str(target) in shipped:
        return load_scenario(shipped[str(target)])
    close = difflib.get_close_matches(str(target), list(shipped), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ScenarioError(str(target), None, None, f"no such file, and no shipped example has this name; {hint}"
                        "see sss scenario list")


# ================================================================================== results
@dataclass
class Check:
    """One expectation and how it came out."""

    name: str  # what is checked, e.g. "tracked" or "bob@contoso.example incomingemailstatus"
    expected: str
    actual: str
    met: bool
    message: str = ""  # a sentence saying what was expected and what came (when not met)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expected": self.expected, "actual": self.actual, "met": self.met,
                "message": self.message}


@dataclass
class ScenarioResult:
    """What a run gave: the summary counts, every expectation checked, and the event log."""

    name: str
    file: str
    seed: int
    mode: str
    started: datetime
    ended: datetime
    summary: dict[str, Any]
    checks: list[Check]
    events: list[tuple] = field(default_factory=list, repr=False)

    @property
    def failures(self) -> list[str]:
        return [c.message for c in self.checks if not c.met]

    @property
    def ok(self) -> bool:
        return all(c.met for c in self.checks)

    @property
    def event_digest(self) -> str:
        """A SHA-256 of the events of the log: equal digests, the same events.

        The events are taken in a canonical order: in wire mode the engine's work for several
        mailboxes at the same instant runs concurrently over the network and may be logged in
        another order from one run to the next (in direct mode the order is fixed too)."""
        h = hashlib.sha256()
        for line in sorted(repr(event) for event in self.events):
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.name, "file": self.file, "seed": self.seed, "mode": self.mode, "ok": self.ok,
                "started": self.started.isoformat(), "ended": self.ended.isoformat(), "summary": self.summary,
                "expectations": [c.to_dict() for c in self.checks], "failures": self.failures,
                "event_count": len(self.events), "event_digest": self.event_digest}


def junit_xml(result: ScenarioResult, *, seconds: float = 0.0) -> bytes:
    """The result as JUnit XML: one test case per expectation, a failure element for each one not met."""
    failures = sum(not c.met for c in result.checks)
    root = ET.Element("testsuites", tests=str(len(result.checks)), failures=str(failures), errors="0",
                      time=f"{seconds:.3f}")
    suite = ET.SubElement(root, "testsuite", name=f"scenario {result.name}", tests=str(len(result.checks)),
                          failures=str(failures), errors="0", skipped="0", time=f"{seconds:.3f}",
                          timestamp=result.started.replace(tzinfo=None).isoformat())
    props = ET.SubElement(suite, "properties")
    for key, value in (("file", result.file), ("seed", result.seed), ("mode", result.mode),
                       ("event_digest", result.event_digest)):
        ET.SubElement(props, "property", name=key, value=str(value))
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"scenario.{result.name}", name=f"{c.name}: {c.expected}",
                             time="0")
        if not c.met:
            failure = ET.SubElement(case, "failure", message=c.message, type="ExpectationNotMet")
            failure.text = c.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ================================================================================== running
def run_scenario(scenario: Scenario, *, mode: str | None = None, seed: int | None = None,
                 state_dir: Path | None = None, db_url: str | None = None,
                 progress: Callable[[datetime], None] | None = None) -> ScenarioResult:
    """Run ``scenario`` and check its expectations (synchronous: it runs its own event loop).

    ``mode`` and ``seed`` replace the file's; ``state_dir`` is where wire mode keeps the sandbox
    CA and certificates (default ``$SSS_HOME``); ``db_url`` keeps the sandbox in that database
    (default in memory). From a coroutine, ``await run_scenario_async(...)`` instead.
    A :class:`ScenarioError` means the file asks for something the organization refuses (e.g. a
    queue owner who is not a user); the engine has not run then."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_scenario_async(scenario, mode=mode, seed=seed, state_dir=state_dir, db_url=db_url,
                                              progress=progress))
    raise RuntimeError("run_scenario was called inside a running event loop: await run_scenario_async instead")


async def run_scenario_async(scenario: Scenario, *, mode: str | None = None, seed: int | None = None,
                             state_dir: Path | None = None, db_url: str | None = None,
                             progress: Callable[[datetime], None] | None = None) -> ScenarioResult:
    """The coroutine behind :func:`run_scenario` (same arguments)."""
    mode = mode or scenario.mode
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    seed = scenario.seed if seed is None else seed
    wire = None
    if mode == "wire":
        from simulator.wire import WireSandbox

        wire = WireSandbox(db_url=db_url or MEMORY_URL, seed=seed, start=scenario.start, state_dir=state_dir)
        sb = wire.sb
    else:
        sb = Sandbox(db_url=db_url or MEMORY_URL, seed=seed, start=scenario.start)
    run = _Run(scenario, sb, wire, seed)
    try:
        await run.build()
        begin = sb.clock.now()
        run.schedule(begin)
        await sb.run_until(begin + scenario.duration, progress)
        summary = run.summary()
        checks = _Judge(scenario, sb, summary, run).checks()
        return ScenarioResult(scenario.name, scenario.file, seed, mode, begin, sb.clock.now(), summary, checks,
                              list(sb.events or []))
    finally:
        if wire is not None and run.started:
            await wire.stop()
        else:
            sb.close()


async def prepare_scenario(scenario: Scenario, sb: Sandbox, *, seed: int | None = None) -> _Run:
    """Build ``scenario``'s organization in the direct sandbox ``sb`` and put its mail, sends and fault
    rules on the sandbox's agenda from now on, without running anything: the caller moves the clock
    (the pytest plugin's ``sss_org(scenario=...)``). The returned run knows the ids it created
    (``user_ids``, ``profile_ids``) and gives ``summary()``."""
    run = _Run(scenario, sb, None, scenario.seed if seed is None else seed)
    await run.build()
    run.schedule(sb.clock.now())
    return run


def _smtp_send(host: str, port: int, sender: str, recipients: list[str], raw: bytes) -> None:
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.sendmail(sender, recipients, raw)


class _Run:
    """One run of a scenario: the organization built, the events placed on the sandbox's agenda."""

    def __init__(self, scenario: Scenario, sb: Sandbox, wire, seed: int) -> None:
        self.sc = scenario
        self.sb = sb
        self.wire = wire
        self.seed = seed
        self.started = False
        self.admin = "admin"
        self.user_ids: dict[str, str] = {}  # address -> systemuserid (the administrator too)
        self.profile_ids: dict[str, str] = {}
        self.addresses: set[str] = set()
        self.plan: TrafficPlan | None = None
        self.generated_users: list[Party] = []
        self.generated_queues: list[Party] = []
        self.generated_contacts: list[str] = []
        self._ids = random.Random(f"scenario-message-ids-{seed}")
        self.smtp_refused: list[str] = []  # wire mode: [[mail]] messages the SMTP ingress refused

    def step(self, path: tuple, entry: BaseModel | None = None):
        return _Step(self.sc, path, entry)

    async def build(self) -> None:
        sc, a = self.sc, self.sb.admin
        given = sc.organization.given()
        if self.wire is not None:
            given.pop("tenant_id", None)  # the tenant is the one the S2S setup creates
        elif given.get("tenant_id") is None:
            rng = random.Random(f"scenario-tenant-{self.seed}")
            given["tenant_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        with self.step(("organization",), sc.organization):
            a.create_organization(given.pop("name"), **given)
        first = a.users()[0]
        self.admin = first["domainname"]
        self.user_ids[first["internalemailaddress"]] = first["systemuserid"]
        for i, u in enumerate(sc.users):
            g = u.given()
            kwargs: dict[str, Any] = {"domainname": g.get("domainname")}
            if g.get("roles") is not None:
                kwargs["roles"] = g["roles"]
            if g.get("incomingemailfilteringmethod") is not None:
                kwargs["track"] = g["incomingemailfilteringmethod"]
            with self.step(("users", i), u):
                uid = a.add_user(g["fullname"], g["internalemailaddress"], **kwargs)
            self.user_ids[g["internalemailaddress"].lower()] = uid
        for i, q in enumerate(sc.queues):
            g = q.given()
            kwargs = {}
            if g.get("incomingemailfilteringmethod") is not None:
                kwargs["track"] = g["incomingemailfilteringmethod"]
            with self.step(("queues", i), q):
                a.add_queue(g["name"], g["emailaddress"], owner=g["owner"], **kwargs)
        for i, r in enumerate(sc.records):
            with self.step(("records", i), r):
                a.add_record(r.kind, r.name, r.emailaddress1)
        if sc.population is not None:
            self._populate(sc.population)
        self.addresses = {m.emailaddress for m in a.mailboxes()}
        self._check_addresses()
        if self.wire is not None:
            with self.step(("organization",)):
                self.wire.configure_s2s(as_user=self.admin)
        for i, p in enumerate(sc.profiles):
            with self.step(("profiles", i), p):
                self.profile_ids[p.name] = a.create_profile(self.admin, **p.given())
        settings = sc.settings.given()
        default = settings.pop("defaultemailserverprofileid", None) or sc.profiles[0].name
        values = {"defaultemailserverprofileid": self.profile_ids[default],
                  "incomingemaildeliverymethod": int(IncomingMethod.SSS),
                  "outgoingemaildeliverymethod": int(OutgoingMethod.SSS), "actdeliverymethod": int(ActMethod.SSS),
                  **settings}
        with self.step(("settings",), sc.settings):
            a.set_settings(self.admin, **values)
        boxes = a.mailboxes()
        with self.step(("mailboxes",)):
            a.apply_default_settings(self.admin, [m.mailboxid for m in boxes])
        approved: dict[str, bool] = {}
        tested: dict[str, tuple[bool, int]] = {}  # address -> (test it?, the entry that said so)
        for i, m in enumerate(sc.mailboxes):
            edit = {k: v for k, v in m.given().items()
                    if k in ("emailserverprofile", *METHODS)}
            if edit:
                with self.step(("mailboxes", i), m):
                    a.edit_mailboxes(self.admin, m.mailboxes, **edit)
            for address in m.mailboxes:
                if m.approved is not None:
                    approved[address.lower()] = m.approved
                if m.test_and_enable is not None or m.start_date is not None or m.this_org_only is not None:
                    tested[address.lower()] = (m.test_and_enable is not False, i)
        approve = [m.mailboxid for m in boxes if approved.get(m.emailaddress, True)]
        if approve:
            with self.step(("mailboxes",)):
                a.approve(self.admin, approve)
        if self.wire is not None:
            await self.wire.start()
            self.started = True
        await self._test_and_enable(boxes, tested)

    def _populate(self, p: PopulationEntry) -> None:
        """The users, queues and contacts of ``[population]``, through the same operations."""
        a, rng = self.sb.admin, random.Random(f"scenario-population-{self.seed}")
        width = len(str(max(p.users, p.queues, p.contacts, 1)))
        with self.step(("population",)):
            for n in range(1, p.users + 1):
                address = f"user{n:0{width}d}@{p.domain}".lower()
                track = TrackSetting.ALL if rng.random() < p.track_all_share else TrackSetting.REPLIES_TO_CRM_EMAIL
                uid = a.add_user(f"User {n:0{width}d}", address, track=int(track))
                self.user_ids[address] = uid
                self.generated_users.append(Party(address, uid))
            for n in range(1, p.queues + 1):
                address = f"queue{n:0{width}d}@{p.domain}".lower()
                a.add_queue(f"Queue {n:0{width}d}", address, owner=self.admin)
                self.generated_queues.append(Party(address))
            for n in range(1, p.contacts + 1):
                address = f"contact{n:0{width}d}@{p.contact_domain}".lower()
                a.add_record("contact", f"Contact {n:0{width}d}", address)
                self.generated_contacts.append(address)

    def _check_addresses(self) -> None:
        sc, known = self.sc, self.addresses
        what = "a mailbox"

        def check(names: list[str] | str, path: tuple) -> None:
            for j, name in enumerate([names] if isinstance(names, str) else names):
                if name.lower() not in known:
                    where = path if isinstance(names, str) else path + (j,)
                    raise sc.error(where, f"{name!r} is not {what} of the organization "
                                   f"(its mailboxes: {', '.join(sorted(known))})")
        for i, m in enumerate(sc.mailboxes):
            check(m.mailboxes, ("mailboxes", i, "mailboxes"))
        if sc.traffic is not None and sc.traffic.mailboxes:
            check(sc.traffic.mailboxes, ("traffic", "mailboxes"))
        for i, mail in enumerate(sc.mail):
            if not any(r.lower() in known for r in (*mail.to, *mail.cc)):
                raise sc.error(("mail", i, "to"), "none of the recipients is a mailbox of the organization "
                               f"(its mailboxes: {', '.join(sorted(known))})")
        for i, s in enumerate(sc.send):
            if s.sender.lower() not in self.user_ids:
                raise sc.error(("send", i, "from"), f"{s.sender!r} is not a user of the organization: email is "
                               f"sent by a user ({', '.join(sorted(self.user_ids))})")
        for i, f in enumerate(sc.faults):
            mailbox = f.fields.get("mailbox")
            # a rule on the engine's calls names a mailbox of the organization (other protocols, such
            # as an SMTP envelope sender, may name any address)
            if isinstance(mailbox, str) and getattr(f.rule(), "protocol", None) in (None, "ews", "crm"):
                check(mailbox, ("faults", i, "mailbox"))
        for i, ae in enumerate(sc.expect.alerts):
            if ae.mailbox is not None:
                check(ae.mailbox, ("expect", "alert", i, "mailbox"))
        for i, me in enumerate(sc.expect.mailboxes):
            check(me.mailbox, ("expect", "mailbox", i, "mailbox"))

    async def _test_and_enable(self, boxes, tested: dict[str, tuple[bool, int]]) -> None:
        sc, a = self.sc, self.sb.admin
        M = Mailbox.__table__
        with self.sb.db.connect() as conn:
            methods = {r[0]: r[1:] for r in conn.execute(select(
                M.c.emailaddress, M.c.incomingemaildeliverymethod, M.c.outgoingemaildeliverymethod,
                M.c.actdeliverymethod))}
        batches: dict[tuple, list[str]] = {}
        entries: dict[tuple, int | None] = {}
        for m in boxes:
            incoming, outgoing, act = methods[m.emailaddress]
            uses_sss = incoming == IncomingMethod.SSS or outgoing == OutgoingMethod.SSS or act == ActMethod.SSS
            wanted, index = tested.get(m.emailaddress, (uses_sss, None))
            if not wanted:
                continue
            entry = sc.mailboxes[index] if index is not None else None
            key = (entry.start_date if entry else None, bool(entry.this_org_only) if entry else False)
            batches.setdefault(key, []).append(m.mailboxid)
            entries.setdefault(key, index)
        for (start_date, this_org_only), ids in batches.items():
            index = entries[(start_date, this_org_only)]
            path = ("mailboxes", index) if index is not None else ("mailboxes",)
            with self.step(path, sc.mailboxes[index] if index is not None else None):
                await a.test_and_enable(self.admin, ids, start_date=start_date, this_org_only=this_org_only)

    # -- the run's events -------------------------------------------------------------------
    def schedule(self, begin: datetime) -> None:
        sc, sb = self.sc, self.sb
        end = begin + sc.duration
        if sc.traffic is not None:
            self._traffic(begin, end)
        for i, mail in enumerate(sc.mail):
            message_id = mail.message_id or self._message_id(mail.sender, i)
            sb.at(begin + mail.at, self._deliver(mail, message_id))
        for s in sc.send:
            sb.at(begin + s.at, self._send(s))
        for i, f in enumerate(sc.faults):
            with self.step(("faults", i)):
                rule = f.rule(begin)  # its window is the rule's own: sandbox time from start for minutes
            sb.add_rule(rule)

    def _traffic(self, begin: datetime, end: datetime) -> None:
        sc, t = self.sc, self.sc.traffic
        people = {u.internalemailaddress.lower(): Party(u.internalemailaddress.lower(),
                                                        self.user_ids[u.internalemailaddress.lower()])
                  for u in sc.users}
        people.update((p.address, p) for p in self.generated_users)
        queues = {q.emailaddress.lower(): Party(q.emailaddress.lower()) for q in sc.queues}
        queues.update((p.address, p) for p in self.generated_queues)
        if t.mailboxes:
            chosen = [m.lower() for m in t.mailboxes]
            users = [people.get(m) or Party(m, self.user_ids[m]) for m in chosen if m in self.user_ids]
            boxes = [queues[m] for m in chosen if m in queues]
        else:
            users, boxes = list(people.values()), list(queues.values())
        contacts = [r.emailaddress1.lower() for r in sc.records if r.emailaddress1] + self.generated_contacts
        mix = TrafficMix(**{k: v for k, v in t.given().items() if k != "mailboxes" and v is not None})
        default = sc.settings.defaultemailserverprofileid or sc.profiles[0].name
        process_from = next(p.processemailsreceivedafter for p in sc.profiles if p.name == default)
        self.plan = TrafficPlan(self.sb, random.Random(f"scenario-traffic-{self.seed}"), users=users, queues=boxes,
                                contacts=contacts, mix=mix)
        self.plan.schedule(begin, end, process_from=process_from)

    def _message_id(self, sender: str, index: int) -> str:
        return f"scenario-{index + 1:05d}.{self._ids.getrandbits(48):012x}@{sender.rsplit('@', 1)[-1].lower()}"

    def _message(self, mail: MailEntry, message_id: str) -> MessageData | bytes:
        """The message of a ``[[mail]]`` entry, written now (a reply answers what the CRM sent by then)."""
        subject, in_reply_to = mail.subject, mail.in_reply_to
        if mail.reply_to is not None:
            subject = f"RE: {mail.reply_to}"
            answered = self._sent_email(mail.reply_to)  # None: nothing to answer yet, a plain message
            if answered is not None:
                sent_id, sent_subject = answered
                if mail.reply_by == "tracking-token":
                    subject = f"RE: {sent_subject}"
                else:
                    in_reply_to = sent_id
        if mail.malformed:
            return (f"From: {mail.sender}\r\nTo: {', '.join(mail.to)}\r\nSubject: {subject}\r\n"
                    f"Message-ID: <{message_id}>\r\nDate: not a date at all\r\n\r\n{mail.body}\r\n").encode()
        return MessageData(subject=subject, sender=mail.sender, to=tuple(mail.to), cc=tuple(mail.cc),
                           message_id=message_id, in_reply_to=in_reply_to,
                           references=(in_reply_to,) if in_reply_to else (), body=mail.body,
                           date=mail.received or self.sb.clock.now())

    def _deliver(self, mail: MailEntry, message_id: str) -> Callable[[], Any]:
        sb = self.sb

        def into_store() -> None:
            sb.deliver(self._message(mail, message_id), received=mail.received)

        async def over_smtp() -> None:
            """Wire mode: the message comes in over SMTP (smtplib to the sandbox's aiosmtpd ingress), as
            mail from outside does; SMTP fault rules apply to it, and a refusal is counted, not fatal."""
            message = self._message(mail, message_id)
            raw = message if isinstance(message, bytes) else message.render()
            smtp = self.wire.smtp
            try:
                with sb.clock.busy():
                    await asyncio.to_thread(_smtp_send, smtp.host, smtp.port, mail.sender,
                                            [*mail.to, *mail.cc], raw)
            except (smtplib.SMTPException, OSError) as exc:
                self.smtp_refused.append(f"{mail.subject or mail.reply_to!r}: {exc}")

        # a message with a received time of its own goes into Exchange directly: SMTP stamps the clock's now
        if self.wire is not None and mail.received is None:
            return over_smtp
        return into_store

    def _sent_email(self, subject: str) -> tuple[str | None, str] | None:
        """The first email the CRM sent whose subject (before its tracking token) is ``subject``."""
        E = Email.__table__
        with self.sb.db.connect() as conn:
            rows = conn.execute(select(E.c.messageid, E.c.subject).where(
                E.c.statuscode == EmailStatus.SENT, E.c.directioncode.is_(True))
                .order_by(E.c.senton, E.c.activityid)).all()
        for message_id, sent_subject in rows:
            if sent_subject == subject or (sent_subject or "").startswith(subject + " "):
                return message_id, sent_subject
        return None

    def _send(self, s: SendEntry) -> Callable[[], None]:
        def run() -> None:
            crm = self.sb.crm
            aid = crm.create_email(sender_userid=self.user_ids[s.sender.lower()], to=list(s.to), cc=list(s.cc),
                                   subject=s.subject, body=s.body)
            crm.send_email(aid)
        return run

    # -- what came of it ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        M = Mailbox.__table__
        with self.sb.db.connect() as conn:
            outcomes = mail_outcomes(conn)
            rows = conn.execute(select(M.c.emailaddress, *(M.c[k] for k in MAILBOX_CHECKS))
                                .order_by(M.c.emailaddress)).all()
        mailboxes = []
        for row in rows:
            view: dict[str, Any] = {"emailaddress": row[0]}
            for key, value in zip(MAILBOX_CHECKS, row[1:], strict=True):
                view[key] = _shown(key, value)
            mailboxes.append(view)
        return {
            **outcomes,
            "polls": self.sb.engine.stats.polls,
            "traffic": dict(sorted(self.plan.counts.items())) if self.plan is not None else {},
            "smtp_refused": list(self.smtp_refused),
            "mailboxes": mailboxes,
        }


def _shown(key: str, value: Any) -> Any:
    if key.endswith("status"):
        return STATUS_NAMES.get(value, value)
    if key == "emailrouteraccessapproval":
        return APPROVAL_NAMES.get(value, value)
    if key.startswith("enabledfor"):
        return bool(value)
    return value or ""


class _Step:
    """Turn a refusal of the CRM (or of a fault rule) while building into a :class:`ScenarioError`
    at the entry of the file that asked for it."""

    def __init__(self, scenario: Scenario, path: tuple, entry: BaseModel | None) -> None:
        self.sc, self.path, self.entry = scenario, path, entry

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, AdminError):
            field_name, text = exc.field, str(exc)
            if field_name and text.startswith(f"{field_name}: "):
                text = text[len(field_name) + 2:]
        elif isinstance(exc, FaultRuleError):
            field_name, _, text = str(exc).partition(": ")
        else:
            return False
        path = self.path
        keys = set(self.entry.model_fields_set) if self.entry is not None else set()
        if field_name and (field_name in keys or self.entry is None and len(path) > 1):
            path = path + (field_name,)
        elif field_name:
            text = f"{field_name}: {text}"
        raise self.sc.error(path, text) from None


# ================================================================================== judging
class _Judge:
    def __init__(self, scenario: Scenario, sb: Sandbox, summary: dict[str, Any], run: _Run) -> None:
        self.sc, self.sb, self.s, self.run = scenario, sb, summary, run

    def checks(self) -> list[Check]:
        x = self.sc.expect
        out: list[Check] = []
        for name, count in x.counts.items():
            out.append(self._count(name.replace("_", " "), count, self.s[name], self._context(name)))
        for reason, count in x.skipped_reasons.items():
            out.append(self._count(f"skipped as {reason}", count, self.s["skipped_reasons"].get(reason, 0),
                                   self._reasons("skipped")))
        for reason, count in x.undeliverable_reasons.items():
            out.append(self._count(f"undeliverable as {reason}", count,
                                   self.s["undeliverable_reasons"].get(reason, 0), self._reasons("undeliverable")))
        if x.alert_levels:
            alerts = self._alerts()
            for level, count in x.alert_levels.items():
                name = ALERT_LEVEL_NAMES[level]
                codes = [a["tracecode"] for a in alerts if a["level"] == level]
                out.append(self._count(f"{name} alerts", count, self.s["alerts"][name], _tally(codes, "codes")))
        for a in x.alerts:
            out.append(self._alert(a))
        for m in x.mailboxes:
            out.extend(self._mailbox(m))
        if x.min_polling_interval_respected is not None:
            out.append(self._min_polling(x.min_polling_interval_respected))
        return out

    @staticmethod
    def _count(name: str, count: Count, n: int, context: str = "") -> Check:
        met = count.holds(n)
        message = "" if met else f"expected {name} {count}, got {n}{f' ({context})' if context else ''}"
        return Check(name, str(count), str(n), met, message)

    def _reasons(self, kind: str) -> str:
        reasons = self.s[f"{kind}_reasons"]
        if not reasons:
            return f"none {kind}"
        return f"{kind}: " + ", ".join(f"{n} as {r}" for r, n in reasons.items())

    def _context(self, name: str) -> str:
        s = self.s
        if name == "tracked":
            parts = [f"{n} skipped as {r}" for r, n in s["skipped_reasons"].items()]
            parts += [f"{n} undeliverable as {r}" for r, n in s["undeliverable_reasons"].items()]
            return ", ".join(parts)
        if name in ("skipped", "undeliverable"):
            reasons = s[f"{name}_reasons"]
            return ", ".join(f"{n} as {r}" for r, n in reasons.items())
        if name == "sent":
            return f"{s['pending_send']} still pending send, {s['failed_to_send']} failed to send"
        if name in ("pending_send", "failed_to_send"):
            return f"{s['sent']} sent"
        return ""

    def _alerts(self) -> list[dict[str, Any]]:
        T, M, P = TraceLog.__table__, Mailbox.__table__, EmailServerProfile.__table__
        with self.sb.db.connect() as conn:
            names = dict(conn.execute(select(M.c.mailboxid, M.c.emailaddress)).all())
            names.update(conn.execute(select(P.c.emailserverprofileid, P.c.name)).all())
            rows = conn.execute(select(T.c.level, T.c.tracecode, T.c.text, T.c.regardingobjectid)
                                .order_by(T.c.createdon, T.c.tracelogid)).all()
        return [{"level": r[0], "tracecode": r[1], "text": r[2] or "", "regarding": names.get(r[3], r[3])}
                for r in rows]

    def _alert(self, a: AlertExpect) -> Check:
        alerts = self._alerts()
        about = a.mailbox.lower() if a.mailbox else a.profile
        pool = [x for x in alerts if about is None or x["regarding"] == about]
        found = [x for x in pool if (a.level is None or x["level"] == a.level)
                 and (a.code is None or x["tracecode"].lower() == a.code.lower())
                 and (a.text is None or a.text.lower() in x["text"].lower())]
        count = a.count or Count(1, None, ">= 1")
        words = []
        if a.level is not None:
            words.append(ALERT_LEVEL_NAMES[a.level])
        words.append("alert")
        if a.code is not None:
            words.append(a.code)
        if a.text is not None:
            words.append(f"saying {a.text!r}")
        if about is not None:
            words.append(f"on {about}")
        name = " ".join(words)
        met = count.holds(len(found))
        message = ""
        if not met:
            seen = ", ".join(dict.fromkeys(f"{x['tracecode']} ({ALERT_LEVEL_NAMES.get(x['level'], x['level'])})"
                                           for x in pool)) or "none"
            where = f" on {about}" if about is not None else ""
            message = f"expected {name} {count} times, found {len(found)} (alerts{where}: {seen})"
        return Check(name, str(count), str(len(found)), met, message)

    def _mailbox(self, m: MailboxExpect) -> list[Check]:
        address = m.mailbox.lower()
        view = next(v for v in self.s["mailboxes"] if v["emailaddress"] == address)
        out = []
        for key in MAILBOX_CHECKS:
            if key not in m.model_fields_set:
                continue
            want = _shown(key, getattr(m, key))
            got = view[key]
            name = f"{address} {key}"
            met = got == want
            message = ""
            if not met:
                error = view["lastsyncerrorcode"]
                context = f" (last sync error {error})" if error and key != "lastsyncerrorcode" else ""
                message = f"expected {name} {_say(want)}, got {_say(got)}{context}"
            out.append(Check(name, _say(want), _say(got), met, message))
        return out

    def _min_polling(self, wanted: bool) -> Check:
        M, P = Mailbox.__table__, EmailServerProfile.__table__
        with self.sb.db.connect() as conn:
            minimum = dict(conn.execute(select(M.c.emailaddress, P.c.minpollingintervalinminutes).join(
                P, P.c.emailserverprofileid == M.c.emailserverprofile)).all())
        last: dict[tuple[str, str], datetime] = {}
        broken = []
        for event in self.sb.events or []:
            if len(event) < 4 or event[1] != "start":
                continue
            when, address, workload = parse_instant(event[0]), event[2], event[3]
            floor = timedelta(minutes=minimum.get(address) or 0)
            before = last.get((address, workload))
            if before is not None and when - before < floor:
                broken.append((address, workload, before, when, floor))
            last[(address, workload)] = when
        held = not broken
        name = "minimum polling interval respected"
        actual = "yes" if held else f"broken {len(broken)} times"
        met = held == wanted
        message = ""
        if not met and broken:
            address, workload, before, when, floor = broken[0]
            gap = (when - before).total_seconds() / 60
            message = (f"expected the minimum polling interval to hold, but it was broken {len(broken)} times; first "
                       f"{address} {workload} started at {before:%H:%M:%S} and again at {when:%H:%M:%S} "
                       f"({gap:g} min apart, minimum {floor.total_seconds() / 60:g})")
        elif not met:
            message = "expected the minimum polling interval to be broken, but every start kept it"
        return Check(name, "yes" if wanted else "no", actual, met, message)


def _say(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def _tally(items: list[str], what: str) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return f"{what}: " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items()) if counts else ""
