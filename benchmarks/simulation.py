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

Run phase (timed): ``Sandbox.run_for(hours)`` on SQLite (a temporary file by default) with
``record_events=False``. ``mailbox_polls`` counts workload cycles (incoming and outgoing);
``floor_polls_per_s`` is a bare heap loop doing the same number of polls (pop the due time,
a trivial check, push the next time five minutes later), the least any scheduler in Python
can cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import os
import resource
import shutil
import sys
import tempfile
import time

from benchmarks.report import print_json
from simulator.bulk_org import build, schedule_traffic
from simulator.crm.db import sqlite_url
from simulator.sandbox import Sandbox


def floor_loop(polls: int, mailboxes: int, cadence_s: float = 300.0) -> float:
    """Seconds a bare heap scheduler takes for ``polls`` polls of ``mailboxes`` mailboxes."""
    heap = [(0.0, i) for i in range(mailboxes)]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    done = 0
    t0 = time.perf_counter()
    while done < polls:
        due, i = pop(heap)
        if due >= 0.0:  # the trivial check
            done += 1
        push(heap, (due + cadence_s, i))
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


async def _run(sb: Sandbox, hours: float) -> None:
    await sb.run_for(hours * 3600)


def run(mailboxes: int, hours: float, seed: int, per_mailbox_day: float, db_path: str | None,
        profile: str | None = None) -> dict:
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="sss-bench-")
        db_path = os.path.join(tmpdir, "bench.db")
    try:
        t0 = time.perf_counter()
        setup = build(mailboxes, seed, sqlite_url(db_path))
        schedule_traffic(setup, hours, per_mailbox_day, seed)
        setup_s = time.perf_counter() - t0
        sb = setup.sandbox
        gc.collect()
        gc.freeze()  # the setup's objects live to the end: keep the collector off them
        t1 = time.perf_counter()
        if profile:
            import cProfile

            cProfile.runctx("asyncio.run(_run(sb, hours))", globals(), {"sb": sb, "hours": hours,
                                                                         "_run": _run, "asyncio": asyncio},
                            filename=profile)
        else:
            asyncio.run(_run(sb, hours))
        wall = time.perf_counter() - t1
        stats = sb.engine.stats
        polls = stats.polls
        floor_s = floor_loop(polls, mailboxes)
        polls_per_s = polls / wall if wall else 0.0
        floor_polls_per_s = polls / floor_s if floor_s else 0.0
        result = dict(
            mailboxes=mailboxes, hours=hours, seed=seed, emails_per_mailbox_day=per_mailbox_day,
            db=db_path if tmpdir is None else "temporary SQLite file",
            emails_delivered=setup.messages,
            mailbox_polls=polls,
            polls_per_s=round(polls_per_s, 1),
            emails_tracked=stats.emails_tracked,
            emails_skipped=sum(stats.emails_skipped.values()),
            emails_per_s=round(stats.emails_tracked / wall, 1) if wall else 0.0,
            errors=sum(stats.errors.values()),
            peak_rss_mb=round(peak_rss_mb(), 1),
            floor_polls_per_s=round(floor_polls_per_s, 1),
            ratio_to_floor=round(floor_polls_per_s / polls_per_s, 2) if polls_per_s else None,
            setup_seconds=round(setup_s, 2),
            wall_seconds=round(wall, 2),
        )
        sb.close()
        return result
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _table(result: dict) -> None:
    rows = [
        ("mailboxes", f"{result['mailboxes']:,}"),
        ("simulated hours", f"{result['hours']:g}"),
        ("emails per mailbox and day", f"{result['emails_per_mailbox_day']:g}"),
        ("seed", str(result["seed"])),
        ("database", result["db"]),
        ("setup", f"{result['setup_seconds']:.2f} s"),
        ("run (wall)", f"{result['wall_seconds']:.2f} s"),
        ("mailbox polls", f"{result['mailbox_polls']:,}"),
        ("polls / s", f"{result['polls_per_s']:,.0f}"),
        ("emails delivered", f"{result['emails_delivered']:,}"),
        ("emails tracked", f"{result['emails_tracked']:,}"),
        ("emails skipped", f"{result['emails_skipped']:,}"),
        ("emails tracked / s", f"{result['emails_per_s']:,.0f}"),
        ("errors", f"{result['errors']:,}"),
        ("floor (bare heap loop) polls / s", f"{result['floor_polls_per_s']:,.0f}"),
        ("ratio to floor", f"{result['ratio_to_floor']}x"),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        return
    table = Table(title="SSS engine, direct mode, virtual time")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--emails-per-mailbox-day", type=float, default=10.0)
    parser.add_argument("--db", default=None, help="SQLite file to use (default: a temporary file)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--profile", default=None, help="write a cProfile of the run phase to this file")
    args = parser.parse_args(argv)
    if args.mailboxes < 1:
        parser.error("--mailboxes: must be at least 1")
    if args.hours <= 0:
        parser.error("--hours: must be more than 0")
    if args.emails_per_mailbox_day < 0:
        parser.error("--emails-per-mailbox-day: must not be negative")
    if args.db is not None and os.path.exists(args.db):
        parser.error(f"--db: {args.db} exists; give a new file")
    result = run(args.mailboxes, args.hours, args.seed, args.emails_per_mailbox_day, args.db, args.profile)
    if args.json:
        print_json(result)
    else:
        _table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
