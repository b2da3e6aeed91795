"""SPEC 3.1: a workload runs only when every precondition holds; otherwise nothing is fetched or sent."""

from __future__ import annotations

import pytest
from support import ADMIN, ALICE, BOB, CARL, SUPPORT, msg

from engine.ports import Approval


class CountingExchange:
    """Wraps the sandbox's port and counts calls per mailbox."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name):
        target = getattr(self.inner, name)

        async def call(mailbox, *args, **kw):
            self.calls.append((name, mailbox))
            return await target(mailbox, *args, **kw)

        return call

    def for_mailbox(self, address: str) -> list[str]:
        return [op for op, mb in self.calls if mb == address]


@pytest.fixture
def counted(org):
    spy = CountingExchange(org.sb.exchange)
    org.sb.engine.exchange = spy
    org.spy = spy
    return org


def _run_with_mail(o) -> None:
    o.deliver(msg("for alice", to=(ALICE,)))
    o.run_for(3600)


def test_control_an_eligible_mailbox_fetches_and_tracks(counted):
    _run_with_mail(counted)
    assert "find_new_items" in counted.spy.for_mailbox(ALICE)
    assert len(counted.received()) == 1
    assert counted.starts(ALICE)


@pytest.mark.parametrize("change", [
    {"statecode": 1, "statuscode": 2},  # inactive mailbox
    {"incomingemaildeliverymethod": 1},  # Outlook
    {"incomingemaildeliverymethod": 3},  # forward mailbox
    {"incomingemaildeliverymethod": 0},  # none
    {"enabledforincomingemail": False},
    {"incomingemailstatus": 0},  # Not Run
    {"emailrouteraccessapproval": int(Approval.PENDING)},
    {"emailrouteraccessapproval": int(Approval.REJECTED)},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_missing_precondition_means_nothing_is_fetched(counted, change):
    counted.set_mailbox(ALICE, **change)
    _run_with_mail(counted)
    assert "find_new_items" not in counted.spy.for_mailbox(ALICE)
    assert counted.starts(ALICE, "INCOMING") == []
    assert counted.received() == []
    assert len(counted.inbox_ids(ALICE)) == 1  # the mail waits in Exchange
    assert counted.starts(BOB, "INCOMING")  # other mailboxes carry on


def test_inactive_profile_stops_every_mailbox(counted):
    counted.set_profile(statecode=1, statuscode=2)
    _run_with_mail(counted)
    assert counted.spy.calls == []
    assert [e for e in counted.sb.events if e[1] == "start"] == []


def test_rejected_approval_through_the_admin_operation_stops_processing(counted):
    counted.sb.admin.approve(ADMIN, [counted.mailboxes[ALICE]], approve=False)
    _run_with_mail(counted)
    assert counted.spy.for_mailbox(ALICE) == []
    assert counted.received() == []


def test_approval_not_required_lets_an_unapproved_mailbox_run(make_org):
    o = make_org(org={"requireapprovalforuseremail": False})
    o.set_mailbox(ALICE, emailrouteraccessapproval=int(Approval.PENDING))
    o.set_mailbox(SUPPORT, emailrouteraccessapproval=int(Approval.PENDING))
    o.deliver(msg("to both", to=(ALICE,)))
    o.deliver(msg("queue mail", to=(SUPPORT,)))
    o.run_for(3600)
    assert o.starts(ALICE)
    assert o.starts(SUPPORT) == []  # approval for queues is still required
    assert [e.subject for e in o.received()] == ["to both"]


def test_outgoing_not_eligible_leaves_email_pending_send(counted):
    counted.set_mailbox(ALICE, enabledforoutgoingemail=False)
    aid = counted.sb.crm.create_email(sender_userid=counted.users[ALICE], to=[CARL], subject="Quote")
    counted.sb.crm.send_email(aid)
    counted.run_for(3600)
    assert "send" not in counted.spy.for_mailbox(ALICE)
    assert counted.starts(ALICE, "OUTGOING") == []
    assert counted.email(aid).statuscode == 6
    assert counted.starts(ALICE, "INCOMING")  # incoming still runs
