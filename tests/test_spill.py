"""The message spill (``simulator/exchange/spill.py``) and the compact bookkeeping of stored items.

What is checked: a message written to a spill reads back equal, field by field and type by type
(raw bytes that are not UTF-8, surrogates, a date with its offset, extra headers, kept
properties, the shared empty mapping); messages past the write buffer and larger than it come
back from the file; a spill whose file cannot be opened keeps the bytes in memory and loses
nothing; a forked process writes to a file of its own and neither side's messages are damaged;
an item the store delivered holds a ref, not the message, and reads back what was delivered,
also after an update, a copy and a reopen of the world; a store with ``spills`` off keeps the
message itself; a folder's change journal and order read as the lists of tuples they were.
"""

from __future__ import annotations

import os
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.clock import VirtualClock
from simulator.crm.db import sqlite_url
from simulator.exchange import spill as spill_module
from simulator.exchange.mime import NOTHING_KEPT, MessageData, parse_message
from simulator.exchange.spill import MessageSpill
from simulator.exchange.store import ChangeJournal, ExchangeStore
from simulator.sandbox import Sandbox

EXT_PARTNER = "partner@fabrikam.example"

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
A = "a@contoso.example"
B = "b@contoso.example"
RAW = (b"From: Carl <carl@fabrikam.example>\r\nTo: a@contoso.example\r\nSubject: caf\xc3\xa9\r\n"
       b"X-Odd: \xff\xfe not utf-8\r\nDate: Mon, 05 Jan 2026 07:30:00 +0100\r\nMessage-ID: <m1@f.example>\r\n"
       b"\r\nhello \xe2\x98\x83 \xff\r\n")


def _same(a: MessageData, b: MessageData) -> None:
    assert a == b
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        assert type(x) is type(y), name
        if isinstance(x, datetime):
            assert x.utcoffset() == y.utcoffset() and x.tzinfo == y.tzinfo


def _full() -> MessageData:
    return MessageData(subject="s \udcff", sender="x@y.example", to=(A, B), cc=(B,), bcc=("z@y.example",),
                       message_id="m@y", in_reply_to="r@y", references=("r0@y", "r@y"), thread_index="AQHZ",
                       date=datetime(2026, 1, 5, 7, 30, tzinfo=timezone(timedelta(hours=1))), body="b\u2603",
                       size=12, parse_error="bad", extra_headers={"X-K": "v"}, raw=b"\xff\x00raw",
                       item_type="Contact", item_class="IPM.Contact", kept={"DisplayName": "<t:DisplayName/>"})


@pytest.fixture
def spill(tmp_path):
    s = MessageSpill(directory=str(tmp_path))
    yield s
    s.close()


def test_a_message_reads_back_equal_field_by_field(spill):
    for data in (_full(), MessageData(), parse_message(RAW), parse_message(b"no headers at all")):
        ref = spill.put(data)
        assert ref is not None
        back = spill.load(ref)
        assert back is not data
        _same(back, data)
    plain = spill.load(spill.put(MessageData(subject="plain")))
    assert plain.extra_headers is NOTHING_KEPT and plain.kept is NOTHING_KEPT


class _Text(str):
    pass


@pytest.mark.parametrize("data", [
    MessageData(subject="naive", date=datetime(2026, 1, 5, 7, 30, 1, 999)),
    MessageData(subject="utc", date=datetime(2026, 1, 5, 7, 30, tzinfo=UTC)),
    MessageData(subject="odd offset", date=datetime(2026, 1, 5, 7, 30, tzinfo=timezone(timedelta(hours=-3, seconds=7)))),
    MessageData(subject="fold", date=datetime(2026, 1, 5, 7, 30, fold=1, tzinfo=timezone(timedelta(hours=2)))),
    # pickled whole: a named zone, a str subclass, raw bytes that are not bytes
    MessageData(subject="named", date=datetime(2026, 1, 5, 7, 30, tzinfo=timezone(timedelta(hours=-5), "EST"))),
    MessageData(subject=_Text("a str subclass"), to=(_Text("a@b.example"),)),
    MessageData(subject="bytearray", raw=bytearray(b"raw")),
])
def test_dates_and_odd_values_read_back_exactly(spill, data):
    back = spill.load(spill.put(data))
    _same(back, data)
    if data.date is not None:
        assert back.date.tzname() == data.date.tzname() and back.date.fold == data.date.fold


def test_messages_past_the_buffer_and_larger_than_it_come_back_from_the_file(spill, tmp_path):
    small = [MessageData(subject=f"m{i}", body="x" * 300) for i in range(400)]
    refs = [spill.put(d) for d in small]
    big = MessageData(subject="big", raw=os.urandom(300_000))
    big_ref = spill.put(big)
    spill._cache.clear()
    assert spill._written > 0  # (written to the file, not only buffered)
    for d, ref in zip(small, refs, strict=True):
        _same(spill.load(ref), d)
    _same(spill.load(big_ref), big)


def test_a_spill_whose_file_cannot_be_opened_keeps_the_bytes_in_memory(tmp_path):
    spill = MessageSpill(directory=str(tmp_path / "missing"), cache=0)  # (no such directory)
    datas = [MessageData(subject=f"m{i}", body="y" * 1000) for i in range(100)]
    refs = [spill.put(d) for d in datas]
    assert spill._written == 0 and len(spill._buffer) > 64 * 1024
    for d, ref in zip(datas, refs, strict=True):
        _same(spill.load(ref), d)


def test_a_value_pickle_refuses_is_not_spilled(spill):
    class Odd:  # a local class: pickle cannot name it
        pass

    assert spill.put(MessageData(subject="odd", kept={"k": Odd()})) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_writes_to_a_file_of_its_own(spill):
    before = [MessageData(subject=f"before {i}", body="z" * 400) for i in range(300)]
    refs = [spill.put(d) for d in before]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own messages, then the parent's old ones
        ok = False
        try:
            spill._cache.clear()
            mine = [MessageData(subject=f"child {i}", body="c" * 400) for i in range(300)]
            mine_refs = [spill.put(d) for d in mine]
            spill._cache.clear()
            ok = all(spill.load(r) == d for r, d in zip(mine_refs + refs, mine + before, strict=True))
        finally:
            os.write(write, pickle.dumps(ok))
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ok = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    after = [MessageData(subject=f"parent {i}", body="p" * 400) for i in range(300)]
    after_refs = [spill.put(d) for d in after]
    spill._cache.clear()
    assert child_ok
    assert all(spill.load(r) == d for r, d in zip(refs + after_refs, before + after, strict=True))


def test_a_delivered_item_holds_a_ref_and_reads_back_what_was_delivered():
    store = ExchangeStore(VirtualClock(T0))
    store.add_mailbox(A)
    store.add_mailbox(B)
    sent = MessageData(subject="hello", sender="x@y.example", to=(A, B), body="body", message_id="m1@y", date=T0)
    ids = store.deliver(sent)
    item_a, item_b = store.get(A, ids[A]), store.get(B, ids[B])
    assert item_a.ref is not None and item_a.ref == item_b.ref  # one record for both copies
    _same(item_a.data, sent)
    store.update(A, ids[A], subject="changed", categories=["Tracked to Dynamics 365"])
    assert store.get(A, ids[A]).data.subject == "changed" and store.get(A, ids[A]).ref != item_b.ref
    assert store.get(B, ids[B]).data.subject == "hello"
    assert store.get(A, ids[A]).categories == ["Tracked to Dynamics 365"]
    copy_id = store.move(A, ids[A], "deleteditems", copy=True)
    assert store.get(A, copy_id).ref == store.get(A, ids[A]).ref
    props = store.find(A, "inbox", None)[0].properties()
    assert (props.subject, props.body, props.to, props.categories) == ("changed", "body", (A, B),
                                                                        ("Tracked to Dynamics 365",))


def test_mail_sent_outside_the_sandbox_is_kept_as_its_sent_copys_ref():
    """The outbound record holds the message where the Sent Items copy holds it (its ref in the
    spill), not a second copy in memory; reading it gives the message that was sent."""
    store = ExchangeStore(VirtualClock(T0))
    store.add_mailbox(A)
    sent = MessageData(subject="to a partner", sender=A, to=(EXT_PARTNER, B), body="hi", date=T0)
    _, copy_id = store.send(A, sent)
    copy = store.get(A, copy_id)
    ((sender, recipients, held),) = store.outbound._entries
    assert type(held) is int and held == copy.ref
    assert (sender, recipients) == (A, (EXT_PARTNER, B))
    (entry,) = store.outbound
    _same(entry[2], copy.data)
    assert store.outbound[-1] == entry and store.outbound[:] == [entry] and store.outbound == [entry]
    store.send(A, MessageData(subject="second", sender=A, to=(EXT_PARTNER,)), save_copy=False)
    assert [d.subject for _, _, d in store.outbound] == ["to a partner", "second"]
    assert type(store.outbound._entries[-1][2]) is int  # without a saved copy, still in the spill


def test_a_store_with_spills_off_keeps_the_message_itself():
    store = ExchangeStore(VirtualClock(T0))
    store.spills = False
    store.add_mailbox(A)
    sent = MessageData(subject="kept", sender="x@y.example", to=(A,))
    item = store.get(A, store.deliver(sent)[A])
    assert item.ref is None and item.data is sent


def test_a_reopened_world_reads_the_same_messages_back(tmp_path):
    path = tmp_path / "world.db"
    sb = Sandbox(db_url=sqlite_url(path), seed=5, start=T0, record_events=False)
    try:
        sb.store.add_mailbox(A)
        ids = sb.store.deliver(RAW, [A])
        ids.update({B: sb.store.deliver(MessageData(subject="d", sender="x@y.example", to=(A,), body="b"))[A]})
        written = {key: sb.store.get(A, item_id).data for key, item_id in ids.items()}
        reopened = Sandbox(db_url=sqlite_url(path), seed=5, start=T0, record_events=False)
        try:
            for key, item_id in ids.items():
                again = reopened.store.get(A, item_id)
                assert again.ref is not None and again.ref != sb.store.get(A, item_id).ref  # replayed: written again
                _same(again.data, written[key])
            assert reopened.store.get(A, ids[A]).data.raw == RAW
        finally:
            reopened.close()
    finally:
        sb.close()


def test_the_change_journal_and_the_order_read_as_lists_of_tuples():
    journal = ChangeJournal()
    entries = [("create", "i1"), ("create", "i2"), ("read", "i1"), ("update", "i2"), ("delete", "i1")]
    for entry in entries:
        journal.append(entry)
    assert list(journal) == entries and len(journal) == 5
    assert journal[2] == ("read", "i1") and journal[-1] == ("delete", "i1") and journal[1:3] == entries[1:3]
    assert ("update", "i2") in journal and ("update", "i1") not in journal
    with pytest.raises(KeyError):
        journal.append(("moved", "i3"))
    store = ExchangeStore(VirtualClock(T0))
    store.add_mailbox(A)
    late = store.deliver(MessageData(subject="late", to=(A,)))[A]
    early = store.deliver(MessageData(subject="early", to=(A,)), received=T0 - timedelta(hours=1))[A]
    inbox = store.mailbox(A).folder("inbox")
    order = list(inbox.order)
    assert [key[2] for key in order] == [early, late] and order[0][0] == T0 - timedelta(hours=1)
    assert inbox.order[1:] == order[1:] and len(inbox.order) == 2
    assert [i.item_id for i in inbox.after(T0 - timedelta(hours=1), 10)] == [late]
    store.delete(A, early)
    assert [key[2] for key in inbox.order] == [late]
    assert store.mailbox(A).item_folder == {late: inbox.folder_id}


def test_the_process_spill_is_the_one_items_read():
    assert isinstance(spill_module.SPILL, MessageSpill)
