"""SMTP ingress: a plain smtplib client against SmtpIngress running in the test's event loop.

The server runs in the loop of ``asyncio.run``; the blocking smtplib client runs in a worker
thread (``asyncio.to_thread``), so the store is only touched from the loop's thread.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.clock import VirtualClock
from simulator.exchange.smtp import SmtpIngress
from simulator.exchange.store import ExchangeStore, IdSource

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
DAVE = "dave@contoso.example"
SENDER = "carl@fabrikam.example"


def make_store() -> ExchangeStore:
    store = ExchangeStore(VirtualClock(T0), IdSource(0))
    for address in (ALICE, BOB, CAROL, DAVE):
        store.add_mailbox(address)
    return store


def message(subject: str = "Hello", to: str = ALICE, cc: str | None = None, body: str = "Hi there.\r\n",
            extra: str = "") -> bytes:
    head = [f"From: Carl <{SENDER}>", f"To: {to}"]
    if cc:
        head.append(f"Cc: {cc}")
    head += [f"Subject: {subject}", "Date: Mon, 02 Mar 2026 09:00:00 +0000",
             f"Message-ID: <{subject.replace(' ', '.')}@fabrikam.example>"]
    if extra:
        head.append(extra)
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def inbox(store: ExchangeStore, address: str) -> list:
    return store.find(address, "inbox", None)


def serve(client: Callable[[SmtpIngress], Any], store: ExchangeStore | None = None,
          **kwargs: Any) -> tuple[Any, SmtpIngress, ExchangeStore]:
    """Start the ingress in a fresh loop, run ``client(ingress)`` in a thread, stop, return."""
    store = store or make_store()

    async def main() -> tuple[Any, SmtpIngress]:
        async with SmtpIngress(store, **kwargs) as ingress:
            result = await asyncio.to_thread(client, ingress)
            return result, ingress

    result, ingress = asyncio.run(main())
    return result, ingress, store


def connect(ingress: SmtpIngress) -> smtplib.SMTP:
    return smtplib.SMTP(ingress.host, ingress.port, local_hostname="client.fabrikam.example", timeout=10)


# -- delivery -------------------------------------------------------------------------------
def test_mail_lands_in_the_inbox_with_the_clocks_received_time():
    def client(ingress):
        with connect(ingress) as smtp:
            return smtp.sendmail(SENDER, [ALICE], message("Quarterly report"))

    refused, ingress, store = serve(client)
    assert refused == {}
    items = inbox(store, ALICE)
    assert len(items) == 1
    item = items[0]
    assert item.received == T0
    assert item.data.subject == "Quarterly report"
    assert item.data.sender == SENDER
    assert item.data.parse_error is None
    assert item.data.raw == message("Quarterly report")  # stored as received
    assert inbox(store, BOB) == []
    assert ingress.stats["accepted"] == 1
    assert ingress.stats["delivered"] == 1
    assert ingress.stats["rejected"] == {}


def test_received_time_follows_the_virtual_clock_between_messages():
    store = make_store()
    clock = store.clock

    def client(ingress):
        with connect(ingress) as smtp:
            smtp.sendmail(SENDER, [ALICE], message("first"))
            clock.advance(3600)  # the loop thread is idle, waiting for this thread
            smtp.sendmail(SENDER, [ALICE], message("second"))

    serve(client, store)
    assert [(i.data.subject, i.received) for i in inbox(store, ALICE)] == [
        ("first", T0), ("second", T0 + timedelta(hours=1))]


def test_the_envelope_decides_delivery_and_bcc_works():
    # Headers: To alice, Cc bob, To dave is not in the envelope; carol is a Bcc (envelope only).
    raw = message("Team update", to=f"{ALICE}, {DAVE}", cc=BOB)

    def client(ingress):
        with connect(ingress) as smtp:
            return smtp.sendmail(SENDER, [ALICE, BOB, CAROL, ALICE.upper()], raw)

    refused, ingress, store = serve(client)
    assert refused == {}
    for address in (ALICE, BOB, CAROL):
        items = inbox(store, address)
        assert [i.data.subject for i in items] == ["Team update"], address
        assert items[0].received == T0
    assert inbox(store, DAVE) == []  # named in the headers only
    assert b"carol" not in inbox(store, CAROL)[0].data.raw  # Bcc is not disclosed
    ids = {inbox(store, a)[0].item_id for a in (ALICE, BOB, CAROL)}
    assert len(ids) == 3
    assert ingress.stats["accepted"] == 1
    assert ingress.stats["delivered"] == 3  # the duplicate envelope recipient counts once


def test_unknown_recipient_is_refused_with_550_5_1_1():
    def client(ingress):
        with connect(ingress) as smtp:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
                smtp.sendmail(SENDER, ["nobody@contoso.example"], message("lost"))
            mixed = smtp.sendmail(SENDER, [ALICE, "ghost@elsewhere.example"], message("half"))
            return caught.value.recipients, mixed

    (refused_all, mixed), ingress, store = serve(client)
    code, text = refused_all["nobody@contoso.example"]
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    assert b"nobody@contoso.example" in text and b"Recipient address rejected" in text
    assert mixed["ghost@elsewhere.example"][0] == 550
    assert [i.data.subject for i in inbox(store, ALICE)] == ["half"]
    assert store.outbound == []  # no relaying
    assert ingress.stats["rejected"] == {"unknown_recipient": 2}
    assert ingress.stats["accepted"] == 1


def test_size_is_advertised_and_oversized_mail_gets_552_5_3_4():
    big = message("big", body=("y" * 70 + "\r\n") * 40)  # ~3 KB

    def client(ingress):
        with connect(ingress) as smtp:
            smtp.ehlo()
            features = dict(smtp.esmtp_features)
            # smtplib announces SIZE= in MAIL FROM: refused before DATA.
            with pytest.raises(smtplib.SMTPSenderRefused) as at_mail:
                smtp.sendmail(SENDER, [ALICE], big)
            # Without SIZE=, the limit is enforced while reading DATA.
            smtp.rset()
            smtp.mail(SENDER)
            smtp.rcpt(ALICE)
            at_data = smtp.data(big)
            # The session goes on: a small message is still accepted.
            small = smtp.sendmail(SENDER, [ALICE], message("small"))
            return features, at_mail.value, at_data, small

    (features, at_mail, at_data, small), ingress, store = serve(client, max_message_bytes=1000)
    assert features["size"] == "1000"
    assert "8bitmime" in features and "smtputf8" in features
    assert at_mail.smtp_code == 552 and at_mail.smtp_error.startswith(b"5.3.4 ")
    assert at_data[0] == 552 and at_data[1].startswith(b"5.3.4 ")
    assert small == {}
    assert [i.data.subject for i in inbox(store, ALICE)] == ["small"]
    assert ingress.stats["rejected"] == {"too_large": 2}


def test_a_line_over_998_characters_is_refused_and_the_session_goes_on():
    long_line = message("long", body="z" * 2000 + "\r\n")

    def client(ingress):
        with connect(ingress) as smtp:
            smtp.ehlo()
            smtp.mail(SENDER)
            smtp.rcpt(ALICE)
            refused = smtp.data(long_line)
            return refused, smtp.sendmail(SENDER, [ALICE], message("short"))

    (refused, ok), ingress, store = serve(client)
    assert refused[0] == 500 and refused[1].startswith(b"5.5.2 ")
    assert ok == {}
    assert [i.data.subject for i in inbox(store, ALICE)] == ["short"]
    assert ingress.stats["rejected"] == {"line_too_long": 1}


def test_default_limit_is_150_mib():
    store = make_store()
    assert SmtpIngress(store).max_message_bytes == 150 * 1024 * 1024


UTF8_RAW = ("From: Zoë <zoe@fabrikam.example>\r\nTo: jürgen@contoso.example\r\n"
            "Subject: Grüße aus Köln\r\nMessage-ID: <utf8@fabrikam.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße — 東京\r\n").encode()


def test_8bitmime_and_smtputf8():
    store = make_store()
    store.add_mailbox("jürgen@contoso.example")
    raw = UTF8_RAW

    def client(ingress):
        with connect(ingress) as smtp:
            a = smtp.sendmail("zoe@fabrikam.example", [ALICE], raw, mail_options=["BODY=8BITMIME"])
            b = smtp.sendmail("zoë@fabrikam.example", ["Jürgen@contoso.example"], raw,
                              mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            return a, b

    (a, b), ingress, store = serve(client, store)
    assert a == {} and b == {}
    assert inbox(store, ALICE)[0].data.raw == raw
    item = inbox(store, "jürgen@contoso.example")[0]  # a UTF-8 envelope address
    assert item.data.raw == raw
    assert item.received == T0
    assert ingress.stats["accepted"] == 2



def test_smtputf8_headers_are_read_as_utf8():
    store = make_store()
    store.deliver(UTF8_RAW, [ALICE])
    data = inbox(store, ALICE)[0].data
    assert data.parse_error is None
    assert data.subject == "Grüße aus Köln"
    assert data.sender == "zoe@fabrikam.example"
    assert "Schöne Grüße" in data.body


def test_malformed_message_is_accepted_and_stored_with_parse_error():
    garbage = b"\x00\xff\xfe not a message at all\r\n\x80\x81 binary junk\r\n"
    no_from = b"To: alice@contoso.example\r\nSubject: who sent this?\r\n\r\nbody\r\n"
    bad_date = message("bad date", extra="X-Note: fine").replace(b"Mon, 02 Mar 2026 09:00:00 +0000", b"yesterday")

    def client(ingress):
        with connect(ingress) as smtp:
            return [smtp.sendmail(SENDER, [ALICE], raw) for raw in (garbage, no_from, bad_date, b"")]

    results, ingress, store = serve(client)
    assert results == [{}, {}, {}, {}]
    items = inbox(store, ALICE)
    assert len(items) == 4
    assert all(i.data.parse_error for i in items), [i.data.parse_error for i in items]
    assert items[0].data.raw == garbage
    assert ingress.stats["accepted"] == 4
    assert ingress.stats["malformed"] == 4


def test_a_failing_delivery_answers_451_and_the_server_carries_on(monkeypatch):
    store = make_store()
    real_deliver = store.deliver
    calls = {"n": 0}

    def flaky(raw, recipients=None, received=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk on fire")
        return real_deliver(raw, recipients, received)

    monkeypatch.setattr(store, "deliver", flaky)

    def client(ingress):
        with connect(ingress) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                smtp.sendmail(SENDER, [ALICE], message("first"))
            smtp.sendmail(SENDER, [ALICE], message("second"))
            return caught.value

    error, ingress, store = serve(client, store)
    assert error.smtp_code == 451
    assert [i.data.subject for i in inbox(store, ALICE)] == ["second"]
    assert ingress.stats["rejected"] == {"internal_error": 1}


# -- robustness and binding -----------------------------------------------------------------
def _raw_session(ingress: SmtpIngress, lines: list[bytes], then: bytes) -> None:
    """Speak SMTP on a raw socket, send a partial DATA, and drop the connection."""
    with socket.create_connection((ingress.host, ingress.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        for line in lines:
            s.sendall(line + b"\r\n")
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            assert reply[:1] in (b"2", b"3"), reply
        s.sendall(then)
        f.close()
        s.shutdown(socket.SHUT_RDWR)  # gone, in the middle of DATA


def test_server_stays_healthy_after_a_client_disconnects_mid_data():
    def client(ingress):
        partial = message("never finished")[:60]
        _raw_session(ingress, [b"EHLO x", f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{ALICE}>".encode(),
                               b"DATA"], partial)
        # And one that vanishes before even greeting back.
        socket.create_connection((ingress.host, ingress.port), timeout=10).close()
        with connect(ingress) as smtp:
            return smtp.sendmail(SENDER, [ALICE], message("after the drop"))

    refused, ingress, store = serve(client)
    assert refused == {}
    assert [i.data.subject for i in inbox(store, ALICE)] == ["after the drop"]
    assert ingress.stats["accepted"] == 1
    assert ingress.stats["connections_total"] == 3


def test_many_concurrent_clients():
    import concurrent.futures

    def one(ingress, n):
        with connect(ingress) as smtp:
            for k in range(5):
                smtp.sendmail(SENDER, [ALICE, BOB], message(f"c{n} m{k}"))

    def client(ingress):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: one(ingress, n), range(8)))

    _, ingress, store = serve(client)
    assert len(inbox(store, ALICE)) == 40 and len(inbox(store, BOB)) == 40
    assert ingress.stats["accepted"] == 40 and ingress.stats["delivered"] == 80
    received = [i.received for i in inbox(store, ALICE)]
    assert len(set(received)) == 40  # kept unique per mailbox by the store, clock unchanged
    assert min(received) == T0


def _noop_and_quit(ingress: SmtpIngress) -> tuple[int, bytes]:
    with connect(ingress) as smtp:
        return smtp.noop()


def test_bound_to_loopback_by_default_and_stop_closes_the_port():
    store = make_store()

    async def main():
        ingress = SmtpIngress(store)
        assert ingress.host == "127.0.0.1"
        await ingress.start()
        bound = [s.getsockname() for s in ingress._server.sockets]
        port = ingress.port
        assert port > 0
        reply = await asyncio.to_thread(lambda: _noop_and_quit(ingress))
        # An idle connection stays open until stop() closes it.
        idle = await asyncio.to_thread(connect, ingress)
        await ingress.stop()
        assert not ingress.running
        return bound, port, reply, idle

    bound, port, reply, idle = asyncio.run(main())
    assert bound == [("127.0.0.1", port)]
    assert reply[0] == 250
    with pytest.raises(smtplib.SMTPServerDisconnected):
        idle.noop()
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_explicit_port_and_context_manager():
    store = make_store()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        async with SmtpIngress(store, port=port) as ingress:
            assert ingress.port == port
            return await asyncio.to_thread(lambda: _noop_and_quit(ingress)[0])

    assert asyncio.run(main()) == 250
