"""The durable world: the sandbox's state beside the CRM tables, written when it changes.

Everything a sandbox knows lives in its database, so that a process killed at any point leaves a
state the next one resumes from, and several processes (``sss run``, ``sss serve``, ``sss mail
deliver``, a second engine host) can share one world:

* **The Exchange store** is the ``exchangejournal`` table: one row per finished store operation,
  holding that operation's events (see :meth:`ExchangeStore.apply`). A process keeps the store in
  memory as a view of the journal and replays, before it reads, what other processes appended
  since its last offset.
* **The sandbox clock**, the **fault rules** (with their counters and generator) and the
  **identity service** are rows of ``simulatorstate``; the clock never goes back.
* **Ids** never repeat: each process that writes to the world takes the next *epoch* (a counter)
  before its first write or its first new id, and the Exchange and CRM id generators include it.
  One process on a new database gets epoch 1, so a seeded run gives the same ids every time; a
  process that only reads (or refuses a command) takes none and writes nothing.

Writes are serialized by one lock row (``simulatorcounter`` ``world-lock``): a writer updates it
first, which holds SQLite's write lock or PostgreSQL's row lock until its commit, then replays
the journal's tail and appends its own operations with the following sequence numbers. So the
journal's order is the commit order, and every process replays the same history.

The engine's batches in direct mode go further: the store operations of a batch are held back
(:attr:`World.deferred`) and written in the same transaction as the batch's CRM rows (the
release), so a crash between any two statements loses both or neither.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, bindparam, event, insert, or_, select, update

from engine.clock import Clock, as_utc, parse_instant
from simulator.crm.models import (
    EPOCH_COUNTER,
    FAULTS_COUNTER,
    LOCK_COUNTER,
    ExchangeJournal,
    SimulatorCounter,
    SimulatorState,
)
from simulator.crm.s2s import CLOCK_KEY, clock_time, clock_value
from simulator.exchange.mime import MessageData
from simulator.exchange.store import ExchangeStore
from simulator.faults import FaultInjector, load_rules, rules_to_json

J = ExchangeJournal.__table__
C = SimulatorCounter.__table__
S = SimulatorState.__table__
FAULTS_KEY = "faults"

_journal_tail = select(J.c.seq, J.c.events).where(J.c.seq > bindparam("offset")).order_by(J.c.seq)
_faults_version = select(C.c.value).where(C.c.name == FAULTS_COUNTER)
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE"})
_lock = update(C).where(C.c.name == LOCK_COUNTER).values(value=C.c.value + 1)
_stored_clock = select(S.c.value).where(S.c.key == CLOCK_KEY)
_clock_forward = update(S).where(S.c.key == CLOCK_KEY, or_(S.c.modifiedon.is_(None), S.c.modifiedon < bindparam("m"))
                                 ).values(value=bindparam("v"), modifiedon=bindparam("m"))


# -- events as JSON --------------------------------------------------------------------------

def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, MessageData):
        from simulator.exchange.persist import message_record

        return message_record(value)
    raise TypeError(f"cannot write a {type(value).__name__} to the Exchange journal")


# orjson writes the same JSON several times faster (a mail-heavy run spends ~4 % of its time here);
# datetimes and messages go through _encode_value as with json, so the text is the same (a float in
# exponent form would read 1e16 rather than 1e+16, the same number, and a NaN or an infinity null;
# the store's events hold no floats).
# What it cannot write as ASCII JSON (a lone surrogate, non-ASCII text, an integer beyond 64 bits, a
# key that is not a string, the DEL character) is written by json as before: the journal stays ASCII
# either way.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def encode(events: list[dict]) -> str:
    try:
        out = orjson.dumps(events, default=_encode_value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        out = None
    if out is not None and out.isascii() and b"\x7f" not in out:  # (json escapes DEL as \u007f; orjson does not)
        return out.decode("ascii")
    return json.dumps(events, default=_encode_value, separators=(",", ":"), ensure_ascii=True)


def decode(text: str) -> list[dict]:
    from simulator.exchange.persist import message_from_record

    try:
        events = orjson.loads(text)
    except orjson.JSONDecodeError:  # (e.g. an escaped lone surrogate, which orjson refuses and json reads)
        events = json.loads(text)
    for ev in events:
        if "m" in ev:
            ev["m"] = message_from_record(ev["m"])
    return events


def _as_time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else parse_instant(value)


def stored_time(db: Engine) -> datetime | None:
    """The sandbox clock stored in ``db`` (None on a new database)."""
    with db.connect() as conn:
        text = conn.execute(_stored_clock).scalar()
    if text is None:
        return None
    try:
        return clock_time(text)
    except (ValueError, KeyError, TypeError):
        return None


class World:
    """One process's view of the durable world in ``db``: the store, the clock, the fault rules.

    ``keeps_clock``: the clock is the sandbox's virtual clock, written back as it moves (a real
    clock is not)."""

    def __init__(self, db: Engine, store: ExchangeStore, faults: FaultInjector, clock: Clock, *,
                 keeps_clock: bool) -> None:
        self.db = db
        self.store = store
        self.faults = faults
        self.clock = clock
        self.keeps_clock = keeps_clock
        # the statements run at every sync, compiled once and run on the DBAPI cursor
        from simulator.crm.platform import Prepared

        self._tail = Prepared(_journal_tail, db.dialect)
        self._lock = Prepared(_lock, db.dialect)
        self._faults_counter = Prepared(_faults_version, db.dialect)
        self._clock_forward = Prepared(_clock_forward, db.dialect)
        self._epoch: int | None = 1 if db.url.database in (None, "", ":memory:") else None  # memory: no one else
        self._taking = False
        if self._epoch is None:
            event.listen(db, "before_cursor_execute", self._before_write)
        self.offset = 0  # the last journal row applied to the store
        self.pending: list[list[dict]] = []  # finished store operations not in the database yet
        self.deferred = False  # hold operations back for the caller's transaction (see sync)
        self.engine_defers = True  # the engine runs in process: its batches commit store and CRM together
        self._clock_saved: datetime | None = None
        self._faults_version: int | None = None
        self._faults_seen = faults.changes
        self._operations = 0  # store operations finished in this process (a failed batch: did it make any?)
        self._before_batch: tuple | None = None  # what a failed batch that made none restores (end_batch)
        faults.bind(clock)  # timed rules read the sandbox clock
        store.journal = self._finished

    # -- the epoch ---------------------------------------------------------------------------
    def epoch(self) -> int:
        """This process's epoch: the next value of the counter (1 on a new database), taken once.

        Taken in a transaction of its own, before this process holds any write lock: at its
        first new id, or just before its first write statement (:meth:`_before_write`)."""
        if self._epoch is None:
            self._taking = True
            try:
                with self.db.begin() as conn:
                    conn.execute(update(C).where(C.c.name == EPOCH_COUNTER).values(value=C.c.value + 1))
                    self._epoch = int(conn.execute(select(C.c.value).where(C.c.name == EPOCH_COUNTER)).scalar_one())
            finally:
                self._taking = False
        return self._epoch

    def _before_write(self, conn, cursor, statement: str, parameters, context, executemany) -> None:
        if self._epoch is None and not self._taking and statement.lstrip()[:6].upper() in _WRITES:
            self.epoch()

    # -- opening -----------------------------------------------------------------------------

    def load(self) -> None:
        """Replay the whole journal and read the fault rules (the clock is read by the caller)."""
        self.refresh()
        if self.keeps_clock:
            self._clock_saved = as_utc(self.clock.now())

    def reload(self) -> None:
        """Forget the in-memory view and rebuild it (after a transaction that did not commit)."""
        self.pending.clear()
        self.deferred = False
        self.store.reset()
        self.offset = 0
        self._faults_version = None  # the rules as stored (changes not written are dropped)
        self.load()
        self._clock_saved = None  # written again at the next sync

    # -- reading what others wrote -------------------------------------------------------------
    def refresh(self) -> None:
        """Apply what other processes committed since the last look (a read, no lock)."""
        with self.db.connect() as conn:
            self._catch_up(conn)
            self._read_faults(conn)

    def _catch_up(self, conn, arrivals: dict[str, datetime] | None = None) -> None:
        """Apply the journal's tail; with ``arrivals``, note there the latest Inbox arrival it
        brought per mailbox."""
        store = self.store
        for seq, text in self._tail.fetchall(conn, {"offset": self.offset}):
            for ev in decode(text):
                store.apply(ev)
                if arrivals is not None and ev["k"] == "put":
                    for address, _folder, _item, received, *_, arrival in ev["p"]:
                        if arrival:
                            when = _as_time(received)
                            if address not in arrivals or when > arrivals[address]:
                                arrivals[address] = when
            self.offset = seq

    def _read_faults(self, conn) -> None:
        rows = self._faults_counter.fetchall(conn, {})
        version = rows[0][0] if rows else None
        if version == self._faults_version:
            return
        text = conn.execute(select(S.c.value).where(S.c.key == FAULTS_KEY)).scalar()
        if text:
            load_rules(self.faults, text)
        self._faults_version = version
        self._faults_seen = self.faults.changes

    # -- writing -----------------------------------------------------------------------------
    def _finished(self, events: list[dict]) -> None:
        """A store operation ended: write it now, or with the caller's transaction when deferred."""
        self.pending.append(events)
        self._operations += 1
        if not self.deferred:
            self.commit()

    def dirty(self) -> bool:
        return bool(self.pending) or self.faults.changes != self._faults_seen or (
            # (after a reload, e.g. a restore, the clock is written again at the next commit)
            self.keeps_clock and (self._clock_saved is None or as_utc(self.clock.now()) > self._clock_saved))

    def commit(self) -> None:
        """Write what changed in a transaction of its own."""
        if not self.dirty():
            return
        self.epoch()  # before the lock: the lock statement runs on the DBAPI cursor, past the hooks
        try:
            with self.db.begin() as conn:
                self.sync(conn, reading=False)
        except BaseException:
            self.reload()
            raise

    def sync(self, conn, *, reading: bool = True) -> None:
        """Inside the caller's write transaction: append the pending store operations (under the
        world lock, after applying what others wrote before them), write the clock and the fault
        rules if they moved; with ``reading``, also apply what others wrote and read their fault
        rules when nothing of ours is to be written.

        The caller commits; if its transaction fails it calls :meth:`reload`."""
        faults_changed = self.faults.changes != self._faults_seen
        if self.pending or faults_changed:
            self._lock.execute(conn, {})  # held to the commit: the journal's order is the commit order
            # others' operations go after ours in memory but before them in the journal: store
            # operations of different processes commute (new ids, different items), so both agree
            pending, self.pending = self.pending, []
            latest: dict[str, datetime] = {}
            self._catch_up(conn, latest)
            if latest:  # others delivered meanwhile: our arrivals come after theirs
                for events in pending:
                    self.store.arrivals_after(events, latest)
            if pending:
                rows = [{"seq": self.offset + i, "events": encode(events)} for i, events in enumerate(pending, 1)]
                conn.execute(insert(J), rows)
                self.offset += len(rows)
        elif reading:
            self._catch_up(conn)
        if self.keeps_clock and not reading:  # (a lease records its own time; its release writes the clock)
            self._write_clock(conn)
        if faults_changed:
            self._write_faults(conn)
        elif reading:
            self._read_faults(conn)

    def _write_clock(self, conn) -> None:
        now = as_utc(self.clock.now())
        if self._clock_saved is not None and now <= self._clock_saved:
            return
        text = clock_value(now)
        # the row's modifiedon is the stored time: only a later time replaces it (the clock never goes back)
        if self._clock_forward.execute(conn, {"v": text, "m": now}) == 0 and conn.execute(
                _stored_clock).first() is None:
            conn.execute(insert(S).values(key=CLOCK_KEY, value=text, modifiedon=now))
        self._clock_saved = now

    def _write_faults(self, conn) -> None:
        text = rules_to_json(self.faults)
        if conn.execute(update(S).where(S.c.key == FAULTS_KEY).values(value=text)).rowcount == 0:
            conn.execute(insert(S).values(key=FAULTS_KEY, value=text))
        conn.execute(update(C).where(C.c.name == FAULTS_COUNTER).values(value=C.c.value + 1))
        self._faults_version = conn.execute(_faults_version).scalar()
        self._faults_seen = self.faults.changes

    # -- the engine's batches (direct mode) ------------------------------------------------------
    def begin_batch(self) -> None:
        """A batch of the in-process engine starts: its store operations wait for its release."""
        if self.engine_defers:
            self.deferred = True
            self._before_batch = (None if self.pending else (
                self._operations, self.faults.changes, self._faults_seen, self._faults_version, self._clock_saved))

    def end_batch(self, committed: bool) -> None:
        """The batch's transaction ended; after a failure the view is rebuilt from the database,
        unless the batch changed nothing in it (:meth:`keep_view_after_failure`)."""
        self.deferred = False
        if not committed:
            if not self.keep_view_after_failure():
                self.reload()
        elif self.pending:  # operations made after the release (none in the engine's own flow)
            self.commit()
        self._before_batch = None

    def keep_view_after_failure(self) -> bool:
        """After a batch whose transaction failed: whether the view in memory still is the database's.

        It is when the batch made no store operation and moved no fault rule (a batch tracking mail
        makes none; its CRM rows were the failed part): the journal rows the transaction read were
        committed by others, and nothing of this process was appended. What the transaction wrote
        of the clock and the fault rules is only marked unwritten again. Replaying the whole
        journal instead cost a tenth of each host's time when two hosts shared a database (their
        batches fail when both track the two copies of one message)."""
        before = self._before_batch
        if before is None or self.pending:
            return False
        operations, changes, seen, version, clock_saved = before
        if self._operations != operations or self.faults.changes != changes:
            return False
        self._faults_seen, self._faults_version, self._clock_saved = seen, version, clock_saved
        return True
