"""A sandbox: the fake organization, the fake Exchange Online and the engine, composed in process.

Everything in a sandbox reads time from its :class:`~engine.clock.VirtualClock` and randomness
from generators derived from its seed, so the same scenario and seed give the same event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import math
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.clock import Clock, RealClock, VirtualClock, as_utc
from engine.service import SyncService
from simulator.crm.admin import Admin
from simulator.crm.db import MEMORY_URL, make_engine
from simulator.crm.errors import OutOfOrderError, ValidationError
from simulator.crm.platform import LEASE_TIMEOUT, IdFactory, Platform
from simulator.exchange.direct import DirectExchange
from simulator.exchange.mime import MessageData, normalize_address
from simulator.exchange.store import ExchangeStore, IdSource
from simulator.faults import FaultInjector, FaultRule
from simulator.world import World, stored_time

DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Snapshot:
    """A sandbox at one moment (see :meth:`Sandbox.snapshot`)."""

    db: sqlite3.Connection  # an in-memory copy of the database
    now: datetime
    generators: dict[str, Any]
RUN_SLICE = timedelta(hours=1)  # a run on a served sandbox takes its lock for this much sandbox time at a time
DEAD_HOST_GRACE_S = 5.0  # real seconds a lease of another host may stay put before that host is presumed dead
NOTIFICATION_SENDER = "crm-notifications@sandbox.invalid"


def mail_addresses(sender: str, to: list[str] | tuple[str, ...], cc: list[str] | tuple[str, ...] = ()
                   ) -> tuple[str, list[str], list[str]]:
    """The sender and recipients of mail to deliver, each checked and normalized (lower case, no
    display name); a malformed one is refused naming its field (``from``, ``to``, ``cc``)."""
    checked: dict[str, list[str]] = {"from": [], "to": [], "cc": []}
    for field, values in (("from", [sender]), ("to", list(to)), ("cc", list(cc))):
        for value in values:
            address = normalize_address(value)
            if address is None:
                raise ValidationError(f"{value!r} is not an email address", field)
            checked[field].append(address)
    if not checked["to"]:
        raise ValidationError("is required: at least one recipient's address", "to")
    return checked["from"][0], checked["to"], checked["cc"]


class Sandbox:
    """Org + Exchange + engine in one process, on a virtual clock ("direct mode").

    The sandbox is durable (``simulator/world.py``): a database that already holds a sandbox is
    opened where it stands (its Exchange store, fault rules and clock, which goes on from the
    later of ``start`` and the stored time), and everything is written as it changes.
    ``clock`` replaces the virtual clock (a :class:`~engine.clock.RealClock` for a real-time
    service: then :meth:`run_until` is not used; the engine runs with ``engine.run_forever``).
    """

    def __init__(self, *, db_url: str = MEMORY_URL, seed: int = 0, start: datetime = DEFAULT_START,
                 record_events: bool = True, jitter: bool = False, lease_batch: int = 2000,
                 hostid: str = "sss-host-1", clock: Clock | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(f"sandbox-{seed}")
        self.db = make_engine(db_url, durable=False)  # a simulation artefact: no fsync (BENCHMARKS.md)
        if clock is None:
            stored = stored_time(self.db)
            clock = VirtualClock(max(as_utc(start), stored) if stored is not None else as_utc(start))
        self.clock = clock
        self.store = ExchangeStore(self.clock)
        self.faults = FaultInjector(random.Random(f"faults-{seed}"))
        self.world = World(self.db, self.store, self.faults, self.clock, keeps_clock=self.clock.is_virtual)
        self.store.ids = IdSource(seed, self.world.epoch)  # ids that no other process hands out
        self.ids = IdFactory(seed, self.world.epoch)
        self.world.load()
        self.exchange = DirectExchange(self.store, self.faults)
        self.crm = Platform(self.db, self.clock, self.ids, self.faults)
        self.crm.on_notification = self._notify
        self.crm.world = self.world
        self.events: list[tuple[Any, ...]] | None = [] if record_events else None
        self.engine = SyncService(self.crm, self.exchange, self.clock, hostid=hostid,
                                  rng=random.Random(f"engine-{seed}"), jitter=jitter, lease_batch=lease_batch,
                                  events=self.events)
        self.admin = Admin(self.db, self.clock, self.crm, self.exchange, self.ids,
                           on_mailbox_added=self.store.add_mailbox)
        self.stopping = False  # set (e.g. by SIGTERM) to end run_until after the batch under way
        self._real = RealClock()  # only to tell a live engine host from a dead one (see run_until)
        self._other_lease: tuple[datetime, datetime] | None = None
        self.background: set = set()  # asyncio tasks started for this sandbox (jobs run over HTTP)
        self._agenda: list[tuple[datetime, int, Callable[[], Any]]] = []
        self._agenda_seq = itertools.count()

    def _notify(self, to: str, subject: str, body: str) -> None:
        """Mail from the CRM itself to a person (the profile alert email) lands in their Inbox."""
        self.deliver_text(NOTIFICATION_SENDER, [to], subject, body)

    # -- scenario helpers --------------------------------------------------------------------
    def at(self, when: datetime, action: Callable[[], Any]) -> None:
        """Run ``action`` when the clock reaches ``when`` (before the engine's work at that time); an
        action that returns an awaitable is awaited before the engine runs."""
        heapq.heappush(self._agenda, (as_utc(when), next(self._agenda_seq), action))

    def deliver(self, message: MessageData | bytes, recipients: list[str] | None = None,
                received: datetime | None = None) -> dict[str, str]:
        """Deliver mail into Exchange now (as SMTP would); returns ``{address: item id}``."""
        return self.store.deliver(message, recipients, received)

    def deliver_text(self, sender: str, to: list[str], subject: str, body: str = "", *,
                     in_reply_to: str | None = None, cc: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
        """Deliver a plain message written now (its own Message-ID) to the mailboxes ``to`` and ``cc``."""
        message = MessageData(subject=subject, sender=sender, to=tuple(to), cc=tuple(cc), body=body,
                              in_reply_to=in_reply_to, message_id=self.store.new_message_id(sender),
                              date=self.clock.now())
        return self.store.deliver(message, [*to, *cc])

    def deliver_mail(self, sender: str, to: list[str], *, cc: list[str] | tuple[str, ...] = (), subject: str = "",
                     body: str = "", in_reply_to: str | None = None, raw: bytes | None = None) -> dict[str, str]:
        """Mail from outside arriving now in the Exchange mailboxes of its recipients (``sss mail
        deliver``, the console's New message): a plain message written from the fields, or the RFC
        5322 message ``raw``. Recipients without a mailbox here are left out; refused (with the field
        named, nothing delivered) when an address is malformed or no recipient has a mailbox.
        Returns ``{address: item id}``."""
        sender, to, cc = mail_addresses(sender, to, cc)
        known_to = [a for a in to if a in self.store.mailboxes]
        known_cc = [a for a in cc if a in self.store.mailboxes and a not in known_to]
        if not known_to and not known_cc:
            raise ValidationError("no recipient has a mailbox in this Exchange Online", "to")
        if raw is not None:
            return self.deliver(raw, known_to + known_cc)
        return self.deliver_text(sender, known_to, subject, body, in_reply_to=in_reply_to, cc=known_cc)

    def advance_clock(self, span: timedelta) -> datetime:
        """Move the sandbox clock forward by ``span`` without running anything (``sss clock advance``
        on a running sandbox; its input model says how far it may go); written at once. Work that
        fell due meanwhile runs at the next run of the engine. Returns the new time."""
        if not self.clock.is_virtual:
            raise OutOfOrderError("the sandbox runs on the real clock, which cannot be moved; start it with "
                                  "--virtual to move time")
        try:
            target = self.clock.now() + span
        except OverflowError:
            raise ValidationError("moves the clock past the last date it can hold", "days") from None
        self.clock.advance_to(target)
        self.world.commit()
        return self.clock.now()

    async def run_engine(self, span: timedelta, *, lock: asyncio.Lock | None = None,
                         gone: Callable[[], bool] | None = None) -> datetime:
        """``sss run``: the Test & Enable jobs left waiting, then the engine (and what else falls due)
        for ``span`` of sandbox time from when they are done, which is returned.

        A served sandbox passes its ``lock``: each job runs under it, and the engine in slices of
        sandbox time each under it (see :meth:`run_until_in_slices`, with ``gone``)."""
        if not self.clock.is_virtual:
            raise OutOfOrderError("the engine of a sandbox on the real clock polls by itself; start it with "
                                  "--virtual to run it for a span of sandbox time")
        for jobid in self.admin.waiting_jobs():
            async with lock or contextlib.nullcontext():
                if jobid in self.admin.waiting_jobs():  # not taken meanwhile by the job's own task
                    await self.admin.run_job(jobid)
        start = self.clock.now()
        if lock is None:
            await self.run_until(start + span)
        else:
            await self.run_until_in_slices(start + span, lock, gone=gone)
        return start

    async def run_until_in_slices(self, end: datetime, lock: asyncio.Lock, *, slice_: timedelta = RUN_SLICE,
                                  gone: Callable[[], bool] | None = None) -> bool:
        """:meth:`run_until` ``end`` in slices of sandbox time, each under ``lock`` and written to the
        database when done: between two, other requests to a served sandbox (an admin step, a fault
        rule, EWS, SMTP) get their turn. ``gone()`` true (the client went away) ends it where it got
        to. Returns whether it got to ``end``."""
        end = as_utc(end)
        while True:
            async with lock:
                if self.clock.now() >= end or self.stopping:
                    return not self.stopping
                await self.run_until(min(end, self.clock.now() + slice_))
                self.world.commit()  # the clock where this slice left it
            if gone is not None and gone():
                return False
            await asyncio.sleep(0)

    def add_fault(self, **rule: Any) -> FaultRule:
        return self.add_rule(FaultRule(**rule))

    def add_rule(self, rule: FaultRule) -> FaultRule:
        """Add a fault rule; it is in the database when this returns."""
        self.faults.add(rule)
        self.world.commit()
        return rule

    def clear_faults(self) -> None:
        self.faults.clear()
        self.world.commit()

    # -- snapshots (a test suite's reset) --------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The sandbox as it stands (database, clock, generators), to come back to with :meth:`restore`.

        SQLite only: the database is copied with SQLite's backup API."""
        self.world.commit()
        copy = sqlite3.connect(":memory:", check_same_thread=False)
        with self._raw_connection() as raw:
            raw.backup(copy)
        return Snapshot(copy, self.clock.now(), self._generators())

    def restore(self, snap: Snapshot) -> None:
        """Come back to ``snap``: the same rows, Exchange store, fault rules, clock and generators, so
        what runs next does exactly what it did the first time after the snapshot. Between two
        engine runs only (nothing leased, nothing asleep on the clock)."""
        self.crm.abandon_batch()
        with self._raw_connection() as raw:
            snap.db.backup(raw)
        if isinstance(self.clock, VirtualClock):
            self.clock.rewind_to(snap.now)
        self._set_generators(snap.generators)
        self.faults.rules.clear()  # the rules stored in the snapshot, if any, come back with the reload
        self.world.reload()
        self.crm.invalidate_settings()
        self.engine.forget()
        if self.events is not None:
            self.events.clear()
        self._agenda.clear()
        self._other_lease = None
        self.stopping = False

    @contextlib.contextmanager
    def _raw_connection(self):
        if self.db.dialect.name != "sqlite":
            raise RuntimeError("snapshots need a SQLite sandbox database")
        conn = self.db.raw_connection()
        try:
            yield conn.driver_connection
        finally:
            conn.close()

    def _generators(self) -> dict[str, Any]:
        """Where the sandbox's seeded sequences stand (random generators and id counters)."""
        ids = self.store.ids
        state = {"sandbox": self.rng.getstate(), "engine": self.engine.rng.getstate(),
                 "faults": self.faults.rng.getstate(),
                 "crm-ids": self.ids.state(), "exchange-ids": ids.state(),
                 "store": self.store.counter_state()}
        wire = getattr(self, "wire", None)
        if wire is not None:
            state["wire"] = wire.generator_state()
        return state

    def _set_generators(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["sandbox"])
        self.engine.rng.setstate(state["engine"])
        self.faults.rng.setstate(state["faults"])
        self.ids.set_state(state["crm-ids"])
        self.store.ids.set_state(state["exchange-ids"])
        self.store.set_counter_state(state["store"])
        wire = getattr(self, "wire", None)
        if wire is not None and "wire" in state:
            wire.set_generator_state(state["wire"])

    # -- running ---------------------------------------------------------------------------
    def _next_time(self, origin: datetime, wake_every: timedelta | None) -> datetime | None:
        due = self.engine.next_due()
        if wake_every is not None and due is not None and due > self.clock.now():
            due = origin + wake_every * math.ceil((due - origin) / wake_every)  # the host's next look
        agenda = self._agenda[0][0] if self._agenda else None
        times = [t for t in (due, agenda) if t is not None]
        return min(times) if times else None

    async def run_until(self, end: datetime, progress: Callable[[datetime], None] | None = None, *,
                        wake_every_s: float | None = None) -> None:
        """Advance the clock step by step to ``end``, running scenario actions and due workloads.

        By default the engine runs at each instant something is due. With ``wake_every_s`` the
        engine host looks for due work only every that many seconds of sandbox time (from now), as a
        service polling its queue does: mailboxes due in between wait for the next look, and the
        many instants of a large organization become a few batches (agenda actions keep their times)."""
        end = as_utc(end)
        origin = self.clock.now()
        wake_every = timedelta(seconds=wake_every_s) if wake_every_s else None
        while not self.stopping:
            t = self._next_time(origin, wake_every)
            if t is None or t > end:
                break
            now = self.clock.now()
            if t <= now:
                t = now
            if await self._waiting_for_another_host(t):
                continue
            self.clock.advance_to(t)
            while self._agenda and self._agenda[0][0] <= t:
                _, _, action = heapq.heappop(self._agenda)
                result = action()
                if inspect.isawaitable(result):  # e.g. mail sent over SMTP in wire mode
                    await result
            try:
                ran = await self.engine.run_due()
            except BaseException:
                self.crm.abandon_batch()  # nothing of a batch that never reached its release stays
                raise
            held = ran == 0 and not self._agenda_due() and (self.engine.next_due() or end) <= t
            if held and not await self._waiting_for_another_host(t + timedelta(seconds=1)):
                self.clock.advance(1)  # work held by a host presumed dead: let time pass
            if progress is not None:
                progress(self.clock.now())
        if self.stopping:
            return
        self.clock.advance_to(end)
        if progress is not None:
            progress(end)

    async def _waiting_for_another_host(self, t: datetime) -> bool:
        """Moving the clock to ``t`` would force open a lease another engine host holds: wait (in real
        time) for that host to release it, and say so. Each process has its own virtual clock, so a
        host whose clock ran ahead must not take over mailboxes a live host is working on. A lease
        that stays put for :data:`DEAD_HOST_GRACE_S` real seconds belongs to a host presumed dead
        (killed, crashed): then the 30-minute rule applies as on one host."""
        lease = self.crm.oldest_lease
        if lease is None or lease + LEASE_TIMEOUT > t:
            return False
        held = self.crm.leased_by_others(self.engine.hostid)
        if held is None or held + LEASE_TIMEOUT > t:
            return False
        seen = self._other_lease
        if seen is None or seen[0] != held:
            self._other_lease = seen = (held, self._real.now())
        if (self._real.now() - seen[1]).total_seconds() >= DEAD_HOST_GRACE_S:
            return False
        await asyncio.sleep(0.02)
        return True

    def _agenda_due(self) -> bool:
        return bool(self._agenda) and self._agenda[0][0] <= self.clock.now()

    async def run_for(self, seconds: float, progress: Callable[[datetime], None] | None = None, *,
                      wake_every_s: float | None = None) -> None:
        await self.run_until(self.clock.now() + timedelta(seconds=seconds), progress, wake_every_s=wake_every_s)

    def close(self) -> None:
        """Write what is left (the clock where it stopped) and let go of the database."""
        try:
            self.world.commit()
        finally:
            self.db.dispose()
