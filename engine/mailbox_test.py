"""Test & Enable of one mailbox (SPEC 1.9, 1.11, 3.3, section 4).

The incoming test reads the Inbox; the outgoing test sends a message from the mailbox to itself
(and removes it from the Inbox again, so that it is never tracked). A passing workload is
enabled and due at once; a failing one is disabled with its status set to Failure and an alert.
The first Test & Enable starts the watermark from the profile's "process email from" date; a
start date given to Test & Enable moves it there, so that all Inbox mail after it is evaluated
again. Re-enabling clears the failure counters.

The ACT test (appointments, contacts and tasks; only when the mailbox's ACT method is
server-side sync, and only for user mailboxes) checks the organization claim of SPEC 1.11 on the
Exchange mailbox: an unclaimed mailbox, or one this organization holds, is stamped with this
organization's id; one held by another organization fails with
``ConfiguredWithAnotherOrganization`` unless ``this_org_only`` ("Sync items with Exchange from
this org only") is ticked, which overwrites the other organization's stamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine import alerts as alert_rules
from engine import schedule
from engine.act import CONFIGURED_WITH_ANOTHER_ORG, another_org_error
from engine.clock import Clock
from engine.errors import SyncError
from engine.ports import (
    WORKLOAD_COLUMNS,
    ActMethod,
    Alert,
    ExchangePort,
    IncomingMethod,
    MailboxUpdate,
    MailboxWork,
    OrgSettings,
    OutgoingMessage,
    OutgoingMethod,
    ProfileSettings,
    Status,
    Workload,
)

TEST_SUBJECT = "Server-side synchronization test message"


@dataclass
class MailboxTestResult:
    mailboxid: str
    incoming: Status = Status.NOT_RUN
    outgoing: Status = Status.NOT_RUN
    act: Status = Status.NOT_RUN
    errors: dict[str, SyncError] = field(default_factory=dict)  # workload name -> error
    update: MailboxUpdate | None = None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


async def _test_incoming(exchange: ExchangePort, mailbox: MailboxWork) -> None:
    await exchange.find_new_items(mailbox.emailaddress, "inbox", None, 1)


async def _test_outgoing(exchange: ExchangePort, clock: Clock, mailbox: MailboxWork) -> None:
    sent_at = clock.now()
    message = OutgoingMessage(
        subject=TEST_SUBJECT,
        body="This message checks that the mailbox can send email. It is deleted after the test.",
        sender=mailbox.emailaddress,
        to=(mailbox.emailaddress,),
        save_copy=False,
    )
    result = await exchange.send(mailbox.emailaddress, message)
    since = sent_at - timedelta(seconds=1)
    for item in await exchange.find_new_items(mailbox.emailaddress, "inbox", since, 1000):
        if item.message_id == result.message_id:
            await exchange.delete_item(mailbox.emailaddress, item.item_id)


async def _test_act(exchange: ExchangePort, org: OrgSettings, mailbox: MailboxWork, this_org_only: bool) -> None:
    """Claim the Exchange mailbox's ACT for this organization, or fail when another one holds it."""
    claim = await exchange.get_act_org(mailbox.emailaddress)
    if claim is not None and claim.org_id != org.organizationid and not this_org_only:
        raise another_org_error(mailbox.emailaddress, claim.org_id)
    await exchange.set_act_org(mailbox.emailaddress, org.organizationid)


async def test_and_enable(
    exchange: ExchangePort,
    clock: Clock,
    org: OrgSettings,
    profile: ProfileSettings,
    mailbox: MailboxWork,
    *,
    start_date: datetime | None = None,
    this_org_only: bool = False,
) -> MailboxTestResult:
    now = clock.now()
    result = MailboxTestResult(mailbox.id)
    values: dict[str, object] = {
        "testmailboxaccesscompletedon": now,
        "testemailconfigurationscheduled": False,
        "testemailconfigurationretrycount": 0,
        "transientfailurecount": 0,
        "noemailcount": 0,
        "lastsyncerrorcount": 0,
    }
    approved = schedule.approval_ok(org, mailbox.regardingobjecttypecode, mailbox.emailrouteraccessapproval)
    tests = {
        Workload.INCOMING: lambda: _test_incoming(exchange, mailbox),
        Workload.OUTGOING: lambda: _test_outgoing(exchange, clock, mailbox),
        Workload.ACT: lambda: _test_act(exchange, org, mailbox, this_org_only),
    }
    wanted = {
        Workload.INCOMING: mailbox.incomingemaildeliverymethod == IncomingMethod.SSS,
        Workload.OUTGOING: mailbox.outgoingemaildeliverymethod == OutgoingMethod.SSS,
        # ACT is for user mailboxes only: a queue mailbox with ACT = SSS stays Not Run
        Workload.ACT: mailbox.actdeliverymethod == ActMethod.SSS
        and mailbox.regardingobjecttypecode == schedule.USER_MAILBOX,
    }
    failed: dict[str, tuple[SyncError, list[Workload]]] = {}  # one alert per error, naming its workloads
    for workload, test in tests.items():
        if not wanted[workload]:
            continue
        f = WORKLOAD_COLUMNS[workload]
        try:
            if not approved:
                raise SyncError("MailboxNotApproved")
            await test()
        except SyncError as exc:
            result.errors[workload.name] = exc
            setattr(result, workload.name.lower(), Status.FAILURE)
            values.update({f["status"]: int(Status.FAILURE), f["enabled"]: False, f["next"]: None,
                           "lastsyncerror": exc.detail[:2000], "lastsyncerrorcode": exc.code,
                           "lastsyncerroroccurredon": now, "lastsyncerrorcount": 1})
            if exc.code == CONFIGURED_WITH_ANOTHER_ORG:  # another organization holds the claim
                values.update(isactsyncorgflagset=False, orgmarkedasprimaryforexchangesync=False)
            failed.setdefault(exc.code, (exc, []))[1].append(workload)
            continue
        setattr(result, workload.name.lower(), Status.SUCCESS)
        values.update({f["status"]: int(Status.SUCCESS), f["enabled"]: True, f["next"]: now, f["transient"]: 0})
        if workload is Workload.ACT:
            values.update(noactcount=0, isactsyncorgflagset=True,  # this organization holds the claim now
                          orgmarkedasprimaryforexchangesync=True)
    for exc, workloads in failed.values():
        result.alerts.extend(alert_rules.for_error(org, mailbox, profile, workloads[0], exc, disabled=True,
                                                   workloads=workloads))

    if result.incoming is Status.SUCCESS:
        if start_date is not None:
            values["processemailreceivedafter"] = start_date
        elif mailbox.processemailreceivedafter is None:
            values["processemailreceivedafter"] = profile.processemailsreceivedafter
    if result.ok and Status.SUCCESS in (result.incoming, result.outgoing, result.act):
        parts = []
        email = " and ".join(
            w for w, s in (("incoming", result.incoming), ("outgoing", result.outgoing)) if s is Status.SUCCESS
        )
        if email:
            parts.append(f"{email} email")
        if result.act is Status.SUCCESS:
            parts.append("appointments, contacts and tasks")
        result.alerts.extend(alert_rules.for_success(
            org, mailbox, f"Mailbox {mailbox.emailaddress} was tested and enabled for {' and for '.join(parts)}."))
    result.update = MailboxUpdate(mailbox.id, values)
    return result
