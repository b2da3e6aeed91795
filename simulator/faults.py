"""Fault rules: make chosen Exchange calls fail, seeded and deterministic.

A rule names an operation (or ``*``), optionally a mailbox address, the error code to raise
(an EWS response code or a CRM code of SPEC section 4), and when it fires: for the next
``count`` matching calls, and/or with a ``probability`` drawn from the sandbox's seeded
generator. ``ErrorServerBusy`` rules may carry a ``backoff_ms`` hint.

:func:`rules_to_json` and :func:`load_rules` save the rules (with how often each has fired)
and the generator state as JSON text and put them back, so that a run that is saved and
loaded between two commands fires the same faults as one that is not.
"""

from __future__ import annotations

import dataclasses
import json
import random
import typing
from dataclasses import dataclass, field

from engine.errors import KNOWN_ERRORS, ExchangeError

# Exchange calls of the engine, and "create_email": the CRM creating an activity (plug-in failures).
OPERATIONS = ("find_new_items", "ensure_folder", "move_item", "add_category", "delete_item", "send",
              "get_act_org", "set_act_org", "create_email")


class FaultRuleError(ValueError):
    """A fault rule with a wrong field value."""


MAX_COUNT = 10**9  # the most calls a rule may be told to fire for
MAX_BACKOFF_MS = 10**7  # the longest BackOffMilliseconds a rule may carry (~2.8 hours)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(slots=True)
class FaultRule:
    """One fault rule. Its fields are checked here, the one place for every way in (CLI, HTTP,
    Python, a saved rule), so that any rule that exists can fire without breaking the engine."""

    code: str
    operation: str = "*"
    mailbox: str | None = None
    count: int | None = None  # fire for the next N matching calls (None: no limit)
    probability: float = 1.0
    backoff_ms: int | None = None
    fired: int = field(default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or self.code not in KNOWN_ERRORS:
            raise FaultRuleError(f"code: {self.code!r} is not a known error code (e.g. ErrorServerBusy)")
        if not isinstance(self.operation, str) or (self.operation != "*" and self.operation not in OPERATIONS):
            raise FaultRuleError(f"operation: {self.operation!r} is not one of {', '.join(OPERATIONS)} or '*'")
        if self.mailbox is not None and not isinstance(self.mailbox, str):
            raise FaultRuleError(f"mailbox: {self.mailbox!r} is not an email address")
        if self.count is not None and (not _whole(self.count) or not 0 <= self.count <= MAX_COUNT):
            raise FaultRuleError(f"count: {self.count!r} is not a whole number from 0 to {MAX_COUNT}")
        if (isinstance(self.probability, bool) or not isinstance(self.probability, int | float)
                or not 0.0 <= self.probability <= 1.0):  # NaN fails the comparison too
            raise FaultRuleError(f"probability: {self.probability!r} is not a number from 0 to 1")
        if self.backoff_ms is not None and (not _whole(self.backoff_ms) or not 0 <= self.backoff_ms <= MAX_BACKOFF_MS):
            raise FaultRuleError(f"backoff_ms: {self.backoff_ms!r} is not a whole number of milliseconds "
                                 f"from 0 to {MAX_BACKOFF_MS}")
        if not _whole(self.fired) or self.fired < 0:
            raise FaultRuleError(f"fired: {self.fired!r} is not a whole number of 0 or more")
        if self.mailbox is not None:
            self.mailbox = self.mailbox.strip().lower()

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def matches(self, operation: str, mailbox: str) -> bool:
        return (
            not self.exhausted
            and (self.operation == "*" or self.operation == operation)
            and (self.mailbox is None or self.mailbox == mailbox)
        )


class FaultInjector:
    """Holds the rules; :meth:`check` raises the error of the first rule that fires."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random(0)
        self.rules: list[FaultRule] = []
        self.changes = 0  # bumped by every change of the rules, their counters or the generator

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        self.changes += 1
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.changes += 1

    def check(self, operation: str, mailbox: str) -> None:
        if not self.rules:
            return
        mailbox = mailbox.lower()
        for rule in self.rules:
            if not rule.matches(operation, mailbox):
                continue
            self.changes += 1
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            rule.fired += 1
            # worded as Exchange would answer: the learner diagnoses it from the alert alone
            raise ExchangeError(rule.code, f"{KNOWN_ERRORS[rule.code].summary} ({mailbox})",
                                backoff_ms=rule.backoff_ms)


# -- saving and loading the rules ------------------------------------------------------------

FAULTS_FORMAT = "sss-fault-rules"
FAULTS_VERSION = 1
_INJECTOR_SAVED = frozenset({"rng", "rules"})


def _persist_error(message: str) -> ValueError:
    # Imported here so that this module does not load the Exchange store when it is imported.
    from simulator.exchange.persist import PersistError

    return PersistError(message)


def rules_to_json(injector: FaultInjector) -> str:
    """The rules of ``injector`` (with how often each already fired) and its generator state, as JSON.

    Loading the text with :func:`load_rules` gives an injector that fires exactly the faults
    this one would fire for the same later calls.
    """
    extra = sorted(set(vars(injector)) - _INJECTOR_SAVED - {"changes"})
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
