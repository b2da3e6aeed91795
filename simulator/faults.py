"""Fault rules: one model for every protocol the sandbox serves, seeded and deterministic.

A rule says **where** it applies, **what** happens and **when**:

* where: a ``protocol``, one of its operations (or ``*`` for all of them) and optionally a
  ``mailbox`` address;
* what: an error ``code`` of that protocol, a ``latency_ms`` (the call takes that much sandbox
  time), or both (a slow call that then fails);
* when: for the next ``count`` matching calls, with a ``probability`` per call drawn from the
  sandbox's seeded generator, and only inside a window of sandbox time that opens at ``start``
  and lasts ``minutes`` (no ``minutes``: it stays open). All three combine.

=============  ==================================  ===========================================================
protocol       operations                          codes
=============  ==================================  ===========================================================
``ews``        the engine's Exchange calls          every code of SPEC section 4 (``engine.errors.KNOWN_ERRORS``)
               (:data:`EWS_OPERATIONS`)
``crm``        ``create_email``                     the same codes; ``IsvAborted`` is a plug-in refusing the
                                                    new email activity (an item-level failure)
``autodiscover`` ``autodiscover``                   ``HttpServiceUnavailable`` (503), ``HttpInternalServerError``
                                                    (500), ``ErrorNonExistentMailbox`` (404), ``NetworkError``
``identity``   ``token``                            the AADSTS codes of :data:`IDENTITY_ERRORS`, the two ``Http*``
                                                    codes (503, 500), ``NetworkError``
``smtp``       ``connect``, ``mail``, ``rcpt``,     a reply code from 400 to 599, ``NetworkError``
               ``data``
=============  ==================================  ===========================================================

``NetworkError`` drops the connection without an answer. ``protocol`` may be left out: it is then
the protocol the operation belongs to, else the one the code belongs to (``AADSTS...``: identity;
a three-digit reply code: smtp), else ``ews`` - so every rule stored before protocols existed
reads as it was meant. A ``*`` operation matches the operations of the rule's protocol only.

The mailbox of a call is: the mailbox an EWS call or CRM create is for; the address Autodiscover
is asked about; for SMTP the envelope sender (``mail``), the recipient (``rcpt``) or any recipient
(``data``). A token request and an SMTP connection name no mailbox, so their rules cannot have one.

Latency is sandbox time, never the machine's (see :func:`wait_in_process` and :func:`answer_late`).

Time comes only from the sandbox clock the injector is bound to (:meth:`FaultInjector.bind`),
randomness only from the generator it is given. :func:`rules_to_json` and :func:`load_rules` save
the rules (with how often each has fired) and the generator state as JSON text and put them back,
so that a run saved and loaded between two commands fires the same faults as one that is not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import random
import re
import typing
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine.clock import Clock, as_utc, parse_instant
from engine.errors import KNOWN_ERRORS, ExchangeError

# -- where a rule applies ----------------------------------------------------------------------

EWS_OPERATIONS = ("find_new_items", "ensure_folder", "move_item", "add_category", "delete_item", "send",
                  "get_act_org", "set_act_org")
CRM_OPERATIONS = ("create_email",)
# The calls of the engine (Exchange) and "create_email" (the CRM): the operations rules had before
# there were protocols.
OPERATIONS = EWS_OPERATIONS + CRM_OPERATIONS
PROTOCOL_OPERATIONS: dict[str, tuple[str, ...]] = {
    "ews": EWS_OPERATIONS,
    "crm": CRM_OPERATIONS,
    "autodiscover": ("autodiscover",),
    "identity": ("token",),
    "smtp": ("connect", "mail", "rcpt", "data"),
}
PROTOCOLS = tuple(PROTOCOL_OPERATIONS)

# -- what a rule does on each protocol ---------------------------------------------------------

DROP = "NetworkError"  # every protocol: close the connection without an answer

# code -> (HTTP status, ErrorCode of the JSON body, message)
AUTODISCOVER_ERRORS: dict[str, tuple[int, str, str]] = {
    "HttpServiceUnavailable": (503, "ServiceUnavailable", "Autodiscover cannot answer right now; try again later"),
    "HttpInternalServerError": (500, "InternalServerError", "Autodiscover failed while looking up the mailbox"),
    "ErrorNonExistentMailbox": (404, "MailboxNotFound", "No mailbox was found for this address"),
}

# code -> (HTTP status, OAuth2 error, AADSTS number or None, description)
IDENTITY_ERRORS: dict[str, tuple[int, str, int | None, str]] = {
    "AADSTS700016": (400, "unauthorized_client", 700016,
                     "The application is not registered in this tenant, or the request went to the wrong tenant."),
    "AADSTS7000215": (401, "invalid_client", 7000215, "The client secret presented is not valid."),
    "AADSTS700027": (401, "invalid_client", 700027,
                     "The client assertion was rejected: its certificate is not registered on the application, "
                     "has expired, or did not sign it."),
    "AADSTS700024": (401, "invalid_client", 700024, "The client assertion is outside its valid time range."),
    "AADSTS50013": (401, "invalid_client", 50013, "The client assertion is not valid (for instance, it was "
                                                  "already used)."),
    "AADSTS90002": (400, "invalid_tenant", 90002,
                    "The tenant was not found. Check the tenant id or domain in the authority URL."),
    "HttpServiceUnavailable": (503, "temporarily_unavailable", None,
                               "The token service cannot answer right now; try again later."),
    "HttpInternalServerError": (500, "server_error", None, "The token service failed while issuing the token."),
}

# reply code -> the rest of the reply line (enhanced status code and text)
SMTP_REPLIES: dict[str, str] = {
    "421": "4.3.2 Service not available, closing the transmission channel",
    "450": "4.2.1 The mailbox cannot take mail right now; try again later",
    "451": "4.3.0 Local error while processing; try again later",
    "452": "4.3.1 Not enough system storage; try again later",
    "550": "5.1.1 The mailbox is unavailable",
    "552": "5.3.4 The message is larger than this server accepts",
    "554": "5.6.0 The transaction failed",
}
_SMTP_CODE = re.compile(r"[45][0-9][0-9]")


def smtp_reply(code: str) -> str:
    """The whole reply line an SMTP rule's ``code`` answers with."""
    text = SMTP_REPLIES.get(code) or f"{code[0]}.0.0 Refused by a fault rule of the sandbox"
    return f"{code} {text}"


class FaultRuleError(ValueError):
    """A fault rule with a wrong field value; the text starts with the field's name."""


MAX_COUNT = 10**9  # the most calls a rule may be told to fire for
MAX_BACKOFF_MS = 10**7  # the longest BackOffMilliseconds a rule may carry (~2.8 hours)
MAX_LATENCY_MS = 3_600_000  # the slowest a call may be made: one hour of sandbox time
MAX_WINDOW_MINUTES = 10 * 366 * 24 * 60  # the longest window: ten years
HISTORY_MAX = 10_000  # fired faults kept in memory (FaultInjector.history)
_BACKOFF_PROTOCOLS = ("ews", "crm")  # BackOffMilliseconds is an EWS answer


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@functools.lru_cache(maxsize=256)
def _instant(text: str) -> datetime:
    return parse_instant(text)


def _infer_protocol(operation: object, code: object) -> str:
    if isinstance(operation, str) and operation != "*":
        for protocol, operations in PROTOCOL_OPERATIONS.items():
            if operation in operations:
                return protocol
    if isinstance(code, str):
        if code.upper().startswith("AADSTS"):
            return "identity"
        if _SMTP_CODE.fullmatch(code):
            return "smtp"
    return "ews"


def _code_problem(protocol: str, code: str) -> str | None:
    """Why ``code`` is no error of ``protocol`` (None: it is one)."""
    if protocol in ("ews", "crm"):
        return None if code in KNOWN_ERRORS else f"{code!r} is not a known error code (e.g. ErrorServerBusy)"
    if code == DROP:
        return None
    if protocol == "autodiscover":
        if code in AUTODISCOVER_ERRORS:
            return None
        return f"{code!r} is not an Autodiscover error ({', '.join([*AUTODISCOVER_ERRORS, DROP])})"
    if protocol == "identity":
        if code in IDENTITY_ERRORS:
            return None
        return f"{code!r} is not an identity service error ({', '.join([*IDENTITY_ERRORS, DROP])})"
    if _SMTP_CODE.fullmatch(code):
        return None
    return f"{code!r} is not an SMTP reply code from 400 to 599 (e.g. 451 or 550) or {DROP}"


@dataclass(slots=True)
class FaultRule:
    """One fault rule. Its fields are checked here, the one place for every way in (CLI, HTTP,
    Python, a saved rule), so that any rule that exists can fire without breaking the engine.

    ``start`` may be given as an aware :class:`~datetime.datetime` or as ISO 8601 text; it is
    kept as ISO 8601 text (UTC)."""

    code: str | None = None
    operation: str = "*"
    mailbox: str | None = None
    count: int | None = None  # fire for the next N matching calls (None: no limit)
    probability: float = 1.0
    backoff_ms: int | None = None
    protocol: str | None = None  # None: inferred (see the module's doc); always set once checked
    latency_ms: int | None = None  # the call takes this much sandbox time
    start: str | None = None  # the window opens at this sandbox time
    minutes: float | None = None  # ... and stays open this long (None: for good)
    fired: int = field(default=0)

    def __post_init__(self) -> None:
        if self.protocol is None:
            self.protocol = _infer_protocol(self.operation, self.code)
        elif isinstance(self.protocol, str) and self.protocol.strip().lower() in PROTOCOLS:
            self.protocol = self.protocol.strip().lower()
        else:
            raise FaultRuleError(f"protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        protocol = self.protocol
        if self.code is not None:
            if not isinstance(self.code, str) or not self.code.strip():
                raise FaultRuleError(f"code: {self.code!r} is not an error code (e.g. ErrorServerBusy)")
            self.code = self.code.strip()
            problem = _code_problem(protocol, self.code)
            if problem:
                raise FaultRuleError(f"code: {problem}")
        operations = PROTOCOL_OPERATIONS[protocol]
        if not isinstance(self.operation, str) or (self.operation != "*" and self.operation not in operations):
            raise FaultRuleError(f"operation: {self.operation!r} is not an operation of {protocol} "
                                 f"({', '.join(operations)}) or '*'")
        if self.mailbox is not None:
            if not isinstance(self.mailbox, str) or not self.mailbox.strip():
                raise FaultRuleError(f"mailbox: {self.mailbox!r} is not an email address")
            if protocol == "identity":
                raise FaultRuleError("mailbox: a token request names no mailbox; leave mailbox out")
            if protocol == "smtp" and self.operation == "connect":
                raise FaultRuleError("mailbox: an SMTP connection names no mailbox yet; use operation mail, "
                                     "rcpt or data")
        if self.count is not None and (not _whole(self.count) or not 0 <= self.count <= MAX_COUNT):
            raise FaultRuleError(f"count: {self.count!r} is not a whole number from 0 to {MAX_COUNT}")
        if not _number(self.probability) or not 0.0 <= self.probability <= 1.0:  # NaN fails the comparison too
            raise FaultRuleError(f"probability: {self.probability!r} is not a number from 0 to 1")
        if self.backoff_ms is not None:
            if not _whole(self.backoff_ms) or not 0 <= self.backoff_ms <= MAX_BACKOFF_MS:
                raise FaultRuleError(f"backoff_ms: {self.backoff_ms!r} is not a whole number of milliseconds "
                                     f"from 0 to {MAX_BACKOFF_MS}")
            if protocol not in _BACKOFF_PROTOCOLS:
                raise FaultRuleError(f"backoff_ms: only EWS answers carry BackOffMilliseconds, not {protocol}")
        if self.latency_ms is not None:
            if not _whole(self.latency_ms) or not 0 <= self.latency_ms <= MAX_LATENCY_MS:
                raise FaultRuleError(f"latency_ms: {self.latency_ms!r} is not a whole number of milliseconds "
                                     f"from 0 to {MAX_LATENCY_MS}")
            if protocol == "crm" and self.latency_ms:
                raise FaultRuleError("latency_ms: the CRM creates activities inside the engine's batch and "
                                     "cannot be slowed; slow the ews calls instead")
        if self.code is None and not self.latency_ms:
            raise FaultRuleError("code: is required (or give latency_ms for a call that is only slow)")
        self._check_window()
        if not _whole(self.fired) or self.fired < 0:
            raise FaultRuleError(f"fired: {self.fired!r} is not a whole number of 0 or more")
        if self.mailbox is not None:
            self.mailbox = self.mailbox.strip().lower()

    def _check_window(self) -> None:
        if self.start is not None:
            given = self.start
            try:
                if isinstance(given, datetime):
                    when = as_utc(given)
                elif isinstance(given, str):
                    when = parse_instant(given)
                else:
                    raise TypeError
                if not 1753 <= when.year <= 9999:  # the dates a Dataverse column holds
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                shown = given if isinstance(given, str) else repr(given)
                raise FaultRuleError(f"start: {shown!r} is not a date and time of sandbox time (ISO 8601, "
                                     "e.g. 2026-01-05T09:00:00Z; no offset means UTC)") from None
            self.start = when.isoformat()
        if self.minutes is not None:
            if (not _number(self.minutes) or not math.isfinite(self.minutes)
                    or not 0 < self.minutes <= MAX_WINDOW_MINUTES):
                raise FaultRuleError(f"minutes: {self.minutes!r} is not a number of minutes above 0 and "
                                     f"up to {MAX_WINDOW_MINUTES}")
            if self.start is None:
                raise FaultRuleError("minutes: a window needs its start too (give start)")

    # -- matching --------------------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def in_window(self, now: datetime | None) -> bool:
        """Whether the rule's window is open at ``now`` (always, for a rule without one)."""
        if self.start is None:
            return True
        if now is None:  # no clock to tell: a timed rule does not fire
            return False
        since = as_utc(now) - _instant(self.start)  # no overflow near the ends of the calendar
        if since < timedelta(0):
            return False
        return self.minutes is None or since < timedelta(minutes=self.minutes)

    def matches(self, protocol: str, operation: str, mailboxes: tuple[str, ...], now: datetime | None) -> bool:
        return (
            not self.exhausted
            and self.protocol == protocol
            and (self.operation == "*" or self.operation == operation)
            and (self.mailbox is None or self.mailbox in mailboxes)
            and self.in_window(now)
        )

    def to_json(self) -> dict[str, typing.Any]:
        """Every field, JSON-ready (what ``GET /_sim/faults`` shows)."""
        return dataclasses.asdict(self)


def describe(rule: FaultRule) -> str:
    """One line about a rule, for people (``sss fault list``)."""
    if rule.code is not None:
        what = rule.code
    else:
        what = f"{rule.latency_ms} ms of latency"
    if rule.protocol == "ews":
        where = "any operation" if rule.operation == "*" else rule.operation
    else:
        where = f"any {rule.protocol} operation" if rule.operation == "*" else f"{rule.protocol} {rule.operation}"
    times = "every matching call" if rule.count is None else f"the next {rule.count} call(s)"
    nameless = rule.protocol == "identity" or (rule.protocol == "smtp" and rule.operation == "connect")
    who = rule.mailbox or ("every request" if nameless else "every mailbox")
    line = (f"{what} on {where} for {who}: {times}, fired {rule.fired} time(s), "
            f"probability {rule.probability}")
    if rule.backoff_ms is not None:
        line += f", back-off {rule.backoff_ms} ms"
    if rule.code is not None and rule.latency_ms:
        line += f", after {rule.latency_ms} ms of latency"
    if rule.start is not None:
        start = _instant(rule.start)
        line += f", from {start:%Y-%m-%d %H:%M:%S} UTC"
        if rule.minutes is not None:
            line += f" for {rule.minutes:g} minute(s)"
    return line


# -- firing --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fault:
    """What the rules decided for one call: wait ``latency_ms`` of sandbox time, then fail with
    ``code`` (None: answer normally)."""

    protocol: str
    operation: str
    mailbox: str | None
    code: str | None
    latency_ms: int = 0
    backoff_ms: int | None = None

    @property
    def drops(self) -> bool:
        """Close the connection without an answer."""
        return self.code == DROP

    def error(self) -> ExchangeError:
        """The error an in-process caller raises for this fault (EWS and CRM codes)."""
        code = self.code or "ErrorInternalServerError"
        kind = KNOWN_ERRORS.get(code)
        summary = kind.summary if kind is not None else f"Injected fault {code}"
        # worded as Exchange would answer: the learner diagnoses it from the alert alone
        return ExchangeError(code, f"{summary} ({self.mailbox})" if self.mailbox else summary,
                             backoff_ms=self.backoff_ms)


class FaultInjector:
    """Holds the rules; :meth:`decide` says what the rules do to one call.

    ``rng`` is the only source of randomness, ``clock`` (or the ``now`` a caller passes) the only
    source of time; without either, timed rules do not fire. :attr:`history` keeps the faults that
    fired in this process, newest last (at most :data:`HISTORY_MAX`)."""

    def __init__(self, rng: random.Random | None = None, clock: Clock | None = None) -> None:
        self.rng = rng or random.Random(0)
        self.rules: list[FaultRule] = []
        self.changes = 0  # bumped by every change of the rules, their counters or the generator
        self.clock: Clock | None = None
        self.history: deque[tuple] = deque(maxlen=HISTORY_MAX)
        if clock is not None:
            self.bind(clock)

    def bind(self, clock: Clock) -> None:
        """Read time from ``clock`` (the sandbox's) when a caller passes no ``now``."""
        self.clock = clock

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        self.changes += 1
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.changes += 1

    def decide(self, protocol: str, operation: str, mailbox: str | typing.Iterable[str] | None = None, *,
               now: datetime | None = None) -> Fault | None:
        """What the rules do to one call of ``operation`` on ``protocol`` for ``mailbox`` (an address,
        several - any of them matches a rule's mailbox - or None).

        Rules are taken in the order they were added. Each one that matches and wins its draw
        fires: its latency adds up with the others', and the first one with a code ends the
        search with that code. None when nothing fired."""
        if not self.rules:
            return None
        if mailbox is None:
            boxes: tuple[str, ...] = ()
        elif isinstance(mailbox, str):
            boxes = (mailbox.lower(),)
        else:
            boxes = tuple(m.lower() for m in mailbox)
        if now is None and self.clock is not None:
            now = self.clock.now()
        latency, hit = 0, None
        for rule in self.rules:
            if not rule.matches(protocol, operation, boxes, now):
                continue
            self.changes += 1
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            rule.fired += 1
            latency += rule.latency_ms or 0
            if rule.code is not None:
                hit = rule
                break
        if hit is None and not latency:
            return None
        shown = ",".join(boxes) or None
        fault = Fault(protocol, operation, shown, hit.code if hit else None, latency,
                      hit.backoff_ms if hit else None)
        self.history.append((now.isoformat() if now is not None else None, protocol, operation, shown,
                             fault.code, latency))
        return fault

    def check(self, operation: str, mailbox: str, *, protocol: str | None = None,
              now: datetime | None = None) -> None:
        """Raise the error of the rule that fires for an engine call (EWS or the CRM create), if one does.

        Latency is not waited for here: callers that can wait use :meth:`decide`."""
        if not self.rules:
            return
        if protocol is None:
            protocol = "crm" if operation in CRM_OPERATIONS else "ews"
        fault = self.decide(protocol, operation, mailbox, now=now)
        if fault is not None and fault.code is not None:
            raise fault.error()


# -- latency in sandbox time ---------------------------------------------------------------------

def _delta(latency_ms: int) -> timedelta:
    return timedelta(milliseconds=latency_ms)


async def wait_in_process(clock: Clock, latency_ms: int) -> None:
    """A slow call made in process (direct mode): the caller waits on the sandbox clock.

    On a virtual clock nothing sleeps for real: the caller is parked and the clock jumps once
    every other piece of work is parked or done too, so calls of different mailboxes overlap as
    they would against a slow server, within the profile's connection cap. On a real clock the
    caller sleeps."""
    if latency_ms > 0:
        await clock.sleep_until(clock.now() + _delta(latency_ms))


async def answer_late(clock: Clock, latency_ms: int) -> None:
    """A slow answer from a server of the sandbox (EWS, Autodiscover, identity, SMTP).

    The client counts as work in flight while it waits (the engine marks it so), so a virtual
    clock would never jump for a sleeping server: the server moves the clock forward by the
    latency itself, and answers. On a real clock it sleeps."""
    if latency_ms <= 0:
        return
    if getattr(clock, "is_virtual", False) and hasattr(clock, "advance_to"):
        clock.advance_to(clock.now() + _delta(latency_ms))
        await asyncio.sleep(0)
    else:
        await asyncio.sleep(latency_ms / 1000)


# -- saving and loading the rules ------------------------------------------------------------

FAULTS_FORMAT = "sss-fault-rules"
FAULTS_VERSION = 1  # rules saved before protocols, latency and windows load unchanged: the new fields default
_INJECTOR_SAVED = frozenset({"rng", "rules"})
_INJECTOR_LIVE = frozenset({"changes", "clock", "history"})  # this process's: not saved


def _persist_error(message: str) -> ValueError:
    # Imported here so that this module does not load the Exchange store when it is imported.
    from simulator.exchange.persist import PersistError

    return PersistError(message)


def rules_to_json(injector: FaultInjector) -> str:
    """The rules of ``injector`` (with how often each already fired) and its generator state, as JSON.

    Loading the text with :func:`load_rules` gives an injector that fires exactly the faults
    this one would fire for the same later calls.
    """
    extra = sorted(set(vars(injector)) - _INJECTOR_SAVED - _INJECTOR_LIVE)
    if extra:
        raise _persist_error(f"cannot save the fault rules: the injector's attribute {extra[0]!r} has no saved form")
    rules = []
    for i, rule in enumerate(injector.rules):
        saved = {}
        for f in dataclasses.fields(rule):
            value = getattr(rule, f.name)
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise _persist_error(f"cannot save the fault rules: rule {i} field {f.name!r} holds "
                                     f"a {type(value).__name__}")
            saved[f.name] = value
        rules.append(saved)
    from simulator.exchange.persist import rng_state

    doc = {
        "format": FAULTS_FORMAT,
        "version": FAULTS_VERSION,
        "rules": rules,
        "rng": rng_state(injector.rng, "the fault rules"),
    }
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # a probability that is NaN or infinite
        raise _persist_error(f"cannot save the fault rules: {exc}") from None


def _read_rule(i: int, raw: object, hints: dict[str, object]) -> FaultRule:
    from simulator.exchange.persist import matches_hint

    if not isinstance(raw, dict):
        raise _persist_error(f"cannot load the fault rules: rule {i} is not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(FaultRule)}
    for key in raw:
        if key not in fields:
            raise _persist_error(f"cannot load the fault rules: rule {i} has an unknown field {key!r}")
    init, later = {}, {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _persist_error(f"cannot load the fault rules: rule {i} has no {name!r}")
            continue
        value = raw[name]
        hint = hints.get(name)
        if hint is not None and not matches_hint(value, hint):
            raise _persist_error(f"cannot load the fault rules: rule {i} field {name!r} has the wrong type "
                                 f"({type(value).__name__})")
        (init if f.init else later)[name] = value
    try:
        rule = FaultRule(**init)
    except FaultRuleError as exc:
        raise _persist_error(f"cannot load the fault rules: rule {i}: {exc}") from None
    for name, value in later.items():
        setattr(rule, name, value)
    return rule


def load_rules(injector: FaultInjector, text: str) -> None:
    """Replace the rules and the generator state of ``injector`` with those saved in ``text``.

    The generator object itself is kept (only its state is set), so whatever else shares it
    sees the restored state too. Nothing changes when the text is refused: a
    ``PersistError`` (a ``ValueError``) says what is wrong.
    """
    from simulator.exchange.persist import read_document, read_rng_state

    doc = read_document(text, "the fault rules", FAULTS_FORMAT, FAULTS_VERSION, kind="saved fault rules",
                        versioned="version")
    extra = sorted(set(doc) - {"format", "version", "rules", "rng"})
    if extra:
        raise _persist_error(f"cannot load the fault rules: unexpected section {extra[0]!r}")
    if not isinstance(doc.get("rules"), list):
        raise _persist_error("cannot load the fault rules: 'rules' must be a JSON array")
    if "rng" not in doc:
        raise _persist_error("cannot load the fault rules: the 'rng' section is missing")
    try:
        hints = typing.get_type_hints(FaultRule)
    except Exception:  # an annotation not resolvable at run time: types are then not checked
        hints = {}
    rules = [_read_rule(i, raw, hints) for i, raw in enumerate(doc["rules"])]
    state = read_rng_state(doc["rng"], "the fault rules")
    try:
        injector.rng.setstate(state)
    except NotImplementedError:
        raise _persist_error("cannot load the fault rules: the injector's random generator cannot be set") from None
    injector.rules[:] = rules
