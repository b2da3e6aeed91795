"""A sandbox stopped at any write resumes from its database: nothing lost, nothing done twice.

The durable world (``simulator/world.py``) writes everything as it changes, and an engine batch in
direct mode commits its Exchange operations with its CRM rows. Checked here, on SQLite files:

* **A crash at every write** (in the style of isync's tests): one scenario (an organization, new
  mail, a reply to a CRM email, a malformed message, a duplicate, a message that is not tracked,
  an outgoing email, a busy mailbox) is run for two simulated hours without interruption, then
  once for each write statement of that run: the process dies at that statement, its sandbox is
  closed as a command closes it on the way out, and a fresh sandbox on the same file runs to the
  same end. Each run must end with the same CRM emails, item-level rows, Exchange folders and
  items and outbound mail as the uninterrupted one (compared by content: ids made after a reopen
  carry another epoch).
* **A failed write the process survives**, at every write of the scenario's first hour: the
  statement fails as SQLite fails when another process holds the lock too long, and the same
  process goes on. Same comparison.
* Two short reproductions: a command that fails between a batch's lease and its release and
  closes its sandbox; a process that goes on after a batch failed.
* **Random interleavings** (Hypothesis) of deliveries, outgoing emails, busy mailboxes, runs,
  kills (the process vanishes: no close) and crashes at a random write: in the end every
  delivered message has exactly one outcome in each mailbox it reached (tracked, or an item-level
  row), each Message-ID is tracked at most once, and each outgoing email is sent exactly once.

Writes are counted, and interrupted, at the DBAPI cursor: the sandbox's engine gets its SQLite
connections from a factory whose cursors see every statement, those SQLAlchemy runs and those the
hot path runs on the raw cursor (``Prepared`` in ``simulator/crm/platform_sql.py``) alike.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from races import OTHER_HOSTS_ACTIVITY, another_host_tracks_first, org_without_act
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from support import ALICE, BOB, CARL, SUPPORT, build_org, msg

from simulator.crm.db import sqlite_url
from simulator.crm.models import Email, EmailStatus, ExchangeSyncIdMapping, Mailbox
from simulator.sandbox import Sandbox

SEED = 0
E, X, M = Email.__table__, ExchangeSyncIdMapping.__table__, Mailbox.__table__
WRITES = ("INSERT", "UPDATE", "DELETE")
# ids whose strings carry the process's epoch: Exchange items and folders, the Message-IDs of mail
# the store makes up and of CRM email (the activity id)
GENERATED = re.compile(r"AAMkF?A[0-9a-f]{20}|\d{10}\.[0-9a-f]{12}@|[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}@")


def run(coro):
    return asyncio.run(coro)


class InjectedCrash(BaseException):
    """The process stops at the chosen write. Not an ``Exception``: nothing in the engine may catch
    it and go on (it turns unexpected exceptions into workload errors); ``finally`` blocks run, as
    they would when a command is interrupted."""


def crash(n: int, sql: str) -> BaseException:
    return InjectedCrash(f"write {n}: {' '.join(sql.split()[:3])}")


def locked(n: int, sql: str) -> BaseException:
    """What SQLite raises when another process held the write lock too long: the process goes on."""
    return sqlite3.OperationalError(f"database is locked (write {n}: {' '.join(sql.split()[:3])})")


class Writes:
    """Counts the write statements of one sandbox; at the ``at``-th, raises ``raising(n, sql)``."""

    def __init__(self) -> None:
        self.count = 0
        self.at: int | None = None
        self.raising = crash
        writes = self

        class Cursor(sqlite3.Cursor):
            def execute(self, sql, parameters=(), /):
                writes.statement(sql)
                return super().execute(sql, parameters)

            def executemany(self, sql, parameters, /):
                writes.statement(sql)
                return super().executemany(sql, parameters)

        class Connection(sqlite3.Connection):
            def cursor(self, factory=Cursor):
                return super().cursor(factory)

        self.connection_class = Connection

    def statement(self, sql: str) -> None:
        if sql.lstrip()[:6].upper() not in WRITES:
            return
        self.count += 1
        if self.count == self.at:
            self.at = None
            raise self.raising(self.count, sql)

    def crash_in(self, n: int) -> None:
        """Raise at the ``n``-th write from now."""
        self.at = self.count + n


def open_sandbox(path: Path) -> Sandbox:
    return Sandbox(db_url=sqlite_url(path), seed=SEED)


def open_watched(path: Path) -> tuple[Sandbox, Writes]:
    """A sandbox whose every database statement passes :class:`Writes`."""
    sb = open_sandbox(path)
    writes = Writes()

    @event.listens_for(sb.db, "do_connect")
    def connect(dialect, conn_rec, cargs, cparams):
        return sqlite3.connect(*cargs, factory=writes.connection_class, **cparams)

    sb.db.dispose()  # the connections opened while the sandbox loaded: from now on all are watched
    return sb, writes


def abandon(sb: Sandbox) -> None:
    """The process is gone: nothing more is written (its connections go; nothing is closed cleanly)."""
    sb.db.dispose()


def restore(saved: Path, path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(saved, path)


def save_copy(path: Path, saved: Path) -> None:
    """A consistent copy of the database (its WAL included)."""
    with sqlite3.connect(path) as src, sqlite3.connect(saved) as dst:
        src.backup(dst)
    src.close()
    dst.close()


# -- what a run leaves behind, without the ids that depend on the process ---------------------


def _plain(value):
    return GENERATED.sub("<id>", value) if isinstance(value, str) else value


def outcome(sb: Sandbox) -> dict:
    """CRM emails, item-level rows, Exchange folders and items and outbound mail, as sorted content."""
    with sb.db.connect() as conn:
        boxes = dict(conn.execute(select(M.c.mailboxid, M.c.emailaddress)).all())
        emails = sorted(tuple(_plain(v) for v in row) for row in conn.execute(select(
            E.c.messageid, E.c.subject, E.c.directioncode, E.c.statuscode, E.c.regardingobjectid,
            E.c.regardingobjecttypecode, E.c.correlationmethod, E.c.receivingmailboxid)))
        rows = sorted((boxes[r.mailboxid], r.itemstate, r.lastsyncerror, _plain(r.lastsyncerrordetail), r.retries)
                      for r in conn.execute(select(X)))
    exchange = {}
    for address, mbx in sb.store.mailboxes.items():
        folders = {}
        for folder in mbx.folders.values():
            names, f = [], folder
            while f is not None:
                names.append(f.name)
                f = mbx.folders.get(f.parent_id) if f.parent_id else None
            folders["/".join(reversed(names))] = sorted(
                (i.data.subject, _plain(i.data.message_id or ""), tuple(i.categories)) for i in folder.items.values())
        exchange[address] = folders
    outbound = sorted((sender, to, data.subject, _plain(data.message_id or "")) for sender, to, data in sb.store.outbound)
    return {"emails": emails, "item rows": rows, "exchange": exchange, "outbound": outbound}


def difference(got: dict, expected: dict) -> str:
    parts = []
    for key in expected:
        if got[key] == expected[key]:
            continue
        if key == "exchange":
            lines = [f"{a} {folder}: {items} instead of {expected[key][a][folder]}"
                     for a in expected[key] for folder, items in got[key].get(a, {}).items()
                     if items != expected[key][a].get(folder)]
            parts.append("exchange: " + "; ".join(lines))
        else:
            extra = list((Counter(got[key]) - Counter(expected[key])).elements())
            missing = list((Counter(expected[key]) - Counter(got[key])).elements())
            parts.append(f"{key}: extra {extra}, missing {missing}")
    return " | ".join(parts)


# -- the scenario --------------------------------------------------------------------------------


@dataclass
class Scenario:
    saved: Path  # the database after the setup: every run starts from a copy of it
    path: Path  # where the runs happen
    end: datetime
    carl: str  # the contact that the CRM emails are regarding
    writes: int = 0  # write statements of the uninterrupted run
    expected: dict | None = None  # what the uninterrupted run leaves
    first_hour_writes: int = 0  # of them in its first hour (its work is done in the first minutes)


def build_scenario(tmp_path: Path) -> Scenario:
    """An organization whose mailboxes have one of everything waiting for the engine.

    Alice tracks all email, Bob replies to CRM email only, the Support queue all email; failed
    items go to the Undeliverable folder; warnings are alerts, so the batch with the busy mailbox
    writes alerts between its lease and its release."""
    path = tmp_path / "setup.db"
    o = build_org(SEED, db_url=sqlite_url(path), profile={"moveundeliveredemails": True},
                  org={"generatealertsforwarnings": True})
    sb, carl = o.sb, o.records[CARL]
    quote = sb.crm.create_email(sender_userid=o.users[BOB], to=[CARL], subject="Quote", body="The quote.",
                                regarding=("contact", carl))
    sb.crm.send_email(quote)
    run(sb.run_for(600))  # the quote is sent: a CRM email to answer
    with sb.db.connect() as conn:
        quote_mid = conn.execute(select(E.c.messageid).where(E.c.activityid == quote)).scalar_one()
    sb.deliver(msg("New mail", to=(ALICE,), message_id="new@fabrikam.example"))
    sb.deliver(msg("RE: Quote", to=(BOB,), message_id="reply@fabrikam.example", in_reply_to=quote_mid))
    sb.deliver(msg("Not a reply", to=(BOB,), message_id="other@fabrikam.example"))
    sb.deliver(b"\x00\x01 not a message at all", [ALICE])
    twice = msg("Twice", to=(SUPPORT,), message_id="twice@fabrikam.example")
    sb.deliver(twice)
    sb.deliver(twice)
    offer = sb.crm.create_email(sender_userid=o.users[ALICE], to=[CARL], subject="Offer", body="Our offer.",
                                regarding=("contact", carl))
    sb.crm.send_email(offer)
    sb.add_fault(code="ErrorServerBusy", mailbox=SUPPORT, count=2, backoff_ms=60_000)
    end = sb.clock.now() + timedelta(hours=2)
    sb.close()
    saved = tmp_path / "saved.db"
    save_copy(path, saved)
    return Scenario(saved, tmp_path / "world.db", end, carl)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """The scenario, and what its uninterrupted run does: how many writes, what it leaves."""
    sc = build_scenario(tmp_path_factory.mktemp("scenario"))
    restore(sc.saved, sc.path)
    sb, writes = open_watched(sc.path)
    run(sb.run_until(sc.end))
    sc.writes, sc.expected = writes.count, outcome(sb)
    sb.close()
    restore(sc.saved, sc.path)
    sb, writes = open_watched(sc.path)
    run(sb.run_until(sc.end - timedelta(hours=1)))
    sc.first_hour_writes = writes.count
    assert outcome(sb) == sc.expected  # the second hour only polls
    sb.close()
    return sc


def test_the_uninterrupted_scenario_does_what_it_is_for(scenario):
    expected = scenario.expected
    received = {(e[0], e[1], e[4]) for e in expected["emails"] if e[3] == EmailStatus.RECEIVED}
    assert received == {("new@fabrikam.example", "New mail", None), ("twice@fabrikam.example", "Twice", None),
                        ("reply@fabrikam.example", "RE: Quote", scenario.carl)}
    assert sorted(e[1] for e in expected["emails"] if e[3] == EmailStatus.SENT) == [
        "Offer CRM:0000002", "Quote CRM:0000001"]
    assert sorted((r[0], r[2]) for r in expected["item rows"]) == [
        (ALICE, "MalformedMessage"), (BOB, "NoCorrelationMatch"), (SUPPORT, "Duplicate")]
    assert len(expected["exchange"][ALICE]["root/Top of Information Store/Inbox/Undeliverable"]) == 1
    assert [o[2] for o in expected["outbound"]] == ["Offer CRM:0000002", "Quote CRM:0000001"]
    assert scenario.writes > 50


def test_a_crash_at_any_write_loses_nothing_and_does_nothing_twice(scenario):
    """The process dies at write N; it is closed as a command closes its sandbox on its way out; a
    fresh sandbox on the same file runs to the end. For every N, and once past the last write."""
    differing = []
    for n in range(1, scenario.writes + 2):
        restore(scenario.saved, scenario.path)
        sb, writes = open_watched(scenario.path)
        writes.at = n
        crashed = None
        try:
            run(sb.run_until(scenario.end))
        except InjectedCrash as exc:
            crashed = str(exc)
        assert (crashed is not None) == (n <= scenario.writes), (n, crashed)
        sb.close()
        again = open_sandbox(scenario.path)
        try:
            run(again.run_until(scenario.end))
            got = outcome(again)
        except Exception as exc:  # e.g. an IntegrityError: an id used twice
            differing.append(f"{crashed}: the next sandbox failed: {type(exc).__name__}: {exc}")
            continue
        finally:
            again.close()
        if got != scenario.expected:
            differing.append(f"{crashed}: {difference(got, scenario.expected)}")
    print(f"\n{scenario.writes} crash points exercised")
    assert not differing, (f"{len(differing)} of {scenario.writes} crash points end differently from the "
                           "uninterrupted run:\n" + "\n".join(differing))


def test_a_failed_write_that_the_process_survives_loses_nothing_and_does_nothing_twice(scenario):
    """Write N fails as SQLite fails when another process holds the lock too long; the process goes
    on (the engine may handle the error itself; if it reaches the caller, the caller runs again, as
    ``sss serve --virtual`` does at the next clock advance). For every N of the first hour (the
    scenario's work is done in its first minutes; the second hour only polls, and a batch that
    failed is done again 30 minutes later, when its leases expire)."""
    end = scenario.end - timedelta(hours=1)
    differing = []
    for n in range(1, scenario.first_hour_writes + 1):
        restore(scenario.saved, scenario.path)
        sb, writes = open_watched(scenario.path)
        writes.at, writes.raising = n, locked
        failed = f"write {n} (handled by the engine)"
        try:
            try:
                run(sb.run_until(end))
            except (sqlite3.OperationalError, OperationalError) as exc:
                failed = str(getattr(exc, "orig", None) or exc)
                run(sb.run_until(end))
            got = outcome(sb)
        except Exception as exc:
            differing.append(f"{failed}: then {type(exc).__name__}: {exc}")
            continue
        finally:
            sb.close()
        if got != scenario.expected:
            differing.append(f"{failed}: {difference(got, scenario.expected)}")
    print(f"\n{scenario.first_hour_writes} failure points exercised")
    assert not differing, (f"{len(differing)} of {scenario.first_hour_writes} failed writes end differently "
                           "from the uninterrupted run:\n" + "\n".join(differing))


def test_a_command_that_fails_between_lease_and_release_commits_none_of_the_batch(tmp_path):
    """The alerts of a batch are written between its lease and its release. When that write fails
    (here: the database is locked by another process) the command stops, and closes its sandbox on
    the way out: the batch's Exchange operations (a send, a move to Undeliverable) must not be
    written without its CRM rows, or the next run sends the email again and the failed item has no
    row."""
    path = tmp_path / "world.db"
    o = build_org(SEED, db_url=sqlite_url(path), profile={"moveundeliveredemails": True},
                  org={"generatealertsforwarnings": True})
    sb = o.sb
    offer = sb.crm.create_email(sender_userid=o.users[ALICE], to=[CARL], subject="Offer")
    sb.crm.send_email(offer)
    sb.deliver(b"\x00\x01 not a message at all", [ALICE])
    sb.add_fault(code="ErrorServerBusy", mailbox=SUPPORT, count=1, backoff_ms=60_000)

    def locked(alerts):
        raise OperationalError("INSERT INTO tracelog ...", {}, sqlite3.OperationalError("database is locked"))

    sb.crm.write_alerts = locked
    with pytest.raises(OperationalError):
        run(sb.run_for(60))
    sb.close()

    again = open_sandbox(path)
    try:
        run(again.run_for(3600))
        sent = [data.subject for _, _, data in again.store.outbound]
        sent_items = [i.data.subject for i in again.store.mailbox(ALICE).folder("sentitems").items.values()]
        with again.db.connect() as conn:
            rows = conn.execute(select(X.c.lastsyncerror)).scalars().all()
    finally:
        again.close()
    assert sent == ["Offer CRM:0000001"], "the email was sent more than once"
    assert sent_items == ["Offer CRM:0000001"]
    assert rows == ["MalformedMessage"], "the malformed message has no item-level row"


def test_a_process_that_goes_on_after_a_failed_batch_leaves_nothing_of_it_behind(tmp_path):
    """The alerts of a batch are written between its lease and its release; here that write fails
    once (the database was locked) and the process goes on, as ``sss serve --virtual`` does after a
    failed clock advance. The failed batch must leave nothing: its mailboxes are done again when
    their leases expire, and each item then gets its one outcome."""
    path = tmp_path / "world.db"
    o = build_org(SEED, db_url=sqlite_url(path), profile={"moveundeliveredemails": True},
                  org={"generatealertsforwarnings": True})
    sb = o.sb
    item = sb.deliver(msg("New mail", to=(ALICE,)))[ALICE]
    sb.add_fault(code="ErrorServerBusy", mailbox=SUPPORT, count=1, backoff_ms=60_000)
    write_alerts = sb.crm.write_alerts
    failures = [OperationalError("INSERT INTO tracelog ...", {}, sqlite3.OperationalError("database is locked"))]

    def locked_once(alerts):
        if failures:
            raise failures.pop()
        write_alerts(alerts)

    sb.crm.write_alerts = locked_once
    try:
        with pytest.raises(OperationalError):
            run(sb.run_for(60))
        run(sb.run_for(3600))
        with sb.db.connect() as conn:
            tracked = conn.execute(select(func.count()).where(E.c.exchangeitemid == item)).scalar_one()
            rows = conn.execute(select(X.c.lastsyncerror).where(X.c.exchangeentryid == item)).scalars().all()
    finally:
        sb.close()
    assert (tracked, rows) == (1, []), f"tracked {tracked} times, item-level rows {rows}"


def _release_fails_once(sb) -> list:
    """The next release fails as it does when another host tracked a copy of the same message
    first (a duplicate key at the commit); its mailboxes are freed and done again."""
    flush = sb.crm._flush
    failures = [sqlite3.IntegrityError("UNIQUE constraint failed: email.duplicatekey")]

    def flush_failing_once(conn):
        if failures:
            raise failures.pop()
        flush(conn)

    sb.crm._flush = flush_failing_once
    return failures


def _count_replays(sb) -> list[int]:
    replays = [0]
    load = sb.world.load

    def counted():
        replays[0] += 1
        load()

    sb.world.load = counted
    return replays


def _exchange_items(sb) -> dict:
    return {(address, folder_id): sorted(folder.items) for address, mbx in sb.store.mailboxes.items()
            for folder_id, folder in mbx.folders.items()}


def test_a_failed_batch_that_changed_nothing_in_exchange_keeps_the_view_and_tracks_once(tmp_path):
    """A batch that only tracked mail made no Exchange operation: when its release fails, the view
    in memory is kept (the journal is not replayed) and the mail is tracked once when it is done again."""
    sb = org_without_act(sqlite_url(tmp_path / "world.db")).sb
    item = sb.deliver(msg("New mail", to=(ALICE,)))[ALICE]
    failures = _release_fails_once(sb)
    replays = _count_replays(sb)
    items_before = _exchange_items(sb)
    try:
        run(sb.run_for(60))
        assert not failures, "the release did not fail"
        assert replays == [0], "the journal was replayed after a batch that changed nothing in it"
        assert _exchange_items(sb) == items_before
        run(sb.run_for(3600))
        with sb.db.connect() as conn:
            tracked = conn.execute(select(func.count()).where(E.c.exchangeitemid == item)).scalar_one()
    finally:
        sb.close()
    assert tracked == 1
    st = sb.engine.stats  # the engine counts the dropped batch's work apart
    assert (st.emails_tracked, st.emails_tracked_dropped) == (1, 1)
    assert st.cycles_dropped > 0 and 0 < st.polls_dropped < st.polls
    again = open_sandbox(tmp_path / "world.db")  # what is in memory is what the journal replays to
    try:
        assert _exchange_items(again) == items_before
    finally:
        again.close()


def test_a_mailbox_whose_mail_another_host_tracked_first_is_dropped_alone(tmp_path):
    """Two hosts track the two copies of one message at once: the second release fails on the
    duplicate key. Only the mailbox whose message the other host tracked is dropped and done again
    (it then skips its copy as a duplicate); the rest of the batch is written."""
    sb = org_without_act(sqlite_url(tmp_path / "world.db")).sb
    copied = sb.deliver(msg("Quote", to=(ALICE,)))[ALICE]
    other = sb.deliver(msg("Question", to=(SUPPORT,)))[SUPPORT]
    raced = another_host_tracks_first(sb, copied)
    replays = _count_replays(sb)
    try:
        run(sb.run_for(60))
        assert raced, "the race was not set up"
        st = sb.engine.stats
        assert (st.cycles_dropped, st.emails_tracked_dropped) == (1, 1), "more than Alice's cycle was dropped"
        assert replays == [0]
        with sb.db.connect() as conn:
            assert conn.execute(select(func.count()).where(E.c.exchangeitemid == other)).scalar_one() == 1
            assert conn.execute(select(func.count()).where(E.c.exchangeitemid == copied)).scalar_one() == 0
        run(sb.run_for(3600))
        with sb.db.connect() as conn:
            copies = conn.execute(select(E.c.activityid).where(E.c.subject == "Quote")).scalars().all()
            questions = conn.execute(select(func.count()).where(E.c.subject == "Question")).scalar_one()
    finally:
        sb.close()
    assert copies == [OTHER_HOSTS_ACTIVITY], "the message is tracked once, by the other host"
    assert questions == 1
    assert st.emails_skipped["Duplicate"] == 1  # Alice's cycle, done again, skips her copy
    assert st.emails_tracked == 1  # the question; the quote went to the other host


def test_a_failed_batch_that_sent_mail_is_replayed_and_sends_once(tmp_path):
    """A batch that sent an email put it in Sent Items in memory: when its release fails, the view
    is rebuilt from the journal, and the email goes out once when its mailbox is done again."""
    o = build_org(SEED, db_url=sqlite_url(tmp_path / "world.db"))
    sb = o.sb
    offer = sb.crm.create_email(sender_userid=o.users[ALICE], to=[CARL], subject="Offer")
    sb.crm.send_email(offer)
    failures = _release_fails_once(sb)
    replays = _count_replays(sb)
    try:
        run(sb.run_for(60))
        assert not failures, "the release did not fail"
        assert replays == [1], "the view kept a send whose batch failed"
        run(sb.run_for(3600))
        sent = [d.subject for _, _, d in sb.store.outbound]
    finally:
        sb.close()
    assert sent == ["Offer CRM:0000001"]


# -- random interleavings ----------------------------------------------------------------------

TRACKING = (ALICE, BOB, SUPPORT)
TRACK_ALL = (ALICE, SUPPORT)
MAX_FAULT_RULES = 3  # per mailbox: fewer consecutive failures than disable a workload (10)

_deliver_st = st.tuples(st.just("deliver"), st.lists(st.sampled_from(TRACKING), min_size=1, max_size=3, unique=True),
                       st.sampled_from(["plain", "malformed", "again"]), st.integers(0, 1000))
_crash_st = st.tuples(st.just("crash"), st.integers(1, 15), st.sampled_from([5, 35]))
step_st = st.one_of(  # deliveries and crashes more often than the rest
    _deliver_st, _deliver_st, _deliver_st, _crash_st, _crash_st,
    st.tuples(st.just("send")),
    st.tuples(st.just("busy"), st.sampled_from(TRACKING), st.integers(1, 2)),
    st.tuples(st.just("run"), st.sampled_from([1, 5, 12, 35])),
    st.tuples(st.just("kill")),
    st.tuples(st.just("reopen")),
)


@pytest.fixture(scope="module")
def small_org(tmp_path_factory) -> tuple[Path, str]:
    """A database with the organization set up (and the id of Alice, who sends the outgoing email)."""
    tmp = tmp_path_factory.mktemp("world")
    path = tmp / "setup.db"
    o = build_org(SEED, db_url=sqlite_url(path), profile={"moveundeliveredemails": True},
                  org={"generatealertsforwarnings": True})
    alice = o.users[ALICE]
    o.sb.close()
    saved = tmp / "saved.db"
    save_copy(path, saved)
    return saved, alice


class Life:
    """One world on a file, through the sandboxes that open it one after the other."""

    def __init__(self, saved: Path, path: Path, alice: str) -> None:
        restore(saved, path)
        self.path = path
        self.alice = alice
        self.sb, self.writes = open_watched(path)
        self.delivered: list[tuple[str, str, str | None, bool]] = []  # (address, item id, Message-ID, readable)
        self.outgoing: list[str] = []  # activity ids
        self.busy: Counter = Counter()
        self.crashes = 0

    def reopen(self, *, close: bool) -> None:
        if close:
            self.sb.close()
        else:
            abandon(self.sb)
        self.sb, self.writes = open_watched(self.path)

    def step(self, i: int, step: tuple) -> None:
        kind, *args = step
        sb = self.sb
        if kind == "deliver":
            to, how, pick = args
            readable = [d for d in self.delivered if d[3]]
            if how == "again" and readable:  # the same message once more (a duplicate)
                message_id = readable[pick % len(readable)][2]
            else:
                message_id = f"p{i}@fabrikam.example"
            if how == "malformed":
                placed, message_id = sb.deliver(f"\x00 garbage {i}".encode(), list(to)), None
            else:
                placed = sb.deliver(msg(f"Mail {i}", to=tuple(to), message_id=message_id))
            self.delivered += [(address, item_id, message_id, how != "malformed") for address, item_id in placed.items()]
        elif kind == "send":
            activity = sb.crm.create_email(sender_userid=self.alice, to=[CARL], subject=f"Out {i}")
            sb.crm.send_email(activity)
            self.outgoing.append(activity)
        elif kind == "busy":
            address, count = args
            if self.busy[address] < MAX_FAULT_RULES:
                self.busy[address] += 1
                sb.add_fault(code="ErrorServerBusy", mailbox=address, count=count, backoff_ms=60_000)
        elif kind == "run":
            run(sb.run_for(args[0] * 60))
        elif kind == "kill":
            self.reopen(close=False)
        elif kind == "crash":
            at, minutes = args
            self.writes.crash_in(at)
            try:
                run(sb.run_for(minutes * 60))
            except InjectedCrash:
                self.crashes += 1
                self.reopen(close=False)  # the process dies at that write
            else:
                self.writes.at = None
        elif kind == "reopen":
            self.reopen(close=True)

    def finish(self) -> None:
        self.reopen(close=True)
        run(self.sb.run_for(3 * 3600))  # past any lease left behind (30 minutes) and any retry

    def check(self) -> None:
        sb = self.sb
        with sb.db.connect() as conn:
            boxes = dict(conn.execute(select(M.c.emailaddress, M.c.mailboxid)).all())
            emails = conn.execute(select(E.c.activityid, E.c.messageid, E.c.exchangeitemid, E.c.receivingmailboxid,
                                         E.c.statuscode, E.c.subject)).all()
            rows = conn.execute(select(X.c.mailboxid, X.c.exchangeentryid, X.c.lastsyncerror, X.c.objectid)).all()
        tracked = Counter((e.receivingmailboxid, e.exchangeitemid) for e in emails if e.statuscode == EmailStatus.RECEIVED)
        with_row = Counter((r.mailboxid, r.exchangeentryid) for r in rows if r.exchangeentryid)
        problems = []
        for address, item_id, message_id, _ in self.delivered:
            key = (boxes[address], item_id)
            if tracked[key] + with_row[key] != 1:
                problems.append(f"{address} {message_id or 'malformed'} ({item_id}): tracked {tracked[key]} times, "
                                f"{with_row[key]} item-level rows")
        by_message = Counter(e.messageid for e in emails if e.statuscode == EmailStatus.RECEIVED)
        for message_id in {d[2] for d in self.delivered if d[3]}:
            reached_all = any(d[2] == message_id and d[0] in TRACK_ALL for d in self.delivered)
            if by_message[message_id] != (1 if reached_all else 0):
                problems.append(f"{message_id}: {by_message[message_id]} email activities")
        received = {(boxes[address], item_id) for address, item_id, _, _ in self.delivered}
        for e in emails:
            if e.statuscode == EmailStatus.RECEIVED and (e.receivingmailboxid, e.exchangeitemid) not in received:
                problems.append(f"an email activity for an item never delivered: {e.subject}")
        status = {e.activityid: (e.statuscode, e.subject) for e in emails}
        sent = Counter(data.subject for _, _, data in sb.store.outbound)
        copies = Counter(i.data.subject for i in sb.store.mailbox(ALICE).folder("sentitems").items.values())
        for activity in self.outgoing:
            code, subject = status[activity]
            if code != EmailStatus.SENT or sent[subject] != 1 or copies[subject] != 1:
                problems.append(f"outgoing {subject}: status {code}, sent {sent[subject]} times, "
                                f"{copies[subject]} copies in Sent Items")
        assert not problems, "\n".join(problems)


LIFE_SETTINGS = settings(max_examples=30, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@LIFE_SETTINGS
@given(steps=st.lists(step_st, min_size=1, max_size=15))
def test_random_deliveries_runs_and_crashes_track_each_message_exactly_once(small_org, tmp_path_factory, steps):
    saved, alice = small_org
    life = Life(saved, tmp_path_factory.mktemp("life") / "world.db", alice)
    try:
        for i, step in enumerate(steps):
            life.step(i, step)
        life.finish()
        life.check()
    finally:
        life.sb.close()
