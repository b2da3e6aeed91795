"""How long the web console takes to render the Active Mailboxes view of a large organization.

    python -m benchmarks.console --mailboxes 10000 --json

What is measured: an organization of ``--mailboxes`` tested-and-enabled user mailboxes (built in
bulk by :mod:`simulator.bulk_org`, in a SQLite file), the console's routes on a local aiohttp
server, and a signed-in client. Each page is requested ``--repeat`` times over HTTP on loopback;
the median and the least wall time and CPU time (this process: server and client together) per
request are reported for the first page, a page in the middle, the last page and a search by address. The
view is paged (50 rows), so a page's cost should not grow with the organization.

``floor_ms`` is what the database alone needs for the same page: the count and the 50 rows read
with raw ``sqlite3`` from the same file. ``ratio`` is page / floor: the cost of the console's own
work (the admin views, the template, HTTP) in units of the bare query, measured in the same run so
that a busy machine moves both. A fixed CPU-bound probe before each page must get half a core
(``--starved-below``), or the benchmark refuses to report (one line, exit status 3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from aiohttp import ClientSession, CookieJar, web

from benchmarks.report import (
    Parser,
    add_repeat,
    check_probe,
    check_repeat,
    environment,
    main_guard,
    print_json,
)
from simulator.bulk_org import build
from simulator.console import PAGE_SIZE, Console
from simulator.crm.db import sqlite_url

KEY = "benchmark-key"


def _floor(path: str, offset: int, search: str | None, rounds: int) -> float:
    """Median seconds of the bare page query (count + one page of rows) in raw sqlite3."""
    conn = sqlite3.connect(path)
    where, args = "statecode = 0", []
    if search:
        where += " AND (lower(emailaddress) LIKE ? OR lower(name) LIKE ?)"
        args = [f"%{search}%", f"%{search}%"]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        conn.execute(f"SELECT count(*) FROM mailbox WHERE {where}", args).fetchone()
        rows = conn.execute(f"SELECT * FROM mailbox WHERE {where} ORDER BY emailaddress LIMIT ? OFFSET ?",
                            [*args, PAGE_SIZE, offset]).fetchall()
        times.append(time.perf_counter() - t)
        assert rows
    conn.close()
    return statistics.median(times)


async def _measure(sb, path: str, mailboxes: int, rounds: int) -> list[dict]:
    app = web.Application()
    app.add_routes(Console(sb, asyncio.Lock(), KEY, secure=False).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}/console"
    last = max(1, -(-mailboxes // PAGE_SIZE))
    cases = [("first page", "page=1", 0, None), ("middle page", f"page={last // 2}", (last // 2 - 1) * PAGE_SIZE, None),
             ("last page", f"page={last}", (last - 1) * PAGE_SIZE, None),
             ("search by address", "q=user00004", 0, "user00004")]
    out = []
    try:
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
            async with http.get(f"{base}/?key={KEY}") as r:
                assert r.status == 200, r.status
            async with http.post(f"{base}/signin", data={"user": "admin"}) as r:
                assert r.status == 200 and "Email Configuration" in await r.text(), r.status
            for name, query, offset, search in cases:
                check_probe("the probe before a page")
                walls, cpus = [], []
                for _ in range(rounds + 1):
                    wall, cpu = time.perf_counter(), time.process_time()
                    async with http.get(f"{base}/mailboxes?{query}") as r:
                        body = await r.text()
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                    assert r.status == 200 and 'name="mailboxes"' in body, (r.status, body[:300])
                walls, cpus = walls[1:], cpus[1:]  # the first request warms the templates and caches
                floor = await asyncio.to_thread(_floor, path, offset, search, rounds)
                page = statistics.median(walls)
                out.append({"page": name, "query": query, "wall_ms_median": round(page * 1000, 2),
                            "wall_ms_min": round(min(walls) * 1000, 2),
                            "cpu_ms_median": round(statistics.median(cpus) * 1000, 2),
                            "cpu_ms_min": round(min(cpus) * 1000, 2),
                            "floor_ms": round(floor * 1000, 3), "ratio": round(page / floor, 1)})
    finally:
        await runner.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.console", description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10_000)
    add_repeat(parser, default=20, aliases=("--rounds",), help_extra=" requests of each page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    if not 1 <= args.mailboxes <= 1_000_000:
        parser.error(f"--mailboxes: {args.mailboxes} is not from 1 to 1000000")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="sss-console-bench-")
    path = os.path.join(folder, "console.db")
    setup = build(args.mailboxes, 1, sqlite_url(path))
    try:
        pages = asyncio.run(_measure(setup.sandbox, path, args.mailboxes + 1, args.repeat))
    finally:
        setup.sandbox.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        os.rmdir(folder)
    result = {"benchmark": "console", "mailboxes": args.mailboxes + 1, "page_size": PAGE_SIZE,
              "repeat": args.repeat, "pages": pages, **environment(started)}
    if args.json:
        print_json(result)
        return 0
    print(f"Active Mailboxes view, {result['mailboxes']} mailboxes, {PAGE_SIZE} per page, "
          f"median and least of {args.repeat} requests")
    print(f"{'page':<20}{'wall ms':>10}{'least':>8}{'cpu ms':>10}{'least':>8}{'floor ms':>10}{'ratio':>8}")
    for p in pages:
        print(f"{p['page']:<20}{p['wall_ms_median']:>10}{p['wall_ms_min']:>8}{p['cpu_ms_median']:>10}"
              f"{p['cpu_ms_min']:>8}{p['floor_ms']:>10}{p['ratio']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
