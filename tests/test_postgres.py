"""The CRM database on PostgreSQL: same outcome as SQLite, and leases that two hosts can share."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from datetime import timedelta

import pytest
from pg import postgres_server, unavailable_reason
from races import OTHER_HOSTS_ACTIVITY, another_host_tracks_first, org_without_act
from sqlalchemy import select, update

from engine.service import SyncService
from simulator.crm.db import drop_all, make_engine
from simulator.crm.models import Email, Mailbox, TraceLog
from simulator.crm.platform import Platform
from simulator.exchange.mime import MessageData
from simulator.sandbox import Sandbox
from simulator.testing import ALICE, SUPPORT, msg

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_db(pg_url):
    engine = make_engine(pg_url, create=False)
    drop_all(engine)
    engine.dispose()
    yield pg_url


async def _scenario(db_url: str, seed: int = 11) -> Sandbox:
    sb = Sandbox(db_url=db_url, seed=seed)
    admin = sb.admin
    admin.create_organization("Contoso", admin_domain="admin", tenant_id="tenant-1")
    users = [admin.add_user(f"User {i}", f"user{i}@contoso.example", track=i % 2) for i in range(6)]
    admin.add_queue("Support", "support@contoso.example", owner="admin")
    admin.add_record("contact", "Carl", "carl@fabrikam.example")
    profile = admin.create_profile("admin", name="EXO", moveundeliveredemails=True,
                                   processemailsreceivedafter=sb.clock.now() - timedelta(hours=1))
    admin.set_default_profile("admin", profile)
    ids = [m.mailboxid for m in admin.mailboxes()]
    admin.apply_default_settings("admin", ids)
    admin.approve("admin", ids)
    await admin.test_and_enable("admin", ids)
    for i in range(12):
        to = f"user{i % 6}@contoso.example" if i % 3 else "support@contoso.example"
        sb.at(sb.clock.now() + timedelta(minutes=7 * i), lambda to=to, i=i: sb.deliver(MessageData(
            subject=f"Message {i}", sender="carl@fabrikam.example", to=(to,), message_id=f"m{i}@fabrikam.example",
            body="hello")))
    sb.at(sb.clock.now() + timedelta(minutes=30), lambda: sb.deliver(b"no headers here", ["user1@contoso.example"]))
    aid = sb.crm.create_email(sender_userid=users[0], to=["carl@fabrikam.example"], subject="Offer")
    sb.crm.send_email(aid)
    sb.add_fault(code="ErrorServerBusy", mailbox="user2@contoso.example", count=2)
    sb.add_fault(code="8005E272", mailbox="user3@contoso.example")
    await sb.run_for(3 * 3600)
    return sb


def _outcome(sb: Sandbox) -> dict:
    E, M, T = Email.__table__, Mailbox.__table__, TraceLog.__table__
    with sb.db.connect() as conn:
        emails = sorted(conn.execute(select(E.c.activityid, E.c.subject, E.c.statuscode, E.c.receivingmailboxid,
                                            E.c.correlationmethod)).all())
        boxes = sorted(conn.execute(select(M.c.emailaddress, M.c.incomingemailstatus, M.c.outgoingemailstatus,
                                           M.c.enabledforincomingemail, M.c.lastsyncerrorcode)).all())
        alerts = sorted(conn.execute(select(T.c.level, T.c.tracecode, T.c.regardingobjectid, T.c.errorcount)).all())
    return {"emails": emails, "mailboxes": boxes, "alerts": alerts}


def test_a_scenario_on_postgresql_ends_exactly_as_on_sqlite(pg_db):
    on_sqlite = asyncio.run(_scenario("sqlite://"))
    on_postgres = asyncio.run(_scenario(pg_db))
    assert on_postgres.events == on_sqlite.events
    assert _outcome(on_postgres) == _outcome(on_sqlite)
    assert on_postgres.engine.stats.emails_tracked > 0
    on_postgres.close()


def test_concurrent_leases_on_postgresql_never_hand_one_mailbox_to_two_hosts(pg_db):
    sb = asyncio.run(_scenario(pg_db, seed=3))
    M = Mailbox.__table__
    with sb.db.begin() as conn:  # make every mailbox due and free
        conn.execute(update(M).values(postponemailboxprocessinguntil=sb.clock.now() - timedelta(minutes=1),
                                      processingstatecode=0, hostid=None))
    leased: dict[str, list[str]] = {"host-a": [], "host-b": []}
    barrier = threading.Barrier(2)

    def lease(host: str) -> None:
        platform = Platform(make_engine(pg_db, create=False), sb.clock)
        barrier.wait()
        for _ in range(10):
            leased[host].extend(w.id for w in platform.lease_due(host, sb.clock.now(), 1))

    threads = [threading.Thread(target=lease, args=(h,)) for h in leased]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = leased["host-a"] + leased["host-b"]
    assert len(everything) == len(set(everything)), "a mailbox was leased by both hosts"
    with sb.db.connect() as conn:
        holders = dict(conn.execute(select(M.c.mailboxid, M.c.hostid).where(M.c.processingstatecode == 1)).all())
    assert Counter(holders.values()) == Counter({h: len(ids) for h, ids in leased.items() if ids})
    assert set(holders) == set(everything)


def test_two_engines_sharing_postgresql_split_the_work_without_overlap(pg_db):
    sb = asyncio.run(_scenario(pg_db, seed=5))
    in_flight: set[str] = set()
    overlaps: list[str] = []

    class Interleaving:
        """Yields to the other engine inside every Exchange call and watches for overlap."""

        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            target = getattr(self.inner, name)

            async def call(mailbox, *args, **kwargs):
                if mailbox in in_flight:
                    overlaps.append(mailbox)
                in_flight.add(mailbox)
                try:
                    await asyncio.sleep(0)
                    return await target(mailbox, *args, **kwargs)
                finally:
                    in_flight.discard(mailbox)

            return call

    exchange = Interleaving(sb.exchange)
    second = SyncService(Platform(make_engine(pg_db, create=False), sb.clock, sb.ids), exchange, sb.clock,
                         hostid="sss-host-2", lease_batch=3)
    first = SyncService(sb.crm, exchange, sb.clock, hostid="sss-host-1", lease_batch=3)

    async def run() -> int:
        total = 0
        for _ in range(24):
            sb.clock.advance(300)
            a, b = await asyncio.gather(first.run_due(), second.run_due())
            total += a + b
        return total

    polls = asyncio.run(run())
    assert polls > 0
    assert first.stats.polls > 0 and second.stats.polls > 0, "both hosts should have taken work"
    assert overlaps == []


def test_a_release_that_loses_a_race_on_postgresql_drops_that_mailbox_alone(pg_db):
    """The race of two hosts tracking the two copies of one message, on PostgreSQL (the release's
    executemany fails in psycopg's pipeline mode): only the mailbox whose message the other host
    tracked is done again."""
    sb = org_without_act(pg_db).sb
    copied = sb.deliver(msg("Quote", to=(ALICE,)))[ALICE]
    other = sb.deliver(msg("Question", to=(SUPPORT,)))[SUPPORT]
    raced = another_host_tracks_first(sb, copied)
    try:
        asyncio.run(sb.run_for(3600))
        E = Email.__table__
        with sb.db.connect() as conn:
            quotes = conn.execute(select(E.c.activityid).where(E.c.subject == "Quote")).scalars().all()
            questions = conn.execute(select(E.c.exchangeitemid).where(E.c.subject == "Question")).scalars().all()
    finally:
        sb.close()
    assert raced, "the race was not set up"
    assert quotes == [OTHER_HOSTS_ACTIVITY] and questions == [other]
    st = sb.engine.stats
    assert (st.cycles_dropped, st.emails_tracked_dropped, st.emails_skipped["Duplicate"]) == (1, 1, 1)
    assert st.emails_tracked == 1  # the question; the quote went to the other host


def test_psycopgs_warning_about_an_aborted_pipeline_is_not_printed(pg_db, caplog):
    """psycopg warns that it could not end its pipeline when a row of an executemany fails while
    later rows' results are still to come (a release that lost a race does that; whether the
    results are still to come depends on timing, so the warning is checked as psycopg writes it).
    The failure is handled, so that warning is not printed; psycopg's other warnings still are."""
    import inspect

    import psycopg
    from psycopg import _pipeline

    assert 'logger.warning("error ignored terminating %r: %s", self, exc2)' in inspect.getsource(_pipeline)
    engine = make_engine(pg_db)  # (a PostgreSQL engine puts the filter on psycopg's logger)
    engine.dispose()
    log = logging.getLogger("psycopg")
    assert [type(f).__name__ for f in log.filters].count("_QuietPipelineAbort") == 1
    with caplog.at_level(logging.WARNING, logger="psycopg"):
        log.warning("error ignored terminating %r: %s", "<Pipeline>", psycopg.errors.PipelineAborted("pipeline aborted"))
        assert "error ignored terminating" not in caplog.text
        log.warning("error ignored terminating %r: %s", "<Pipeline>", psycopg.OperationalError("the connection is lost"))
        assert "the connection is lost" in caplog.text
