"""Engine hosts side by side: 1, 2 (and more, given the cores) host processes on one PostgreSQL database.

    python -m benchmarks.scaleout --mailboxes 2000 --hours 6 --json
    python -m benchmarks.scaleout --hosts 1,2,4 --postgres-url postgresql+psycopg://user@host/db

What it answers: how far do more engine hosts on one database carry an organization's polling,
and what does the database pay? For each number of hosts the database is emptied and the same
seeded world is built in it (:mod:`simulator.bulk_org`: ``--mailboxes`` tested-and-enabled user
mailboxes, a contact per ten users; setup not timed). Then that many processes each open the world
as an engine host of its own (``Sandbox(hostid=...)``, as ``sss run`` does) and, started together,
run ``--hours`` simulated hours (``Sandbox.run_for``) on their own virtual clocks; the lease rules
keep a mailbox with one host at a time. The first host also delivers the seeded inbound mail of
``benchmarks.simulation`` (``--emails-per-mailbox-day``, one batch per simulated minute); the others
see it through the shared Exchange journal.

Reported per configuration: polls (workload cycles of all hosts whose batch committed) per wall
second from the start signal to the last host's end, the polls redone (made in batches that were
dropped and done again: a host's release fails when another host tracked a copy of one of its
messages first), the emails tracked (email rows in the database, and the hosts' own counts of
what they committed, which must agree),
each host's share of the polls and its CPU seconds, the efficiency
against one host (polls/s divided by hosts x the one-host polls/s: 1.0 is a perfect scale-out),
and the database's own CPU: the PostgreSQL server processes' user and system time from /proc (the
postmaster, its live children and the children it reaped), when the server runs on this machine and
its data folder is known (a server this benchmark started, or ``--postgres-data DIR``).

PostgreSQL comes from where the tests get it (``tests/pg.py``): ``SSS_TEST_POSTGRES_URL`` or
``--postgres-url`` (an empty database the benchmark may drop and create tables in), otherwise a
throwaway server from the local PostgreSQL binaries (Debian's ``postgresql`` package), on a Unix
socket, with ``fsync=off`` and ``synchronous_commit=off`` as in the tests. Without either it says so
in one line and exits with status 2.

``--repeat N`` runs each configuration N times (least and median wall time; the figures of the
median run). A fixed CPU-bound probe runs before each measurement; under half a core
(``--starved-below``) the benchmark refuses to report (one line, exit status 3).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing as mp
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.report import (
    CannotRun,
    Parser,
    add_repeat,
    check_probe,
    check_repeat,
    environment,
    measure_and_print,
    median_index,
    spread,
    timed,
)

PG_HELPER = Path(__file__).resolve().parent.parent / "tests" / "pg.py"
HOST_TIMEOUT_S = 3600.0


class Unavailable(CannotRun):
    """No PostgreSQL to measure on."""


def _pg_helper():
    if not PG_HELPER.exists():
        raise Unavailable(f"{PG_HELPER} is missing (it starts the tests' PostgreSQL); give --postgres-url")
    spec = importlib.util.spec_from_file_location("sss_bench_pg", PG_HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def postgres(url: str | None):
    """Yields (SQLAlchemy URL, data folder of a local server or None)."""
    if url:
        yield url, None
        return
    pg = _pg_helper()
    reason = pg.unavailable_reason()
    if reason is not None:
        raise Unavailable(f"no PostgreSQL to run on: {reason}; or give --postgres-url (or SSS_TEST_POSTGRES_URL)")
    with pg.postgres_server() as found:
        host = parse_qs(urlsplit(found).query).get("host", [None])[0]
        data = Path(host) / "data" if host and not os.environ.get("SSS_TEST_POSTGRES_URL") else None
        yield found, data


# -- the database server's CPU time, from /proc ---------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from the state on (field 3)


def server_cpu_seconds(data: Path | None) -> float | None:
    """User + system seconds of the PostgreSQL server of ``data``: the postmaster, what it reaped of
    its exited children (backends of closed connections), and its live children. None: unknown."""
    if data is None:
        return None
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    own = _stat(postmaster)
    if own is None:
        return None
    ticks = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


# -- one engine host (a process of its own) --------------------------------------------------------
def host_main(url: str, hostid: str, seed: int, hours: float, mailboxes: int, per_mailbox_day: float,
              deliver: bool, ready: Any, go: Any, out: Any) -> None:
    try:
        from simulator.bulk_org import DOMAIN, PARTNER_DOMAIN, BulkOrg, schedule_traffic
        from simulator.sandbox import Sandbox

        sb = Sandbox(db_url=url, seed=seed, hostid=hostid, record_events=False)
        if deliver:  # the seeded mail of benchmarks.simulation, on this host's agenda
            org = BulkOrg(sb, [f"user{i:06d}@{DOMAIN}" for i in range(mailboxes)],
                          [f"contact{i:06d}@{PARTNER_DOMAIN}" for i in range(max(1, mailboxes // 10))])
            schedule_traffic(org, hours, per_mailbox_day, seed)
        ready.set()
        go.wait()
        with timed() as t:
            asyncio.run(sb.run_for(hours * 3600))
        st = sb.engine.stats
        out.put({"host": hostid, "polls": st.polls - st.polls_dropped, "polls_redone": st.polls_dropped,
                 "cycles_dropped": st.cycles_dropped, "polls_by_workload": dict(st.polls_by_workload),
                 "emails_tracked": st.emails_tracked, "errors": sum(st.errors.values()),
                 "wall_seconds": t.wall, "cpu_seconds": t.cpu})
        sb.close()
    except BaseException as exc:  # the parent reports it in one line
        out.put({"host": hostid, "failed": f"{type(exc).__name__}: {exc}"})


def reachable(url: str) -> None:
    """Raise :class:`Unavailable` (one line) when the database cannot be reached."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from simulator.crm.db import make_engine

    try:
        engine = make_engine(url, create=False)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"--postgres-url: cannot reach the database ({first}); give the URL of an empty "
                          "PostgreSQL database") from None


def incoming_email_rows(url: str) -> int:
    """Email activities made from incoming mail, counted in the database: the hosts' own counts add
    up to more when two hosts track the two copies of one message at once (the database keeps one)."""
    from sqlalchemy import func, select

    from simulator.crm.db import make_engine
    from simulator.crm.models import Email

    engine = make_engine(url, create=False)
    try:
        with engine.connect() as conn:
            E = Email.__table__
            return conn.execute(select(func.count()).select_from(E).where(E.c.directioncode.is_(False))).scalar()
    finally:
        engine.dispose()


def measure(url: str, data: Path | None, hosts: int, args: argparse.Namespace) -> dict[str, Any]:
    from simulator.bulk_org import build
    from simulator.crm.db import drop_all, make_engine

    engine = make_engine(url, create=False)
    drop_all(engine)
    engine.dispose()
    org = build(args.mailboxes, args.seed, url)
    org.sandbox.close()

    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies, procs = [], []
    for h in range(hosts):
        ready = ctx.Event()
        p = ctx.Process(target=host_main, name=f"engine-host-{h + 1}",
                        args=(url, f"bench-host-{h + 1}", args.seed, args.hours, args.mailboxes,
                              args.emails_per_mailbox_day, h == 0, ready, go, out))
        p.start()
        readies.append(ready)
        procs.append(p)
    try:
        for ready, p in zip(readies, procs, strict=True):
            while not ready.wait(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"{p.name} ended before it was ready (exit status {p.exitcode})")
        check_probe("the probe before the hosts start")
        db0 = server_cpu_seconds(data)
        t0 = time.perf_counter()
        go.set()
        results = [out.get(timeout=HOST_TIMEOUT_S) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
        db1 = server_cpu_seconds(data)  # the hosts' backends have exited and been reaped by now
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    failed = [r for r in results if "failed" in r]
    if failed:
        raise RuntimeError(f"{failed[0]['host']} failed: {failed[0]['failed']}")
    results.sort(key=lambda r: r["host"])
    polls = sum(r["polls"] for r in results)
    tracked_rows = incoming_email_rows(url)
    db_cpu = db1 - db0 if db0 is not None and db1 is not None else None
    return {
        "hosts": hosts,
        "polls": polls,
        "polls_per_s": round(polls / wall, 1),
        "polls_redone": sum(r["polls_redone"] for r in results),
        "cycles_dropped": sum(r["cycles_dropped"] for r in results),
        "wall_seconds": round(wall, 2),
        "emails_tracked": tracked_rows,
        "emails_tracked_by_hosts_own_count": sum(r["emails_tracked"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "hosts_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 2),
        "db_cpu_seconds": round(db_cpu, 2) if db_cpu is not None else None,
        "db_cpu_ms_per_poll": round(db_cpu / polls * 1000, 3) if db_cpu is not None and polls else None,
        "per_host": [{"host": r["host"], "polls": r["polls"], "polls_redone": r["polls_redone"],
                      "share": round(r["polls"] / polls, 3) if polls else 0.0,
                      "cpu_seconds": round(r["cpu_seconds"], 2), "wall_seconds": round(r["wall_seconds"], 2),
                      "emails_tracked": r["emails_tracked"]} for r in results],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    configs = []
    with ExitStack() as stack:
        url, data = stack.enter_context(postgres(args.postgres_url or os.environ.get("SSS_TEST_POSTGRES_URL")))
        if args.postgres_data:
            data = Path(args.postgres_data)
        reachable(url)
        for hosts in args.hosts:
            runs = [measure(url, data, hosts, args) for _ in range(args.repeat)]
            walls = [r["wall_seconds"] for r in runs]
            best = dict(runs[median_index(walls)])
            best.update(repeat=len(runs), wall_seconds=spread(walls, 2),
                        polls_per_s_best=max(r["polls_per_s"] for r in runs),
                        runs_polls_per_s=[r["polls_per_s"] for r in runs])
            configs.append(best)
    one = next((c for c in configs if c["hosts"] == 1), None)
    for c in configs:
        c["efficiency_vs_one_host"] = (round(c["polls_per_s"] / (c["hosts"] * one["polls_per_s"]), 3)
                                       if one and one["polls_per_s"] else None)
    return {
        "benchmark": "scaleout",
        "mailboxes": args.mailboxes, "hours": args.hours, "seed": args.seed,
        "emails_per_mailbox_day": args.emails_per_mailbox_day,
        "database": "PostgreSQL (" + ("given URL" if args.postgres_url or os.environ.get("SSS_TEST_POSTGRES_URL")
                                      else "throwaway local server, fsync off") + ")",
        "configurations": configs,
        **environment(started),
    }


def _table(r: dict[str, Any]) -> None:
    print(f"Engine hosts on one PostgreSQL database: {r['mailboxes']:,} mailboxes x {r['hours']:g} simulated h, "
          f"{r['emails_per_mailbox_day']:g} emails per mailbox and day, {r['database']}")
    print(f"{'hosts':>5}{'polls':>10}{'redone':>8}{'wall s':>9}{'least':>8}{'polls/s':>10}{'best':>9}{'efficiency':>12}"
          f"{'hosts CPU s':>13}{'DB CPU s':>10}{'DB ms/poll':>12}  shares")
    for c in r["configurations"]:
        db = "?" if c["db_cpu_seconds"] is None else f"{c['db_cpu_seconds']:.2f}"
        dbp = "?" if c["db_cpu_ms_per_poll"] is None else f"{c['db_cpu_ms_per_poll']:.3f}"
        eff = "" if c["efficiency_vs_one_host"] is None else f"{c['efficiency_vs_one_host']:.3f}"
        shares = " ".join(f"{h['share']:.0%}" for h in c["per_host"])
        print(f"{c['hosts']:>5}{c['polls']:>10,}{c['polls_redone']:>8,}{c['wall_seconds']['median']:>9.2f}{c['wall_seconds']['min']:>8.2f}"
              f"{c['polls_per_s']:>10,.0f}{c['polls_per_s_best']:>9,.0f}{eff:>12}{c['hosts_cpu_seconds']:>13.2f}"
              f"{db:>10}{dbp:>12}  {shares}")
    print("emails tracked (database rows; the hosts' own counts): " + ", ".join(
        f"{c['hosts']} host(s) {c['emails_tracked']:,} ({c['emails_tracked_by_hosts_own_count']:,})"
        for c in r["configurations"]))
    print(f"wall {r['wall_seconds']} s, load average {r['load_average_1min']}, {r['cpus']} CPUs")


def _hosts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--hosts: {text!r} is not a list of whole numbers; give e.g. 1,2")
    limit = 4 * (os.cpu_count() or 1)
    if not values or any(not 1 <= v <= limit for v in values):
        parser.error(f"--hosts: give numbers of hosts from 1 to {limit} (four per CPU), e.g. 1,2")
    return sorted(set(values))


def default_hosts() -> str:
    """1 and 2, and more when the machine has the cores (a core for each host and one for the database)."""
    cpus = os.cpu_count() or 1
    counts = [1, 2] + [n for n in (4, 8, 16) if n + 1 <= cpus]
    return ",".join(str(n) for n in counts)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default=default_hosts(),
                        help=f"numbers of engine host processes to measure (default here: {default_hosts()})")
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=6.0, help="simulated hours each host runs")
    parser.add_argument("--emails-per-mailbox-day", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres-url", default=None,
                        help="an empty PostgreSQL database to use (its tables are dropped and made again)")
    parser.add_argument("--postgres-data", default=None,
                        help="the data folder of that server, when it runs on this machine (for its CPU time)")
    add_repeat(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    args.hosts = _hosts(parser, args.hosts)
    if not 1 <= args.mailboxes <= 100_000:
        parser.error("--mailboxes: give a whole number from 1 to 100000")
    if not 0 < args.hours <= 24 * 7:
        parser.error("--hours: give a number above 0 and at most 168")
    if not 0 <= args.emails_per_mailbox_day <= 10_000:
        parser.error("--emails-per-mailbox-day: give a number from 0 to 10000")
    if args.postgres_data and not Path(args.postgres_data, "postmaster.pid").exists():
        parser.error(f"--postgres-data: {args.postgres_data} holds no postmaster.pid; give the running server's "
                     "data folder")

    return measure_and_print(parser.prog, lambda: run(args), args.json, _table)


if __name__ == "__main__":
    sys.exit(main())
