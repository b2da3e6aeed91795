"""Fake EWS FindItem throughput, driven by a lightweight HTTP client (not exchangelib).

    python -m benchmarks.ews --json
    python -m benchmarks.ews --requests 4000 --concurrency 8 --repeat 5 --matches 10 --profile

What is measured: a load driver posts ``--requests`` FindItem SOAP envelopes over HTTPS with
keep-alive on ``--concurrency`` concurrent connections and counts answers per wall second
(``finditem_per_s``), with per-request latency (p50/p95) and errors (anything but HTTP 200 with a
``NoError`` FindItem response message). The envelope is the one exchangelib sends for
``inbox.filter(datetime_received__gt=...).order_by("datetime_received").only("datetime_received")``
with a page of ``--page`` items: ``ExchangeImpersonation`` header, ``IdOnly`` plus
``AdditionalProperties`` (``item:DateTimeReceived``), ``IndexedPageItemView MaxEntriesReturned``,
an ``IsGreaterThan`` restriction on ``item:DateTimeReceived`` (half the mailbox matches), a
``SortOrder``, and the ``X-AnchorMailbox`` and ``Authorization: Bearer`` headers. The mailbox holds
``--items`` items (default 2,000), so each answer carries a full page.

Three servers share one HTTPS server of a :class:`~simulator.wire.WireSandbox` (aiohttp, the
sandbox CA), alternated ABBA-style per round, median (and best) over ``--repeat``:

* ``finditem``: ``/EWS/Exchange.asmx`` as wire mode serves it, every bearer token checked by the
  identity service (signature, audience, tenant, expiry, role); the token is got with msal
  through the sandbox's own token source;
* ``finditem_no_auth``: the same :class:`EwsService` on the same store with ``authorize=None``;
* ``floor``: a trivial aiohttp handler on the same server that reads the body and answers a
  fixed SOAP body (a FindItem answer of the same size): the least any EWS endpoint on this
  stack can cost. ``ratio`` is ``finditem_per_s / floor_per_s``.

The driver (aiohttp client) runs in a separate, long-lived process (multiprocessing, spawn), so
client and server do not share a GIL. The server's CPU time per request (this process) is
reported too; it is steadier than throughput on a busy machine. ``wall_seconds`` is the wall
time of the whole benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing as mp
import pstats
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks.report import (
    Parser,
    add_repeat,
    check_probe,
    check_repeat,
    environment,
    main_guard,
    print_json,
)
from simulator.exchange.ews import EwsService
from simulator.exchange.ews.service import EWS_PATH
from simulator.exchange.mime import MessageData
from simulator.wire import WireSandbox

MAILBOX = "alice@contoso.example"
SENDER = "carl@fabrikam.example"
NO_AUTH_PATH = "/noauth" + EWS_PATH
FLOOR_PATH = "/floor" + EWS_PATH
FLOOR_FULL_PATH = "/floor-full" + EWS_PATH
WARMUP = 100
# kind -> (path, full page?)
KINDS = {
    "floor": (FLOOR_PATH, False),
    "finditem": (EWS_PATH, False),
    "finditem_no_auth": (NO_AUTH_PATH, False),
    "floor_full_page": (FLOOR_FULL_PATH, True),
    "finditem_full_page": (EWS_PATH, True),
}


def find_item_envelope(mailbox: str, after_iso: str, page: int) -> bytes:
    """The FindItem request exchangelib sends (see the module docstring)."""
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation>"
        '<t:TimeZoneContext><t:TimeZoneDefinition Id="UTC"/></t:TimeZoneContext></s:Header>'
        '<s:Body><m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '<t:AdditionalProperties><t:FieldURI FieldURI="item:DateTimeReceived"/></t:AdditionalProperties>'
        "</m:ItemShape>"
        f'<m:IndexedPageItemView MaxEntriesReturned="{page}" Offset="0" BasePoint="Beginning"/>'
        '<m:Restriction><t:IsGreaterThan><t:FieldURI FieldURI="item:DateTimeReceived"/>'
        f'<t:FieldURIOrConstant><t:Constant Value="{after_iso}"/></t:FieldURIOrConstant></t:IsGreaterThan>'
        "</m:Restriction>"
        '<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeReceived"/>'
        "</t:FieldOrder></m:SortOrder>"
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox>'
        f"<t:EmailAddress>{mailbox}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType>"
        "<t:MailboxType>Mailbox</t:MailboxType></t:Mailbox></t:DistinguishedFolderId></m:ParentFolderIds>"
        "</m:FindItem></s:Body></s:Envelope>"
    ).encode()


# -- the load driver (runs in its own process) ----------------------------------------------
def _client_worker(conn: Any) -> None:
    """Serve run requests from the parent until it sends None."""
    while True:
        request = conn.recv()
        if request is None:
            return
        try:
            conn.send(("ok", asyncio.run(_client_run(**request))))
        except Exception as exc:  # report, do not hang the parent
            conn.send(("error", repr(exc)))


async def _client_run(url: str, body: bytes, headers: dict[str, str], n: int, concurrency: int,
                      ca_file: str, expect: str) -> dict[str, Any]:
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=ca_file)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx, force_close=False)
    latencies: list[float] = []
    errors: list[str] = []
    expected = expect.encode()

    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
            latencies.append(time.perf_counter() - t)
            if resp.status != 200 or expected not in data:
                errors.append(f"HTTP {resp.status}: {data[:300]!r}")

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        def split(total: int) -> list[int]:
            return [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]

        await asyncio.gather(*(worker(c) for c in split(WARMUP)))  # connections up, code paths warm
        latencies.clear()
        warm_errors = list(errors)
        errors.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in split(n)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return {"seconds": seconds, "requests": len(latencies), "errors": len(errors) + len(warm_errors),
            "first_error": (errors or warm_errors or [None])[0],
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p95_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] * 1000}


class Driver:
    """The long-lived load-driver process."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_client_worker, args=(child,), daemon=True)
        self._proc.start()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._conn.send(request)
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"the load driver failed: {value}")
        return value

    async def run(self, **request: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, request)

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(10)


# -- the server (this process) ----------------------------------------------------------------
class Bench:
    def __init__(self, items: int, page: int, matches: int, state_dir: Path) -> None:
        self.items = items
        self.page = page
        self.matches = matches
        self.wire = WireSandbox(seed=1, state_dir=state_dir, record_events=False)
        self.no_auth = EwsService(self.wire.sb.store, self.wire.clock, authorize=None)
        self.token = ""
        self.after_iso: dict[bool, str] = {}
        self.answers: dict[bool, bytes] = {}  # full page? -> a real FindItem answer (the floors send it)

    def _floor(self, full: bool):
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=self.answers[full], status=200, content_type="text/xml", charset="utf-8")
        return handler

    async def start(self) -> None:
        wire = self.wire
        wire.sb.admin.create_organization("Contoso")
        wire.configure_s2s(as_user="admin")
        store = wire.sb.store
        store.add_mailbox(MAILBOX)
        t0 = wire.clock.now()
        for n in range(self.items):  # one a minute, distinct received times, the newest a minute ago
            store.deliver(MessageData(subject=f"Order {n}: delivery date", sender=SENDER, to=(MAILBOX,),
                                      message_id=f"bench.{n}@fabrikam.example", body=f"Hello {n}."),
                          received=t0 - timedelta(minutes=self.items - n))
        # the watermark: the newest ``matches`` items (poll) or half the mailbox (full page) are after it
        for full, newer in ((False, self.matches), (True, self.items // 2)):
            self.after_iso[full] = (t0 - timedelta(minutes=newer, seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        wire.server.add_routes([web.post(NO_AUTH_PATH, self.no_auth.handle),
                                web.post(FLOOR_PATH, self._floor(False)),
                                web.post(FLOOR_FULL_PATH, self._floor(True))])
        await wire.start()
        assert wire.tokens is not None
        self.token = await wire.tokens.get_token()
        for full in (False, True):
            self.answers[full] = await asyncio.to_thread(self._fetch_real_answer, full)

    def returned(self, full: bool) -> int:
        return self.page if full else min(self.page, self.matches)

    def _fetch_real_answer(self, full: bool) -> bytes:
        import ssl
        import urllib.request

        req = urllib.request.Request(self.wire.base_url + EWS_PATH, data=self.body(full), headers=self.headers())
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(self.wire.tls.ca_file))) as r:
            data = r.read()
        if b'ResponseClass="Success"' not in data or data.count(b"<t:Message>") != self.returned(full):
            raise RuntimeError(f"unexpected FindItem answer: {data[:500]!r}")
        return data

    def body(self, full: bool) -> bytes:
        return find_item_envelope(MAILBOX, self.after_iso[full], self.page)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "text/xml; charset=utf-8", "Authorization": f"Bearer {self.token}",
                "X-AnchorMailbox": MAILBOX, "Accept": "text/xml"}

    async def stop(self) -> None:
        await self.wire.stop()


async def measure(bench: Bench, driver: Driver, kind: str, n: int, concurrency: int,
                  profile: cProfile.Profile | None = None) -> dict[str, Any]:
    path, full = KINDS[kind]
    check_probe("the probe before a run")
    if profile is not None:
        profile.enable()
    cpu = time.process_time()
    out = await driver.run(url=bench.wire.base_url + path, body=bench.body(full), headers=bench.headers(),
                           n=n, concurrency=concurrency, ca_file=str(bench.wire.tls.ca_file),
                           expect="<m:ResponseCode>NoError</m:ResponseCode>")
    cpu = time.process_time() - cpu
    if profile is not None:
        profile.disable()
    out["per_s"] = out["requests"] / out["seconds"]
    out["server_cpu_us"] = cpu / (n + WARMUP) * 1e6
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    kinds = tuple(KINDS)
    with tempfile.TemporaryDirectory(prefix="sss-bench-ews-") as tmp:
        bench = Bench(args.items, args.page, args.matches, Path(tmp))
        await bench.start()
        driver = Driver()
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        profile_text = None
        try:
            for r in range(args.repeat):
                for kind in kinds if r % 2 == 0 else tuple(reversed(kinds)):
                    runs[kind].append(await measure(bench, driver, kind, args.requests, args.concurrency))
            if args.profile:
                out = io.StringIO()
                for kind in ("finditem", "finditem_no_auth", "finditem_full_page"):
                    prof = cProfile.Profile()
                    await measure(bench, driver, kind, args.requests, args.concurrency, prof)
                    print(f"==== {kind} ====", file=out)
                    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
                    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
                profile_text = out.getvalue()
        finally:
            driver.close()
            await bench.stop()

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[kind])

    def summary(kind: str) -> dict[str, Any]:
        return {
            "per_s": round(med(kind, "per_s"), 1),
            "per_s_best": round(max(x["per_s"] for x in runs[kind]), 1),
            "server_cpu_us_per_request_least": round(min(x["server_cpu_us"] for x in runs[kind]), 1),
            "p50_ms": round(med(kind, "p50_ms"), 2),
            "p95_ms": round(med(kind, "p95_ms"), 2),
            "server_cpu_us_per_request": round(med(kind, "server_cpu_us"), 1),
            "errors": sum(x["errors"] for x in runs[kind]),
            "runs_per_s": [round(x["per_s"], 1) for x in runs[kind]],
        }

    s = {k: summary(k) for k in kinds}
    first_errors = [x["first_error"] for k in kinds for x in runs[k] if x["first_error"]]
    fi, fl = s["finditem"], s["floor"]
    result: dict[str, Any] = {
        "finditem_per_s": fi["per_s"],
        "target_finditem_per_s": 800,
        "p50_ms": fi["p50_ms"],
        "p95_ms": fi["p95_ms"],
        "errors": sum(x["errors"] for x in s.values()),
        "first_error": first_errors[0] if first_errors else None,
        "floor_per_s": fl["per_s"],
        "ratio": round(fi["per_s"] / fl["per_s"], 3),
        "finditem_no_auth_per_s": s["finditem_no_auth"]["per_s"],
        "ratio_no_auth": round(s["finditem_no_auth"]["per_s"] / fl["per_s"], 3),
        "finditem_full_page_per_s": s["finditem_full_page"]["per_s"],
        "floor_full_page_per_s": s["floor_full_page"]["per_s"],
        "ratio_full_page": round(s["finditem_full_page"]["per_s"] / s["floor_full_page"]["per_s"], 3),
        "server_cpu_us_per_request": fi["server_cpu_us_per_request"],
        "finditem_per_s_best": fi["per_s_best"],
        "floor_per_s_best": fl["per_s_best"],
        "server_cpu_us_per_request_least": fi["server_cpu_us_per_request_least"],
        "variants": s,
        "requests": args.requests,
        "requests_total": args.repeat * len(kinds) * (args.requests + WARMUP),
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "mailbox_items": args.items,
        "max_entries_returned": args.page,
        "items_per_answer": bench.returned(False),
        "items_per_answer_full_page": bench.returned(True),
        "request_bytes": len(bench.body(False)),
        "answer_bytes": len(bench.answers[False]),
        "answer_bytes_full_page": len(bench.answers[True]),
        "client": "separate process (spawn), aiohttp client, keep-alive, HTTPS",
        "server": "this process: WireSandbox HTTPS server (aiohttp), token checked by the identity service",
        **environment(started),
    }
    if profile_text is not None:
        print(profile_text, file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.ews", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per run")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--items", type=int, default=2000, help="items in the mailbox")
    parser.add_argument("--page", type=int, default=100, help="MaxEntriesReturned (items per full-page answer)")
    parser.add_argument("--matches", type=int, default=10,
                        help="items newer than the watermark in the poll variant (the full-page variant: half)")
    add_repeat(parser, default=4, aliases=("--rounds",), help_extra="; per server, ABBA")
    parser.add_argument("--profile", action="store_true", help="cProfile one token-checked run (to stderr)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    for flag, value, most in (("--requests", args.requests, 1_000_000), ("--concurrency", args.concurrency, 256),
                              ("--page", args.page, 1000), ("--items", args.items, 1_000_000)):
        if not 1 <= value <= most:
            parser.error(f"{flag}: give a whole number from 1 to {most}")
    if args.items < 2 * args.page:
        parser.error(f"--items: give at least twice --page ({2 * args.page})")
    if not 0 <= args.matches < args.items:
        parser.error(f"--matches: give a whole number from 0 to --items - 1 ({args.items - 1})")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    if args.json:
        print_json(result)
        return 0
    print(f"EWS FindItem over HTTPS, {result['mailbox_items']} items in the mailbox, MaxEntriesReturned "
          f"{result['max_entries_returned']}, {result['concurrency']} connections, median of {result['repeat']} runs "
          f"of {result['requests']}")
    print(f"{'server':<44}{'req/s':>9}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}{'cpu us/req':>12}{'errors':>8}")
    v = result["variants"]
    n, n_full = result["items_per_answer"], result["items_per_answer_full_page"]
    for name, key, floor in ((f"FindItem poll, {n} new items (token checked)", "finditem", "floor"),
                             (f"FindItem poll, {n} new items (no auth)", "finditem_no_auth", "floor"),
                             (f"floor, fixed {result['answer_bytes']} B answer", "floor", "floor"),
                             (f"FindItem full page, {n_full} items", "finditem_full_page", "floor_full_page"),
                             (f"floor, fixed {result['answer_bytes_full_page']} B answer", "floor_full_page",
                              "floor_full_page")):
        r = v[key]
        print(f"{name:<44}{r['per_s']:>9.1f}{r['per_s'] / v[floor]['per_s']:>7.3f}{r['p50_ms']:>8.2f}"
              f"{r['p95_ms']:>8.2f}{r['server_cpu_us_per_request']:>12.1f}{r['errors']:>8}")
    met = "met" if result["finditem_per_s"] >= result["target_finditem_per_s"] else "NOT met"
    print(f"best run: FindItem {result['finditem_per_s_best']}/s, floor {result['floor_per_s_best']}/s; least "
          f"server CPU {result['server_cpu_us_per_request_least']} us/request")
    print(f"target >= {result['target_finditem_per_s']}/s: {met}; wall time {result['wall_seconds']} s, "
          f"CPU {result['cpu_seconds']} s, load average {result['load_average_1min']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
