"""The durable Exchange store (its journal in the database) and the fault rules as JSON text.

What is checked: every field of a message comes back from its journal record with the same
value and type, and a broken record is refused with a ``PersistError`` that names the problem; a
sandbox opened on the database of another holds the same Exchange store, field by field, replayed
from the ``exchangejournal`` table (mailboxes, folders, items and their messages, categories, read
flags, received times and order, each folder's change journal, the ACT claim, the sending quotas,
the outbound mail); a sandbox reopened in the middle of a run, fixed or random, goes on exactly
like one that was not (the ids it makes are other strings: they carry the reopened process's
epoch, so results are compared by content); the fault generator continues where it was; broken
or foreign fault rules are refused with a ``PersistError``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import sqlite3
import tempfile
import types
import typing
from collections import deque
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import VirtualClock
from engine.errors import ExchangeError
from simulator.crm.db import sqlite_url
from simulator.exchange.mime import MessageData
from simulator.exchange.persist import PersistError, message_from_record, message_record
from simulator.exchange.store import ExchangeStore, Item, Outbound, StoreError
from simulator.faults import FaultInjector, FaultRule, load_rules, rules_to_json
from simulator.sandbox import Sandbox
from simulator.world import _encode_value as world_encode_value
from simulator.world import decode, encode

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
A = "a@contoso.example"
B = "b@contoso.example"
C = "c@contoso.example"
EXT = "ext@fabrikam.example"
ADDRS = [A, B, C]

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REOPEN_SETTINGS = settings(max_examples=50, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What an Exchange store holds. The journal replays what it must; the rest is the process's own
# (its clock, its id generators and counters, its link to the world). A new attribute must be
# added to one of the two sets, and to the comparison below when it is state.
STORE_STATE = {"mailboxes", "outbound", "_max_seq"}
STORE_PROCESS = {"clock", "ids", "_seq", "_message_ids", "journal", "_events", "_depth", "spills"}


# -- comparing two stores field by field -----------------------------------------------------


def assert_same(a, b, path: str = "store") -> None:
    """Equal values of exactly the same types, all the way down (dict order included)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, Outbound):  # (its messages read back from the spill)
        assert_same(list(a), list(b), path)
    elif isinstance(a, Item):  # (its message read back from the spill)
        for name in Item.FIELDS:
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple, deque)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        if isinstance(a, deque):
            assert a.maxlen == b.maxlen, path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, datetime):
        assert a == b and a.utcoffset() == b.utcoffset() and a.tzinfo == b.tzinfo, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, itertools.count):
        assert repr(a) == repr(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_store(a: ExchangeStore, b: ExchangeStore) -> None:
    assert set(vars(a)) == STORE_STATE | STORE_PROCESS, (
        f"the Exchange store has attributes this test does not know: {sorted(set(vars(a)) - STORE_STATE - STORE_PROCESS)}")
    for name in sorted(STORE_STATE):
        assert_same(getattr(a, name), getattr(b, name), f"store.{name}")


# -- sandboxes on a SQLite file ----------------------------------------------------------------


def open_sandbox(path: Path, seed: int = 3) -> Sandbox:
    return Sandbox(db_url=sqlite_url(path), seed=seed, start=T0, record_events=False)


# -- a store with a bit of everything --------------------------------------------------------

RAW = (
    b"From: Carl <carl@fabrikam.example>\r\n"
    b"To: a@contoso.example, b@contoso.example, ext@fabrikam.example\r\n"
    b"Cc: c@contoso.example\r\n"
    b"Subject: caf\xc3\xa9 =?utf-8?q?na=C3=AFve?=\r\n"
    b"X-Odd: \xff\xfe not utf-8\r\n"
    b"Date: Mon, 05 Jan 2026 07:30:00 +0100\r\n"
    b"Message-ID: <m1@fabrikam.example>\r\n"
    b"References: <r0@fabrikam.example> <r1@fabrikam.example>\r\n"
    b"In-Reply-To: <r1@fabrikam.example>\r\n"
    b"Thread-Index: AQHZ\r\n"
    b"\r\n"
    b"hello \xe2\x98\x83\r\n"
)


def populate(sb: Sandbox) -> dict[str, str]:
    """Every kind of store operation, through the sandbox's store (each one written as it ends)."""
    store, clock = sb.store, sb.clock
    for addr in ADDRS:
        store.add_mailbox(addr, addr.split("@")[0].upper())
    ids: dict[str, str] = {}
    got = store.deliver(RAW)
    ids["raw_a"], ids["raw_b"], ids["raw_c"] = got[A], got[B], got[C]
    clock.advance(5)
    got = store.deliver(MessageData(subject="data", sender=EXT, to=(A,), body="b", extra_headers={"X-K": "v"},
                                    thread_index="AQ", references=("x@y",), date=T0))
    ids["data_a"] = got[A]
    ids["early_a"] = store.deliver(MessageData(subject="early", sender=EXT, to=(A,)), received=T0 - timedelta(hours=3))[A]
    store.deliver(b"no headers at all", [B])  # kept with a parse error
    folder = store.create_folder(A, "inbox", "Projects")
    ids["sub"] = store.create_folder(A, folder.folder_id, "2026").folder_id
    ids["moved"] = store.move(A, ids["raw_a"], folder.folder_id)
    ids["copied"] = store.move(A, ids["data_a"], "deleteditems", copy=True)
    store.update(A, ids["moved"], categories=["Tracked to Dynamics 365", "Red"], is_read=True)
    store.update(B, ids["raw_b"], is_read=True)
    store.delete(C, ids["raw_c"])
    temp = store.create_folder(B, "inbox", "Temp")
    store.create_folder(B, temp.folder_id, "Inside")
    store.move(B, ids["raw_b"], temp.folder_id, copy=True)
    store.delete_folder(B, temp.folder_id)  # with its subfolder and its item
    ids["draft"] = store.save(A, "drafts", MessageData(subject="draft", to=(B,)), categories=["Blue"]).item_id
    clock.advance(10)
    ids["sent_msgid"], ids["sent_copy"] = store.send(B, MessageData(subject="re", to=(A, EXT), cc=(C,), body="x"))
    store.send(C, MessageData(subject="quiet", to=(B,), bcc=(EXT,)), save_copy=False)
    store.stamp_act_org(C, "org-1")
    store.stamp_act_org(A, "org-2", T0 - timedelta(days=1))
    store.stamp_act_org(B, "org-3")
    store.clear_act_org(B)
    return ids


def test_a_reopened_sandbox_holds_the_same_store_field_by_field(tmp_path):
    sb = open_sandbox(tmp_path / "world.db")
    ids = populate(sb)
    # a second process opens the world while the first still runs: nothing was saved at the end
    reopened = open_sandbox(tmp_path / "world.db")
    try:
        assert_same_store(sb.store, reopened.store)
        loaded = reopened.store
        # spot checks of what the field-by-field comparison covers
        inbox_b = loaded.get(B, ids["raw_b"]).data
        # one message, shared as in the original: one record of the message spill
        assert loaded.get(A, ids["moved"]).ref == loaded.get(B, ids["raw_b"]).ref is not None
        assert loaded.outbound[0][2] == inbox_b
        assert isinstance(inbox_b.raw, bytes) and inbox_b.raw == RAW
        assert isinstance(inbox_b.references, tuple)
        assert loaded.get(A, ids["moved"]).categories == ["Tracked to Dynamics 365", "Red"]
        assert loaded.get(A, ids["moved"]).is_read
        mbx_a, mbx_b, mbx_c = (loaded.mailbox(x) for x in ADDRS)
        assert [f.name for f in mbx_b.folders.values() if not f.distinguished] == []  # Temp and Inside deleted
        inbox_a = [i.item_id for i in mbx_a.folder("inbox").after(None, 10)]
        assert inbox_a[:2] == [ids["early_a"], ids["data_a"]] and len(inbox_a) == 3  # received order
        assert ("update", ids["moved"]) in mbx_a.folders[loaded.get(A, ids["moved"]).folder_id].journal
        assert ("delete", ids["raw_c"]) in mbx_c.folder("inbox").journal
        assert mbx_b.recipients_day == [T0.date(), 3]
        assert type(mbx_b.recipients_day[0]) is date
        assert isinstance(mbx_b.sent_times, deque) and list(mbx_b.sent_times) == [T0 + timedelta(seconds=15)]
        assert (mbx_c.act_org_id, mbx_a.act_org_id, mbx_b.act_org_id) == ("org-1", "org-2", None)
        assert mbx_a.act_org_stamped_on == T0 - timedelta(days=1)
        assert loaded.get(A, ids["draft"]).categories == ["Blue"]
        assert [o[1] for o in loaded.outbound] == [(EXT,), (EXT,), (EXT,)]
    finally:
        reopened.close()
        sb.close()


def test_the_journal_holds_one_row_per_finished_operation(tmp_path):
    sb = open_sandbox(tmp_path / "world.db")
    try:
        populate(sb)
        offset = sb.world.offset
        with pytest.raises(StoreError):
            sb.store.create_folder(A, "inbox", "projects")  # refused before any change: nothing written
        with pytest.raises(StoreError):
            sb.store.send(A, MessageData(subject="nobody"))
        assert sb.world.offset == offset
        sb.store.deliver(MessageData(subject="one more", sender=EXT, to=(A, B, C)))
        assert sb.world.offset == offset + 1  # three placements, one operation
        assert not sb.world.pending
    finally:
        sb.close()


# -- a run that is reopened in the middle goes on like one that is not --------------------------

# Exchange ids (items, folders) and generated Message-IDs: their strings carry the process's epoch.
ID_PATTERN = re.compile(r"AAMkF?A[0-9a-f]{20}|\d{10}\.[0-9a-f]{12}@[\w.-]+")


class Relabel:
    """Replaces each id by a label given in order of first appearance: two runs that made the same
    things in the same order read the same, whatever epoch their ids carry."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def _label(self, match: re.Match) -> str:
        return self.labels.setdefault(match.group(0), f"<id{len(self.labels)}>")

    def __call__(self, value):
        if isinstance(value, str):
            return ID_PATTERN.sub(self._label, value)
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return (type(value).__name__, *(self(getattr(value, f.name)) for f in dataclasses.fields(value)))
        return value


def store_content(store: ExchangeStore) -> list:
    """The replayed state of a store as plain values, in the store's own order."""
    out: list = []
    for address, mbx in store.mailboxes.items():
        folders = []
        for folder_id, f in mbx.folders.items():
            items = [(item_id, i.folder_id, i.received, message_record(i.data), i.seq, list(i.categories), i.is_read,
                      i.item_class) for item_id, i in f.items.items()]
            folders.append((folder_id, f.name, f.parent_id, f.distinguished, items, list(f.order), list(f.journal)))
        out.append((address, mbx.display_name, mbx.root_id, folders, dict(mbx.distinguished), dict(mbx.item_folder),
                    mbx.act_org_id, mbx.act_org_stamped_on, list(mbx.sent_times or ()), mbx.recipients_day,
                    mbx.last_inbox_received))
    out.append([(sender, list(to), message_record(data)) for sender, to, data in store.outbound])
    out.append(store._max_seq)
    return out


def continue_ops(sb: Sandbox, ids: dict[str, str], step: int) -> list:
    """The next calls after a reopen; run on the original and the reopened sandbox alike."""
    store = sb.store
    calls = [
        lambda: store.deliver(RAW),
        lambda: store.deliver(MessageData(subject="later", sender=EXT, to=(B, EXT)), received=T0),
        lambda: store.send(A, MessageData(subject="s1", to=(B,), body="z")),
        lambda: store.create_folder(A, "inbox", f"More {step}").folder_id,
        lambda: store.create_folder(A, "inbox", "projects"),
        lambda: store.move(A, ids["moved"], "inbox"),
        lambda: store.move(A, ids["copied"], ids["sub"], copy=True),
        lambda: store.new_message_id(C),
        lambda: [i.item_id for i in store.find(A, "inbox", None)],
        lambda: [i.item_id for i in store.find(A, "inbox", T0 - timedelta(hours=1))],
        lambda: store.update(B, ids["raw_b"], categories=["Blue", "Blue"]).categories,
        lambda: list(store.mailbox(A).folder("inbox").journal),
        lambda: store.stamp_act_org(B, f"org-{step}"),
        lambda: store.delete(A, ids["draft"]),
    ]
    out: list = []
    for call in calls:
        try:
            out.append(call())
        except StoreError as exc:
            out.append(exc.code)
    return out


def _continued(path: Path, reopen: bool) -> list:
    sb = open_sandbox(path)
    ids = populate(sb)
    if reopen:
        sb.close()
        sb = open_sandbox(path)
    try:
        out = []
        for step in range(3):
            sb.clock.advance(7)
            out.append(continue_ops(sb, ids, step))
        out.append(store_content(sb.store))
    finally:
        sb.close()
    return out


def test_a_reopened_sandbox_goes_on_like_the_original(tmp_path):
    plain = _continued(tmp_path / "plain.db", reopen=False)
    reopened = _continued(tmp_path / "reopened.db", reopen=True)
    assert plain != reopened  # the ids made after the reopen are other strings (another epoch)...
    assert Relabel()(reopened) == Relabel()(plain)  # ...and everything else is the same


def test_the_first_process_on_a_new_database_gives_the_same_ids_every_time(tmp_path):
    first = _continued(tmp_path / "one.db", reopen=False)
    again = _continued(tmp_path / "two.db", reopen=False)
    assert first == again


# -- every field of a message, whatever the fields are ----------------------------------------

ODD_OFFSET = timezone(timedelta(hours=2, minutes=30))


def _sample(hint, depth: int = 0):
    """A value of type ``hint`` that is not a field's usual default."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _sample(next(a for a in args if a is not type(None)), depth)
    if origin is list:
        return [_sample(args[0], depth + 1), _sample(args[0], depth + 2)]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_sample(args[0], depth + 1), _sample(args[0], depth + 2))
        return tuple(_sample(a, depth + 1) for a in args)
    if origin is dict or origin is Mapping:
        return {_sample(args[0], depth + 1): _sample(args[1], depth + 1)}
    if origin is deque:
        return deque([_sample(args[0], depth + 1)])
    simple = {
        str: f"s{depth}",
        int: 7 + depth,
        float: 0.25,
        bool: True,
        bytes: b"\x00\xff raw",
        datetime: datetime(2026, 2, 3, 4, 5, 6, 789 + depth, tzinfo=ODD_OFFSET),
        date: date(2026, 2, 3),
        deque: deque([T0, T0 + timedelta(seconds=1)]),
        list: [date(2026, 2, 3), 3],
        dict: {"k": "v"},
        tuple: ("t", 1),
    }
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _filled(hint, depth + 1)
    raise AssertionError(f"no sample value for {hint!r}: add one here so that the field's round trip is checked")


def _filled(cls, depth: int = 0):
    """An instance of ``cls`` with every field set to something other than its default."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        value = (not default) if hints[f.name] is bool else _sample(hints[f.name], depth)
        assert value != default, f"{cls.__name__}.{f.name}: the sample equals the default"
        values[f.name] = value
    obj = cls(**{k: v for k, v in values.items() if next(f for f in dataclasses.fields(cls) if f.name == k).init})
    for k, v in values.items():
        setattr(obj, k, v)
    return obj




def test_every_field_of_a_message_round_trips():
    message = _filled(MessageData)
    text = json.dumps(message_record(message), ensure_ascii=True)
    assert text.isascii()
    assert_same(message_from_record(json.loads(text)), message, "message")


def test_messages_round_trip_through_the_journal_text():
    """Raw bytes, non-ASCII text, a lone surrogate (an undecodable header byte), tuples and times."""
    store = ExchangeStore(VirtualClock(T0))
    store.add_mailbox(A)
    events: list[list[dict]] = []
    store.journal = events.append
    store.deliver(RAW, [A])
    store.deliver(MessageData(subject="caf\u00e9 \udcff \u2603", sender=EXT, to=(A,), date=T0,
                              extra_headers={"X-Odd": "\udcfe"}), [A])
    for operation in events:
        text = encode(operation)
        assert text.isascii()
        (event,) = decode(text)
        assert_same(event["m"], operation[0]["m"], "message")


def _record(**change) -> dict:
    raw = message_record(MessageData(subject="s", to=("a@b.c",), raw=b"x", date=T0))
    raw.update(change)
    return raw


BROKEN_MESSAGES = [
    ("hello", "expected a JSON object, not 'hello'"),
    ([], "expected a JSON object"),
    (_record(to="a@b.c"), "to must be a list of strings"),
    (_record(references=[1]), "references must be a list of strings"),
    (_record(size="7"), "size must be a whole number"),
    (_record(size=True), "size must be a whole number"),
    (_record(subject=None), "subject must be a string"),
    (_record(sender=3), "sender must be a string"),
    (_record(raw="%%%"), "raw must be base64 text"),
    (_record(raw=None), "raw must be base64 text"),
    (_record(date=5), "date must be an ISO 8601 time"),
    (_record(date="yesterday"), "'yesterday' is not an ISO 8601 datetime"),
    (_record(extra_headers={"X-K": 1}), "extra_headers must be an object of strings"),
    (_record(extra_headers=["X-K"]), "extra_headers must be an object of strings"),
    (_record(colour="red"), "MessageData has no field 'colour'"),
]


@pytest.mark.parametrize(("raw", "expected"), BROKEN_MESSAGES, ids=[e for _, e in BROKEN_MESSAGES])
def test_a_broken_message_record_is_refused_with_a_clear_message(raw, expected):
    with pytest.raises(PersistError) as exc:
        message_from_record(raw)
    message = str(exc.value)
    assert message.startswith("cannot load a message: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("change", "expected"), [({"to": "a@b.c"}, "to must be a list of strings"),
                                                ({"date": "yesterday"}, "is not an ISO 8601 datetime")])
def test_a_sandbox_on_a_journal_with_a_broken_message_is_refused(tmp_path, change, expected):
    sb = open_sandbox(tmp_path / "world.db")
    sb.store.add_mailbox(A)
    sb.store.deliver(MessageData(subject="m", sender=EXT, to=(A,), date=T0))
    sb.close()
    with sqlite3.connect(tmp_path / "world.db") as conn:
        seq, text = conn.execute("SELECT seq, events FROM exchangejournal ORDER BY seq DESC").fetchone()
        events = json.loads(text)
        events[0]["m"].update(change)
        conn.execute("UPDATE exchangejournal SET events = ? WHERE seq = ?", (json.dumps(events), seq))
    conn.close()
    with pytest.raises(PersistError, match=expected):
        open_sandbox(tmp_path / "world.db")


# -- a random run, reopened at a random point -----------------------------------------------

NEW_BOXES = ["d@contoso.example", "e@contoso.example"]
_deliver_st = st.tuples(st.just("deliver"), st.lists(st.sampled_from(ADDRS + NEW_BOXES + [EXT]), min_size=1, max_size=3),
                       st.booleans(), st.one_of(st.none(), st.integers(-7200, 0)))
op_st = st.one_of(
    _deliver_st,
    _deliver_st,  # twice as likely as the other operations
    st.tuples(st.just("send"), st.sampled_from(ADDRS), st.lists(st.sampled_from(ADDRS + [EXT]), max_size=3),
              st.booleans()),
    st.tuples(st.just("folder"), st.sampled_from(ADDRS), st.integers(0, 30), st.sampled_from(["X", "Y", "x"])),
    st.tuples(st.just("move"), st.sampled_from(ADDRS), st.integers(0, 60), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(ADDRS), st.integers(0, 60)),
    st.tuples(st.just("update"), st.sampled_from(ADDRS), st.integers(0, 60),
              st.one_of(st.none(), st.lists(st.sampled_from(["Red", "Blue"]), max_size=3)),
              st.one_of(st.none(), st.booleans())),
    st.tuples(st.just("delete_folder"), st.sampled_from(ADDRS), st.integers(0, 30)),
    st.tuples(st.just("draft"), st.sampled_from(ADDRS), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 30, 61, 86_400])),
    st.tuples(st.just("mailbox"), st.sampled_from(NEW_BOXES)),
    st.tuples(st.just("message_id"), st.sampled_from(ADDRS)),
    st.tuples(st.just("act"), st.sampled_from(ADDRS), st.sampled_from(["org-1", "org-2", None])),
    st.tuples(st.just("burst"), st.sampled_from(ADDRS)),
)


def _item(store: ExchangeStore, addr: str, n: int) -> str:
    ids = [i for f in store.mailbox(addr).folders.values() for i in f.items]
    return ids[n % len(ids)] if ids else "missing"


def _folder(store: ExchangeStore, addr: str, n: int) -> str:
    folders = list(store.mailbox(addr).folders)
    return folders[n % len(folders)]


def _apply(sb: Sandbox, i: int, op: tuple):
    store, clock = sb.store, sb.clock
    kind, *args = op
    try:
        if kind == "deliver":
            to, raw, offset = args
            received = None if offset is None else clock.now() + timedelta(seconds=offset)
            if raw:
                message = f"From: x@fabrikam.example\r\nTo: {', '.join(to)}\r\nSubject: m{i}\r\n\r\nbody {i}\r\n"
                return store.deliver(message.encode(), received=received)
            return store.deliver(MessageData(subject=f"m{i}", sender=EXT, to=tuple(to), body=str(i)),
                                 received=received)
        if kind == "send":
            addr, to, save_copy = args
            return store.send(addr, MessageData(subject=f"s{i}", to=tuple(to)), save_copy=save_copy)
        if kind == "folder":
            addr, parent, name = args
            return store.create_folder(addr, _folder(store, addr, parent), name).folder_id
        if kind == "move":
            addr, item, dest, copy = args
            return store.move(addr, _item(store, addr, item), _folder(store, addr, dest), copy=copy)
        if kind == "delete":
            addr, item = args
            return store.delete(addr, _item(store, addr, item))
        if kind == "update":
            addr, item, categories, is_read = args
            return store.update(addr, _item(store, addr, item), categories=categories, is_read=is_read).item_id
        if kind == "delete_folder":
            addr, folder = args
            return store.delete_folder(addr, _folder(store, addr, folder))
        if kind == "draft":
            addr, folder = args
            return store.save(addr, _folder(store, addr, folder), MessageData(subject=f"d{i}")).item_id
        if kind == "advance":
            clock.advance(args[0])
            return clock.now()
        if kind == "mailbox":
            return store.add_mailbox(args[0]).root_id
        if kind == "message_id":
            return store.new_message_id(args[0])
        if kind == "act":
            if args[1] is None:
                return store.clear_act_org(args[0])
            return store.stamp_act_org(args[0], args[1])
        if kind == "burst":  # enough sends to reach the per-minute quota
            return [store.send(args[0], MessageData(subject=f"b{i}.{n}", to=(EXT,)))[0] for n in range(31)]
    except StoreError as exc:
        return exc.code
    raise AssertionError(kind)


def _run(path: Path, ops: list[tuple], reopen_at: int | None) -> list:
    """Results of ``ops`` and the store at the end; the sandbox closed and reopened before
    ``ops[reopen_at]`` (after the last when ``reopen_at == len(ops)``)."""
    sb = open_sandbox(path, seed=11)
    try:
        for addr in ADDRS:
            sb.store.add_mailbox(addr)
        sb.store.deliver(RAW)  # something in every mailbox to move, update and delete from the start
        sb.store.deliver(MessageData(subject="first", sender=EXT, to=tuple(ADDRS), body="b"))
        results = []
        for i, op in enumerate(ops):
            if i == reopen_at:
                sb.close()
                sb = open_sandbox(path, seed=11)
            results.append(_apply(sb, i, op))
        if reopen_at == len(ops):
            sb.close()
            sb = open_sandbox(path, seed=11)
        return [results, store_content(sb.store)]
    finally:
        sb.close()


@REOPEN_SETTINGS
@given(ops=st.lists(op_st, min_size=1, max_size=40), cut=st.integers(0, 40))
def test_a_reopen_in_the_middle_of_a_random_run_changes_nothing(ops, cut):
    cut = min(cut, len(ops))
    with tempfile.TemporaryDirectory() as tmp:
        plain = _run(Path(tmp) / "plain.db", ops, None)
        reopened = _run(Path(tmp) / "reopened.db", ops, cut)
    assert Relabel()(reopened) == Relabel()(plain)


# -- fault rules -----------------------------------------------------------------------------

CALLS = [("find_new_items", A), ("send", A), ("send", B), ("move_item", A), ("create_email", C),
         ("find_new_items", B), ("add_category", A), ("delete_item", C)]


def _rules() -> list[FaultRule]:
    return [
        FaultRule("ErrorServerBusy", "find_new_items", probability=0.3, backoff_ms=500),
        FaultRule("ErrorMailboxStoreUnavailable", "send", mailbox=A, count=3, probability=0.5),
        FaultRule("ErrorTimeoutExpired", "*", count=2),
        FaultRule("IsvAborted", "create_email", probability=0.2),
        FaultRule("HttpServiceUnavailable", "move_item", mailbox=B, count=0),
    ]


def _check_all(injector: FaultInjector, calls) -> list:
    out = []
    for operation, mailbox in calls:
        try:
            injector.check(operation, mailbox)
            out.append(None)
        except ExchangeError as exc:
            out.append(exc.code)
    return out


def _fault_run(seed: int, calls, rules, save_at: int | None) -> list:
    injector = FaultInjector(random.Random(f"faults-{seed}"))
    for rule in rules:
        injector.add(dataclasses.replace(rule))
    if save_at is None:
        return _check_all(injector, calls)
    first = _check_all(injector, calls[:save_at])
    text = rules_to_json(injector)
    rng = random.Random("something else")
    fresh = FaultInjector(rng)
    fresh.add(FaultRule("ErrorAccessDenied"))  # replaced by the loaded rules
    load_rules(fresh, text)
    assert fresh.rng is rng
    assert rules_to_json(fresh) == text
    return first + _check_all(fresh, calls[save_at:])


def test_fault_rules_fire_the_same_after_a_save():
    calls = [random.Random(n).choice(CALLS) for n in range(200)]
    plain = _fault_run(5, calls, _rules(), None)
    assert plain.count("ErrorTimeoutExpired") == 2
    assert 0 < plain.count("ErrorServerBusy") < plain.count(None)
    for cut in (0, 1, 2, 3, 57, 100, 200):
        assert _fault_run(5, calls, _rules(), cut) == plain, cut


def test_a_rule_keeps_how_often_it_fired():
    injector = FaultInjector(random.Random(0))
    injector.add(FaultRule("ErrorServerBusy", "send", count=3))
    assert _check_all(injector, [("send", A)] * 2) == ["ErrorServerBusy"] * 2
    loaded = FaultInjector()
    load_rules(loaded, rules_to_json(injector))
    assert loaded.rules[0].fired == 2
    assert _check_all(loaded, [("send", A)] * 3) == ["ErrorServerBusy", None, None]


fault_rule_st = st.builds(
    FaultRule,
    code=st.sampled_from(["ErrorServerBusy", "ErrorMailboxStoreUnavailable", "IsvAborted", "8005E272"]),
    operation=st.sampled_from(["*", "find_new_items", "send", "move_item", "create_email"]),
    mailbox=st.sampled_from([A, B, None]),
    count=st.one_of(st.none(), st.integers(0, 5)),
    probability=st.sampled_from([1.0, 0.7, 0.3, 0.0]),
    backoff_ms=st.one_of(st.none(), st.integers(0, 900_000)),
)


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), rules=st.lists(fault_rule_st, max_size=5),
       calls=st.lists(st.sampled_from(CALLS), max_size=60), cut=st.integers(0, 60))
def test_fault_property_same_seed_same_faults(seed, rules, calls, cut):
    cut = min(cut, len(calls))
    assert _fault_run(seed, calls, rules, cut) == _fault_run(seed, calls, rules, None)



# -- refusing broken fault rules -------------------------------------------------------------

BROKEN_RULES = [
    ("{", "the text is not JSON"),
    ("7", "not a JSON object"),
    ('{"format": "sss-exchange-store", "version": 1}', "not saved fault rules"),
    ('{"format": "sss-fault-rules", "version": 2, "rules": [], "rng": null}', "unsupported version 2"),
    ('{"format": "sss-fault-rules", "version": 1, "rules": {}, "rng": null}', "'rules' must be a JSON array"),
    ('{"format": "sss-fault-rules", "version": 1, "rules": []}', "'rng' section is missing"),
    ('{"format": "sss-fault-rules", "version": 1, "rules": [], "rng": null, "x": 1}', "unexpected section 'x'"),
]


def _rules_doc(**change) -> str:
    injector = FaultInjector(random.Random(3))
    injector.add(FaultRule("ErrorServerBusy", "send", count=2))
    doc = json.loads(rules_to_json(injector))
    for key, value in change.items():
        if key == "rule":
            doc["rules"][0].update(value)
        else:
            doc[key] = value
    return json.dumps(doc)


BROKEN_RULES += [
    (_rules_doc(rule={"code": "NoSuchCode"}), "rule 0: code: 'NoSuchCode' is not a known error code"),
    (_rules_doc(rule={"count": "3"}), "rule 0 field 'count' has the wrong type"),
    (_rules_doc(rule={"fired": -1}), "rule 0: fired: -1 is not a whole number of 0 or more"),
    (_rules_doc(rule={"colour": "red"}), "rule 0 has an unknown field 'colour'"),
    (_rules_doc(rules=[[]]), "rule 0 is not a JSON object"),
    (_rules_doc(rng={"version": 3, "state": [1, 2, 3], "gauss_next": None}), "random generator state is invalid"),
    (_rules_doc(rng={"version": 3, "state": ["a"], "gauss_next": None}), "not a list of whole numbers"),
    (_rules_doc(rng=[1]), "'rng' must hold version, state and gauss_next"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN_RULES, ids=[e for _, e in BROKEN_RULES])
def test_broken_fault_rules_are_refused_and_change_nothing(text, expected):
    injector = FaultInjector(random.Random(8))
    injector.add(FaultRule("ErrorAccessDenied", count=1))
    before = rules_to_json(injector)
    with pytest.raises(PersistError) as exc:
        load_rules(injector, text)
    message = str(exc.value)
    assert message.startswith("cannot load the fault rules: ")
    assert expected in message
    assert "\n" not in message
    assert rules_to_json(injector) == before


JOURNAL_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.datetimes(timezones=st.sampled_from([None, UTC])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.dictionaries(st.text(max_size=8), JOURNAL_VALUES, max_size=5), max_size=4))
def test_the_journal_text_is_what_json_writes(events):
    """encode() writes with orjson when it can and falls back to json (non-ASCII text, a lone
    surrogate, an integer beyond 64 bits): either way the text is exactly json's, ASCII only."""
    text = encode(events)
    assert text == json.dumps(events, default=world_encode_value, separators=(",", ":"), ensure_ascii=True)
    assert text.isascii()


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.dictionaries(st.text(max_size=8), JOURNAL_VALUES | st.floats(allow_nan=False, allow_infinity=False),
                                       max_size=5), max_size=4))
def test_journal_numbers_read_back_as_json_wrote_them(events):
    """Finite floats (which the store's events do not hold) may be spelled otherwise (1e16 for
    1e+16), but read back as the same numbers."""
    text = encode(events)
    assert text.isascii()
    assert json.loads(text) == json.loads(
        json.dumps(events, default=world_encode_value, separators=(",", ":"), ensure_ascii=True))


def test_a_journal_with_messages_reads_back_whichever_writer_wrote_it():
    """A message's record, written by orjson (plain text) or by json (a lone surrogate in its
    subject), decodes to the same message; decode() reads text written before orjson was used."""
    plain = MessageData(subject="Order 7", sender=EXT, to=(A,), date=T0, body="hello")
    odd = MessageData(subject="odd \udcff", sender=EXT, to=(A,), date=T0)
    for message in (plain, odd):
        events = [{"k": "put", "m": message, "at": T0}]
        text = encode(events)
        (event,) = decode(text)
        assert_same(event["m"], message, "message")
        old_text = json.dumps(events, default=world_encode_value, separators=(",", ":"), ensure_ascii=True)
        assert old_text == text
        assert_same(decode(old_text)[0]["m"], message, "message")
