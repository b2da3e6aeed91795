"""Engine throughput in wire mode against a bare exchangelib loop making the same EWS calls.

    python -m benchmarks.wire --json
    python -m benchmarks.wire --mailboxes 50 --hours 2 --repeat 2 --profile /tmp/wire.prof

Setup (not timed): a :class:`~simulator.wire.WireSandbox` on a temporary SQLite file
(``record_events=False``): an organization with ``--mailboxes`` users tracking all incoming mail,
S2S configured (msal tokens from the sandbox identity service, certificate installed), the default
profile (``maxconcurrentconnections`` = ``--connections``), approved, tested and enabled over the
wire (exchangelib, Autodiscover), and light inbound mail (``--emails-per-mailbox-hour`` messages
per mailbox and simulated hour, delivered into the store at seeded times, from a contact).

Engine segment (timed): ``WireSandbox.sb.run_for(hours)``: the engine on its virtual clock polls
every mailbox over HTTPS with exchangelib (tokens through msal), the fake EWS in the same process
and event loop. ``engine_polls_per_s`` = workload cycles (incoming + outgoing, ``stats.polls``)
per wall second of the segment. The EWS requests the server answered in the segment are counted
by operation (``requests_per_poll``).

Bare segment (timed): what exchangelib alone costs for the same EWS work, in the same process,
against the same server, with the same exchangelib configuration (OAuth2 bearer token,
``Version(Build(15, 20), "Exchange2016")``, ``FailFast``, impersonation, ``max_connections``,
the sandbox CA) and the same concurrency cap (a pool of ``--connections`` threads): every EWS
request the engine segment made, operation for operation (see :class:`Bare`): the incoming cycle's
FindItem (and GetItem when mail came), the ACT cycle's GetFolder and UpdateFolder (the org claim)
and SyncFolderItems on Calendar, Contacts and Tasks. The server's answer counts per operation are
compared after each bare segment (a difference stops the benchmark) and printed for both sides.
Outgoing cycles cost no EWS request when nothing is queued to send, so the bare loop has nothing
to do for them. ``bare_exchangelib_per_s`` = the engine segment's cycles / the bare segment's wall
seconds: the cycle rate the engine would reach if everything but exchangelib and the server were
free. ``ratio`` = ``engine_polls_per_s / bare_exchangelib_per_s``. ``bare_serial_per_s`` is the
same bare loop with one thread (one request at a time): the engine's virtual clock advances only
when no work is in flight, so polls due at different simulated instants cannot overlap.

Segments alternate (engine, bare, bare, engine, ...: ABBA), ``--repeat`` of each; medians and
the least (times) or best (rates) are reported. A fixed CPU-bound probe before each segment must
get half a core (``--starved-below``), or the benchmark refuses to report (one line, exit 3). Each engine segment simulates ``--hours`` more hours of the same sandbox. CPU time of
the process per cycle is reported for both (``cpu_ms_per_poll``); it is steadier than wall time on
a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import random
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from exchangelib import IMPERSONATION, OAUTH2, Account, Configuration, EWSDateTime, FailFast, Mailbox
from exchangelib import UTC as EWS_UTC
from exchangelib.fields import FieldPath
from exchangelib.folders import Calendar, Contacts, FolderCollection, Inbox, MsgFolderRoot, Root, Tasks
from exchangelib.folders.base import Folder
from exchangelib.properties import DistinguishedFolderId
from exchangelib.protocol import Protocol as EwsProtocol
from exchangelib.services import UpdateFolder

from benchmarks.report import (
    Parser,
    add_repeat,
    check_probe,
    check_repeat,
    environment,
    main_guard,
    print_json,
    spread,
)
from engine.ews import (
    ACT_ORG_FIELD,
    ACT_READ_FIELDS,
    ACT_STAMPED_FIELD,
    EXO_VERSION,
    FIND_PAGE_MAX,
    GET_CHUNK,
    ITEM_FIELDS,
    trust_ca,
)
from simulator.crm.db import sqlite_url
from simulator.crm.models import TrackSetting
from simulator.exchange.mime import MessageData
from simulator.wire import WireSandbox

DOMAIN = "contoso.example"
CONTACT = "carl@fabrikam.example"


# -- setup --------------------------------------------------------------------------------------
async def build(args: argparse.Namespace, folder: Path) -> tuple[WireSandbox, list[str]]:
    wire = WireSandbox(db_url=sqlite_url(str(folder / "bench.db")), seed=args.seed, state_dir=folder,
                       record_events=False)
    sb = wire.sb
    admin = sb.admin
    admin.create_organization("Contoso")
    addresses = [f"user{i:04d}@{DOMAIN}" for i in range(args.mailboxes)]
    for i, address in enumerate(addresses):
        admin.add_user(f"User {i}", address, track=int(TrackSetting.ALL))
    admin.add_record("contact", "Carl", CONTACT)
    wire.configure_s2s(as_user="admin")
    profile = admin.create_profile("admin", name="EXO", maxconcurrentconnections=args.connections,
                                   processemailsreceivedafter=sb.clock.now() - timedelta(days=1))
    admin.set_default_profile("admin", profile)
    ids = [m.mailboxid for m in admin.mailboxes() if m.emailaddress in set(addresses)]
    admin.apply_default_settings("admin", ids)
    admin.approve("admin", ids)
    await wire.start()
    results = await admin.test_and_enable("admin", ids)
    failed = [r.errors for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"test & enable failed: {failed[:3]}")
    return wire, addresses


def schedule_mail(wire: WireSandbox, addresses: list[str], hours: float, per_hour: float, seed: int,
                  segment: int) -> int:
    """Seeded inbound mail over one engine segment (delivered at its simulated times)."""
    sb = wire.sb
    rng = random.Random(f"wire-bench-{seed}-{segment}")
    start = sb.clock.now()
    total = round(len(addresses) * per_hour * hours)
    for n in range(total):
        to = rng.choice(addresses)
        when = start + timedelta(seconds=rng.uniform(1, hours * 3600 - 1))
        msg = MessageData(subject=f"Order {segment}.{n}: delivery date", sender=CONTACT, to=(to,),
                          message_id=f"wire.{segment}.{n}.{seed}@fabrikam.example", body=f"Hello {n}.")
        sb.at(when, lambda msg=msg: sb.store.deliver(msg))
    return total


# -- the two segments ------------------------------------------------------------------------------
async def engine_segment(wire: WireSandbox, hours: float, profile: cProfile.Profile | None) -> dict[str, Any]:
    stats = wire.sb.engine.stats
    polls0 = stats.polls
    incoming0 = stats.polls_by_workload.copy()
    tracked0 = stats.emails_tracked
    errors0 = sum(stats.errors.values())
    calls0 = Counter(wire.ews.calls)
    gc.collect()
    check_probe("the probe before an engine segment")
    cpu, t0 = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    await wire.sb.run_for(hours * 3600)
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    polls = stats.polls - polls0
    by_workload = dict(stats.polls_by_workload - incoming0)
    requests = Counter(wire.ews.calls)
    requests.subtract(calls0)
    requests = Counter({k: v for k, v in requests.items() if v})
    return {"seconds": wall, "polls": polls, "polls_by_workload": by_workload, "per_s": polls / wall,
            "cpu_ms_per_poll": cpu / polls * 1000, "requests": dict(requests),
            "tracked": stats.emails_tracked - tracked0, "errors": sum(stats.errors.values()) - errors0}


REPLAYED = ("FindItem", "GetItem", "GetFolder", "UpdateFolder", "SyncFolderItems")
ACT_SYNC_FOLDERS = (("appointment", Calendar), ("contact", Contacts), ("task", Tasks))


class Bare:
    """exchangelib alone making the engine segment's EWS requests, operation for operation, with the
    engine's configuration, the same requests (the code of :class:`engine.ews.EwsExchange` without
    the engine around it) and the same concurrency cap:

    * FindItem: the engine's FindItem for an empty inbox (watermark now: nothing found);
    * GetItem: the engine's GetItem (its fields) of an item already in the mailbox;
    * GetFolder / UpdateFolder: the ACT cycle's org-claim check and stamp (the claim's two extended
      properties on ``msgfolderroot``; the stamp writes the organization that already holds it);
    * SyncFolderItems: the ACT cycle's read of Calendar, Contacts and Tasks in turn, each mailbox and
      folder carrying on from the sync state of its previous call.

    Each is addressed round-robin over the mailboxes, the operations interleaved (seeded)."""

    def __init__(self, wire: WireSandbox, addresses: list[str], connections: int, timeout_s: float | None,
                 token: str, threads: int | None = None, org_id: str | None = None) -> None:
        from exchangelib import OAuth2AuthorizationCodeCredentials

        self.wire = wire
        self.connections = connections
        self.org_id = org_id
        self.item_ids: dict[int, tuple[str, str]] = {}  # mailbox -> an Inbox item (for GetItem)
        self.credentials = OAuth2AuthorizationCodeCredentials(
            access_token={"access_token": token, "token_type": "Bearer", "expires_at": time.time() + 86400})
        trust_ca(wire.ews_url, str(wire.tls.ca_file))  # the engine's way of trusting the sandbox CA
        self.config = Configuration(service_endpoint=wire.ews_url, credentials=self.credentials, auth_type=OAUTH2,
                                    version=EXO_VERSION, retry_policy=FailFast(), max_connections=connections)
        self.accounts = []
        self.inboxes = []
        for address in addresses:
            account = Account(primary_smtp_address=address, config=self.config, autodiscover=False,
                              access_type=IMPERSONATION, default_timezone=EWS_UTC, locale="en_US")
            if timeout_s:
                account.protocol.TIMEOUT = timeout_s  # as EwsExchange does with the profile's timeout
            self.accounts.append(account)
            self.inboxes.append(self._folder(account, Inbox))
        self.sync_states: dict[tuple[int, str], str | None] = {}
        self.sync_turn: dict[int, int] = {}
        self.threads = threads or connections
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="bare-ews")

    @staticmethod
    def _folder(account: Account, cls: type) -> Any:
        mailbox = Mailbox(email_address=account.primary_smtp_address)
        root = Root(account=account, _distinguished_id=DistinguishedFolderId(id="root", mailbox=mailbox))
        if cls is Root:
            return root
        return cls(root=root, _distinguished_id=DistinguishedFolderId(id=cls.DISTINGUISHED_FOLDER_ID, mailbox=mailbox))

    @staticmethod
    def _find(inbox: Any, bound: EWSDateTime) -> int:
        qs = inbox.filter(datetime_received__gt=bound).order_by("datetime_received").values_list("id", "changekey")
        qs.page_size = FIND_PAGE_MAX
        n = 0
        for row in qs[:FIND_PAGE_MAX]:
            if isinstance(row, Exception):
                raise row
            n += 1
        return n

    def _get_item(self, i: int) -> int:
        owner = i if i in self.item_ids else next(iter(self.item_ids))
        account = self.accounts[owner]
        n = 0
        for item in account.fetch(ids=[self.item_ids[owner]], folder=self.inboxes[owner], only_fields=list(ITEM_FIELDS),
                                  chunk_size=GET_CHUNK):
            if isinstance(item, Exception):
                raise item
            n += 1
        return 0 if n == 1 else 1

    def _get_folder(self, i: int) -> int:
        account = self.accounts[i]
        fields = {FieldPath(field=Folder.get_field_by_fieldname(ACT_ORG_FIELD)),
                  FieldPath(field=Folder.get_field_by_fieldname(ACT_STAMPED_FIELD))}
        found = list(FolderCollection(account=account, folders=[self._folder(account, MsgFolderRoot)])
                     .get_folders(additional_fields=fields))
        if not found or isinstance(found[0], Exception):
            raise found[0] if found else RuntimeError("GetFolder found no msgfolderroot")
        return 0

    def _update_folder(self, i: int) -> int:
        account = self.accounts[i]
        folder = self._folder(account, MsgFolderRoot)
        setattr(folder, ACT_ORG_FIELD, self.org_id)
        setattr(folder, ACT_STAMPED_FIELD, EWSDateTime.from_datetime(self.wire.clock.now().astimezone(UTC)))
        UpdateFolder(account=account).get(folders=[(folder, [ACT_ORG_FIELD, ACT_STAMPED_FIELD])])
        return 0

    def _sync(self, i: int, turn: int) -> int:
        kind, cls = ACT_SYNC_FOLDERS[turn % len(ACT_SYNC_FOLDERS)]
        folder = self._folder(self.accounts[i], cls)
        for _change, item in folder.sync_items(sync_state=self.sync_states.get((i, kind)),
                                               only_fields=ACT_READ_FIELDS[kind]):
            if isinstance(item, Exception):
                raise item
        self.sync_states[(i, kind)] = folder.item_sync_state
        return 0

    def _first_item(self, i: int) -> None:
        for row in self.inboxes[i].all().order_by("datetime_received").values_list("id", "changekey")[:1]:
            if not isinstance(row, Exception):
                self.item_ids[i] = (row[0], row[1])

    def plan(self, requests: dict[str, int], seed: int) -> list[tuple[str, int, int]]:
        """(operation, mailbox, turn) for each request of the engine segment, interleaved (seeded)."""
        missing = {op: n for op, n in requests.items() if op not in REPLAYED and n}
        if missing:
            raise RuntimeError(f"the bare loop cannot replay {missing}: add them to Bare")
        if requests.get("GetItem") and not self.item_ids:
            raise RuntimeError("the engine made GetItem requests but the mailboxes hold no item to get")
        calls = []
        for op in REPLAYED:
            for k in range(requests.get(op, 0)):
                mailbox = k % len(self.accounts)
                calls.append((op, mailbox, k // len(self.accounts)))
        random.Random(f"bare-{seed}").shuffle(calls)
        return calls

    def _one(self, op: str, i: int, turn: int, bound: EWSDateTime) -> int:
        if op == "FindItem":
            return self._find(self.inboxes[i], bound)
        if op == "GetItem":
            return self._get_item(i)
        if op == "GetFolder":
            return self._get_folder(i)
        if op == "UpdateFolder":
            return self._update_folder(i)
        return self._sync(i, turn)

    def _run(self, calls: list[tuple[str, int, int]], bound: EWSDateTime) -> int:
        futures = [self.pool.submit(self._one, op, i, turn, bound) for op, i, turn in calls]
        return sum(f.result() for f in futures)

    async def segment(self, requests: dict[str, int], cycles: int, seed: int) -> dict[str, Any]:
        bound = EWSDateTime.from_datetime(self.wire.clock.now().astimezone(UTC))
        warm = [("FindItem", i % len(self.accounts), 0) for i in range(self.threads * 2)]
        await asyncio.to_thread(self._run, warm, bound)  # sessions up (untimed)
        if requests.get("GetItem"):  # an item to get in each mailbox that has one (untimed)
            await asyncio.to_thread(lambda: list(self.pool.map(self._first_item, range(len(self.accounts)))))
        calls = self.plan(requests, seed)
        calls0 = Counter(self.wire.ews.calls)
        gc.collect()
        check_probe("the probe before a bare segment")
        cpu, t0 = time.process_time(), time.perf_counter()
        unexpected = await asyncio.to_thread(self._run, calls, bound)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
        answered = Counter(self.wire.ews.calls)
        answered.subtract(calls0)
        answered = Counter({k: v for k, v in answered.items() if v})
        wanted = Counter({k: v for k, v in requests.items() if v})
        if answered != wanted or unexpected:
            raise RuntimeError(f"bare loop: the server answered {dict(answered)} for {dict(wanted)} "
                               f"({unexpected} unexpected answers)")
        finds = requests.get("FindItem", 0)
        return {"seconds": wall, "requests": dict(answered), "per_s": cycles / wall, "finditem_per_s": finds / wall,
                "cpu_ms_per_poll": cpu / cycles * 1000}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            protocol, _ = EwsProtocol[self.config]
            del EwsProtocol[self.config]
            if not isinstance(protocol, Exception):
                protocol.close()
        except KeyError:
            pass


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sss-bench-wire-") as tmp:
        t0 = time.perf_counter()
        wire, addresses = await build(args, Path(tmp))
        setup_s = time.perf_counter() - t0
        port = wire.exchange.port(addresses[0])  # the engine's EwsExchange for the profile
        if port.max_connections != args.connections:
            raise RuntimeError(f"the engine's port allows {port.max_connections} connections, not {args.connections}")
        timeout_s = port.timeout_s
        engine_runs: list[dict[str, Any]] = []
        bare_runs: list[dict[str, Any]] = []
        serial_runs: list[dict[str, Any]] = []  # the same FindItems one at a time (one thread)
        delivered = 0
        profile = cProfile.Profile() if args.profile else None
        try:
            # a short warm-up of both paths (connections, code, first polls after Test & Enable)
            delivered += schedule_mail(wire, addresses, 0.25, args.emails_per_mailbox_hour, args.seed, -1)
            await engine_segment(wire, 0.25, None)
            claim = wire.sb.store.act_org(addresses[0])  # the organization the ACT cycles stamp
            org_id = claim.org_id if claim is not None else None
            segment = 0

            async def run_engine() -> None:
                nonlocal delivered, segment
                delivered += schedule_mail(wire, addresses, args.hours, args.emails_per_mailbox_hour, args.seed,
                                           segment)
                segment += 1
                engine_runs.append(await engine_segment(wire, args.hours, profile))

            async def run_bare() -> None:
                ref = engine_runs[-1]  # the bare loop makes the EWS requests of the last engine segment
                # a new exchangelib Protocol (session pool) and a token valid now in the sandbox clock, each
                # time: an engine segment lasts hours of clock time, the token expires in clock time, and
                # exchangelib's OAuth2 sessions keep their token (the engine's EwsExchange adds the current
                # one to every request). exchangelib turns the 401 into ErrorServerBusy, and with FailFast
                # its threads were seen blocked for good in Protocol.decrease_poolsize()
                assert wire.tokens is not None
                variants = ((args.connections, bare_runs), (1, serial_runs))
                for threads, runs in variants if len(bare_runs) % 2 == 0 else reversed(variants):
                    bare = Bare(wire, addresses, args.connections, timeout_s, await wire.tokens.get_token(), threads,
                                org_id)
                    try:
                        runs.append(await bare.segment(ref["requests"], ref["polls"], args.seed + len(runs)))
                        runs[-1]["replays"] = len(engine_runs) - 1
                    finally:
                        bare.close()

            for r in range(args.repeat):
                if r % 2 == 0:
                    await run_engine()
                    await run_bare()
                else:
                    await run_bare()
                    await run_engine()
        finally:
            await wire.stop()
    if profile is not None:
        profile.dump_stats(args.profile)

    e = statistics.median(x["per_s"] for x in engine_runs)
    b = statistics.median(x["per_s"] for x in bare_runs)
    last = engine_runs[-1]
    requests = Counter()
    for x in engine_runs:
        requests.update(x["requests"])
    replayed = bare_runs[-1]  # an engine segment and the bare segment that made its requests again
    polls = sum(x["polls"] for x in engine_runs)
    incoming = sum(x["polls_by_workload"].get("INCOMING", 0) for x in engine_runs)
    return {
        "engine_polls_per_s": round(e, 1),
        "bare_exchangelib_per_s": round(b, 1),
        "ratio": round(e / b, 3),
        "target_ratio": 0.8,
        "engine_polls_per_s_best": round(max(x["per_s"] for x in engine_runs), 1),
        "bare_exchangelib_per_s_best": round(max(x["per_s"] for x in bare_runs), 1),
        "engine_cpu_ms_per_poll": spread([x["cpu_ms_per_poll"] for x in engine_runs]),
        "bare_cpu_ms_per_poll": spread([x["cpu_ms_per_poll"] for x in bare_runs]),
        "engine_segment_wall_seconds": spread([x["seconds"] for x in engine_runs], 2),
        "bare_segment_wall_seconds": spread([x["seconds"] for x in bare_runs], 2),
        "bare_finditem_per_s": round(statistics.median(x["finditem_per_s"] for x in bare_runs), 1),
        "bare_serial_per_s": round(statistics.median(x["per_s"] for x in serial_runs), 1),
        "ratio_to_serial": round(e / statistics.median(x["per_s"] for x in serial_runs), 3),
        "engine_finditem_per_s": round(statistics.median(
            x["requests"].get("FindItem", 0) / x["seconds"] for x in engine_runs), 1),
        "ews_requests_by_operation": dict(sorted(requests.items())),
        "ews_requests_per_segment": {"engine": dict(sorted(engine_runs[replayed["replays"]]["requests"].items())),
                                     "bare_exchangelib": dict(sorted(replayed["requests"].items()))},
        "polls_per_segment": last["polls"],
        "polls_by_workload_per_segment": last["polls_by_workload"],
        "ews_requests_per_poll": round(sum(requests.values()) / polls, 3),
        "ews_requests_per_incoming_poll": round(sum(requests.values()) / incoming, 3) if incoming else None,
        "emails_delivered": delivered,
        "emails_tracked": sum(x["tracked"] for x in engine_runs),
        "errors": sum(x["errors"] for x in engine_runs),
        "runs_engine_polls_per_s": [round(x["per_s"], 1) for x in engine_runs],
        "runs_bare_exchangelib_per_s": [round(x["per_s"], 1) for x in bare_runs],
        "engine_segment_seconds": [round(x["seconds"], 2) for x in engine_runs],
        "bare_segment_seconds": [round(x["seconds"], 2) for x in bare_runs],
        "mailboxes": args.mailboxes,
        "hours_per_segment": args.hours,
        "emails_per_mailbox_hour": args.emails_per_mailbox_hour,
        "connections": args.connections,
        "repeat": args.repeat,
        "seed": args.seed,
        "db": "temporary SQLite file",
        "setup_seconds": round(setup_s, 2),
        **environment(started),
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--hours", type=float, default=2.0, help="simulated hours per engine segment")
    parser.add_argument("--emails-per-mailbox-hour", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=10,
                        help="the profile's maxconcurrentconnections = the bare loop's thread pool")
    add_repeat(parser, default=2, help_extra="; engine and bare segments each, ABBA")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", default=None, help="write a cProfile of the engine segments (event-loop "
                                                       "thread: engine, server, database) to this file")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    if not 1 <= args.mailboxes <= 10_000:
        parser.error("--mailboxes: give a whole number from 1 to 10000")
    if not 0 < args.hours <= 24 * 7:
        parser.error("--hours: give a number above 0 and at most 168")
    if not 1 <= args.connections <= 300:
        parser.error("--connections: give a whole number from 1 to 300")
    if not 0 <= args.emails_per_mailbox_hour <= 1000:
        parser.error("--emails-per-mailbox-hour: give a number from 0 to 1000")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    if args.json:
        print_json(result)
        return 0
    r = result
    print(f"Wire mode: {r['mailboxes']} mailboxes x {r['hours_per_segment']:g} simulated h per segment, "
          f"{r['connections']} connections, median of {r['repeat']} segments each")
    print(f"{'':<34}{'polls/s':>10}{'best':>9}{'CPU ms/poll':>13}{'least':>8}{'FindItem/s':>12}")
    for name, key in (("engine (WireSandbox.sb.run_for)", "engine"), ("bare exchangelib, same requests", "bare")):
        rate = "engine_polls_per_s" if key == "engine" else "bare_exchangelib_per_s"
        cpu = r[f"{key}_cpu_ms_per_poll"]
        print(f"{name:<34}{r[rate]:>10.1f}{r[rate + '_best']:>9.1f}{cpu['median']:>13.3f}{cpu['min']:>8.3f}"
              f"{r[f'{key}_finditem_per_s']:>12.1f}")
    met = "met" if r["ratio"] >= r["target_ratio"] else "NOT met"
    print(f"{'bare exchangelib, one at a time':<34}{r['bare_serial_per_s']:>10.1f}")
    print(f"ratio engine / bare {r['ratio']:.3f} (target >= {r['target_ratio']}: {met})")
    print(f"EWS requests per poll {r['ews_requests_per_poll']} (per incoming poll {r['ews_requests_per_incoming_poll']})")
    ops = r["ews_requests_per_segment"]
    names = sorted(set(ops["engine"]) | set(ops["bare_exchangelib"]))
    print(f"{'EWS requests of one segment':<34}" + "".join(f"{n:>16}" for n in names))
    for side in ("engine", "bare_exchangelib"):
        print(f"{side:<34}" + "".join(f"{ops[side].get(n, 0):>16}" for n in names))
    print(f"emails delivered {r['emails_delivered']}, tracked {r['emails_tracked']}, errors {r['errors']}; "
          f"setup {r['setup_seconds']} s, wall {r['wall_seconds']} s, load average {r['load_average_1min']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
