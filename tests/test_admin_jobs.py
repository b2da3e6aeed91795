"""Profile-wide Test & Enable as an async job (SPEC 1.10) and the profile alert email (SPEC 4)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from support import ADMIN, ADMIN_ADDR, ALICE, BOB, SUPPORT, run

from simulator.crm.admin import AdminError
from simulator.crm.models import AsyncOperation, Email, TraceLog
from simulator.sandbox import NOTIFICATION_SENDER, Sandbox

USERS = 200
BROKEN = ["user007@contoso.example", "user050@contoso.example", "user123@contoso.example"]  # not in Exchange
UNAPPROVED = ["user011@contoso.example", "user199@contoso.example"]


@pytest.fixture(scope="module")
def big():
    """200 users (and the admin) on one profile; 3 mailboxes fail in Exchange, 2 are not approved."""
    sb = Sandbox(seed=4)
    admin = sb.admin
    admin.create_organization("Contoso", tenant_id="11111111-2222-3333-4444-555555555555")
    addresses = [f"user{i:03d}@contoso.example" for i in range(USERS)]
    for address in addresses:
        admin.add_user(address.split("@")[0].title(), address)
    pid = admin.create_profile(ADMIN, name="Exchange Online")
    admin.set_default_profile(ADMIN, pid)
    everyone = [m.mailboxid for m in admin.mailboxes()]
    admin.apply_default_settings(ADMIN, everyone)
    admin.approve(ADMIN, [m for m in everyone if admin.mailbox(m)["emailaddress"] not in UNAPPROVED])
    for address in BROKEN:
        sb.add_fault(code="ErrorNonExistentMailbox", mailbox=address)
    seen: list[tuple[int, int, int]] = []
    jobid = admin.start_profile_test_and_enable(ADMIN, "Exchange Online")
    waiting = admin.job(jobid)

    def progress(done: int, total: int) -> None:
        seen.append((done, total, admin.job(jobid)["progress"]))

    job = run(admin.run_job(jobid, progress))
    yield sb, waiting, job, seen, pid
    sb.close()


def test_job_was_queued_waiting_then_completed(big):
    _sb, waiting, job, _seen, pid = big
    assert waiting["state"] == "waiting" and waiting["progress"] == 0 and waiting["regardingobjectid"] == pid
    assert job["state"] == "succeeded" and job["progress"] == 100
    assert job["startedon"] is not None and job["completedon"] >= job["startedon"]


def test_job_progress_is_kept_as_it_goes(big):
    _sb, _waiting, _job, seen, _pid = big
    assert [d for d, _t, _p in seen] == list(range(1, USERS + 2))
    assert all(t == USERS + 1 for _d, t, _p in seen)
    stored = [p for _d, _t, p in seen]
    assert stored == sorted(stored) and stored[0] < 5 and 45 <= stored[len(stored) // 2] <= 55


def test_job_keeps_going_past_failures_with_a_result_per_mailbox(big):
    _sb, _waiting, job, _seen, _pid = big
    result = job["result"]
    assert result["total"] == USERS + 1 and result["done"] == USERS + 1 and result["failed"] == 5
    by_address = {m["emailaddress"]: m for m in result["mailboxes"]}
    for address in BROKEN:
        assert by_address[address]["errors"] == {"INCOMING": "ErrorNonExistentMailbox",
                                                 "OUTGOING": "ErrorNonExistentMailbox",
                                                 "ACT": "ErrorNonExistentMailbox"}
    for address in UNAPPROVED:
        assert set(by_address[address]["errors"].values()) == {"MailboxNotApproved"}
    ok = [m for m in result["mailboxes"] if m["ok"]]
    assert len(ok) == USERS + 1 - 5
    assert all(m["incoming"] == "SUCCESS" and m["outgoing"] == "SUCCESS" for m in ok)


def test_job_alerts_errors_for_the_failures_and_information_for_the_rest(big):
    sb, _waiting, _job, _seen, _pid = big
    with Session(sb.db) as s:
        alerts = s.exec(select(TraceLog)).all()
        names = {m.mailboxid: m.emailaddress for m in sb.admin.mailboxes()}
    errors = {names[a.regardingobjectid] for a in alerts if a.level == 3}
    assert errors == set(BROKEN + UNAPPROVED)
    info = {names[a.regardingobjectid] for a in alerts if a.level == 1}
    assert len(info) == USERS + 1 - 5 and not info & errors


def test_a_job_runs_once(big):
    sb, _waiting, job, _seen, _pid = big
    with pytest.raises(AdminError, match="succeeded, not waiting"):
        run(sb.admin.run_job(job["asyncoperationid"]))
    with Session(sb.db) as s:
        assert len(s.exec(select(AsyncOperation)).all()) == 1


def test_an_unexpected_crash_on_one_mailbox_does_not_end_the_job(org):
    real = org.sb.exchange.find_new_items

    async def flaky(mailbox, folder, after, max_items):
        if mailbox == BOB:
            raise RuntimeError("connection reset in the middle of a test")
        return await real(mailbox, folder, after, max_items)

    org.sb.exchange.find_new_items = flaky
    jobid = org.sb.admin.start_profile_test_and_enable(ADMIN, org.profile_id)
    job = run(org.sb.admin.run_job(jobid))
    assert job["state"] == "succeeded"
    by_address = {m["emailaddress"]: m for m in job["result"]["mailboxes"]}
    assert not by_address[BOB]["ok"] and "RuntimeError" in by_address[BOB]["errors"]["job"]
    assert by_address[ALICE]["ok"] and by_address[SUPPORT]["ok"] and by_address[ADMIN_ADDR]["ok"]


# ------------------------------------------------------------------------------ sendemailalert
def _alert_emails(o) -> list[Email]:
    with Session(o.sb.db) as s:
        return list(s.exec(select(Email).where(Email.regardingobjecttypecode == "emailserverprofile")).all())


def _owner_inbox(o) -> list:
    return [i for i in o.sb.store.mailbox(ADMIN_ADDR).folder("inbox").items.values()
            if i.data.sender == NOTIFICATION_SENDER]


def _break(o, addresses) -> None:
    for address in addresses:
        o.sb.add_fault(code="ErrorNonExistentMailbox", mailbox=address, operation="find_new_items")


def test_more_than_half_failing_within_an_hour_mails_the_owner_once(make_org):
    o = make_org(profile={"sendemailalert": True}, test=False)
    _break(o, [ALICE, BOB, SUPPORT])  # 3 of 4 mailboxes
    o.test_and_enable([ALICE, BOB, SUPPORT, ADMIN_ADDR])
    [mail] = _alert_emails(o)
    assert "3 of 4" in mail.subject and mail.ownerid == o.profile().ownerid
    assert len(_owner_inbox(o)) == 1
    o.run_for(600)
    o.test_and_enable([ALICE, BOB])  # failing again within the hour: no second email
    assert len(_alert_emails(o)) == 1
    o.run_for(2 * 3600)
    o.test_and_enable([ALICE, BOB, SUPPORT])  # a new hour: a new email
    assert len(_alert_emails(o)) == 2 and len(_owner_inbox(o)) == 2


def test_half_or_fewer_failing_sends_nothing(make_org):
    o = make_org(profile={"sendemailalert": True}, test=False)
    _break(o, [ALICE, BOB])  # 2 of 4: not more than half
    o.test_and_enable([ALICE, BOB, SUPPORT, ADMIN_ADDR])
    assert _alert_emails(o) == [] and _owner_inbox(o) == []


def test_no_alert_email_when_the_profile_does_not_ask_for_it(make_org):
    o = make_org(test=False)
    _break(o, [ALICE, BOB, SUPPORT])
    o.test_and_enable([ALICE, BOB, SUPPORT, ADMIN_ADDR])
    assert _alert_emails(o) == []


def test_failures_in_engine_cycles_count_too(make_org):
    o = make_org(profile={"sendemailalert": True})
    assert _alert_emails(o) == []
    _break(o, [ALICE, BOB, SUPPORT])
    o.run_for(20 * 60)
    [mail] = _alert_emails(o)
    assert "3 of 4" in mail.subject
    for address in (ALICE, BOB, SUPPORT):
        assert o.mailbox(address).incomingemailstatus == 2

