"""Saving the fake Exchange store and the fault rules as JSON text, and loading them back.

What is checked: every field of every record comes back with the same value and type; a
loaded store continues exactly like the original (same ids, same results); a save in the
middle of a random run changes nothing; the fault generator continues where it was; broken
or foreign text is refused with a ``PersistError`` that names the problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import types
import typing
from collections import deque
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import VirtualClock
from engine.errors import ExchangeError
from simulator.exchange.mime import MessageData
from simulator.exchange.persist import PersistError, store_from_json, store_to_json
from simulator.exchange.store import ExchangeMailbox, ExchangeStore, Folder, IdSource, Item, StoreError
from simulator.faults import FaultInjector, FaultRule, load_rules, rules_to_json

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
A = "a@contoso.example"
B = "b@contoso.example"
C = "c@contoso.example"
EXT = "ext@fabrikam.example"
ADDRS = [A, B, C]

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- comparing two stores field by field -----------------------------------------------------


def assert_same(a, b, path: str = "store") -> None:
    """Equal values of exactly the same types, all the way down (dict order included)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, ExchangeStore):
        assert set(vars(a)) == set(vars(b)), path
        for name in vars(a):
            if name != "clock":
                assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, IdSource):
        assert set(vars(a)) == set(vars(b)), path
        for name in vars(a):
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
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


def round_trip(store: ExchangeStore) -> ExchangeStore:
    text = store_to_json(store)
    assert text.isascii()
    loaded = store_from_json(text, store.clock)
    assert store_to_json(loaded) == text
    return loaded


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


def new_store(seed: int = 3) -> tuple[ExchangeStore, VirtualClock]:
    clock = VirtualClock(T0)
    store = ExchangeStore(clock, IdSource(seed))
    for addr in ADDRS:
        store.add_mailbox(addr, addr.split("@")[0].upper())
    return store, clock


def populate(store: ExchangeStore, clock: VirtualClock) -> dict[str, str]:
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
    clock.advance(10)
    ids["sent_msgid"], ids["sent_copy"] = store.send(B, MessageData(subject="re", to=(A, EXT), cc=(C,), body="x"))
    store.send(C, MessageData(subject="quiet", to=(B,), bcc=(EXT,)), save_copy=False)
    mbx = store.mailbox(C)
    mbx.act_org_id = "org-1"
    mbx.act_org_stamped_on = clock.now()
    store.get(A, ids["early_a"]).item_class = "IPM.Note.Custom"
    return ids


def continue_ops(store: ExchangeStore, clock: VirtualClock, ids: dict[str, str], step: int) -> list:
    """The next calls after a save; run on the original and the loaded store alike."""
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
    ]
    out: list = []
    for call in calls:
        try:
            out.append(call())
        except StoreError as exc:
            out.append(exc.code)
    return out


def test_round_trip_keeps_every_field_and_type():
    store, clock = new_store()
    ids = populate(store, clock)
    loaded = round_trip(store)
    assert_same(store, loaded)
    # The message delivered to several mailboxes is still one shared object.
    inbox_b = loaded.get(B, ids["raw_b"]).data
    assert loaded.get(A, ids["moved"]).data is inbox_b
    assert loaded.outbound[0][2] is inbox_b
    assert isinstance(inbox_b.raw, bytes) and inbox_b.raw == RAW
    assert isinstance(inbox_b.references, tuple)
    assert loaded.mailbox(B).recipients_day == [T0.date(), 3]
    assert type(loaded.mailbox(B).recipients_day[0]) is date
    assert isinstance(loaded.mailbox(B).sent_times, deque)
    assert loaded.mailbox(C).act_org_id == "org-1"


def test_loaded_store_continues_like_the_original():
    store, clock = new_store()
    ids = populate(store, clock)
    loaded = store_from_json(store_to_json(store), clock)
    for step in range(3):
        clock.advance(7)
        assert continue_ops(store, clock, ids, step) == continue_ops(loaded, clock, ids, step), step
    assert_same(store, loaded)
    assert store_to_json(store) == store_to_json(loaded)


def test_saving_does_not_change_the_store():
    store, clock = new_store()
    populate(store, clock)
    twin, twin_clock = new_store()
    populate(twin, twin_clock)
    assert store_to_json(store) == store_to_json(store)
    assert store.ids.next() == twin.ids.next()
    assert next(store._seq) == next(twin._seq)
    assert store.new_message_id(A) == twin.new_message_id(A)


def test_a_bigger_store_round_trips():
    clock = VirtualClock(T0)
    store = ExchangeStore(clock, IdSource(9))
    addrs = [f"user{i}@contoso.example" for i in range(10)]
    for addr in addrs:
        store.add_mailbox(addr)
    for n in range(50):
        clock.advance(1)
        store.deliver(MessageData(subject=f"m{n}", sender=EXT, to=tuple(addrs), body="x" * n))
    assert_same(store, round_trip(store))


# -- every field of every record, whatever the fields are ------------------------------------

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
    if origin is dict:
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


@pytest.mark.parametrize("cls", [MessageData, Item, Folder, ExchangeMailbox])
def test_every_field_of_every_record_round_trips(cls):
    store, _ = new_store()
    record = _filled(cls)
    # Reach the record from the store the way the store holds it.
    mbx = _filled(ExchangeMailbox) if cls is not ExchangeMailbox else record
    if cls is Folder:
        mbx.folders["F-sample"] = record
    elif cls is Item:
        next(iter(mbx.folders.values())).items["I-sample"] = record
    elif cls is MessageData:
        store.outbound.append((EXT, (EXT,), record))
    store.mailboxes[mbx.address] = mbx
    loaded = round_trip(store)
    assert_same(store, loaded)


# -- a random run, saved and loaded at a random point ----------------------------------------

NEW_BOXES = ["d@contoso.example", "e@contoso.example"]
op_st = st.one_of(
    st.tuples(st.just("deliver"), st.lists(st.sampled_from(ADDRS + NEW_BOXES + [EXT]), min_size=1, max_size=3),
              st.booleans(), st.one_of(st.none(), st.integers(-7200, 0))),
    st.tuples(st.just("send"), st.sampled_from(ADDRS), st.lists(st.sampled_from(ADDRS + [EXT]), max_size=3),
              st.booleans()),
    st.tuples(st.just("folder"), st.sampled_from(ADDRS), st.integers(0, 30), st.sampled_from(["X", "Y", "x"])),
    st.tuples(st.just("move"), st.sampled_from(ADDRS), st.integers(0, 60), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(ADDRS), st.integers(0, 60)),
    st.tuples(st.just("update"), st.sampled_from(ADDRS), st.integers(0, 60),
              st.one_of(st.none(), st.lists(st.sampled_from(["Red", "Blue"]), max_size=3)),
              st.one_of(st.none(), st.booleans())),
    st.tuples(st.just("delete_folder"), st.sampled_from(ADDRS), st.integers(0, 30)),
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


def _apply(store: ExchangeStore, clock: VirtualClock, i: int, op: tuple):
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
        if kind == "advance":
            clock.advance(args[0])
            return clock.now()
        if kind == "mailbox":
            return store.add_mailbox(args[0]).root_id
        if kind == "message_id":
            return store.new_message_id(args[0])
        if kind == "act":
            mbx = store.mailbox(args[0])
            mbx.act_org_id, mbx.act_org_stamped_on = args[1], clock.now()
            return None
        if kind == "burst":  # enough sends to reach the per-minute quota
            return [store.send(args[0], MessageData(subject=f"b{i}.{n}", to=(EXT,)))[0] for n in range(31)]
    except StoreError as exc:
        return exc.code
    raise AssertionError(kind)


def _run(ops: list[tuple], save_at: int | None) -> tuple[list, str]:
    store, clock = new_store(seed=11)
    results = []
    for i, op in enumerate(ops):
        if i == save_at:
            store = store_from_json(store_to_json(store), clock)
        results.append(_apply(store, clock, i, op))
    if save_at == len(ops):
        store = store_from_json(store_to_json(store), clock)
    return results, store_to_json(store)


@PROPERTY_SETTINGS
@given(ops=st.lists(op_st, max_size=40), cut=st.integers(0, 40))
def test_a_save_in_the_middle_of_a_random_run_changes_nothing(ops, cut):
    cut = min(cut, len(ops))
    assert _run(ops, cut) == _run(ops, None)


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


# -- refusing broken text --------------------------------------------------------------------


def _valid_doc() -> dict:
    store, clock = new_store()
    populate(store, clock)
    return json.loads(store_to_json(store))


def _first(node, key: str):
    """The first JSON object (depth first) that has ``key``."""
    if isinstance(node, dict):
        if key in node:
            return node
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _first(child, key)
        if found is not None:
            return found
    return None


def _item_fields(doc: dict) -> dict:
    return _first(doc["store"], "$Item")["$Item"]


def _mutate(change):
    doc = _valid_doc()
    change(doc)
    return json.dumps(doc)


BROKEN_STORES = [
    ("not json {", "the text is not JSON"),
    ("", "the text is not JSON"),
    ("[1, 2]", "the text is not a JSON object"),
    ('{"format": "something-else", "version": 1}', "not a saved Exchange store"),
    (_mutate(lambda d: d.update(version=99)), "unsupported Exchange store version 99"),
    (_mutate(lambda d: d.update(version="1")), "unsupported Exchange store version '1'"),
    (_mutate(lambda d: d.update(version=True)), "unsupported Exchange store version True"),
    (_mutate(lambda d: d.pop("messages")), "'messages' section is missing"),
    (_mutate(lambda d: d.update(extra=1)), "unexpected section 'extra'"),
    (_mutate(lambda d: d.update(messages={})), "'messages' section must be a JSON array"),
    (_mutate(lambda d: _item_fields(d).update(received={"$dt": "yesterday"})),
     "'yesterday' is not an ISO 8601 datetime"),
    (_mutate(lambda d: _item_fields(d).update(received="2026-01-05T08:00:00+00:00")), "Item.received must be datetime"),
    (_mutate(lambda d: _item_fields(d).update(seq="7")), "Item.seq must be int"),
    (_mutate(lambda d: _item_fields(d).update(is_read=1)), "Item.is_read must be bool"),
    (_mutate(lambda d: _item_fields(d).update(colour="red")), "Item has no field 'colour'"),
    (_mutate(lambda d: _item_fields(d).pop("item_id")), "Item field 'item_id' is missing"),
    (_mutate(lambda d: _item_fields(d).update(data={"$msg": 999})), "$msg refers to message 999"),
    (_mutate(lambda d: _item_fields(d).update(data={"$set": []})), "unknown value tag '$set'"),
    (_mutate(lambda d: _item_fields(d).update(data={"$msg": 0, "x": 1})), "unexpected key 'x'"),
    (_mutate(lambda d: d["messages"][0].update(raw={"$bytes": "%%%"})), "not base64"),
    (_mutate(lambda d: d["messages"][0].update(to=["a@b.c"])), "MessageData.to must be tuple"),
    (_mutate(lambda d: d["messages"].__setitem__(0, "hello")), "a MessageData must be a JSON object"),
    (_mutate(lambda d: d["ids"].update(_counter={"$count": "x"})), "$count must hold a whole number"),
    (_mutate(lambda d: d["ids"].update(_counter=5)), "id source._counter must be count"),
    (_mutate(lambda d: d["store"].update(zzz=1)), "the store has no attribute 'zzz'"),
    (_mutate(lambda d: d["store"].update(mailboxes={"x@y": 1})), "store.mailboxes must map addresses"),
    (_mutate(lambda d: d["store"].update(outbound=[1])), "store.outbound must be a list"),
    (_mutate(lambda d: _first(d["store"], "$dict").update({"$dict": [[1]]})), "[key, value] pairs"),
    (_mutate(lambda d: _first(d["store"], "$deque").update(maxlen=-1)), "maxlen of a $deque"),
    (_mutate(lambda d: _first(d["store"], "$date").update({"$date": "2026-01-05T00:00"})),
     "'2026-01-05T00:00' is not an ISO 8601 date"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN_STORES, ids=[e for _, e in BROKEN_STORES])
def test_broken_store_text_is_refused_with_a_clear_message(text, expected):
    with pytest.raises(PersistError) as exc:
        store_from_json(text, VirtualClock(T0))
    message = str(exc.value)
    assert message.startswith("cannot load the Exchange store: ")
    assert expected in message
    assert "\n" not in message


def test_the_message_says_where_the_problem_is():
    text = _mutate(lambda d: _item_fields(d).update(seq="7"))
    with pytest.raises(PersistError, match=r"\(at store\.mailboxes\.a@contoso\.example\.folders\.\S+\.items\.\S+\.seq\)"):
        store_from_json(text, VirtualClock(T0))


def test_a_value_without_a_saved_form_is_refused_when_saving():
    store, _ = new_store()
    store.mailbox(A).act_org_id = {1, 2}
    with pytest.raises(PersistError, match=r"cannot save .*type builtins\.set .*act_org_id"):
        store_to_json(store)


def _json_paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_paths(value, (*path, i))


json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["$msg", "$dt", "2026-01-05T08:00:00+00:00", "AAMk"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["$msg", "$tuple", "$dt", "$dict", "$Item", "$count", "x", "maxlen"]),
                      inner, max_size=2),
    max_leaves=6,
)
_VALID = _valid_doc()
_PATHS = list(_json_paths(_VALID))


@PROPERTY_SETTINGS
@given(where=st.integers(0, len(_PATHS) - 1), value=json_st)
def test_any_corruption_loads_or_raises_persist_error(where, value):
    doc = json.loads(json.dumps(_VALID))
    path = _PATHS[where]
    if not path:
        doc = value
    else:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    try:
        store_from_json(json.dumps(doc), VirtualClock(T0))
    except PersistError as exc:
        assert "\n" not in str(exc)


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
    (_rules_doc(rule={"fired": -1}), "rule 0 fired: must be 0 or more"),
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
