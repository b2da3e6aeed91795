"""Property tests over random traffic, fault rules and settings.

(a) two starts of one workload (incoming, outgoing or ACT) of one mailbox are never closer than
    the profile's minimum polling interval;
(b) nothing received before the effective "process email from" date is tracked;
(c) every Inbox-root item received after the watermark ends exactly one way (tracked once,
    skipped with a reason, or failed/undeliverable): nothing lost, nothing twice;
(d) the same seed gives the same event log.

Fault rules come in two groups: those present during the first Test & Enable (a transient one puts
the test off, and the engine tests the workload again later; see engine.mailbox_test) and those
added afterwards, while the engine runs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALICE, BOB, CARL, FABRIKAM, LENA, START, STRANGER, SUPPORT, Org, build_org, msg, run

ADDRS = [ALICE, BOB, SUPPORT]
RUN_SECONDS = 3 * 3600
TRANSIENT = ["ErrorServerBusy", "ErrorMailboxStoreUnavailable", "ErrorExceededConnectionCount",
             "HttpServiceUnavailable", "ErrorTimeoutExpired"]

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

message_st = st.fixed_dictionaries({
    "kind": st.sampled_from(["plain", "plain", "plain", "malformed", "noid", "dup", "bcc", "reply", "big"]),
    "to": st.lists(st.sampled_from(ADDRS), min_size=1, max_size=3, unique=True),
    "sender": st.sampled_from([CARL, FABRIKAM, LENA, STRANGER, BOB]),
    "at": st.one_of(st.integers(-48 * 60, -1), st.integers(0, 100)),  # minutes from START
})

fault_st = st.fixed_dictionaries({
    "code": st.sampled_from(TRANSIENT * 3 + ["8005E272", "IsvAborted"]),
    "operation": st.sampled_from(["find_new_items", "find_new_items", "move_item", "add_category", "send",
                                  "create_email", "get_act_org", "set_act_org", "*"]),
    "mailbox": st.sampled_from([ALICE, BOB, SUPPORT, None]),
    "count": st.one_of(st.none(), st.integers(1, 6)),
    "probability": st.sampled_from([1.0, 0.6, 0.25]),
    "backoff_ms": st.one_of(st.none(), st.sampled_from([500, 400_000, 900_000])),
})

# Faults during the first Test & Enable. A failed clean-up of the outgoing test leaves the test message in
# the Inbox: the incoming cycle passes over it (it is never an activity nor an item-level row).
test_fault_st = st.fixed_dictionaries({
    "code": st.sampled_from(TRANSIENT * 3 + ["8005E272"]),
    "operation": st.sampled_from(["send", "get_act_org", "set_act_org"]),
    "mailbox": st.sampled_from([ALICE, BOB, SUPPORT, None]),
    "count": st.integers(1, 12),  # 10 or more: the test is given up after 10 transient failures
    "backoff_ms": st.one_of(st.none(), st.sampled_from([500, 400_000])),
})
# at most one on the incoming test: its one call comes before the outgoing test's calls
incoming_test_fault_st = st.one_of(st.none(), st.fixed_dictionaries({
    "code": st.sampled_from(TRANSIENT),
    "operation": st.just("find_new_items"),
    "mailbox": st.sampled_from([ALICE, BOB, SUPPORT, None]),
    "count": st.just(1),
}))

scenario_st = st.fixed_dictionaries({
    "seed": st.integers(0, 10_000),
    "minpoll": st.sampled_from([0, 1, 2, 5, 7, 10, 15, 30]),
    "move": st.booleans(),
    "jitter": st.booleans(),
    "warnings": st.booleans(),
    "profile_hours": st.one_of(st.none(), st.integers(0, 48)),  # profile date = START - hours
    "alice_start_hours": st.one_of(st.none(), st.integers(0, 48)),  # Test & Enable start date for alice
    "messages": st.lists(message_st, max_size=25),
    "faults": st.lists(fault_st, max_size=4),
    "test_faults": st.lists(test_fault_st, max_size=2),
    "incoming_test_fault": incoming_test_fault_st,
    "sends": st.lists(st.tuples(st.sampled_from([ALICE, BOB]), st.sampled_from([CARL, BOB, ALICE, STRANGER]),
                                st.integers(0, 100)), max_size=6),
})


@dataclass
class Outcome:
    o: Org
    # (address, item id, received, when it arrived in the sandbox)
    delivered: list[tuple[str, str, datetime, datetime]] = field(default_factory=list)
    effective: dict[str, datetime | None] = field(default_factory=dict)


# A scenario touching every path: faults, a put-off test, sends, each kind of message (the
# determinism and golden-log tests run it).
DETERMINISM_SCENARIO: dict[str, Any] = {
      "seed": 7, "minpoll": 2, "move": True, "jitter": True, "warnings": True, "profile_hours": 30,
      "alice_start_hours": 3,
      "messages": [
          {"kind": "plain", "to": ["alice@contoso.example", "support@contoso.example"], "sender": "carl@fabrikam.example", "at": -60},
          {"kind": "malformed", "to": ["alice@contoso.example"], "sender": "carl@fabrikam.example", "at": 5},
          {"kind": "noid", "to": ["bob@contoso.example", "support@contoso.example"], "sender": "lena@prospect.example", "at": 12},
          {"kind": "dup", "to": ["support@contoso.example"], "sender": "carl@fabrikam.example", "at": 20},
          {"kind": "bcc", "to": ["alice@contoso.example"], "sender": "someone@elsewhere.example", "at": 33},
          {"kind": "reply", "to": ["bob@contoso.example"], "sender": "carl@fabrikam.example", "at": 47}],
      "faults": [{"code": "ErrorServerBusy", "operation": "*", "mailbox": None, "count": None,
                  "probability": 0.3, "backoff_ms": None},
                 {"code": "IsvAborted", "operation": "create_email", "mailbox": None, "count": 1,
                  "probability": 1.0, "backoff_ms": None}],
      "test_faults": [{"code": "ErrorServerBusy", "operation": "get_act_org", "mailbox": "alice@contoso.example",
                       "count": 2}],
      "sends": [["alice@contoso.example", "carl@fabrikam.example", 3], ["bob@contoso.example", "alice@contoso.example", 9]]}


def run_scenario(sc: dict[str, Any], *, with_sends: bool = True) -> Outcome:
    profile_date = None if sc["profile_hours"] is None else START - timedelta(hours=sc["profile_hours"])
    o = build_org(seed=sc["seed"], jitter=sc["jitter"],
                  profile={"minpollingintervalinminutes": sc["minpoll"], "moveundeliveredemails": sc["move"],
                           "processemailsreceivedafter": profile_date},
                  org={"generatealertsforwarnings": sc["warnings"]}, test=False)
    ids = list(o.mailboxes.values())
    for f in [sc.get("incoming_test_fault"), *sc.get("test_faults", ())]:
        if f is not None:
            o.sb.add_fault(**f)
    run(o.sb.admin.test_and_enable("admin", [i for a, i in o.mailboxes.items() if a != ALICE]))
    alice_start = None if sc["alice_start_hours"] is None else START - timedelta(hours=sc["alice_start_hours"])
    if alice_start is not None and profile_date is not None and alice_start < profile_date:
        alice_start = profile_date  # Test & Enable refuses a start date before the profile's date
    run(o.sb.admin.test_and_enable("admin", [o.mailboxes[ALICE]], start_date=alice_start))
    assert len(ids) == 4
    out = Outcome(o)
    for address in o.mailboxes:
        dates = [d for d in (profile_date, alice_start if address == ALICE else None) if d is not None]
        out.effective[address] = max(dates) if dates else None

    sb = o.sb
    previous: list = []

    def make(m: dict[str, Any], i: int):
        kind = m["kind"]
        if kind == "malformed":
            return b"this is not a message " + str(i).encode(), list(m["to"])
        if kind == "dup" and previous:
            return previous[-1], list(m["to"])
        if kind == "noid":
            data = msg(f"no id {i % 3}", sender=m["sender"], to=tuple(m["to"]), message_id=None,
                       date=START, body=f"body {i % 2}")
        elif kind == "bcc":
            return msg(f"bcc {i}", sender=m["sender"], to=(STRANGER,)), list(m["to"])
        elif kind == "reply" and previous:
            data = msg(f"RE: {i}", sender=m["sender"], to=tuple(m["to"]),
                       in_reply_to=getattr(previous[0], "message_id", None))
        else:
            data = msg(f"mail {i}", sender=m["sender"], to=tuple(m["to"]))
            if kind == "big":
                data.size = 150 * 1024 * 1024 + 1
        previous.append(data)
        return data, None

    def deliver(data, rcpts, received=None):
        got = sb.deliver(data, rcpts, received)
        for address, item_id in got.items():
            out.delivered.append((address, item_id, sb.store.get(address, item_id).received, sb.clock.now()))

    for i, m in enumerate(sc["messages"]):
        data, rcpts = make(m, i)
        if m["at"] < 0:
            deliver(data, rcpts, START + timedelta(minutes=m["at"]))
        else:
            sb.at(START + timedelta(minutes=m["at"]), lambda d=data, r=rcpts: deliver(d, r))
    if with_sends:
        for j, (sender, to, minute) in enumerate(sc["sends"]):
            def send(sender=sender, to=to, j=j):
                aid = sb.crm.create_email(sender_userid=o.users[sender], to=[to], subject=f"Out {j}")
                sb.crm.send_email(aid)
            sb.at(START + timedelta(minutes=minute), send)
    for f in sc["faults"]:
        sb.add_fault(**f)
    o.run_for(RUN_SECONDS)
    return out


def _tracked_ids(o: Org) -> Counter:
    return Counter(e.exchangeitemid for e in o.received())


# -- (a) ----------------------------------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(scenario_st)
def test_minimum_polling_interval_is_never_broken(sc):
    out = run_scenario(sc)
    starts: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for e in out.o.sb.events:
        if e[1] == "start":
            starts[(e[2], e[3])].append(datetime.fromisoformat(e[0]))
    assert starts  # the scenario did run
    for address in (ALICE, BOB):  # the user mailboxes' ACT ran too, unless Test & Enable failed it
        if out.o.mailbox(address).enabledforact:
            assert starts[(address, "ACT")]
    floor = timedelta(minutes=sc["minpoll"])
    for times in starts.values():
        times.sort()
        for a, b in zip(times, times[1:], strict=False):
            assert b - a >= floor, (a, b, floor)
            assert b > a  # never twice at one instant either


# -- (b) ----------------------------------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(scenario_st)
def test_nothing_before_the_effective_date_is_tracked(sc):
    out = run_scenario(sc)
    o = out.o
    for e in o.item_events():
        after = out.effective[e[2]]
        if after is not None:
            assert datetime.fromisoformat(e[0]) > after, e
    received_at = {item_id: when for _, item_id, when, _ in out.delivered}
    for email in o.received():
        address = next(a for a, i in o.mailboxes.items() if i == email.receivingmailboxid)
        after = out.effective[address]
        assert email.exchangeitemid in received_at
        if after is not None:
            assert received_at[email.exchangeitemid] > after


# -- (c) ----------------------------------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(scenario_st)
def test_every_item_after_the_watermark_ends_exactly_one_way(sc):
    out = run_scenario(sc, with_sends=False)
    o = out.o
    events = o.item_events()
    handled = Counter(e[3] for e in events)
    assert max(handled.values(), default=1) == 1  # nothing twice
    outcome = {e[3]: (e[4], e[5], e[6]) for e in events}
    tracked = _tracked_ids(o)
    assert max(tracked.values(), default=1) == 1
    rows: dict[str, list] = defaultdict(list)
    for r in o.item_rows():
        rows[r.exchangeentryid].append(r)

    # incoming cycles that ended without an error, per mailbox: each one sees every item after the watermark
    failed = {(e[0], e[2]) for e in o.errors() if e[3] == "INCOMING"}
    clean: dict[str, list[datetime]] = defaultdict(list)
    for e in o.sb.events:
        if e[1] == "start" and e[3] == "INCOMING" and (e[0], e[2]) not in failed:
            clean[e[2]].append(datetime.fromisoformat(e[0]))
    for address, item_id, received, arrived in out.delivered:
        after = out.effective[address]
        if after is not None and received <= after:
            assert item_id not in outcome  # before the date: not even looked at
            continue
        if any(t >= arrived for t in clean[address]):
            assert item_id in outcome, f"{item_id} in {address} was lost"
        if item_id not in outcome:
            continue
        kind, reason, activityid = outcome[item_id]
        if kind == "TRACKED":
            assert tracked[item_id] == 1
            assert o.email(activityid).receivingmailboxid == o.mailboxes[address]
            assert rows[item_id] == []
        elif kind == "SKIPPED":
            assert reason
            assert item_id not in tracked
            assert [(r.itemstate, r.lastsyncerror) for r in rows[item_id]] == [(2, reason)]
        else:
            assert kind == "FAILED" and reason
            assert item_id not in tracked
            assert [(r.itemstate, r.lastsyncerror) for r in rows[item_id]] == [(3, reason)]
            store = o.sb.store
            mbx = store.mailbox(address)
            if item_id in mbx.item_folder:  # left in place: categorized, unless marking failed
                marked = "Undeliverable" in store.get(address, item_id).categories
                assert marked or "could not be moved or marked" in rows[item_id][0].lastsyncerrordetail
                assert not sc["move"] or not marked
            else:  # moved to the Undeliverable folder under the Inbox
                assert sc["move"]
                folder = store.find_child(address, "inbox", "Undeliverable")
                assert folder is not None and o.mailbox(address).undeliverablefolder == folder.folder_id
    # and nothing tracked or decided that was never delivered
    delivered_ids = {i for _, i, _, _ in out.delivered}
    assert set(outcome) <= delivered_ids
    assert set(tracked) <= delivered_ids


# -- (d) ----------------------------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario_st)
def test_same_seed_same_event_log(sc):
    first = run_scenario(sc)
    second = run_scenario(sc)
    assert first.o.sb.events == second.o.sb.events
    assert len(first.o.sb.events) > 0
    assert [(e.activityid, e.statuscode, e.subject) for e in first.o.emails()] == \
        [(e.activityid, e.statuscode, e.subject) for e in second.o.emails()]
