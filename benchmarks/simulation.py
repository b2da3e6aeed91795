"""Throughput of the engine in direct mode: many mailboxes, one simulated day, virtual time.

    python -m benchmarks.simulation --mailboxes 10000 --hours 24 --json

Setup (not timed in the throughput figures): an organization with ``--mailboxes`` user
mailboxes, each approved, on the default profile with server-side sync for incoming and
outgoing email, tested and enabled (statuses Success, due now), created in bulk with
SQLAlchemy Core by :mod:`simulator.bulk_org`; a contact per ten users; and seeded inbound traffic: each mailbox receives
``--emails-per-mailbox-day`` messages from contacts, spread over the simulated period (one
delivery batch per simulated minute). Users track all incoming email (track setting 0); one
message in twenty is also copied to a second user, whose copy is then skipped as a duplicate.

Two configurations are reported in BENCHMARKS.md: the default (10 emails per mailbox and day:
light mail, the run is nearly all polling) and a mail-heavy one (``--emails-per-mailbox-day 100``,
where tracking email is a real share of the work). The metrics mean the same in both.

With ``--act`` the same run is made twice on fresh databases, first without and then with ACT
(appointments, contacts and tasks): every mailbox's ACT workload is switched on as Test & Enable
leaves it (delivery method server-side sync, status Success, enabled, due now; the Exchange
mailbox is claimed at its first cycle), every user has the default sync filters, and the seeded
traffic generator of ``sss demo`` (:class:`simulator.traffic.TrafficPlan`, its ACT rate only, no
mail of its own) makes and changes meetings, contacts and tasks on both sides,
``--act-per-user-day`` a user and day. ``act_items_per_s`` counts items synchronized either way
(created, changed or deleted in Exchange or in the CRM) per second of the run phase.

Run phase (timed, wall and CPU time of this process): ``Sandbox.run_for(hours)`` on SQLite (a
temporary file by default) with ``record_events=False``. ``mailbox_polls`` counts workload cycles (incoming, outgoing and, with ``--act``, ACT);
``floor_polls_per_s`` is a bare heap loop doing the same number of polls (pop the due time,
a trivial check, push the next time five minutes later), the least any scheduler in Python
can cost. The database floor (``db_floor_*``, ``ratio_to_db_floor``) is a bare loop in raw sqlite3
that leases and releases as many mailbox rows as the engine leased (``mailbox_leases``), in
batches of 2,000 with a commit each, on a table of the five integer columns a lease needs: the
least a scheduler whose state is in the database can cost. The mailbox-row floor
(``db_row_floor_*``, ``ratio_to_db_row_floor``) runs the engine's own lease and release statements
(:mod:`simulator.crm.leasing`) as many times, in raw sqlite3, on a copy of the run's mailbox table,
each release writing what a quiet cycle writes: what the mailbox row as SPEC section 1 has it costs
before any of the engine's code. The first floor against the second is the schema's share; the
second against the run is the engine's own (its Python, the fake Exchange, the email rows).
``polls_per_cpu_s`` and ``emails_per_cpu_s`` divide by the run's CPU time, which moves less with
the machine's load.

``--repeat N`` makes N runs (each on a new database; with ``--act`` ACT off and on alternate) and
reports the least and the median wall and CPU time, the figures of the median run and the best
rates. The floor is CPU-bound: when it gets less than half a core (``--starved-below``) the
process was starved and the benchmark refuses to report (one line, exit status 3); a fixed probe
loop is checked the same way before each run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update
from sqlalchemy.dialects import sqlite as sqlite_dialect

from benchmarks.report import (
    Parser,
    Timing,
    add_repeat,
    check_probe,
    check_repeat,
    check_share,
    least,
    main_guard,
    median_index,
    print_json,
    spread,
    timed,
)
from engine.ports import ActMethod, Status
from simulator.bulk_org import BulkOrg, build, schedule_traffic
from simulator.crm.db import sqlite_url, tune_new_sqlite
from simulator.crm.leasing import LEASE_TIMEOUT, lease_statement, release_statement
from simulator.crm.models import DEFAULT_SYNC_FILTERS, Mailbox, UserQuery, default_filter
from simulator.sandbox import Sandbox
from simulator.traffic import Party, TrafficMix, TrafficPlan

DEMO_ACT_PER_USER_DAY = 4.0  # what `sss demo` uses
NO_MAIL = TrafficMix(inbound_per_mailbox_day=0.0, outgoing_per_user_day=0.0, old_mail=0, duplicates=0, malformed=0)


def enable_act(org: BulkOrg, hours: float, per_user_day: float, seed: int) -> TrafficPlan:
    """Switch every mailbox's ACT workload on as Test & Enable leaves it, give every user the default
    sync filters, and schedule seeded ACT traffic (no mail) on the sandbox's agenda."""
    sb = org.sandbox
    M = Mailbox.__table__
    with sb.db.begin() as conn:
        conn.execute(update(M).values(actdeliverymethod=int(ActMethod.SSS), actstatus=int(Status.SUCCESS),
                                      enabledforact=True, receivingpostponeduntilforact=M.c.receivingpostponeduntil))
        conn.execute(insert(UserQuery.__table__), [
            default_filter(uid, name, table).model_dump() for uid in org.userids for name, table in DEFAULT_SYNC_FILTERS
        ])
    users = [Party(addr, uid) for addr, uid in zip(org.addresses, org.userids, strict=True)]
    plan = TrafficPlan(sb, random.Random(f"act-traffic-{seed}"), users=users, queues=[], contacts=org.contacts,
                       mix=NO_MAIL, act_per_user_day=per_user_day)
    start = sb.clock.now()
    plan.schedule(start, start + timedelta(hours=hours))
    return plan


def floor_loop(polls: int, mailboxes: int, cadence_s: float = 300.0) -> Timing:
    """Wall and CPU time a bare heap scheduler takes for ``polls`` polls of ``mailboxes`` mailboxes."""
    heap = [(0.0, i) for i in range(mailboxes)]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    done = 0
    with timed() as t:
        while done < polls:
            due, i = pop(heap)
            if due >= 0.0:  # the trivial check
                done += 1
            push(heap, (due + cadence_s, i))
    return t


@contextmanager
def _scratch_database(directory: str, name: str) -> Iterator[sqlite3.Connection]:
    """A raw sqlite3 database of its own for a floor, with the sandbox's pragmas; removed after."""
    path = os.path.join(directory, name)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        tune_new_sqlite(con)
        yield con
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def _timed_leases(con: sqlite3.Connection, leases: int, batch: int, now, lease, release, advance) -> Timing:
    """The floors' timed loop, batch by batch as the engine goes: ``lease(now, limit)`` takes up to
    ``limit`` due mailboxes and commits; when none is due, ``advance(now)`` gives the next due time;
    ``release(now, rows)`` frees them with their next due time (and says how many it freed) and
    commits. Until ``leases`` mailboxes were leased and released."""
    done = 0
    with timed() as t:
        while done < leases:
            con.execute("BEGIN")
            rows = lease(now, min(batch, leases - done))
            con.execute("COMMIT")
            if not rows:  # nothing due: on to the next due time
                now = advance(now)
                continue
            con.execute("BEGIN")
            freed = release(now, rows)
            con.execute("COMMIT")
            if freed != len(rows):
                raise RuntimeError(f"a floor's release freed {freed} of the {len(rows)} mailboxes it leased")
            done += len(rows)
    return t


def db_floor_loop(leases: int, mailboxes: int, directory: str, batch: int = 2000,
                  cadence_s: int = 300) -> Timing:
    """Wall and CPU time a bare loop in raw sqlite3 takes to lease and release ``leases`` mailbox
    rows, the way the engine's batches do: on a table of the few integer columns a lease needs
    (id, due time, state, host, leased at), each batch is one ``UPDATE ... RETURNING`` of up to
    ``batch`` due free rows, one executemany that frees them with the next due time, and one commit,
    with the sandbox's pragmas. What a database-backed scheduler in Python cannot go below."""
    with _scratch_database(directory, "floor.db") as con:
        con.execute("CREATE TABLE lease (id INTEGER PRIMARY KEY, due INTEGER NOT NULL, state INTEGER NOT NULL,"
                    " host TEXT, leased INTEGER)")
        con.execute("CREATE INDEX lease_due ON lease (due, id) WHERE state = 0")
        con.executemany("INSERT INTO lease VALUES (?, 0, 0, NULL, NULL)", ((i,) for i in range(mailboxes)))
        lease_sql = ("UPDATE lease SET state = 1, host = 'floor', leased = :now WHERE id IN "
                     "(SELECT id FROM lease WHERE state = 0 AND due <= :now ORDER BY due, id LIMIT :n) RETURNING id, due")
        release_sql = "UPDATE lease SET state = 0, host = NULL, due = ? WHERE id = ? AND host = 'floor'"
        return _timed_leases(
            con, leases, batch, 0,
            lease=lambda now, n: con.execute(lease_sql, {"now": now, "n": n}).fetchall(),
            release=lambda now, rows: con.executemany(release_sql, [(now + cadence_s, r[0]) for r in rows]).rowcount,
            advance=lambda now: con.execute("SELECT min(due) FROM lease WHERE state = 0").fetchone()[0],
        )


# What a quiet cycle (incoming and outgoing ran and found nothing) writes to its mailbox at the
# release, in the order the engine sets the columns (tests/test_benchmark_report.py checks it
# against the engine's own release): each column with its value, _START for the cycle's start and
# _NEXT for the next due time.
_START, _NEXT = object(), object()
_QUIET_VALUES = {
    "lastincomingstartedon": _START, "itemsprocessedforlastsync": 0, "itemsfailedforlastsync": 0, "noemailcount": 1,
    "receivingpostponeduntil": _NEXT, "incomingtransientfailurecount": 0, "incomingemailstatus": 1,
    "transientfailurecount": 0, "lastsuccessfulsynccompletedon": _START, "lastoutgoingstartedon": _START,
    "postponesendinguntil": _NEXT, "outgoingtransientfailurecount": 0, "outgoingemailstatus": 1,
    "postponemailboxprocessinguntil": _NEXT, "mailboxstatus": 1,
}
QUIET_CYCLE = tuple(_QUIET_VALUES)


def db_row_floor_loop(leases: int, db_path: str, directory: str, batch: int = 2000,
                      cadence_s: int = 300) -> Timing:
    """Wall and CPU time the engine's own lease and release statements take in raw sqlite3 for
    ``leases`` mailboxes, with no engine code around them: on a copy of the run's mailbox table
    (every mailbox column of SPEC 1, the same indexes, the sandbox's pragmas), each batch leases up
    to ``batch`` due mailboxes (the lease's ``UPDATE ... RETURNING`` of the columns a cycle reads),
    commits, releases each with what a quiet cycle writes (one executemany) and commits. What this
    schema costs a database-backed scheduler; the run's database is not changed."""
    dialect = sqlite_dialect.dialect()  # "?" parameters, bound by position as the engine binds them
    lease = lease_statement(postgres=False).compile(dialect=dialect)
    release = release_statement(QUIET_CYCLE).compile(dialect=dialect)
    lease_params, release_params = lease.params, release.params  # the statements' constants, once
    mailbox_at = release.positiontup.index("b_mailboxid")
    stored = Mailbox.__table__.c.postponemailboxprocessinguntil.type
    instant = stored.dialect_impl(dialect).bind_processor(dialect)  # an instant as the sandbox stores it
    step = timedelta(seconds=cadence_s)

    def take(now: datetime, limit: int) -> list:
        params = dict(lease_params, now=instant(now), stale=instant(now - LEASE_TIMEOUT), limit=limit, hostid="floor")
        return con.execute(lease.string, [params[name] for name in lease.positiontup]).fetchall()

    def free(now: datetime, rows: list) -> int:
        at, nxt = instant(now), instant(now + step)
        quiet = dict(release_params, b_hostid="floor", b_mailboxid=None)
        quiet.update((name, at if v is _START else nxt if v is _NEXT else v) for name, v in _QUIET_VALUES.items())
        values = tuple(quiet[name] for name in release.positiontup)
        before, after = values[:mailbox_at], values[mailbox_at + 1:]
        return con.executemany(release.string, [(*before, r[0], *after) for r in rows]).rowcount

    with _scratch_database(directory, "rowfloor.db") as con:
        con.execute("ATTACH DATABASE ? AS run", (db_path,))
        for (sql,) in con.execute("SELECT sql FROM run.sqlite_master WHERE tbl_name = 'mailbox' AND sql IS NOT NULL"
                                  " ORDER BY type = 'index'").fetchall():
            con.execute(sql)  # the table first, then its indexes
        con.execute("INSERT INTO main.mailbox SELECT * FROM run.mailbox")
        con.execute("DETACH DATABASE run")
        start = datetime(2030, 1, 1, tzinfo=UTC)
        con.execute("UPDATE mailbox SET processingstatecode = 0, hostid = NULL, postponemailboxprocessinguntil = ?",
                    (instant(start),))
        return _timed_leases(con, leases, batch, start, take, free, advance=lambda now: now + step)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


async def _run(sb: Sandbox, hours: float) -> None:
    await sb.run_for(hours * 3600)


def run(mailboxes: int, hours: float, seed: int, per_mailbox_day: float, db_path: str | None,
        profile: str | None = None, act_per_user_day: float | None = None) -> dict:
    """One measured run; ``act_per_user_day`` None leaves ACT off (as the bulk organization has it)."""
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="sss-bench-")
        db_path = os.path.join(tmpdir, "bench.db")
    try:
        t0 = time.perf_counter()
        setup = build(mailboxes, seed, sqlite_url(db_path))
        schedule_traffic(setup, hours, per_mailbox_day, seed)
        plan = enable_act(setup, hours, act_per_user_day, seed) if act_per_user_day is not None else None
        setup_s = time.perf_counter() - t0
        sb = setup.sandbox
        gc.collect()
        gc.freeze()  # the setup's objects live to the end: keep the collector off them
        check_probe("the probe before the run")
        with timed() as run_t:
            if profile:
                import cProfile

                cProfile.runctx("asyncio.run(_run(sb, hours))", globals(), {"sb": sb, "hours": hours,
                                                                             "_run": _run, "asyncio": asyncio},
                                filename=profile)
            else:
                asyncio.run(_run(sb, hours))
        gc.unfreeze()
        rss_mb = peak_rss_mb()  # the organization's and the run's, before the floors add their own
        wall, cpu = run_t.wall, run_t.cpu
        stats = sb.engine.stats
        polls = stats.polls
        floor_t = floor_loop(polls, mailboxes)
        floor_share = check_share(floor_t, "the floor (bare heap loop)")
        db_floor_t = db_floor_loop(stats.cycles, mailboxes, os.path.dirname(os.path.abspath(db_path)))
        row_floor_t = db_row_floor_loop(stats.cycles, db_path, os.path.dirname(os.path.abspath(db_path)))
        polls_per_s = polls / wall if wall else 0.0
        floor_polls_per_s = polls / floor_t.wall if floor_t.wall else 0.0
        result = dict(
            mailboxes=mailboxes, hours=hours, seed=seed, emails_per_mailbox_day=per_mailbox_day,
            db=db_path if tmpdir is None else "temporary SQLite file",
            emails_delivered=setup.messages,
            mailbox_polls=polls,
            polls_per_s=round(polls_per_s, 1),
            emails_tracked=stats.emails_tracked,
            emails_skipped=sum(stats.emails_skipped.values()),
            emails_per_s=round(stats.emails_tracked / wall, 1) if wall else 0.0,
            polls_by_workload=dict(sorted(stats.polls_by_workload.items())),
            errors=sum(stats.errors.values()),
            peak_rss_mb=round(rss_mb, 1),
            floor_polls_per_s=round(floor_polls_per_s, 1),
            ratio_to_floor=round(floor_polls_per_s / polls_per_s, 2) if polls_per_s else None,
            mailbox_leases=stats.cycles,
            db_floor_cpu_seconds=round(db_floor_t.cpu, 2),
            polls_per_cpu_s=round(polls / cpu, 1) if cpu else 0.0,
            db_floor_polls_per_cpu_s=round(polls / db_floor_t.cpu, 1) if db_floor_t.cpu else 0.0,
            ratio_to_db_floor=round(cpu / db_floor_t.cpu, 2) if db_floor_t.cpu else None,
            db_row_floor_cpu_seconds=round(row_floor_t.cpu, 2),
            db_row_floor_polls_per_cpu_s=round(polls / row_floor_t.cpu, 1) if row_floor_t.cpu else 0.0,
            ratio_to_db_row_floor=round(cpu / row_floor_t.cpu, 2) if row_floor_t.cpu else None,
            emails_per_cpu_s=round(stats.emails_tracked / cpu, 1) if cpu else 0.0,
            setup_seconds=round(setup_s, 2),
            wall_seconds=round(wall, 2),
            cpu_seconds=round(cpu, 2),
            run_cpu_share=round(run_t.share, 3),
            floor_cpu_share=round(floor_share, 3) if floor_share is not None else None,
        )
        if plan is not None:
            act_items = stats.act_to_exchange + stats.act_to_crm
            result.update(
                act_per_user_day=act_per_user_day,
                act_changes_made=sum(n for k, n in plan.counts.items() if k.startswith("act_")),
                act_to_exchange=stats.act_to_exchange, act_to_crm=stats.act_to_crm,
                act_conflicts=stats.act_conflicts, act_failed=stats.act_failed,
                act_items_per_s=round(act_items / wall, 1) if wall else 0.0,
                act_items_per_cpu_s=round(act_items / cpu, 1) if cpu else 0.0,
            )
        sb.close()
        return result
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def repeated(n: int, *args, act_per_user_day: float | None = None) -> dict:
    """``n`` runs of :func:`run`: the figures of the run with the median wall time, the least and the
    median of each time measured (wall, CPU), and the best rates (of the fastest run)."""
    runs = [run(*args, act_per_user_day=act_per_user_day) for _ in range(n)]
    return combine(runs)


def combine(runs: list[dict]) -> dict:
    walls = [r["wall_seconds"] for r in runs]
    result = dict(runs[median_index(walls)])
    result.update(
        repeat=len(runs),
        wall_seconds=spread(walls, 2), cpu_seconds=spread([r["cpu_seconds"] for r in runs], 2),
        polls_per_s_best=max(r["polls_per_s"] for r in runs),
        floor_cpu_share=least(r["floor_cpu_share"] for r in runs),
        runs_polls_per_s=[r["polls_per_s"] for r in runs],
    )
    if "act_items_per_s" in result:
        result.update(act_items_per_s_best=max(r["act_items_per_s"] for r in runs),
                      act_items_per_cpu_s_best=max(r["act_items_per_cpu_s"] for r in runs))
    return result


def _rows(result: dict) -> list[tuple[str, str]]:
    rows = [
        ("mailboxes", f"{result['mailboxes']:,}"),
        ("simulated hours", f"{result['hours']:g}"),
        ("emails per mailbox and day", f"{result['emails_per_mailbox_day']:g}"),
        ("ACT changes per user and day", f"{result['act_per_user_day']:g}" if "act_per_user_day" in result else "off"),
        ("seed", str(result["seed"])),
        ("database", result["db"]),
        ("setup", f"{result['setup_seconds']:.2f} s"),
        ("repeats", str(result["repeat"])),
        ("run (wall), least / median", f"{result['wall_seconds']['min']:.2f} / {result['wall_seconds']['median']:.2f} s"),
        ("run (CPU), least / median", f"{result['cpu_seconds']['min']:.2f} / {result['cpu_seconds']['median']:.2f} s"),
        ("mailbox polls", f"{result['mailbox_polls']:,}"),
        ("  of them ACT", f"{result['polls_by_workload'].get('ACT', 0):,}"),
        ("polls / s (median run; best)", f"{result['polls_per_s']:,.0f}; {result['polls_per_s_best']:,.0f}"),
        ("emails delivered", f"{result['emails_delivered']:,}"),
        ("emails tracked", f"{result['emails_tracked']:,}"),
        ("emails skipped", f"{result['emails_skipped']:,}"),
        ("emails tracked / s", f"{result['emails_per_s']:,.0f}"),
        ("emails tracked / CPU s", f"{result['emails_per_cpu_s']:,.0f}"),
    ]
    if "act_per_user_day" in result:
        rows += [
            ("ACT changes made by users", f"{result['act_changes_made']:,}"),
            ("ACT items to Exchange / to CRM", f"{result['act_to_exchange']:,} / {result['act_to_crm']:,}"),
            ("ACT conflicts / failed", f"{result['act_conflicts']:,} / {result['act_failed']:,}"),
            ("ACT items / s (wall; best)", f"{result['act_items_per_s']:,.1f}; {result['act_items_per_s_best']:,.1f}"),
            ("ACT items / CPU s (median; best)",
             f"{result['act_items_per_cpu_s']:,.1f}; {result['act_items_per_cpu_s_best']:,.1f}"),
        ]
    rows += [
        ("errors", f"{result['errors']:,}"),
        ("polls / CPU s", f"{result['polls_per_cpu_s']:,.0f}"),
        ("database floor: leases (raw sqlite3)", f"{result['mailbox_leases']:,} in {result['db_floor_cpu_seconds']:.2f} s CPU"),
        ("database floor polls / CPU s", f"{result['db_floor_polls_per_cpu_s']:,.0f}"),
        ("ratio to database floor (CPU)", f"{result['ratio_to_db_floor']}x"),
        ("mailbox-row floor: leases (raw sqlite3)", f"{result['mailbox_leases']:,} in {result['db_row_floor_cpu_seconds']:.2f} s CPU"),
        ("mailbox-row floor polls / CPU s", f"{result['db_row_floor_polls_per_cpu_s']:,.0f}"),
        ("ratio to mailbox-row floor (CPU)", f"{result['ratio_to_db_row_floor']}x"),
        ("floor (bare heap loop) polls / s", f"{result['floor_polls_per_s']:,.0f}"),
        ("ratio to floor", f"{result['ratio_to_floor']}x"),
        ("floor's share of a core (least)",
         "too short to judge" if result["floor_cpu_share"] is None else f"{result['floor_cpu_share']:.0%}"),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
    ]
    return rows


def _table(results: list[tuple[str, dict]]) -> None:
    columns = [(title, dict(_rows(r))) for title, r in results]
    keys = list(dict.fromkeys(k for _, r in results for k, _ in _rows(r)))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        width = max(len(k) for k in keys)
        for k in keys:
            print(f"{k:<{width}}  " + "  ".join(c.get(k, "") for _, c in columns))
        return
    table = Table(title="SSS engine, direct mode, virtual time")
    table.add_column("measure")
    for title, _ in columns:
        table.add_column(title, justify="right")
    for k in keys:
        table.add_row(k, *(c.get(k, "") for _, c in columns))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.simulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--emails-per-mailbox-day", type=float, default=10.0)
    parser.add_argument("--db", default=None, help="SQLite file to use (default: a temporary file)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--profile", default=None, help="write a cProfile of the run phase to this file")
    add_repeat(parser, help_extra="; with --act, ACT off and on alternate")
    parser.add_argument("--act", action="store_true",
                        help="also run with ACT on (appointments, contacts and tasks) and report both runs")
    parser.add_argument("--act-per-user-day", type=float, default=DEMO_ACT_PER_USER_DAY,
                        help=f"with --act: ACT changes each user makes a day (default {DEMO_ACT_PER_USER_DAY:g}, "
                             "as sss demo)")
    args = parser.parse_args(argv)
    if args.mailboxes < 1:
        parser.error("--mailboxes: must be at least 1")
    if args.hours <= 0:
        parser.error("--hours: must be more than 0")
    if args.emails_per_mailbox_day < 0:
        parser.error("--emails-per-mailbox-day: must not be negative")
    check_repeat(parser, args)
    if args.profile and args.repeat > 1:
        parser.error("--profile: profiles one run; leave --repeat out")
    if args.mailboxes > 1_000_000:
        parser.error("--mailboxes: at most 1,000,000")
    if args.hours > 24 * 366:
        parser.error("--hours: at most a year (8784)")
    if not 0 < args.act_per_user_day <= 1000:
        parser.error("--act-per-user-day: give a number above 0 and at most 1000")
    if args.db is not None and args.act:
        parser.error("--db: not with --act (the two runs each need a new database); leave --db out")
    if args.db is not None and args.repeat > 1:
        parser.error("--db: not with --repeat (each run needs a new database); leave --db out")
    if args.db is not None and os.path.exists(args.db):
        parser.error(f"--db: {args.db} exists; give a new file")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    common = (args.mailboxes, args.hours, args.seed, args.emails_per_mailbox_day, args.db, args.profile)
    if not args.act:
        result = repeated(args.repeat, *common)
        print_json(result) if args.json else _table([("value", result)])
        return 0
    offs, ons = [], []
    for i in range(args.repeat):  # off, on, on, off, ...: the machine's drift hits both alike
        order = ((offs, None), (ons, args.act_per_user_day))
        for runs, act in order if i % 2 == 0 else reversed(order):
            runs.append(run(*common, act_per_user_day=act))
    without, with_act = combine(offs), combine(ons)
    result = dict(
        without_act=without, with_act=with_act,
        polls_per_s_ratio=round(with_act["polls_per_s"] / without["polls_per_s"], 3) if without["polls_per_s"] else None,
        cpu_seconds_added_by_act=round(with_act["cpu_seconds"]["median"] - without["cpu_seconds"]["median"], 2),
    )
    if args.json:
        print_json(result)
    else:
        _table([("ACT off", without), ("ACT on", with_act)])
        print(f"polls/s with ACT / without: {result['polls_per_s_ratio']}; "
              f"CPU added by ACT: {result['cpu_seconds_added_by_act']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
