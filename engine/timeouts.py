"""`timeoutmailboxconnectionafteramount`: one Exchange call may take at most this long.

On the real clock each call of the port is bounded with :func:`asyncio.wait_for`; running out
of time is the transient error ``ErrorTimeoutExpired``. On a virtual clock calls take no
simulated time, so there is nothing to bound (a fault rule with that code simulates timeouts).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.errors import ExchangeError
from engine.ports import ExchangePort


class TimedExchange:
    """An ExchangePort whose calls are bounded by ``seconds``."""

    def __init__(self, inner: ExchangePort, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def bounded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await asyncio.wait_for(target(*args, **kwargs), self.seconds)
            except TimeoutError:
                raise ExchangeError(
                    "ErrorTimeoutExpired", f"{name} took longer than {self.seconds * 1000:.0f} ms"
                ) from None

        return bounded


def bounded_port(exchange: ExchangePort, *, real_clock: bool, enabled: bool, amount_ms: int) -> ExchangePort:
    """The port to use for one profile's mailboxes."""
    seconds = call_timeout_s(enabled, amount_ms)
    if not real_clock or seconds is None:
        return exchange
    return TimedExchange(exchange, seconds)  # type: ignore[return-value]


def call_timeout_s(enabled: bool, amount_ms: int) -> float | None:
    """Seconds one Exchange call may take under a profile's timeout fields (None: unbounded)."""
    return amount_ms / 1000.0 if enabled and amount_ms > 0 else None
