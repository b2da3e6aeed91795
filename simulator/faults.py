"""Fault rules: make chosen Exchange calls fail, seeded and deterministic.

A rule names an operation (or ``*``), optionally a mailbox address, the error code to raise
(an EWS response code or a CRM code of SPEC section 4), and when it fires: for the next
``count`` matching calls, and/or with a ``probability`` drawn from the sandbox's seeded
generator. ``ErrorServerBusy`` rules may carry a ``backoff_ms`` hint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.errors import KNOWN_ERRORS, ExchangeError

# Exchange calls of the engine, and "create_email": the CRM creating an activity (plug-in failures).
OPERATIONS = ("find_new_items", "ensure_folder", "move_item", "add_category", "delete_item", "send", "create_email")


class FaultRuleError(ValueError):
    """A fault rule with a wrong field value."""


@dataclass(slots=True)
class FaultRule:
    code: str
    operation: str = "*"
    mailbox: str | None = None
    count: int | None = None  # fire for the next N matching calls (None: no limit)
    probability: float = 1.0
    backoff_ms: int | None = None
    fired: int = field(default=0)

    def __post_init__(self) -> None:
        if self.code not in KNOWN_ERRORS:
            raise FaultRuleError(f"code: {self.code!r} is not a known error code")
        if self.operation != "*" and self.operation not in OPERATIONS:
            raise FaultRuleError(f"operation: {self.operation!r} is not one of {', '.join(OPERATIONS)} or '*'")
        if self.count is not None and self.count < 0:
            raise FaultRuleError("count: must be 0 or more")
        if not 0.0 <= self.probability <= 1.0:
            raise FaultRuleError("probability: must be between 0 and 1")
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

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def check(self, operation: str, mailbox: str) -> None:
        if not self.rules:
            return
        mailbox = mailbox.lower()
        for rule in self.rules:
            if not rule.matches(operation, mailbox):
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            rule.fired += 1
            raise ExchangeError(rule.code, f"injected fault on {operation} for {mailbox}",
                                backoff_ms=rule.backoff_ms)
