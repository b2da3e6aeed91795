"""Time for the engine and the simulators.

Nothing in ``engine/`` or ``simulator/`` reads the wall clock directly: everything asks a
:class:`Clock`. Two kinds exist:

* :class:`RealClock` follows the machine's clock (UTC) and sleeps for real.
* :class:`VirtualClock` only moves when it is told to, or, for sleepers, when every
  registered participant is waiting and no work is in flight. A simulated day then takes
  as long as the work in it, and the result does not depend on the machine's speed.

Times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...

    @property
    def is_virtual(self) -> bool: ...


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_FRACTION = re.compile(r"(\.\d+)")


def parse_instant(text: str, *, utc: bool = True) -> datetime:
    """An instant written in ISO 8601 (``2026-01-05``, ``2026-01-05T08:00``, ``...Z``, ``...+02:00``,
    up to 7 fraction digits as .NET writes them), as an aware UTC datetime; no offset means UTC.
    With ``utc=False`` an offset the text gives is kept (a stored header date reads back as written).

    The one parser of times that come from outside (a CLI option, a JSON field, an EWS value, a
    stored record); raises ``ValueError`` when ``text`` is not such an instant."""
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not text")
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    value = _FRACTION.sub(lambda mo: mo.group(1)[:7], value)
    try:
        when = datetime.fromisoformat(value)
        return as_utc(when) if utc or when.tzinfo is None else when
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


class RealClock:
    """The machine's clock, in UTC."""

    is_virtual = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        delay = (as_utc(when) - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)


class VirtualClock:
    """A clock that jumps instead of waiting.

    ``advance_to`` and ``advance`` move it explicitly (a simulation driver does this between
    batches of work). ``sleep_until`` parks the caller; the clock then jumps to the earliest
    parked time once no work is in flight (see :meth:`busy`) and every registered
    participant (see :meth:`participant`) is parked. Time never goes backwards.
    """

    is_virtual = True

    def __init__(self, start: datetime | None = None) -> None:
        self._now = as_utc(start) if start is not None else datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._busy = 0
        self._participants = 0
        self._wake_scheduled = False

    def now(self) -> datetime:
        return self._now

    def advance_to(self, when: datetime) -> None:
        when = as_utc(when)
        if when > self._now:
            self._now = when
        self._release_due()

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + timedelta(seconds=seconds))

    def rewind_to(self, when: datetime) -> None:
        """Put the clock back at ``when``: only for a sandbox restored to a snapshot (a test's reset),
        with nobody asleep on it."""
        if self._sleepers:
            raise RuntimeError("the clock cannot go back while something waits on it")
        self._now = as_utc(when)

    @contextmanager
    def busy(self):
        """Mark work in flight: the clock does not jump for sleepers meanwhile."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._schedule_wake()

    @contextmanager
    def participant(self):
        """Register a long-lived actor; the clock jumps only when all of them sleep."""
        self._participants += 1
        try:
            yield
        finally:
            self._participants -= 1
            self._schedule_wake()

    async def sleep_until(self, when: datetime) -> None:
        when = as_utc(when)
        if when <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), fut))
        self._schedule_wake()
        try:
            await fut
        except asyncio.CancelledError:
            self._sleepers = [s for s in self._sleepers if s[2] is not fut]
            heapq.heapify(self._sleepers)
            raise

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    def _release_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def _schedule_wake(self) -> None:
        if self._wake_scheduled or not self._sleepers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake_scheduled = True
        loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        if not self._sleepers or self._busy:
            return
        if self._participants and len(self._sleepers) < self._participants:
            return
        self.advance_to(self._sleepers[0][0])
        self._schedule_wake()  # later sleepers: jump again once the woken ones have run
