"""Test & Enable of one mailbox (SPEC 1.9, 1.11, 3.3, section 4).

The incoming test reads the Inbox; the outgoing test sends a message from the mailbox to itself
(and removes it from the Inbox again, so that it is never tracked). A passing workload is
enabled and due at once; a failing one is disabled with its status set to Failure and an alert.
The first Test & Enable starts the watermark from the profile's "process email from" date; a
start date given to Test & Enable moves it there, so that all Inbox mail after it is evaluated
again. Re-enabling clears the failure counters.

Transient errors: the test runs again later
-------------------------------------------
A transient error of a workload's test (Exchange busy, store unavailable, HTTP 503, a timeout, a
network failure: SPEC section 4) does not fail it. The workload stays switched off with its status
Not Run (the product shows no result until a test has passed or failed), the mailbox's
``testemailconfigurationscheduled`` is set and ``testemailconfigurationretrycount`` counts the
transient failures in a row, and a Warning alert (when the organization writes warnings) says the
test runs again in a few minutes. The retry time is 5 minutes later, or Exchange's back-off hint
when it is longer, and never before the workload's last start plus the profile's minimum polling
interval; it is kept in the workload's own next-run column (``receivingpostponeduntil``,
``postponesendinguntil``, ``receivingpostponeduntilforact``), so that a waiting workload is one
that Test & Enable tests, whose status is Not Run and whose next-run time is set. The engine
(``engine.service``) leases the mailbox at that time and tests those workloads again; a pass
enables them with the Information alert, a permanent error fails them as usual. The tenth
transient failure in a row counts as permanent: Failure and an Error alert with the same code.
A test in which some workloads pass and others are put off enables the ones that passed at once
and tests only the others again. A start date given to Test & Enable moves the watermark even
when the incoming test is put off; "this org only" is kept for a waiting ACT test in
``orgmarkedasprimaryforexchangesync`` (this organization is to be the primary one for the
mailbox's Exchange sync), which the next ACT test reads and then sets from its outcome.

The ACT test (appointments, contacts and tasks; only when the mailbox's ACT method is
server-side sync, and only for user mailboxes) checks the organization claim of SPEC 1.11 on the
Exchange mailbox: an unclaimed mailbox, or one this organization holds, is stamped with this
organization's id; one held by another organization fails with
``ConfiguredWithAnotherOrganization`` unless ``this_org_only`` ("Sync items with Exchange from
this org only") is ticked, which overwrites the other organization's stamp. It then reads the
Calendar, Contacts and Tasks folders as the impersonated mailbox: a folder that cannot be reached
fails ACT with ``ActFolderNotAccessible``, whose text names the folder and Exchange's answer (a
transient answer such as Exchange busy puts the test off, as for the other workloads). The claim is
stamped only when the folders can be reached.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine import alerts as alert_rules
from engine import schedule
from engine.act import CONFIGURED_WITH_ANOTHER_ORG, act_folder_error, another_org_error
from engine.clock import Clock
from engine.errors import KNOWN_ERRORS, SyncError
from engine.ports import (
    ACT_FOLDERS,
    WORKLOAD_COLUMNS,
    Alert,
    ExchangePort,
    MailboxUpdate,
    MailboxWork,
    OrgSettings,
    OutgoingMessage,
    ProfileSettings,
    Status,
    Workload,
)

TEST_SUBJECT = "Server-side synchronization test message"
SCHEDULED = "SCHEDULED"  # how reports name a workload whose test runs again later (not a status value)


@dataclass
class MailboxTestResult:
    """One mailbox's Test & Enable.

    ``errors`` holds the workloads that failed (switched off, status Failure); ``scheduled`` those
    whose test a transient error put off (switched off, status still Not Run): they are tested
    again at ``retry_at``. Keys are workload names ("INCOMING", "OUTGOING", "ACT")."""

    mailboxid: str
    incoming: Status = Status.NOT_RUN
    outgoing: Status = Status.NOT_RUN
    act: Status = Status.NOT_RUN
    errors: dict[str, SyncError] = field(default_factory=dict)  # workload name -> error
    update: MailboxUpdate | None = None
    alerts: list[Alert] = field(default_factory=list)
    scheduled: dict[str, SyncError] = field(default_factory=dict)  # workload name -> the transient error
    retry_at: datetime | None = None  # when the engine tests the ``scheduled`` workloads again

    @property
    def ok(self) -> bool:
        """Every workload tested passed: nothing failed and nothing waits for another test."""
        return not self.errors and not self.scheduled

    @property
    def retry_scheduled(self) -> bool:
        """The test of some workload runs again later (neither a success nor a failure yet)."""
        return bool(self.scheduled)

    def status_name(self, workload: str) -> str:
        """A workload's result as reports name it: NOT_RUN, SUCCESS, FAILURE or SCHEDULED."""
        if workload.upper() in self.scheduled:
            return SCHEDULED
        return Status(getattr(self, workload.lower())).name


def _value(mailbox: MailboxWork, values: dict[str, object] | None, name: str):
    return values[name] if values and name in values else getattr(mailbox, name)


def tested_workloads(mailbox: MailboxWork, values: dict[str, object] | None = None) -> list[Workload]:
    """The workloads Test & Enable tests: those whose delivery method is server-side sync (ACT for
    user mailboxes only: a queue mailbox with ACT = SSS stays Not Run). ``values`` are changes
    not written yet, which win over the mailbox's columns."""
    out = []
    for workload in Workload:
        f = WORKLOAD_COLUMNS[workload]
        if _value(mailbox, values, f["method"]) != schedule.SSS_METHOD[workload]:
            continue
        if workload is Workload.ACT and mailbox.regardingobjecttypecode != schedule.USER_MAILBOX:
            continue
        out.append(workload)
    return out


def scheduled_workloads(mailbox: MailboxWork, values: dict[str, object] | None = None) -> list[Workload]:
    """The workloads a scheduled test is for: tested by Test & Enable, status Not Run, and a retry
    time in their next-run column (a Not Run workload has none otherwise)."""
    out = []
    for workload in tested_workloads(mailbox, values):
        f = WORKLOAD_COLUMNS[workload]
        if _value(mailbox, values, f["status"]) == Status.NOT_RUN and _value(mailbox, values, f["next"]) is not None:
            out.append(workload)
    return out


def retry_time(mailbox: MailboxWork, values: dict[str, object] | None = None) -> datetime | None:
    """When the scheduled test is due; None when there is nothing left to test again."""
    times = [_value(mailbox, values, WORKLOAD_COLUMNS[w]["next"]) for w in scheduled_workloads(mailbox, values)]
    return min(times) if times else None


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
    """Claim the Exchange mailbox's ACT for this organization, or fail when another one holds it or a
    folder ACT syncs with cannot be reached."""
    claim = await exchange.get_act_org(mailbox.emailaddress)
    if claim is not None and claim.org_id != org.organizationid and not this_org_only:
        raise another_org_error(mailbox.emailaddress, claim.org_id)
    for folder in ACT_FOLDERS.values():
        try:
            await exchange.check_folder(mailbox.emailaddress, folder)
        except SyncError as exc:
            if exc.transient and exc.code in KNOWN_ERRORS:  # busy, throttled, unavailable: test again later
                raise
            raise act_folder_error(mailbox.emailaddress, folder, exc) from None
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
    workloads: list[Workload] | None = None,
    rng: random.Random | None = None,
) -> MailboxTestResult:
    """Test the mailbox's workloads and enable those that pass.

    Without ``workloads`` this is the administrator's Test & Enable: every workload whose delivery
    method is server-side sync is tested and the counters start over. With ``workloads`` it is the
    engine's scheduled test of those workloads: the retry count goes on, "this org only" is what
    was ticked when the test was put off, and the result keeps the other workloads' statuses.
    ``rng`` adds the seeded jitter to the retry time (the engine passes it when jitter is on)."""
    now = clock.now()
    result = MailboxTestResult(mailbox.id)
    scheduled_test = workloads is not None
    if scheduled_test:
        retries = mailbox.testemailconfigurationretrycount
        this_org_only = mailbox.orgmarkedasprimaryforexchangesync
        values: dict[str, object] = {"testmailboxaccesscompletedon": now, "lastsyncerrorcount": 0}
        result.incoming = Status(mailbox.incomingemailstatus)
        result.outgoing = Status(mailbox.outgoingemailstatus)
        result.act = Status(mailbox.actstatus)
        todo = [w for w in tested_workloads(mailbox) if w in workloads]
    else:
        retries = 0
        values = {
            "testmailboxaccesscompletedon": now,
            "transientfailurecount": 0,
            "noemailcount": 0,
            "lastsyncerrorcount": 0,
        }
        todo = tested_workloads(mailbox)
    approved = schedule.approval_ok(org, mailbox.regardingobjecttypecode, mailbox.emailrouteraccessapproval)
    tests = {
        Workload.INCOMING: lambda: _test_incoming(exchange, mailbox),
        Workload.OUTGOING: lambda: _test_outgoing(exchange, clock, mailbox),
        Workload.ACT: lambda: _test_act(exchange, org, mailbox, this_org_only),
    }
    passed: list[Workload] = []
    errors: dict[Workload, SyncError] = {}
    for workload in todo:
        try:
            if not approved:
                raise SyncError("MailboxNotApproved")
            await tests[workload]()
        except SyncError as exc:
            errors[workload] = exc
        except Exception as exc:
            if not scheduled_test:
                raise
            # in the engine a bug or an unexpected answer must not end the batch: an unknown code,
            # so a transient error
            errors[workload] = SyncError("UnexpectedError", f"{type(exc).__name__}: {exc}")
        else:
            passed.append(workload)

    # transient failures put the test off, until the limit of failures in a row: then they count as permanent
    count = retries + 1 if any(e.transient for e in errors.values()) else 0
    give_up = count >= schedule.TRANSIENT_LIMIT
    failed: dict[str, tuple[SyncError, list[Workload]]] = {}  # one alert per error, naming its workloads
    put_off: dict[str, tuple[SyncError, list[Workload]]] = {}
    for workload in todo:
        f = WORKLOAD_COLUMNS[workload]
        name = workload.name
        exc = errors.get(workload)
        if exc is None:
            setattr(result, name.lower(), Status.SUCCESS)
            values.update({f["status"]: int(Status.SUCCESS), f["enabled"]: True, f["next"]: now, f["transient"]: 0})
            if workload is Workload.ACT:
                values.update(noactcount=0, isactsyncorgflagset=True,  # this organization holds the claim now
                              orgmarkedasprimaryforexchangesync=True)
            continue
        values.update(lastsyncerror=exc.detail[:2000], lastsyncerrorcode=exc.code, lastsyncerroroccurredon=now,
                      lastsyncerrorcount=count if exc.transient else 1)
        if exc.transient and not give_up:
            result.scheduled[name] = exc
            setattr(result, name.lower(), Status.NOT_RUN)
            values.update({f["status"]: int(Status.NOT_RUN), f["enabled"]: False})  # next: the retry time
            put_off.setdefault(exc.code, (exc, []))[1].append(workload)
            continue
        result.errors[name] = exc
        setattr(result, name.lower(), Status.FAILURE)
        values.update({f["status"]: int(Status.FAILURE), f["enabled"]: False, f["next"]: None})
        if exc.code == CONFIGURED_WITH_ANOTHER_ORG:  # another organization holds the claim
            values.update(isactsyncorgflagset=False, orgmarkedasprimaryforexchangesync=False)
        failed.setdefault(exc.code, (exc, []))[1].append(workload)

    if put_off:
        waiting = [w for _exc, ws in put_off.values() for w in ws]
        backoff = max((exc.backoff_ms or 0 for exc, _ws in put_off.values()), default=0)
        at = now + schedule.seconds(schedule.error_delay(backoff or None, rng))
        for workload in waiting:  # a test is Exchange work too: not before the minimum polling interval
            floor = schedule.earliest_start(getattr(mailbox, WORKLOAD_COLUMNS[workload]["started"]),
                                            profile.minpollingintervalinminutes)
            if floor is not None and floor > at:
                at = floor
        for workload in waiting:
            values[WORKLOAD_COLUMNS[workload]["next"]] = at
        if Workload.ACT in waiting:  # kept for the next test (it is not stamped on Exchange yet)
            values["orgmarkedasprimaryforexchangesync"] = this_org_only
        result.retry_at = at
        values.update(testemailconfigurationscheduled=True, testemailconfigurationretrycount=count)
    else:
        values.update(testemailconfigurationscheduled=False, testemailconfigurationretrycount=0)

    for exc, ws in failed.values():
        result.alerts.extend(alert_rules.for_error(org, mailbox, profile, ws[0], exc, disabled=True,
                                                   attempts=count, workloads=ws))
    for exc, ws in put_off.values():
        result.alerts.extend(alert_rules.for_error(org, mailbox, profile, ws[0], exc, disabled=False,
                                                   attempts=count, workloads=ws, test_again=True))

    if Workload.INCOMING in passed or Workload.INCOMING.name in result.scheduled:
        if start_date is not None:  # a start date is kept when the test is put off
            values["processemailreceivedafter"] = start_date
        elif Workload.INCOMING in passed and mailbox.processemailreceivedafter is None:
            values["processemailreceivedafter"] = profile.processemailsreceivedafter
    if passed and result.ok:
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
