"""SMTP ingest throughput of SmtpIngress against a do-nothing aiosmtpd server.

    python -m benchmarks.smtp --json
    python -m benchmarks.smtp --messages 5000 --repeat 5 --profile

What is measured: a client sends ``--messages`` messages of about 2 KB (one envelope
recipient each, a unique Message-ID) over one persistent smtplib connection, and the time
from the first ``MAIL FROM`` to the last ``250`` after DATA is taken on the client.
``messages_per_s`` is that rate against :class:`SmtpIngress` (recipient check, delivery into
an :class:`ExchangeStore` Inbox with the clock's received time, MIME parsed once);
``floor_messages_per_s`` is the same client against an aiosmtpd server with the same
settings (SIZE limit, SMTPUTF8, hostname) whose handler does nothing: the least any
aiosmtpd-based ingress can cost. ``ratio`` is ``messages_per_s / floor_messages_per_s``.
A second variant opens a new connection per message (``--connection-messages``).

How: both servers run in this process's event loop (``loop.create_server``, as in the
sandbox); the client runs in a separate, long-lived process (multiprocessing, spawn), so
client and server do not share a GIL and each has a core of its own (the design notes
measure on 2 cores). The same client process serves every run. Runs alternate between the
floor and the ingress (ABBA order per round) and the median over ``--repeat`` is reported,
so drift of the machine hits both sides alike. Each ingress run gets a fresh store. A few
messages are sent before timing starts (connection set up, code paths warm).

``wall_seconds`` is the wall time of the whole benchmark (all rounds, both variants).

Throughput on a busy machine is noisy, so the server's CPU time per message is reported
too (``server_cpu_us_per_message`` against ``floor_server_cpu_us_per_message``; their
``cpu_ratio`` is floor / ingress): it depends far less on what else the machine runs.
``load_average_1min`` says how busy the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing as mp
import pstats
import smtplib
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import SMTP

from benchmarks.report import (
    Parser,
    add_repeat,
    check_probe,
    check_repeat,
    environment,
    main_guard,
    print_json,
)
from engine.clock import VirtualClock
from simulator.exchange.smtp import DEFAULT_HOSTNAME, SmtpIngress
from simulator.exchange.store import ExchangeStore, IdSource

HOST = "127.0.0.1"
SENDER = "carl@fabrikam.example"
RECIPIENT = "alice@contoso.example"
WARMUP = 50
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_message(n: int, size: int = 2048) -> bytes:
    head = (
        f"From: Carl Contoso <{SENDER}>\r\n"
        f"To: Alice <{RECIPIENT}>\r\n"
        f"Subject: Order {n} - shipping confirmation\r\n"
        "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n"
        f"Message-ID: <bench.{n}.{size}@fabrikam.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


# -- the client (runs in its own process) --------------------------------------------------
def _client_worker(conn: Any) -> None:
    """Serve run requests from the parent: ("persistent"|"per_connection", port, n) -> seconds."""
    while True:
        request = conn.recv()
        if request is None:
            return
        mode, port, n = request
        try:
            conn.send(("ok", _client_run(mode, port, n)))
        except Exception as exc:  # report, do not hang the parent
            conn.send(("error", repr(exc)))


def _client_run(mode: str, port: int, n: int) -> float:
    messages = [make_message(i) for i in range(n + WARMUP)]
    if mode == "persistent":
        with smtplib.SMTP(HOST, port, local_hostname="client.fabrikam.example") as smtp:
            smtp.ehlo()
            for raw in messages[:WARMUP]:
                smtp.sendmail(SENDER, [RECIPIENT], raw)
            start = time.perf_counter()
            for raw in messages[WARMUP:]:
                refused = smtp.sendmail(SENDER, [RECIPIENT], raw)
                if refused:
                    raise RuntimeError(f"refused: {refused}")
            return time.perf_counter() - start
    # a new connection (greeting, EHLO, QUIT) per message
    for raw in messages[:WARMUP // 5]:
        with smtplib.SMTP(HOST, port, local_hostname="client.fabrikam.example") as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], raw)
    start = time.perf_counter()
    for raw in messages[WARMUP:]:
        with smtplib.SMTP(HOST, port, local_hostname="client.fabrikam.example") as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], raw)
    return time.perf_counter() - start


class Client:
    """The long-lived client process."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_client_worker, args=(child,), daemon=True)
        self._proc.start()

    def _call(self, request: tuple) -> float:
        self._conn.send(request)
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"the benchmark client failed: {value}")
        return value

    async def run(self, mode: str, port: int, n: int) -> float:
        return await asyncio.to_thread(self._call, (mode, port, n))

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(10)


# -- the servers (this process's event loop) -----------------------------------------------
class _Nothing:
    """An aiosmtpd handler with no hooks: accept every recipient, drop every message."""


class FloorServer:
    """aiosmtpd with a do-nothing handler and the same settings as SmtpIngress."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> FloorServer:
        loop = asyncio.get_running_loop()
        handler = _Nothing()

        def factory() -> SMTP:
            return SMTP(handler, data_size_limit=self.max_message_bytes, enable_SMTPUTF8=True,
                        decode_data=False, hostname=DEFAULT_HOSTNAME, loop=loop)

        self._server = await loop.create_server(factory, host=HOST, port=0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def new_store() -> ExchangeStore:
    store = ExchangeStore(VirtualClock(T0), IdSource(0))
    store.add_mailbox(RECIPIENT)
    return store


async def measure(client: Client, kind: str, mode: str, n: int, profile: cProfile.Profile | None = None
                  ) -> tuple[float, float]:
    """One run against a fresh server of ``kind`` ("floor"|"ingress").

    Returns (messages per second seen by the client, server CPU microseconds per message).
    The CPU time is this process's (the loop thread; the thread waiting for the client
    process sleeps), over all messages of the run including the warm-up ones.
    """
    if kind == "floor":
        server: Any = await FloorServer(SmtpIngress.__init__.__kwdefaults__["max_message_bytes"]).start()
    else:
        store = new_store()
        server = await SmtpIngress(store, host=HOST).start()
    try:
        check_probe("the probe before a run")
        if profile is not None:
            profile.enable()
        cpu = time.process_time()
        seconds = await client.run(mode, server.port, n)
        cpu = time.process_time() - cpu
        if profile is not None:
            profile.disable()
    finally:
        await server.stop()
    served = n + (WARMUP if mode == "persistent" else WARMUP // 5)
    if kind == "ingress":
        got = len(store.mailbox(RECIPIENT).folder("inbox").items)
        if got != served:
            raise RuntimeError(f"the ingress stored {got} messages, expected {served}")
    return n / seconds, cpu / served * 1e6


async def compare(client: Client, mode: str, n: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {"floor": [], "ingress": []}
    for r in range(rounds):
        order = ("floor", "ingress") if r % 2 == 0 else ("ingress", "floor")
        for kind in order:
            runs[kind].append(await measure(client, kind, mode, n))
    floor = [rate for rate, _ in runs["floor"]]
    ingress = [rate for rate, _ in runs["ingress"]]
    f, i = statistics.median(floor), statistics.median(ingress)
    f_cpu = statistics.median(cpu for _, cpu in runs["floor"])
    i_cpu = statistics.median(cpu for _, cpu in runs["ingress"])
    return {
        "server_cpu_us_per_message": round(i_cpu, 1),
        "floor_server_cpu_us_per_message": round(f_cpu, 1),
        "cpu_ratio": round(f_cpu / i_cpu, 3),
        "messages_per_s": round(i, 1),
        "floor_messages_per_s": round(f, 1),
        "ratio": round(i / f, 3),
        "messages_per_s_best": round(max(ingress), 1),
        "floor_messages_per_s_best": round(max(floor), 1),
        "server_cpu_us_per_message_least": round(min(cpu for _, cpu in runs["ingress"]), 1),
        "floor_server_cpu_us_per_message_least": round(min(cpu for _, cpu in runs["floor"]), 1),
        "messages": n,
        "repeat": rounds,
        "runs_messages_per_s": [round(x, 1) for x in ingress],
        "runs_floor_messages_per_s": [round(x, 1) for x in floor],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    client = Client()
    try:
        persistent = await compare(client, "persistent", args.messages, args.repeat)
        per_connection = None
        if args.connection_messages > 0:
            per_connection = await compare(client, "per_connection", args.connection_messages, args.repeat)
        profile_text = None
        if args.profile:
            prof = cProfile.Profile()
            await measure(client, "ingress", "persistent", args.messages, prof)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(35)
            profile_text = out.getvalue()
    finally:
        client.close()
    result: dict[str, Any] = {
        "messages_per_s": persistent["messages_per_s"],
        "floor_messages_per_s": persistent["floor_messages_per_s"],
        "ratio": persistent["ratio"],
        "messages_per_s_best": persistent["messages_per_s_best"],
        "floor_messages_per_s_best": persistent["floor_messages_per_s_best"],
        "server_cpu_us_per_message_least": persistent["server_cpu_us_per_message_least"],
        "messages": args.messages,
        "message_bytes": len(make_message(0)),
        "repeat": args.repeat,
        "runs_messages_per_s": persistent["runs_messages_per_s"],
        "runs_floor_messages_per_s": persistent["runs_floor_messages_per_s"],
        "server_cpu_us_per_message": persistent["server_cpu_us_per_message"],
        "floor_server_cpu_us_per_message": persistent["floor_server_cpu_us_per_message"],
        "cpu_ratio": persistent["cpu_ratio"],
        "new_connection_per_message": per_connection,
        "client": "separate process (spawn), smtplib, one persistent connection",
        "server": "this process, asyncio loop.create_server",
        **environment(started),
    }
    if profile_text is not None:
        print(profile_text, file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.smtp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run, one connection")
    parser.add_argument("--connection-messages", type=int, default=600,
                        help="messages per run with a new connection each (0: skip this variant)")
    add_repeat(parser, default=5, aliases=("--rounds",), help_extra="; per server and variant, ABBA")
    parser.add_argument("--profile", action="store_true", help="cProfile one ingress run (to stderr)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages: give a whole number from 1 to 1000000")
    if not 0 <= args.connection_messages <= 1_000_000:
        parser.error("--connection-messages: give a whole number from 0 (skip that variant) to 1000000")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    if args.json:
        print_json(result)
        return 0
    rows = [("one connection", result)]
    if result["new_connection_per_message"]:
        rows.append(("new connection per message", result["new_connection_per_message"]))
    print(f"SMTP ingest, {result['message_bytes']} B messages, median of {result['repeat']} runs "
          f"({result['messages']} messages per one-connection run)")
    print(f"{'variant':<28}{'ingress msg/s':>14}{'floor msg/s':>12}{'ratio':>7}"
          f"{'ingress cpu us':>16}{'floor cpu us':>14}{'cpu ratio':>10}")
    for name, r in rows:
        print(f"{name:<28}{r['messages_per_s']:>14.1f}{r['floor_messages_per_s']:>12.1f}{r['ratio']:>7.3f}"
              f"{r['server_cpu_us_per_message']:>16.1f}{r['floor_server_cpu_us_per_message']:>14.1f}"
              f"{r['cpu_ratio']:>10.3f}")
    print(f"best run: ingress {result['messages_per_s_best']} msg/s, floor {result['floor_messages_per_s_best']} msg/s; "
          f"least ingress CPU {result['server_cpu_us_per_message_least']} us/message")
    print(f"wall time {result['wall_seconds']} s, CPU {result['cpu_seconds']} s, load average "
          f"{result['load_average_1min']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
