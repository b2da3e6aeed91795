"""The fake Exchange Online store and its in-process port (SPEC section 5)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from engine.clock import VirtualClock
from engine.errors import ExchangeError
from engine.ports import OutgoingMessage
from simulator.exchange.direct import DirectExchange
from simulator.exchange.mime import MessageData
from simulator.exchange.store import FIND_PAGE_MAX, SEND_PER_MINUTE, ExchangeStore, IdSource, StoreError
from simulator.faults import FaultInjector, FaultRule, FaultRuleError

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
A = "a@contoso.example"
B = "b@contoso.example"


@pytest.fixture
def store() -> ExchangeStore:
    s = ExchangeStore(VirtualClock(T0), IdSource(3))
    s.add_mailbox(A)
    s.add_mailbox(B)
    return s


def _m(subject="hi", to=(A,), **kw) -> MessageData:
    return MessageData(subject=subject, sender="x@fabrikam.example", to=to, body="b", **kw)


def test_mailbox_has_the_distinguished_folders(store):
    mbx = store.mailbox(A)
    for name in ("inbox", "sentitems", "drafts", "deleteditems", "calendar", "contacts", "tasks"):
        assert mbx.folder(name).distinguished == name


def test_a_poll_makes_only_the_inbox_and_a_listing_shows_every_folder_in_order(store):
    """The folders a mailbox is made with exist from the start (same ids, parents, order), but only
    those looked at take memory: a poll of the Inbox holds one folder, not ten."""
    mbx = store.mailbox(A)
    named = list(mbx.distinguished.items())
    store.find(A, "inbox", None)
    assert [f.distinguished for f in mbx._folders.values()] == ["inbox"]
    tasks = mbx.folder_by_id(mbx.distinguished["tasks"])  # made by id, out of order
    assert tasks.name == "Tasks" and tasks.parent_id == mbx.distinguished["msgfolderroot"]
    assert not tasks._items and not tasks._journal  # an empty folder holds no containers
    listed = list(mbx.folders.values())  # a listing makes the rest, in the mailbox's own order
    assert [(f.distinguished, f.folder_id) for f in listed] == named
    assert listed[0].parent_id is None and all(f.system for f in listed)
    assert mbx.folder("tasks") is tasks  # made once: the one made by id is the listed one


def test_unknown_mailbox_is_error_non_existent_mailbox(store):
    with pytest.raises(StoreError) as exc:
        store.mailbox("nobody@contoso.example")
    assert exc.value.code == "ErrorNonExistentMailbox"


def test_add_mailbox_twice_keeps_the_first(store):
    inbox_id = store.mailbox(A).distinguished["inbox"]
    store.add_mailbox(A.upper())
    assert store.mailbox(A).distinguished["inbox"] == inbox_id


def test_deliver_puts_the_item_in_each_local_inbox_and_records_external_recipients(store):
    got = store.deliver(_m(to=(A, B, "out@fabrikam.example")))
    assert set(got) == {A, B}
    assert got[A] != got[B]
    assert list(store.mailbox(A).folder("inbox").items) == [got[A]]
    assert store.outbound[-1][1] == ("out@fabrikam.example",)


def test_received_times_are_unique_and_increasing_per_mailbox(store):
    ids = [store.deliver(_m(f"s{i}"))[A] for i in range(5)]
    times = [store.get(A, i).received for i in ids]
    assert times == sorted(times)
    assert len(set(times)) == 5
    assert times[0] == T0


def test_move_gives_a_new_id_and_folder_ids_stay_stable(store):
    item_id = store.deliver(_m())[A]
    sub = store.create_folder(A, "inbox", "Projects")
    inbox_id = store.mailbox(A).distinguished["inbox"]
    new_id = store.move(A, item_id, sub.folder_id)
    assert new_id != item_id
    with pytest.raises(StoreError) as exc:
        store.get(A, item_id)
    assert exc.value.code == "ErrorItemNotFound"
    moved = store.get(A, new_id)
    assert moved.folder_id == sub.folder_id
    assert store.mailbox(A).distinguished["inbox"] == inbox_id
    assert store.find_child(A, "inbox", "Projects").folder_id == sub.folder_id
    back = store.move(A, new_id, "inbox")
    assert back not in (item_id, new_id)
    assert store.get(A, back).folder_id == inbox_id
    assert store.find_child(A, "inbox", "projects").folder_id == sub.folder_id


def test_move_keeps_received_time_and_categories(store):
    item_id = store.deliver(_m())[A]
    store.update(A, item_id, categories=["Red"])
    received = store.get(A, item_id).received
    new_id = store.move(A, item_id, "deleteditems")
    assert store.get(A, new_id).received == received
    assert store.get(A, new_id).categories == ["Red"]


def test_folder_names_are_unique_per_parent(store):
    store.create_folder(A, "inbox", "Undeliverable")
    with pytest.raises(StoreError) as exc:
        store.create_folder(A, "inbox", "undeliverable")
    assert exc.value.code == "ErrorFolderExists"
    store.create_folder(A, "sentitems", "Undeliverable")  # another parent is fine


def test_folder_needs_a_name(store):
    with pytest.raises(StoreError) as exc:
        store.create_folder(A, "inbox", "  ")
    assert exc.value.code == "ErrorInvalidFolderName"


def test_distinguished_folder_cannot_be_deleted(store):
    with pytest.raises(StoreError) as exc:
        store.delete_folder(A, "inbox")
    assert exc.value.code == "ErrorDeleteDistinguishedFolder"


def test_find_returns_items_strictly_after_a_time_oldest_first(store):
    ids = [store.deliver(_m(f"s{i}"), received=T0 + timedelta(minutes=i))[A] for i in range(5)]
    found = store.find(A, "inbox", T0 + timedelta(minutes=2))
    assert [i.item_id for i in found] == ids[3:]
    assert [i.item_id for i in store.find(A, "inbox", None)] == ids
    assert store.find(A, "inbox", T0 + timedelta(minutes=4)) == []


def test_find_item_page_holds_at_most_1000_items(store):
    for i in range(FIND_PAGE_MAX + 7):
        store.deliver(_m(f"s{i}"))
    assert len(store.find(A, "inbox", None, 5000)) == 1000
    assert len(store.find(A, "inbox", None, 10)) == 10
    first = store.find(A, "inbox", None)
    rest = store.find(A, "inbox", first[-1].received)
    assert len(rest) == 7


def test_backdated_delivery_is_found_in_received_order(store):
    late = store.deliver(_m("late"), received=T0 + timedelta(hours=1))[A]
    early = store.deliver(_m("early"), received=T0 - timedelta(hours=1))[A]
    assert [i.item_id for i in store.find(A, "inbox", None)] == [early, late]


def test_send_saves_a_copy_in_sent_items_and_delivers(store):
    mid, sent_id = store.send(A, MessageData(subject="Quote", to=(B,), body="x"))
    assert sent_id in store.mailbox(A).folder("sentitems").items
    [item] = store.mailbox(B).folder("inbox").items.values()
    assert item.data.message_id == mid
    assert item.data.sender == A


def test_send_without_recipients_is_refused(store):
    with pytest.raises(StoreError) as exc:
        store.send(A, MessageData(subject="x", to=("not-an-address",)))
    assert exc.value.code == "ErrorInvalidRecipients"


def test_submission_quota_is_30_per_minute(store):
    for i in range(SEND_PER_MINUTE):
        store.send(A, MessageData(subject=f"n{i}", to=("out@fabrikam.example",)))
    with pytest.raises(StoreError) as exc:
        store.send(A, MessageData(subject="one too many", to=("out@fabrikam.example",)))
    assert exc.value.code == "ErrorSubmissionQuotaExceeded"
    store.send(B, MessageData(subject="other mailbox", to=("out@fabrikam.example",)))  # per mailbox
    store.clock.advance(60)
    store.send(A, MessageData(subject="next minute", to=("out@fabrikam.example",)))
    assert len(store.outbound) == SEND_PER_MINUTE + 2


def test_recipient_quota_per_day(store):
    many = tuple(f"r{i}@fabrikam.example" for i in range(5000))
    store.send(A, MessageData(subject="1", to=many))
    store.clock.advance(61)
    store.send(A, MessageData(subject="2", to=many))
    store.clock.advance(61)
    with pytest.raises(StoreError) as exc:
        store.send(A, MessageData(subject="3", to=("one@fabrikam.example",)))
    assert exc.value.code == "ErrorSubmissionQuotaExceeded"
    store.clock.advance(24 * 3600)
    store.send(A, MessageData(subject="tomorrow", to=("one@fabrikam.example",)))


def test_ids_are_deterministic_per_seed():
    def ids(seed):
        s = ExchangeStore(VirtualClock(T0), IdSource(seed))
        s.add_mailbox(A)
        return [s.deliver(_m(f"{i}"))[A] for i in range(3)]

    assert ids(5) == ids(5)
    assert ids(5) != ids(6)


# -- the in-process port and fault rules -------------------------------------------------------------
def test_direct_port_maps_store_errors_to_exchange_errors(store):
    port = DirectExchange(store)
    with pytest.raises(ExchangeError) as exc:
        asyncio.run(port.find_new_items("ghost@contoso.example", "inbox", None, 10))
    assert exc.value.code == "ErrorNonExistentMailbox"
    assert not exc.value.transient


def test_ensure_folder_reuses_the_existing_folder(store):
    port = DirectExchange(store)

    async def main():
        first = await port.ensure_folder(A, "inbox", "Undeliverable", None)
        again = await port.ensure_folder(A, "inbox", "Undeliverable", None)
        known = await port.ensure_folder(A, "inbox", "Undeliverable", first)
        return first, again, known

    first, again, known = asyncio.run(main())
    assert first == again == known
    assert len(store.child_folders(A, "inbox")) == 1


def test_fault_rule_fires_for_count_calls_then_stops(store):
    faults = FaultInjector()
    port = DirectExchange(store, faults)
    faults.add(FaultRule("ErrorServerBusy", operation="send", mailbox=A.upper(), count=2, backoff_ms=5000))

    async def send():
        return await port.send(A, OutgoingMessage(subject="s", body="b", sender=A, to=(B,)))

    for _ in range(2):
        with pytest.raises(ExchangeError) as exc:
            asyncio.run(send())
        assert exc.value.code == "ErrorServerBusy"
        assert exc.value.backoff_ms == 5000
        assert exc.value.transient
    assert asyncio.run(send()).message_id
    asyncio.run(port.find_new_items(A, "inbox", None, 10))  # other operations were never affected


def test_fault_rule_for_another_mailbox_does_not_fire(store):
    faults = FaultInjector()
    faults.add(FaultRule("8005E272", operation="*", mailbox=B))
    port = DirectExchange(store, faults)
    assert asyncio.run(port.find_new_items(A, "inbox", None, 10)) == []
    with pytest.raises(ExchangeError):
        asyncio.run(port.find_new_items(B, "inbox", None, 10))


@pytest.mark.parametrize("bad, field", [
    (dict(code="NotACode"), "code"),
    (dict(code="ErrorServerBusy", operation="frobnicate"), "operation"),
    (dict(code="ErrorServerBusy", count=-1), "count"),
    (dict(code="ErrorServerBusy", probability=1.5), "probability"),
    (dict(code="ErrorServerBusy", probability=float("nan")), "probability"),
    (dict(code="ErrorServerBusy", probability=True), "probability"),
    (dict(code="ErrorServerBusy", count=10**100), "count"),
    (dict(code="ErrorServerBusy", count=2.5), "count"),
    (dict(code="ErrorServerBusy", count="3"), "count"),
    (dict(code="ErrorServerBusy", backoff_ms=10**30), "backoff_ms"),
    (dict(code="ErrorServerBusy", backoff_ms=-1), "backoff_ms"),
    (dict(code="ErrorServerBusy", mailbox=7), "mailbox"),
    (dict(code=["ErrorServerBusy"]), "code"),
])
def test_fault_rule_validation_names_the_field(bad, field):
    with pytest.raises(FaultRuleError) as exc:
        FaultRule(**bad)
    assert str(exc.value).startswith(field)
