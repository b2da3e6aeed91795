"""Test & Enable of one mailbox (SPEC 1.9, 3.3, section 4).

The incoming test reads the Inbox; the outgoing test sends a message from the mailbox to itself
(and removes it from the Inbox again, so that it is never tracked). A passing workload is
enabled and due at once; a failing one is disabled with its status set to Failure and an alert.
The first Test & Enable starts the watermark from the profile's "process email from" date; a
start date given to Test & Enable moves it there, so that all Inbox mail after it is evaluated
again. Re-enabling clears the failure counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine import alerts as alert_rules
from engine import schedule
from engine.clock import Clock
from engine.errors import SyncError
from engine.ports import (
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


async def test_and_enable(
    exchange: ExchangePort,
    clock: Clock,
    org: OrgSettings,
    profile: ProfileSettings,
    mailbox: MailboxWork,
    *,
    start_date: datetime | None = None,
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
    plan = [
        (Workload.INCOMING, mailbox.incomingemaildeliverymethod == IncomingMethod.SSS,
         "incomingemailstatus", "enabledforincomingemail", "receivingpostponeduntil",
         "incomingtransientfailurecount"),
        (Workload.OUTGOING, mailbox.outgoingemaildeliverymethod == OutgoingMethod.SSS,
         "outgoingemailstatus", "enabledforoutgoingemail", "postponesendinguntil",
         "outgoingtransientfailurecount"),
    ]
    for workload, wanted, status_f, enabled_f, next_f, transient_f in plan:
        if not wanted:
            continue
        try:
            if not approved:
                raise SyncError("MailboxNotApproved")
            if workload is Workload.INCOMING:
                await _test_incoming(exchange, mailbox)
            else:
                await _test_outgoing(exchange, clock, mailbox)
        except SyncError as exc:
            result.errors[workload.name] = exc
            values[status_f] = int(Status.FAILURE)
            values[enabled_f] = False
            values[next_f] = None
            values["lastsyncerror"] = exc.detail[:2000]
            values["lastsyncerrorcode"] = exc.code
            values["lastsyncerroroccurredon"] = now
            values["lastsyncerrorcount"] = 1
            setattr(result, workload.name.lower(), Status.FAILURE)
            result.alerts.extend(alert_rules.for_error(org, mailbox, profile, workload, exc, disabled=True))
            continue
        values[status_f] = int(Status.SUCCESS)
        values[enabled_f] = True
        values[next_f] = now
        values[transient_f] = 0
        setattr(result, workload.name.lower(), Status.SUCCESS)

    if result.incoming is Status.SUCCESS:
        if start_date is not None:
            values["processemailreceivedafter"] = start_date
        elif mailbox.processemailreceivedafter is None:
            values["processemailreceivedafter"] = profile.processemailsreceivedafter
    if result.ok and (result.incoming is Status.SUCCESS or result.outgoing is Status.SUCCESS):
        enabled = " and ".join(
            w for w, s in (("incoming", result.incoming), ("outgoing", result.outgoing)) if s is Status.SUCCESS
        )
        result.alerts.extend(alert_rules.for_success(
            org, mailbox, f"Mailbox {mailbox.emailaddress} was tested and enabled for {enabled} email."))
    result.update = MailboxUpdate(mailbox.id, values)
    return result
