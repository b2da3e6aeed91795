"""engine/ews.py: the engine's ExchangePort over exchangelib, against the fake EWS endpoint.

Each test runs one event loop that carries both the HTTPS server (EWS + Autodiscover on loopback)
and the engine side; exchangelib runs in the port's worker threads. Results are compared with
DirectExchange (the reference semantics) on an identical store.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from exchangelib import errors as ews_errors

from engine.autodiscover import AutodiscoverResolver, discover_ews_url
from engine.clock import VirtualClock
from engine.errors import ExchangeError, TokenError
from engine.ews import EwsExchange, map_error
from engine.ports import ExchangePort, ItemProperties, OutgoingMessage
from simulator.exchange.autodiscover import autodiscover_routes
from simulator.exchange.direct import DirectExchange
from simulator.exchange.ews import EwsService
from simulator.exchange.mime import MessageData
from simulator.exchange.store import ExchangeStore, IdSource
from simulator.faults import FaultInjector, FaultRule
from simulator.tls import ensure_tls
from simulator.web import WebServer

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CARL = "carl@fabrikam.example"
START = datetime.fromisoformat("2026-01-05T08:00:00+00:00")
MISSING_ITEM = "AAMkA" + "0" * 20  # shaped like the server's item ids (a malformed one is ErrorInvalidIdMalformed)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return ensure_tls(tmp_path_factory.mktemp("tls"))


class FakeTokens:
    """A token source: ``tokens[n]`` after ``n`` invalidations (the last one repeats)."""

    def __init__(self, *tokens: str, fail: bool = False) -> None:
        self.tokens = list(tokens or ("sandbox-token",))
        self.invalidated = 0
        self.requests = 0
        self.fail = fail

    async def get_token(self) -> str:
        self.requests += 1
        if self.fail:
            raise TokenError("invalid_client: the certificate has expired")
        return self.tokens[min(self.invalidated, len(self.tokens) - 1)]

    def invalidate(self) -> None:
        self.invalidated += 1


def seeded_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda sender: f"wire{next(counter):06d}@{sender.split('@')[-1]}"


def make_store(seed: int = 7) -> tuple[VirtualClock, ExchangeStore]:
    clock = VirtualClock(START)
    store = ExchangeStore(clock, IdSource(seed))
    for address in (ALICE, BOB):
        store.add_mailbox(address)
    return clock, store


@dataclass
class Env:
    clock: VirtualClock
    store: ExchangeStore
    service: EwsService
    web: WebServer
    tls: Any
    ports: list[EwsExchange] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.web.base_url + "/EWS/Exchange.asmx"

    def port(self, tokens: FakeTokens | None = None, **kw: Any) -> EwsExchange:
        kw.setdefault("ca_file", self.tls.ca_file)
        kw.setdefault("clock", self.clock)
        kw.setdefault("message_id_factory", seeded_ids())
        ex = EwsExchange(kw.pop("ews_url", self.url), tokens or FakeTokens(), **kw)
        self.ports.append(ex)
        return ex


def run_env(tls, scenario: Callable[[Env], Awaitable[Any]], *, store: tuple[VirtualClock, ExchangeStore] | None = None,
            **service_kw: Any) -> Any:
    async def main() -> Any:
        clock, st = store or make_store()
        service = EwsService(st, clock, **service_kw)
        web = WebServer(ssl_context=tls.server_context())
        web.add_routes(service.routes())
        web.add_routes(autodiscover_routes(st, lambda: web.base_url))
        await web.start()
        env = Env(clock, st, service, web, tls)
        try:
            return await scenario(env)
        finally:
            for p in env.ports:
                p.close()
            await web.stop()

    return asyncio.run(main())


def fill(store: ExchangeStore, clock: VirtualClock) -> None:
    """The same mail, in the same order, for every store of a comparison."""
    clock.advance(1)
    store.deliver(MessageData(subject="Quote", sender=CARL, to=(ALICE,), cc=(BOB, "dana@fabrikam.example"),
                              message_id="q1@fabrikam.example", body="Please quote.\nThanks",
                              date=START - timedelta(minutes=5)))
    clock.advance(0.000001)
    store.deliver(b"From: Carl <CARL@Fabrikam.example>\r\nTo: Alice <alice@contoso.example>\r\n"
                  b"Subject: =?utf-8?q?R=C3=A9ponse?=\r\nMessage-ID: <Reply.1@Fabrikam.EXAMPLE>\r\n"
                  b"In-Reply-To: <Q1@fabrikam.example>\r\nReferences: <q0@fabrikam.example> <Q1@fabrikam.example>\r\n"
                  b"Thread-Index: AdoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
                  b"Date: Mon, 05 Jan 2026 07:59:00 +0000\r\n\r\nMerci\r\n")
    clock.advance(2.5)
    store.deliver(b"garbage without headers\r\n", [ALICE])  # malformed: no From
    clock.advance(1)
    item = store.deliver(MessageData(subject="Tagged", sender=CARL, to=(ALICE,), message_id="t1@fabrikam.example",
                                     date=START))[ALICE]
    store.update(ALICE, item, categories=["Blue", "Tracked to Dynamics 365"])
    clock.advance(1)
    store.send(ALICE, MessageData(subject="Out", to=(CARL,), body="from alice", message_id="o1@contoso.example"))


def comparable(items: list[ItemProperties]) -> list[ItemProperties]:
    """What both ports agree on. EWS always serves DateTimeSent (the store has no date for a message
    without a Date header), and over EWS the only sign of a malformed message is its missing sender,
    so the wire port cannot say why it is malformed (the store's parser can)."""
    return [replace(i, date=i.date or i.received, parse_error="malformed" if i.parse_error else None)
            for i in items]


async def exercise(port: ExchangePort, store: ExchangeStore) -> dict[str, Any]:
    """The engine's calls in the order a cycle makes them; everything observable, ids included."""
    out: dict[str, Any] = {}
    inbox = await port.find_new_items(ALICE, "inbox", None, 1000)
    out["inbox"] = comparable(inbox)
    out["sent"] = comparable(await port.find_new_items(ALICE, "sentitems", None, 1000))
    out["after"] = [i.subject for i in await port.find_new_items(ALICE, "inbox", inbox[0].received, 1000)]
    folder = await port.ensure_folder(ALICE, "inbox", "Undeliverable", None)
    out["folder"] = (folder, await port.ensure_folder(ALICE, "inbox", "Undeliverable", folder),
                     await port.ensure_folder(ALICE, "inbox", "undeliverable", None))
    out["moved"] = await port.move_item(ALICE, inbox[2].item_id, folder)
    await port.add_category(ALICE, inbox[0].item_id, "Undeliverable")
    await port.add_category(ALICE, inbox[0].item_id, "Undeliverable")  # twice: still once
    await port.add_category(ALICE, inbox[3].item_id, "Undeliverable")
    await port.delete_item(ALICE, inbox[1].item_id)
    out["inbox_after"] = comparable(await port.find_new_items(ALICE, "inbox", None, 1000))
    out["undeliverable"] = [(i.item_id, i.data.subject, bool(i.data.parse_error)) for i in store.find(ALICE, folder, None)]
    return out


# -- each port method against the server and against DirectExchange -----------------------------
def test_port_methods_match_direct_exchange(tls):
    clock, wire_store = make_store()
    fill(wire_store, clock)
    dclock, direct_store = make_store()
    fill(direct_store, dclock)

    async def scenario(env: Env):
        return await exercise(env.port(), env.store)

    wire = run_env(tls, scenario, store=(clock, wire_store))
    direct = asyncio.run(exercise(DirectExchange(direct_store), direct_store))
    assert wire == direct  # same ids (same seed, same creations), same properties
    inbox = wire["inbox"]
    assert [i.subject for i in inbox] == ["Quote", "Réponse", "", "Tagged"]
    reply = inbox[1]
    assert reply.message_id == "reply.1@fabrikam.example" and reply.in_reply_to == "q1@fabrikam.example"
    assert reply.references == ("q0@fabrikam.example", "q1@fabrikam.example")
    assert reply.thread_index == "AdoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==" and reply.sender == CARL
    assert inbox[0].cc == (BOB, "dana@fabrikam.example") and inbox[0].body == "Please quote.\nThanks"
    assert inbox[2].parse_error and inbox[2].sender is None  # malformed: its From is missing
    assert inbox[3].categories == ("Blue", "Tracked to Dynamics 365")
    assert inbox[1].received - inbox[0].received == timedelta(microseconds=1)
    assert wire["after"] == ["Réponse", "", "Tagged"]
    assert [i.subject for i in wire["sent"]] == ["Out"] and wire["sent"][0].folder == "sentitems"
    assert len(set(wire["folder"])) == 1
    assert [i.categories for i in wire["inbox_after"]] == [("Undeliverable",),
                                                           ("Blue", "Tracked to Dynamics 365", "Undeliverable")]
    assert wire["undeliverable"] == [(wire["moved"], "", True)]


# -- "received after" the watermark, microseconds, paging ----------------------------------------
def test_received_strictly_after_with_microseconds(tls):
    async def scenario(env: Env):
        ids = [env.store.deliver(MessageData(subject=f"m{n}", sender=CARL, to=(ALICE,)))[ALICE] for n in range(5)]
        received = [env.store.get(ALICE, i).received for i in ids]
        assert received[1] - received[0] == timedelta(microseconds=1)  # same clock instant, kept unique
        port = env.port()
        for k in range(5):
            got = await port.find_new_items(ALICE, "inbox", received[k], 1000)
            assert [i.subject for i in got] == [f"m{n}" for n in range(k + 1, 5)]
            assert [i.received for i in got] == received[k + 1:]
        just_before = received[2] - timedelta(microseconds=1)
        assert [i.subject for i in await port.find_new_items(ALICE, "inbox", just_before, 1000)] == ["m2", "m3", "m4"]
        assert await port.find_new_items(ALICE, "inbox", received[4], 1000) == []
        naive_utc = received[3].replace(tzinfo=None)  # naive means UTC
        assert [i.subject for i in await port.find_new_items(ALICE, "inbox", naive_utc, 1000)] == ["m4"]
        other_zone = received[3].astimezone(timezone(timedelta(hours=-5)))
        assert [i.subject for i in await port.find_new_items(ALICE, "inbox", other_zone, 1000)] == ["m4"]

    run_env(tls, scenario)


def test_paging_cap_and_oldest_first(tls):
    async def scenario(env: Env):
        for n in range(1203):
            env.clock.advance(0.001)
            env.store.deliver(MessageData(subject=f"m{n:04d}", sender=CARL, to=(ALICE,)))
        port = env.port()
        direct = DirectExchange(env.store)
        page = await port.find_new_items(ALICE, "inbox", None, 5000)
        assert len(page) == 1000 and page[0].subject == "m0000" and page[-1].subject == "m0999"
        assert env.service.calls["FindItem"] == 1  # one page, not 1203 items in several pages
        assert page == comparable(await direct.find_new_items(ALICE, "inbox", None, 5000))
        rest = await port.find_new_items(ALICE, "inbox", page[-1].received, 1000)
        assert [i.subject for i in rest] == [f"m{n:04d}" for n in range(1000, 1203)]
        five = await port.find_new_items(ALICE, "inbox", page[10].received, 5)
        assert [i.subject for i in five] == ["m0011", "m0012", "m0013", "m0014", "m0015"]

    run_env(tls, scenario)


# -- the Undeliverable folder -------------------------------------------------------------------
def test_undeliverable_folder_created_once_and_reused(tls):
    async def scenario(env: Env):
        port = env.port()
        first = await port.ensure_folder(ALICE, "inbox", "Undeliverable", None)
        assert await port.ensure_folder(ALICE, "inbox", "Undeliverable", first) == first
        assert await port.ensure_folder(ALICE, "inbox", "Undeliverable", None) == first
        assert env.service.calls["CreateFolder"] == 1
        assert [f.name for f in env.store.child_folders(ALICE, "inbox")] == ["Undeliverable"]
        # someone deleted it: the stale id is noticed and a new folder is made
        env.store.delete_folder(ALICE, first)
        second = await port.ensure_folder(ALICE, "inbox", "Undeliverable", first)
        assert second != first and env.store.find_child(ALICE, "inbox", "Undeliverable").folder_id == second
        # a stale id while the folder exists under that name: found by name
        assert await port.ensure_folder(ALICE, "inbox", "Undeliverable", "AAMkFAgone") == second
        assert env.service.calls["CreateFolder"] == 2

    run_env(tls, scenario)


def test_ensure_folder_race_on_create(tls, monkeypatch):
    """Another client created the folder between our lookup and our create: ErrorFolderExists -> look it up."""
    async def scenario(env: Env):
        port = env.port()
        real = EwsExchange._find_child
        calls = []

        def racing(account, parent_folder, name):
            calls.append(name)
            if len(calls) == 1:  # the first lookup misses; the folder appears right after
                env.store.create_folder(ALICE, "inbox", name)
                return None
            return real(account, parent_folder, name)

        monkeypatch.setattr(EwsExchange, "_find_child", staticmethod(racing))
        got = await port.ensure_folder(ALICE, "inbox", "Undeliverable", None)
        assert got == env.store.find_child(ALICE, "inbox", "Undeliverable").folder_id
        assert len(calls) == 2 and env.service.calls["CreateFolder"] == 1  # it answered ErrorFolderExists

    run_env(tls, scenario)


# -- send ----------------------------------------------------------------------------------------
def test_send_with_a_given_message_id_and_find_it_in_sent_items(tls):
    async def scenario(env: Env):
        port = env.port()
        assert await port.find_sent(ALICE, "crm-1@contoso.example") is None
        message = OutgoingMessage(subject="Offer", body="b", sender=ALICE, to=(CARL,),
                                  message_id="crm-1@contoso.example")
        result = await port.send(ALICE, message)
        assert result.message_id == "crm-1@contoso.example"
        assert await port.find_sent(ALICE, "<crm-1@contoso.example>") == result.sent_item_id
        assert await port.find_sent(ALICE, "other@contoso.example") is None

    run_env(tls, scenario)


def test_send_delivers_locally_and_records_external(tls):
    async def scenario(env: Env):
        port = env.port()
        message = OutgoingMessage(subject="Quote CRM:0001", body="Dear Bob,\nhere it is.", sender=ALICE,
                                  to=(BOB, CARL), cc=("dana@fabrikam.example",), bcc=("eve@contoso.example",),
                                  in_reply_to="<Q1@Fabrikam.example>")
        result = await port.send(ALICE, message)
        assert result.message_id == "wire000001@contoso.example"
        sent = env.store.get(ALICE, result.sent_item_id)
        assert sent.folder_id == env.store.mailbox(ALICE).distinguished["sentitems"]
        assert sent.data.message_id == result.message_id and sent.data.subject == "Quote CRM:0001"
        bob = env.store.find(BOB, "inbox", None)
        assert len(bob) == 1
        got = bob[0].data
        assert (got.sender, got.to, got.cc, got.in_reply_to) == (ALICE, (BOB, CARL), ("dana@fabrikam.example",),
                                                                 "q1@fabrikam.example")
        assert got.body == "Dear Bob,\nhere it is." and got.message_id == result.message_id
        sender, external, data = env.store.outbound[-1]
        assert sender == ALICE and set(external) == {CARL, "dana@fabrikam.example", "eve@contoso.example"}
        assert data.message_id == result.message_id
        # what the engine then reads back from Bob's Inbox is what direct mode reads
        wire_props = await port.find_new_items(BOB, "inbox", None, 10)
        assert wire_props == comparable(await DirectExchange(env.store).find_new_items(BOB, "inbox", None, 10))
        assert wire_props[0].message_id == result.message_id and wire_props[0].sender == ALICE

        no_copy = await port.send(ALICE, OutgoingMessage(subject="Test", body="x", sender=ALICE, to=(ALICE,),
                                                         save_copy=False))
        assert no_copy.sent_item_id is None and len(env.store.find(ALICE, "sentitems", None)) == 1
        mine = await port.find_new_items(ALICE, "inbox", None, 10)
        assert [i.message_id for i in mine] == [no_copy.message_id]  # what Test & Enable looks for
        await port.delete_item(ALICE, mine[0].item_id)
        assert env.store.find(ALICE, "inbox", None) == []

    run_env(tls, scenario)


def test_send_matches_direct_exchange(tls):
    message = OutgoingMessage(subject="Hi", body="b", sender=ALICE, to=(BOB,), cc=(CARL,), in_reply_to="x@y")

    async def scenario(env: Env):
        r = await env.port(message_id_factory=lambda s: "fixed@contoso.example").send(ALICE, message)
        return r, env.store

    wire, wire_store = run_env(tls, scenario)
    _, direct_store = make_store()
    direct = asyncio.run(DirectExchange(direct_store).send(ALICE, replace(message, headers={})))
    # (ids differ from here on: the direct store drew an id for the Message-ID it made up)
    assert wire_store.get(ALICE, wire.sent_item_id).data.subject == direct_store.get(ALICE, direct.sent_item_id).data.subject
    for store in (wire_store, direct_store):
        assert [i.data.subject for i in store.find(BOB, "inbox", None)] == ["Hi"]
        assert [a for _, a, _ in store.outbound] == [(CARL,)]
    w, d = wire_store.find(BOB, "inbox", None)[0], direct_store.find(BOB, "inbox", None)[0]
    assert (w.received, w.data.to, w.data.cc, w.data.in_reply_to, w.data.body) == \
        (d.received, d.data.to, d.data.cc, d.data.in_reply_to, d.data.body)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, operation, expected", [
    ("ErrorServerBusy", "find_new_items", "ErrorServerBusy"),
    ("ErrorExceededConnectionCount", "find_new_items", "ErrorExceededConnectionCount"),
    ("ErrorMailboxStoreUnavailable", "move_item", "ErrorMailboxStoreUnavailable"),
    ("ErrorNonExistentMailbox", "find_new_items", "ErrorNonExistentMailbox"),
    ("ErrorAccessDenied", "delete_item", "ErrorAccessDenied"),
    ("8005E274", "find_new_items", "ErrorAccessDenied"),  # how Exchange shows it on the wire
    ("ErrorQuotaExceeded", "send", "ErrorQuotaExceeded"),
    ("ErrorSubmissionQuotaExceeded", "send", "ErrorSubmissionQuotaExceeded"),
    ("HttpServiceUnavailable", "find_new_items", "HttpServiceUnavailable"),
    ("HttpInternalServerError", "find_new_items", "HttpInternalServerError"),
    ("NetworkError", "find_new_items", "NetworkError"),
    ("ErrorInternalServerError", "find_new_items", "ErrorInternalServerError"),
    ("8005E272", "find_new_items", "8005E272"),
])
def test_fault_codes_map_to_engine_errors(tls, code, operation, expected):
    faults = FaultInjector()
    faults.add(FaultRule(code=code, operation=operation, mailbox=ALICE, count=2,
                         backoff_ms=2500 if code == "ErrorServerBusy" else None))
    calls: dict[str, Callable[[ExchangePort], Awaitable[Any]]] = {
        "find_new_items": lambda p: p.find_new_items(ALICE, "inbox", None, 10),
        "ensure_folder": lambda p: p.ensure_folder(ALICE, "inbox", "Undeliverable", None),
        "move_item": lambda p: p.move_item(ALICE, item_id, env_folder[0]),
        "add_category": lambda p: p.add_category(ALICE, item_id, "Undeliverable"),
        "delete_item": lambda p: p.delete_item(ALICE, item_id),
        "send": lambda p: p.send(ALICE, OutgoingMessage(subject="s", body="b", sender=ALICE, to=(BOB,))),
    }
    env_folder: list[str] = []
    item_id = ""

    async def scenario(env: Env):
        nonlocal item_id
        item_id = env.store.deliver(MessageData(subject="x", sender=CARL, to=(ALICE,)))[ALICE]
        env_folder.append(env.store.create_folder(ALICE, "inbox", "Elsewhere").folder_id)
        tokens = FakeTokens("t1", "t2")
        port = env.port(tokens)
        await port.find_new_items(BOB, "inbox", None, 1)  # warm up another mailbox: no rule for it...
        with pytest.raises(ExchangeError) as caught:
            await calls[operation](port)
        err = caught.value
        assert err.code == expected, err
        if expected == "ErrorServerBusy":
            assert err.backoff_ms == 2500 and err.transient
        if expected == "8005E272":
            assert tokens.invalidated == 1 and not err.transient  # refreshed once, retried once, refused again
        else:
            assert tokens.invalidated == 0
        # the rule fired for the first time(s); afterwards the same call works
        faults.clear()
        await calls[operation](port)
        return err

    run_env(tls, scenario, faults=faults)
    # the same rule in direct mode raises the same code (except the CRM-only code shown as access denied)
    direct_faults = FaultInjector()
    direct_faults.add(FaultRule(code=code, operation=operation, count=1))
    clock, store = make_store()
    with pytest.raises(ExchangeError) as direct_err:
        asyncio.run(calls[operation](DirectExchange(store, direct_faults)))
    assert direct_err.value.code == (code if code != "8005E274" else "8005E274")


def test_unknown_mailbox_and_missing_item_without_faults(tls):
    async def scenario(env: Env):
        port = env.port()
        with pytest.raises(ExchangeError) as nobody:
            await port.find_new_items("nobody@contoso.example", "inbox", None, 1)
        assert nobody.value.code == "ErrorNonExistentMailbox" and not nobody.value.transient
        folder = env.store.mailbox(ALICE).distinguished["deleteditems"]
        for call in (port.delete_item(ALICE, MISSING_ITEM), port.move_item(ALICE, MISSING_ITEM, folder),
                     port.add_category(ALICE, MISSING_ITEM, "x")):
            with pytest.raises(ExchangeError) as missing:
                await call
            assert missing.value.code == "ErrorItemNotFound"
        with pytest.raises(ExchangeError) as no_folder:
            await port.ensure_folder(ALICE, "junkemail", "Undeliverable", None)  # not a folder the engine uses
        assert no_folder.value.code == "ErrorFolderNotFound"

    run_env(tls, scenario)


def test_move_to_a_missing_folder_is_folder_not_found(tls):
    async def scenario(env: Env):
        item = env.store.deliver(MessageData(subject="x", sender=CARL, to=(ALICE,)))[ALICE]
        with pytest.raises(ExchangeError) as caught:
            await env.port().move_item(ALICE, item, "AAMkFA0000000000010000fff0")
        assert caught.value.code == "ErrorFolderNotFound"

    run_env(tls, scenario)


@pytest.mark.parametrize("exc, code", [
    (ews_errors.ErrorServerBusy("busy", back_off=1.5), "ErrorServerBusy"),
    (ews_errors.ErrorServerBusy("Reraised from ErrorInternalServerTransientError(Caused by HTTP 503 response)",
                                back_off=10), "HttpServiceUnavailable"),
    (ews_errors.ErrorInternalServerTransientError("Caused by HTTP 503 response"), "HttpServiceUnavailable"),
    (ews_errors.MalformedResponseError("Unknown failure in response. Code: 500 headers: {} content: x"),
     "HttpInternalServerError"),
    (ews_errors.ErrorTimeoutExpired("Reraised from ConnectionError(reset)"), "NetworkError"),
    (ews_errors.ErrorServerBusy("Reraised from ErrorTimeoutExpired(Reraised from ReadTimeout(x))"), "NetworkError"),
    (ews_errors.ErrorServerBusy("Reraised from ErrorTimeoutExpired(the server gave up)"), "ErrorTimeoutExpired"),
    (ews_errors.ErrorTimeoutExpired("the server gave up"), "ErrorTimeoutExpired"),
    (ews_errors.TransportError("certificate verify failed"), "NetworkError"),
    (ews_errors.UnauthorizedError("Invalid credentials"), "8005E272"),
    (ews_errors.ErrorQuotaExceeded("full"), "ErrorQuotaExceeded"),
    (ews_errors.ErrorSubmissionQuotaExceeded("slow down"), "ErrorSubmissionQuotaExceeded"),
    (ews_errors.ErrorMailboxStoreUnavailable("down"), "ErrorMailboxStoreUnavailable"),
    (ews_errors.ErrorExceededConnectionCount("27"), "ErrorExceededConnectionCount"),
    (ews_errors.ErrorNonExistentMailbox("who"), "ErrorNonExistentMailbox"),
    (ews_errors.ErrorAccessDenied("no"), "ErrorAccessDenied"),
    (ews_errors.ErrorFolderNotFound("gone"), "ErrorFolderNotFound"),
    (ews_errors.ErrorInvalidOperation("what"), "ErrorInvalidOperation"),
    (ValueError("boom"), "ErrorInternalServerError"),
])
def test_map_error_table(exc, code):
    err = map_error(exc)
    assert isinstance(err, ExchangeError) and err.code == code
    if code == "ErrorServerBusy":
        assert err.backoff_ms == 1500
    if code == "ErrorInternalServerError":
        assert "boom" in err.detail


def test_client_timeout_is_a_network_error(tls):
    async def delay(operation, mailbox):
        if operation == "FindItem":
            await asyncio.sleep(1.5)

    async def scenario(env: Env):
        port = env.port(timeout_s=0.3)
        with pytest.raises(ExchangeError) as caught:
            await port.find_new_items(ALICE, "inbox", None, 10)
        assert caught.value.code == "NetworkError" and caught.value.transient

    run_env(tls, scenario, delay=delay)


def test_401_invalidates_the_token_and_retries_once(tls):
    seen: list[tuple[str | None, str | None]] = []

    def authorize(token, mailbox):
        seen.append((token, mailbox))
        if token != "fresh":
            raise PermissionError("the token has expired")

    async def scenario(env: Env):
        tokens = FakeTokens("stale", "fresh")
        port = env.port(tokens)
        env.store.deliver(MessageData(subject="hello", sender=CARL, to=(ALICE,)))
        items = await port.find_new_items(ALICE, "inbox", None, 10)
        assert [i.subject for i in items] == ["hello"]
        assert tokens.invalidated == 1 and port.token_refreshes == 1
        assert ("stale", ALICE) in seen and seen[-1] == ("fresh", ALICE)
        # the fresh token stays in use: no more refreshes
        await port.find_new_items(ALICE, "inbox", None, 10)
        assert tokens.invalidated == 1

        always_bad = FakeTokens("bad", "still-bad")
        refused = env.port(always_bad)
        with pytest.raises(ExchangeError) as caught:
            await refused.find_new_items(ALICE, "inbox", None, 10)
        assert caught.value.code == "8005E272" and always_bad.invalidated == 1  # exactly one retry
        # a token source that cannot get a token at all: its TokenError goes through unchanged
        with pytest.raises(TokenError) as token_err:
            await env.port(FakeTokens(fail=True)).find_new_items(ALICE, "inbox", None, 10)
        assert token_err.value.code == "AuthenticationFailure"

    run_env(tls, scenario, authorize=authorize)


# -- the concurrency cap -------------------------------------------------------------------------
def test_at_most_maxconcurrentconnections_calls_in_flight(tls):
    gate: dict[str, asyncio.Event] = {}
    peak = {"now": 0, "max": 0}

    async def delay(operation, mailbox):
        peak["now"] += 1
        peak["max"] = max(peak["max"], peak["now"])
        try:
            await asyncio.wait_for(gate["open"].wait(), 20)
        finally:
            peak["now"] -= 1

    async def scenario(env: Env):
        gate["open"] = asyncio.Event()
        mailboxes = [f"user{n}@contoso.example" for n in range(8)]
        for address in mailboxes:
            env.store.add_mailbox(address)
            env.store.deliver(MessageData(subject=f"for {address}", sender=CARL, to=(address,)))
        port = env.port(max_connections=3)
        tasks = [asyncio.ensure_future(port.find_new_items(a, "inbox", None, 10)) for a in mailboxes]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if peak["now"] >= 3:
                break
        await asyncio.sleep(0.2)  # give any extra request time to show up
        assert peak["now"] == 3 and port.in_flight == 3
        gate["open"].set()
        results = await asyncio.gather(*tasks)
        assert [r[0].subject for r in results] == [f"for {a}" for a in mailboxes]
        assert peak["max"] == 3 and port.max_in_flight == 3 and port.in_flight == 0

    run_env(tls, scenario, delay=delay)


# -- Autodiscover ----------------------------------------------------------------------------------
def test_autodiscover(tls):
    async def scenario(env: Env):
        base = env.web.base_url
        assert await discover_ews_url(base, ALICE, tls.ca_file) == env.url
        with pytest.raises(ExchangeError) as missing:
            await discover_ews_url(base, "nobody@contoso.example", tls.ca_file)
        assert missing.value.code == "ErrorNonExistentMailbox"
        resolver = AutodiscoverResolver(base, tls.ca_file)
        env.store.deliver(MessageData(subject="found", sender=CARL, to=(BOB,)))
        port = env.port(ews_url=resolver)
        assert [i.subject for i in await port.find_new_items(BOB, "inbox", None, 5)] == ["found"]
        with pytest.raises(ExchangeError) as unknown:
            await port.find_new_items("nobody@contoso.example", "inbox", None, 5)
        assert unknown.value.code == "ErrorNonExistentMailbox"

    run_env(tls, scenario)


# -- the real engine over the wire ---------------------------------------------------------------
def test_engine_cycle_over_ews(tls):
    from support import ALICE as ORG_ALICE
    from support import CARL as ORG_CARL
    from support import build_org, msg

    def scenario_for(org, wire: bool):
        async def main():
            sb = org.sb
            web = None
            if wire:
                service = EwsService(sb.store, sb.clock)
                web = WebServer(ssl_context=tls.server_context())
                web.add_routes(service.routes())
                await web.start()
                profile = org.profile()
                port = EwsExchange(web.base_url + "/EWS/Exchange.asmx", FakeTokens(), clock=sb.clock,
                                   max_connections=profile.maxconcurrentconnections, ca_file=tls.ca_file,
                                   message_id_factory=seeded_ids())
                sb.engine.exchange = port
            try:
                sb.deliver(msg("Order 42", sender=ORG_CARL, to=(ORG_ALICE,), message_id="order42@fabrikam.example"))
                sb.deliver(b"garbage without headers\r\n", [ORG_ALICE])
                await sb.run_for(3600)
                aid = sb.crm.create_email(sender_userid=org.users[ORG_ALICE], to=[ORG_CARL], subject="Quote")
                sb.crm.send_email(aid)
                await sb.run_for(3600)
            finally:
                if wire:
                    port.close()
                    await web.stop()
            if wire:  # the engine really went over the wire
                assert service.calls["FindItem"] >= 2 and service.calls["CreateItem"] >= 1
                assert service.calls["MoveItem"] == 1 and service.calls["CreateFolder"] == 1
                assert port.calls > 0 and port.max_in_flight <= profile.maxconcurrentconnections
        asyncio.run(main())

    results = {}
    for wire in (False, True):
        org = build_org(seed=3, profile={"moveundeliveredemails": True})
        try:
            scenario_for(org, wire)
            stats = org.sb.engine.stats
            received = sorted((e.subject, e.statuscode) for e in org.received())
            sent = sorted((e.subject, e.statuscode) for e in org.emails() if e.directioncode)
            undeliverable = org.sb.store.find_child(ORG_ALICE, "inbox", "Undeliverable")
            results[wire] = dict(
                tracked=stats.emails_tracked, undeliverable=stats.emails_undeliverable, sent=stats.emails_sent,
                errors=dict(stats.errors), received=received, sent_rows=sent,
                moved=len(undeliverable.items) if undeliverable else 0,
                outbound=[(a, d.subject.split(" CRM:")[0]) for _, a, d in org.sb.store.outbound],
                mailbox=org.mailbox(ORG_ALICE).processemailreceivedafter,
            )
        finally:
            org.sb.close()
    wire, direct = results[True], results[False]
    assert wire["tracked"] >= 1 and ("Order 42", 4) in wire["received"]
    assert wire["undeliverable"] == 1 and wire["moved"] == 1
    assert wire["sent"] == 1 and wire["errors"] == {}
    assert any(a == (ORG_CARL,) and s.startswith("Quote") for a, s in wire["outbound"])
    assert wire == direct, (wire, direct)  # the same CRM outcome both ways
