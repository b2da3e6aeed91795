"""Leasing (SPEC 3.2): hostid / processingstatecode during a cycle, stale leases, several hosts."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import timedelta

from support import ALICE, BOB, START, SUPPORT, build_org, msg

from engine.ports import MailboxUpdate
from engine.service import SyncService
from simulator.crm.db import make_engine, sqlite_url
from simulator.crm.platform import IdFactory, Platform


class LeaseSpy:
    """Reads the mailbox row while the engine is inside an Exchange call for it."""

    def __init__(self, o) -> None:
        self.o = o
        self.inner = o.sb.exchange
        self.seen: list[tuple[str, str | None, int, object]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def find_new_items(self, mailbox, *args):
        row = self.o.mailbox(mailbox)
        self.seen.append((mailbox, row.hostid, row.processingstatecode, row.processinglastattemptedon))
        return await self.inner.find_new_items(mailbox, *args)


def test_lease_is_held_during_the_cycle_and_released_after(org):
    spy = LeaseSpy(org)
    org.sb.engine.exchange = spy
    org.run_for(1)
    assert {s[0] for s in spy.seen} == set(org.mailboxes)
    for _, hostid, state, attempted in spy.seen:
        assert (hostid, state, attempted) == ("sss-host-1", 1, START)
    for address in org.mailboxes:
        mb = org.mailbox(address)
        assert (mb.hostid, mb.processingstatecode) == (None, 0)
        assert mb.forcedunlockcount == 0


def test_stale_lease_is_forcibly_unlocked(org):
    org.set_mailbox(ALICE, hostid="dead-host", processingstatecode=1,
                    processinglastattemptedon=START - timedelta(minutes=31))
    org.run_for(60)
    assert org.starts(ALICE)[0] == START
    mb = org.mailbox(ALICE)
    assert mb.forcedunlockcount == 1
    assert (mb.hostid, mb.processingstatecode) == (None, 0)
    assert org.mailbox(BOB).forcedunlockcount == 0


def test_fresh_lease_of_another_host_is_respected_until_it_goes_stale(org):
    org.set_mailbox(ALICE, hostid="other-host", processingstatecode=1,
                    processinglastattemptedon=START - timedelta(minutes=10))
    org.run_for(15 * 60)
    assert org.starts(ALICE) == []
    assert org.starts(BOB)  # others are not held up
    org.run_for(15 * 60)
    first = org.starts(ALICE)[0]
    assert START + timedelta(minutes=20) <= first <= START + timedelta(minutes=21)
    assert org.mailbox(ALICE).forcedunlockcount == 1


def test_release_by_a_host_that_lost_its_lease_changes_nothing(org):
    org.set_mailbox(ALICE, hostid="dead-host", processingstatecode=1,
                    processinglastattemptedon=START - timedelta(hours=1))
    org.run_for(60)
    before = org.mailbox(ALICE)
    org.sb.crm.release("dead-host", [MailboxUpdate(org.mailboxes[ALICE], {"noemailcount": 99})])
    after = org.mailbox(ALICE)
    assert after.noemailcount == before.noemailcount != 99


class SharedSpy:
    """An Exchange port per host that yields inside each call and watches for overlap per mailbox."""

    in_flight: Counter
    overlaps: list

    def __init__(self, inner, host: str, state: dict) -> None:
        self.inner = inner
        self.host = host
        self.state = state

    def __getattr__(self, name):
        target = getattr(self.inner, name)

        async def call(mailbox, *args, **kw):
            st = self.state
            key = mailbox.lower()
            st["in_flight"][key] += 1
            if st["in_flight"][key] > 1:
                st["overlaps"].append((key, name, self.host))
            st["by_host"][self.host].add(key)
            try:
                for _ in range(st["rng"].randint(1, 4)):
                    await asyncio.sleep(0)  # let the other host run meanwhile
                return await target(mailbox, *args, **kw)
            finally:
                st["in_flight"][key] -= 1

        return call


def test_two_hosts_sharing_one_database_never_process_one_mailbox_at_once(tmp_path):
    url = sqlite_url(tmp_path / "crm.db")
    o = build_org(db_url=url)
    sb = o.sb
    for i in range(6):
        sb.admin.add_user(f"User {i}", f"user{i}@contoso.example", track=0)
    new_ids = [m.mailboxid for m in sb.admin.mailboxes() if m.emailaddress.startswith("user")]
    sb.admin.apply_default_settings("admin", new_ids)
    sb.admin.approve("admin", new_ids)
    asyncio.run(sb.admin.test_and_enable("admin", new_ids))
    addresses = [m.emailaddress for m in sb.admin.mailboxes()]

    state = {"in_flight": Counter(), "overlaps": [], "by_host": defaultdict(set), "rng": random.Random(5)}
    events1: list = []
    events2: list = []
    host1 = SyncService(sb.crm, SharedSpy(sb.exchange, "h1", state), sb.clock, hostid="sss-host-1",
                        lease_batch=1, events=events1)
    platform2 = Platform(make_engine(url), sb.clock, IdFactory(99), sb.faults)
    host2 = SyncService(platform2, SharedSpy(sb.exchange, "h2", state), sb.clock, hostid="sss-host-2",
                        lease_batch=1, events=events2)

    delivered: list[str] = []

    async def drive():
        for minute in range(0, 60):
            sb.clock.advance_to(START + timedelta(minutes=minute))
            if minute % 7 == 0 and minute <= 42:
                for a in (ALICE, BOB, SUPPORT, "user3@contoso.example"):
                    delivered.extend(sb.deliver(msg(f"at {minute}", to=(a,))).values())
            await asyncio.gather(host1.run_due(), host2.run_due())

    asyncio.run(drive())
    assert state["overlaps"] == []
    assert state["by_host"]["h1"] and state["by_host"]["h2"]  # both hosts did work
    starts = [e for e in events1 + events2 if e[1] == "start"]
    per_key = Counter((e[0], e[2], e[3]) for e in starts)
    assert max(per_key.values()) == 1  # no workload started twice for one due time
    # and the floor held across hosts
    by_workload = defaultdict(list)
    for when, _, address, workload in starts:
        by_workload[(address, workload)].append(when)
    for times in by_workload.values():
        times.sort()
        for a, b in zip(times, times[1:], strict=False):
            assert b > a
    # every mail delivered was handled exactly once, by one host or the other
    handled = Counter(e[3] for e in events1 + events2 if e[1] == "item")
    assert sorted(handled) == sorted(delivered) and set(handled.values()) == {1}
    assert len(o.received()) == 7 * 3  # bob tracks replies only
    for address in addresses:
        mb = o.mailbox(address)
        assert (mb.hostid, mb.processingstatecode) == (None, 0)


class ConcurrencySpy:
    """Yields inside each Exchange call and records how many mailboxes are inside one at once."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.active: set[str] = set()
        self.peak = 0

    def __getattr__(self, name):
        target = getattr(self.inner, name)

        async def call(mailbox, *args, **kw):
            self.active.add(mailbox)
            self.peak = max(self.peak, len(self.active))
            try:
                for _ in range(3):
                    await asyncio.sleep(0)
                return await target(mailbox, *args, **kw)
            finally:
                self.active.discard(mailbox)

        return call


def _cap_scenario(make_org, cap: int) -> int:
    o = make_org(profile={"maxconcurrentconnections": cap})
    ids = [o.sb.admin.add_user(f"User {i}", f"user{i}@contoso.example", track=0) for i in range(6)]
    assert len(ids) == 6
    new = [m.mailboxid for m in o.sb.admin.mailboxes() if m.emailaddress.startswith("user")]
    o.sb.admin.apply_default_settings("admin", new)
    o.sb.admin.approve("admin", new)
    asyncio.run(o.sb.admin.test_and_enable("admin", new))
    spy = ConcurrencySpy(o.sb.exchange)
    o.sb.engine.exchange = spy
    o.run_for(1800)
    assert len({e[2] for e in o.sb.events if e[1] == "start"}) == 10  # every mailbox ran
    return spy.peak


def test_max_concurrent_connections_caps_mailboxes_in_flight_per_profile(make_org):
    assert _cap_scenario(make_org, 2) == 2
    assert _cap_scenario(make_org, 1) == 1
    assert _cap_scenario(make_org, 300) > 2  # without a tight cap they do overlap


# -- engine hosts in separate processes, each on its own virtual clock (the durable world) ----------------
def _two_hosts(tmp_path):
    from simulator.exchange.mime import MessageData
    from simulator.sandbox import Sandbox

    url = sqlite_url(tmp_path / "world.db")
    sb = Sandbox(db_url=url)
    a = sb.admin
    a.create_organization("Contoso", tenant_id="11111111-2222-3333-4444-555555555555")
    a.add_queue("Support", "support@contoso.example", owner="admin")
    profile = a.create_profile("admin", name="EXO", processemailsreceivedafter=sb.clock.now() - timedelta(days=1))
    a.set_default_profile("admin", profile)
    ids = [m.mailboxid for m in a.mailboxes()]
    a.apply_default_settings("admin", ids)
    a.approve("admin", ids)
    asyncio.run(a.test_and_enable("admin", ids))
    sb.deliver(MessageData(subject="hi", sender="carl@fabrikam.example", to=("support@contoso.example",),
                           message_id="m1@fabrikam.example"))
    sb.close()
    return url, Sandbox(db_url=url, hostid="host-a"), Sandbox(db_url=url, hostid="host-b")


def _tracked(sb) -> Counter:
    from sqlalchemy import text

    with sb.db.connect() as conn:
        return Counter(r[0] for r in conn.execute(text("SELECT messageid FROM email WHERE directioncode = 0")))


def test_a_host_whose_clock_runs_ahead_waits_for_a_live_host_s_leases(tmp_path, monkeypatch):
    """Host B finds only mailboxes that host A holds: it waits for A rather than jump its own clock to
    the leases' expiry and force them open (A is alive: it releases within the grace)."""
    import threading

    url, host_a, host_b = _two_hosts(tmp_path)
    release = host_a.crm.release
    b_started = threading.Event()

    def release_while_b_waits(*args):
        host_a.crm.release = release
        thread = threading.Thread(target=lambda: (b_started.set(), asyncio.run(host_b.run_for(3600))))
        thread.start()
        b_started.wait()
        thread.join(0.5)  # B runs meanwhile; A's batch is still open
        assert thread.is_alive(), "host B did not wait for host A's leases"
        release(*args)
        thread.join(30)
        return None

    host_a.crm.release = release_while_b_waits
    asyncio.run(host_a.run_for(600))
    assert _tracked(host_a) == {"m1@fabrikam.example": 1}
    with host_a.db.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT sum(forcedunlockcount) FROM mailbox")).scalar() == 0
    host_a.close()
    host_b.close()


def test_a_host_presumed_dead_loses_its_leases_and_its_late_batch_is_dropped(tmp_path, monkeypatch):
    """Host A stalls past the grace: host B forces its leases open (the 30-minute rule on B's clock)
    and tracks the mail; A's late release then drops its batch instead of tracking it again."""
    import threading

    import simulator.sandbox as sandbox_module

    monkeypatch.setattr(sandbox_module, "DEAD_HOST_GRACE_S", 0.1)
    url, host_a, host_b = _two_hosts(tmp_path)
    release = host_a.crm.release

    def stall_until_b_took_over(*args):
        host_a.crm.release = release
        thread = threading.Thread(target=lambda: asyncio.run(host_b.run_for(3600)))
        thread.start()
        thread.join(60)
        assert _tracked(host_b) == {"m1@fabrikam.example": 1}
        return release(*args)  # too late: B holds or has done these mailboxes

    host_a.crm.release = stall_until_b_took_over
    asyncio.run(host_a.run_for(600))
    assert _tracked(host_a) == {"m1@fabrikam.example": 1}
    from sqlalchemy import text

    with host_a.db.connect() as conn:
        rows = conn.execute(text("SELECT processingstatecode, hostid, forcedunlockcount FROM mailbox")).all()
    assert all(state == 0 and host is None for state, host, _ in rows)
    assert sum(r[2] for r in rows) >= 1  # B forced A's leases open
    asyncio.run(host_a.run_for(3600))  # A goes on working normally
    assert _tracked(host_a) == {"m1@fabrikam.example": 1}
    host_a.close()
    host_b.close()


def test_the_engine_counts_each_leased_mailbox_as_one_cycle_and_each_workload_as_one_poll(org):
    """``stats.cycles`` is what the benchmark's database floor repeats: one per mailbox leased."""
    spy = LeaseSpy(org)
    engine = org.sb.engine
    engine.exchange = spy
    leased: list[int] = []
    lease_due = engine.crm.lease_due

    def counting(*args, **kwargs):
        rows = lease_due(*args, **kwargs)
        leased.append(len(rows))
        return rows

    engine.crm.lease_due = counting
    org.run_for(3600)
    stats = engine.stats
    assert sum(leased) > len(org.mailboxes)  # every mailbox was leased, and some more than once
    assert stats.cycles == sum(leased)
    assert stats.polls_by_workload["INCOMING"] == len(spy.seen)
    assert stats.polls == sum(stats.polls_by_workload.values()) > stats.cycles
