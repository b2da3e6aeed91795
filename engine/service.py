"""The SSS service: lease due mailboxes, run their workloads under the caps, release them.

One call of :meth:`SyncService.run_due` handles everything due at the clock's current time, in
batches: lease a batch (``hostid``, ``processingstatecode``), run each mailbox's due workloads
concurrently (at most ``maxconcurrentconnections`` mailboxes of a profile at once), then
release the batch with the next run times, counters and statuses in one write.

The workloads of a mailbox run one after the other: incoming, outgoing, then ACT. ACT is looked
at only for mailboxes whose lease says ``enabledforact``, so a mailbox without ACT costs one
attribute test; its cycle is the org-claim check of :mod:`engine.act`.

A Test & Enable that a transient error put off (``testemailconfigurationscheduled``, see
:mod:`engine.mailbox_test`) makes the mailbox due at its retry time too. When it is due the
engine tests the waiting workloads again, under the profile's connection cap like any Exchange
work, before the mailbox's cycle; workloads that pass run their first cycle right after, in the
same lease (still no earlier than the minimum polling interval allows). A mailbox without a
waiting test pays one attribute test for this.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import types
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine import alerts as alert_rules
from engine import schedule
from engine.act import CONFIGURED_WITH_ANOTHER_ORG, run_act
from engine.clock import Clock
from engine.errors import SyncError
from engine.incoming import run_incoming
from engine.mailbox_test import retry_time, scheduled_workloads, test_and_enable
from engine.outgoing import run_outgoing
from engine.ports import (
    WORKLOAD_COLUMNS,
    Alert,
    CrmPort,
    ExchangePort,
    ItemOutcomeKind,
    MailboxUpdate,
    MailboxWork,
    OrgSettings,
    ProfileSettings,
    Status,
    Workload,
)
from engine.timeouts import bounded_port

Event = tuple[Any, ...]
DUE_NOW = datetime(2000, 1, 1, tzinfo=UTC)  # "never run yet": due at once


@dataclass
class EngineStats:
    cycles: int = 0  # mailboxes leased: one mailbox cycle runs all of that mailbox's due workloads
    polls: int = 0  # workload cycles (incoming, outgoing, ACT) started
    polls_by_workload: Counter = field(default_factory=Counter)
    emails_tracked: int = 0
    emails_skipped: Counter = field(default_factory=Counter)  # by reason
    emails_undeliverable: int = 0
    emails_sent: int = 0
    emails_send_failed: int = 0
    errors: Counter = field(default_factory=Counter)  # by code
    disabled: int = 0
    tests: int = 0  # scheduled Test & Enable runs (a test put off by a transient error, run again)
    act_to_exchange: int = 0  # ACT items created, updated or deleted in Exchange
    act_to_crm: int = 0  # ACT rows created, updated or deleted in the CRM
    act_conflicts: int = 0  # items changed on both sides (SPEC 10.3)
    act_failed: int = 0  # item-level ACT failures
    # mailbox cycles a release dropped (another host tracked a copy of one of their messages
    # first): those mailboxes are done again, so these polls are counted twice in ``polls``; the
    # emails they had tracked are taken out of ``emails_tracked`` (their activities were not written)
    cycles_dropped: int = 0
    polls_dropped: int = 0
    emails_tracked_dropped: int = 0


_FIELDS = WORKLOAD_COLUMNS
_STARTED = tuple(f["started"] for f in WORKLOAD_COLUMNS.values())  # written when the workload's cycle starts
_EMAIL_FIELDS = ((Workload.INCOMING, _FIELDS[Workload.INCOMING]), (Workload.OUTGOING, _FIELDS[Workload.OUTGOING]))
_USER_MAILBOX = schedule.USER_MAILBOX


def _get(mailbox: MailboxWork, values: dict[str, object], name: str):
    return values[name] if name in values else getattr(mailbox, name)


def eligible(workload: Workload, mailbox: MailboxWork, values: dict[str, object],
             profile: ProfileSettings | None, org: OrgSettings) -> bool:
    """SPEC 3.1 (:func:`schedule.workload_eligible`) for the mailbox as changed by ``values``."""
    if profile is None:
        return False
    if workload is Workload.ACT and mailbox.regardingobjecttypecode != _USER_MAILBOX:
        return False
    f = _FIELDS[workload]
    method, enabled, status = f["method"], f["enabled"], f["status"]
    return schedule.may_run(
        schedule.SSS_METHOD[workload], org, mailbox.regardingobjecttypecode, mailbox.active, profile.active,
        values[method] if method in values else getattr(mailbox, method),
        values[enabled] if enabled in values else getattr(mailbox, enabled),
        values[status] if status in values else getattr(mailbox, status),
        mailbox.emailrouteraccessapproval,
    )


def _may_test(mailbox: MailboxWork, profile: ProfileSettings | None) -> bool:
    """May a scheduled test run: an active mailbox of an active profile (approval is the test's own
    check: an unapproved mailbox fails it)."""
    return profile is not None and profile.active and mailbox.active


_WORK_FIELDS = frozenset(f.name for f in dataclasses.fields(MailboxWork))
_FAILURE, _SUCCESS, _NOT_RUN = int(Status.FAILURE), int(Status.SUCCESS), int(Status.NOT_RUN)
_NAMES = {w: w.name for w in Workload}  # Enum.name is a property: slow on the hot path


def finish_values(mailbox: MailboxWork, values: dict[str, object], profile: ProfileSettings | None,
                  org: OrgSettings, known: tuple[bool | None, bool | None, bool | None] = (None, None, None)) -> None:
    """Derive `postponemailboxprocessinguntil` and `mailboxstatus` (incoming, outgoing and ACT) from the
    workload columns.

    ``known``: whether incoming, outgoing and ACT are :func:`eligible` for ``values``, where the caller
    knows it already (the engine's cycle does); None: asked here."""
    due = None
    for (workload, f), ok in zip(_EMAIL_FIELDS, known[:2], strict=True):
        if eligible(workload, mailbox, values, profile, org) if ok is None else ok:
            name = f["next"]
            at = (values[name] if name in values else getattr(mailbox, name)) or DUE_NOW
            if due is None or at < due:
                due = at
    # ACT only when it is (or is being) switched on: a mailbox without it pays one test
    ok = known[2]
    if (mailbox.enabledforact or values.get("enabledforact")) and (
            eligible(Workload.ACT, mailbox, values, profile, org) if ok is None else ok):
        at = _get(mailbox, values, "receivingpostponeduntilforact") or DUE_NOW
        if due is None or at < due:
            due = at
    # a Test & Enable put off by a transient error: due at its retry time as well
    if (mailbox.testemailconfigurationscheduled or "testemailconfigurationscheduled" in values) and _get(
            mailbox, values, "testemailconfigurationscheduled") and _may_test(mailbox, profile):
        at = retry_time(mailbox, values)
        if at is not None and (due is None or at < due):
            due = at
    values["postponemailboxprocessinguntil"] = due
    s_in = values.get("incomingemailstatus", mailbox.incomingemailstatus)
    s_out = values.get("outgoingemailstatus", mailbox.outgoingemailstatus)
    s_act = values.get("actstatus", mailbox.actstatus)  # SPEC 3.6: the sum of the three workloads
    if _FAILURE in (s_in, s_out, s_act):
        values["mailboxstatus"] = _FAILURE
    elif _SUCCESS in (s_in, s_out, s_act):
        values["mailboxstatus"] = _SUCCESS
    else:
        values["mailboxstatus"] = _NOT_RUN


@types.coroutine
def _resume(coro, yielded):
    """Carry on a coroutine that suspended outside any task, as ``await`` would have."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task, e.g. cancellation
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _continue(coro, yielded):
    return await _resume(coro, yielded)


class SyncService:
    """The polling engine of one host."""

    def __init__(
        self,
        crm: CrmPort,
        exchange: ExchangePort,
        clock: Clock,
        *,
        hostid: str = "sss-host-1",
        rng: random.Random | None = None,
        jitter: bool = False,
        lease_batch: int = 2000,
        events: list[Event] | None = None,
    ) -> None:
        self.crm = crm
        self._exchange = exchange
        self.clock = clock
        self.hostid = hostid
        self.rng = rng or random.Random(0)
        self.jitter = jitter
        self.lease_batch = lease_batch
        self.events = events
        self.stats = EngineStats()
        self._semaphores: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._ports: dict[str, tuple[tuple, ExchangePort]] = {}
        self._in_flight: set[str] = set()
        self._tracked_in_batch: dict[str, int] = {}  # mailbox id -> emails tracked in the running batch
        self._port_discovers = True  # does the Exchange port find EWS URLs (Autodiscover)?

    @property
    def exchange(self) -> ExchangePort:
        return self._exchange

    @exchange.setter
    def exchange(self, port: ExchangePort) -> None:
        """Put the engine on another Exchange port (e.g. from direct to wire mode)."""
        self._exchange = port
        self._ports.clear()
        self._port_discovers = True

    def forget(self) -> None:
        """Drop what the engine learned while running (counters, ports, caps): the state it had when
        it was made, for a sandbox put back to a snapshot. Not while a batch runs."""
        if self._in_flight:
            raise RuntimeError("the engine is running: it cannot forget its state now")
        self.stats = EngineStats()
        self._semaphores.clear()
        self._ports.clear()
        self._port_discovers = True

    # -- the loop ------------------------------------------------------------------------------
    def next_due(self) -> datetime | None:
        return self.crm.next_due()

    async def run_due(self) -> int:
        """Run every workload due now; returns the number of workload cycles started."""
        started = self.stats.polls
        while True:
            now = self.clock.now()
            org = self.crm.org_settings()
            profiles = self.crm.profiles()
            batch = self.crm.lease_due(self.hostid, now, self.lease_batch)
            if not batch:
                return self.stats.polls - started
            self.stats.cycles += len(batch)
            self._tracked_in_batch.clear()
            alerts: list[Alert] = []
            updates: list[MailboxUpdate | None] = []
            suspended: list[tuple[int, asyncio.Future]] = []
            for mb in batch:
                # Eager start: in direct mode a mailbox's cycle never suspends, so running it
                # inline saves a task per mailbox; one that does suspend continues as a task.
                coro = self._process(mb, org, profiles, now, alerts)
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:
                    updates.append(stop.value)
                    continue
                suspended.append((len(updates), asyncio.ensure_future(_continue(coro, yielded))))
                updates.append(None)
            for i, task in suspended:
                updates[i] = await task
            if alerts:
                self.crm.write_alerts(alerts)
            dropped = self.crm.release(self.hostid, updates)  # type: ignore[arg-type]  (all filled in now)
            if dropped:
                self._count_dropped(dropped, updates)  # type: ignore[arg-type]
            if len(batch) < self.lease_batch:  # everything due now was in this batch: spare a lease
                return self.stats.polls - started

    def _count_dropped(self, dropped: list[str], updates: list[MailboxUpdate]) -> None:
        """Count the cycles of ``dropped`` mailboxes apart: the polls each made (a workload that
        started wrote its start) and the emails it tracked, which are not tracked after all."""
        st = self.stats
        gone = set(dropped)
        for upd in updates:
            if upd.mailboxid in gone:
                st.cycles_dropped += 1
                st.polls_dropped += sum(1 for name in _STARTED if name in upd.values)
                tracked = self._tracked_in_batch.get(upd.mailboxid, 0)
                st.emails_tracked -= tracked
                st.emails_tracked_dropped += tracked

    async def run_forever(self, stop: asyncio.Event, idle_check_s: float = 60.0) -> None:
        """Poll until ``stop`` is set (real-time service)."""
        while not stop.is_set():
            await self.run_due()
            due = self.next_due()
            now = self.clock.now()
            wake = now + timedelta(seconds=idle_check_s)
            if due is not None and due < wake:
                wake = due
            sleeper = asyncio.ensure_future(self.clock.sleep_until(wake))
            stopper = asyncio.ensure_future(stop.wait())
            done, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    # -- one mailbox ---------------------------------------------------------------------------
    def _semaphore(self, profile: ProfileSettings) -> asyncio.Semaphore:
        entry = self._semaphores.get(profile.id)
        if entry is None or entry[0] != profile.maxconcurrentconnections:
            entry = (profile.maxconcurrentconnections, asyncio.Semaphore(profile.maxconcurrentconnections))
            self._semaphores[profile.id] = entry
        return entry[1]

    def _log(self, *event: Any) -> None:
        if self.events is not None:
            self.events.append(event)

    async def _process(self, mailbox: MailboxWork, org: OrgSettings, profiles: dict[str, ProfileSettings],
                       now: datetime, alerts: list[Alert]) -> MailboxUpdate:
        if mailbox.id in self._in_flight:  # never process one mailbox twice at once
            raise RuntimeError(f"mailbox {mailbox.id} leased twice by {self.hostid}")
        self._in_flight.add(mailbox.id)
        values: dict[str, object] = {}
        profile = profiles.get(mailbox.profileid) if mailbox.profileid else None
        try:
            known: tuple[bool | None, bool | None, bool | None] = (None, None, None)
            if profile is not None:
                async with self._semaphore(profile):
                    if mailbox.testemailconfigurationscheduled:
                        mailbox = await self._scheduled_test(mailbox, profile, org, now, values, alerts)
                    # Eligibility is asked once per workload and cycle: a workload's own columns are
                    # the only ones of its test that a cycle changes, and _maybe_run says how.
                    ok_in = eligible(Workload.INCOMING, mailbox, values, profile, org)
                    if ok_in:
                        ok_in = await self._maybe_run(Workload.INCOMING, mailbox, profile, org, now, values, alerts)
                    ok_out = eligible(Workload.OUTGOING, mailbox, values, profile, org)
                    if ok_out:
                        ok_out = await self._maybe_run(Workload.OUTGOING, mailbox, profile, org, now, values, alerts)
                    ok_act = None
                    if mailbox.enabledforact:
                        ok_act = eligible(Workload.ACT, mailbox, values, profile, org)
                        if ok_act:
                            ok_act = await self._maybe_run(Workload.ACT, mailbox, profile, org, now, values, alerts)
                    known = (ok_in, ok_out, ok_act)
            finish_values(mailbox, values, profile, org, known)
        finally:
            self._in_flight.discard(mailbox.id)
        return MailboxUpdate(mailbox.id, values)

    async def _scheduled_test(self, mailbox: MailboxWork, profile: ProfileSettings, org: OrgSettings,
                              now: datetime, values: dict[str, object], alerts: list[Alert]) -> MailboxWork:
        """Run the mailbox's waiting Test & Enable when it is due; returns the mailbox as the test left
        it (the cycle that follows works from that)."""
        workloads = scheduled_workloads(mailbox)
        if not workloads:  # nothing left to test (e.g. the delivery methods were changed meanwhile)
            values["testemailconfigurationscheduled"] = False
            values["testemailconfigurationretrycount"] = 0
            return mailbox
        at = retry_time(mailbox)
        if at is None or at > now or not _may_test(mailbox, profile):
            return mailbox
        self.stats.tests += 1
        result = await test_and_enable(self._port(profile), self.clock, org, profile, mailbox,
                                       workloads=workloads, rng=self.rng if self.jitter else None)
        values.update(result.update.values)
        alerts.extend(result.alerts)
        for error in (*result.errors.values(), *result.scheduled.values()):
            self.stats.errors[error.code] += 1
        self.stats.disabled += len(result.errors)
        if self.events is not None:
            self._log(now.isoformat(), "test", mailbox.emailaddress,
                      ",".join(w.name for w in workloads),
                      ",".join(f"{w.name}:{result.status_name(w.name)}" for w in workloads))
        return dataclasses.replace(mailbox, **{k: v for k, v in values.items() if k in _WORK_FIELDS})

    async def _maybe_run(self, workload: Workload, mailbox: MailboxWork, profile: ProfileSettings,
                         org: OrgSettings, now: datetime, values: dict[str, object], alerts: list[Alert]) -> bool:
        """Run an :func:`eligible` workload's cycle if it is due; whether it is still eligible after
        (only an error that disables it makes it not)."""
        f = _FIELDS[workload]
        next_at = getattr(mailbox, f["next"])
        if next_at is not None and next_at > now:  # not due
            return True
        last = getattr(mailbox, f["started"])
        if last is not None:
            floor = last + schedule.minutes(profile.minpollingintervalinminutes)
            if floor > now:  # the profile's minimum polling interval is a hard floor
                values[f["next"]] = floor
                return True
        start = now
        values[f["started"]] = start
        if (profile.useautodiscover and self._port_discovers and mailbox.ewsurl is None
                and "ewsurl" not in values):
            values["ewsurl"] = None  # asked once per cycle, whatever the answer
            discovered = True
        else:
            discovered = False
        self.stats.polls += 1
        self.stats.polls_by_workload[_NAMES[workload]] += 1
        if self.events is not None:
            self._log(start.isoformat(), "start", mailbox.emailaddress, workload.name)
        error: SyncError | None = None
        found = False
        exchange = self._port(profile)
        try:
            if discovered:
                url = await exchange.ews_url_for(mailbox.emailaddress)
                if url is None:  # a port without URLs (in process): stop asking it
                    del values["ewsurl"]
                    self._port_discovers = False
                else:
                    values["ewsurl"] = url
                    values["lastautodiscoveredon"] = self.clock.now()
            if workload is Workload.INCOMING:
                result = await run_incoming(self.crm, exchange, org, profile, mailbox)
                found = result.found > 0
                self._note_incoming(mailbox, result, values)
                error = result.error
            elif workload is Workload.OUTGOING:
                result = await run_outgoing(self.crm, exchange, mailbox)
                found = result.found > 0
                self._note_outgoing(mailbox, result)
                error = result.error
            else:
                act = await run_act(exchange, org, mailbox, self.crm, self.clock.now())
                found = act.found > 0
                error = act.error
                alerts.extend(act.alerts)
                self._note_act(mailbox, act)
        except SyncError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected answer must not crash the cycle
            error = SyncError("UnexpectedError", f"{type(exc).__name__}: {exc}")
        end = self.clock.now()
        if error is None:
            self._on_success(workload, mailbox, profile, org, start, end, found, values)
            return True
        return not self._on_error(workload, mailbox, profile, org, start, end, error, values, alerts)

    def _port(self, profile: ProfileSettings) -> ExchangePort:
        """The Exchange port for the profile's mailboxes (one per profile and settings, reused)."""
        key = (profile.timeoutmailboxconnection, profile.timeoutmailboxconnectionafteramount)
        entry = self._ports.get(profile.id)
        if entry is None or entry[0] != key:
            entry = (key, bounded_port(self.exchange, real_clock=not self.clock.is_virtual,
                                       enabled=profile.timeoutmailboxconnection,
                                       amount_ms=profile.timeoutmailboxconnectionafteramount))
            self._ports[profile.id] = entry
        return entry[1]

    def _note_incoming(self, mailbox: MailboxWork, result, values: dict[str, object]) -> None:
        if not result.found:  # the common case: nothing new (no watermark, folder unchanged, no outcomes)
            values["itemsprocessedforlastsync"] = 0
            values["itemsfailedforlastsync"] = 0
            return
        if result.watermark is not None:
            values["processemailreceivedafter"] = result.watermark
        if result.undeliverablefolder != mailbox.undeliverablefolder:
            values["undeliverablefolder"] = result.undeliverablefolder
        values["itemsprocessedforlastsync"] = result.tracked + result.skipped
        values["itemsfailedforlastsync"] = result.failed
        st = self.stats
        st.emails_tracked += result.tracked
        if result.tracked:
            self._tracked_in_batch[mailbox.id] = self._tracked_in_batch.get(mailbox.id, 0) + result.tracked
        st.emails_undeliverable += result.failed
        for item, outcome in result.outcomes:
            if outcome.kind is ItemOutcomeKind.SKIPPED:
                st.emails_skipped[outcome.reason] += 1
            if self.events is not None:
                self._log(item.received.isoformat(), "item", mailbox.emailaddress, item.item_id,
                          outcome.kind.name, outcome.reason, outcome.activityid)

    def _note_act(self, mailbox: MailboxWork, result) -> None:
        st = self.stats
        st.act_to_exchange += result.to_exchange
        st.act_to_crm += result.to_crm
        st.act_conflicts += result.conflicts
        st.act_failed += result.failed
        if self.events is not None and result.found:
            self._log("act", mailbox.emailaddress, result.to_exchange, result.to_crm, result.conflicts, result.failed)

    def _note_outgoing(self, mailbox: MailboxWork, result) -> None:
        self.stats.emails_sent += result.sent
        self.stats.emails_send_failed += result.failed
        if self.events is not None:
            for o in result.outcomes:
                self._log("send", mailbox.emailaddress, o.activityid, o.sent, o.error_code, o.failed_for_good)

    def _on_success(self, workload: Workload, mailbox: MailboxWork, profile: ProfileSettings, org: OrgSettings,
                    start: datetime, end: datetime, found: bool, values: dict[str, object]) -> None:
        f = _FIELDS[workload]
        if workload is Workload.INCOMING:
            noemail = 0 if found else mailbox.noemailcount + 1
            values["noemailcount"] = noemail
            delay = schedule.cadence_delay(found, noemail)
        elif workload is Workload.OUTGOING:
            noemail = 0 if found else _get(mailbox, values, "noemailcount")
            delay = schedule.cadence_delay(found, noemail)
        else:
            noact = 0 if found else mailbox.noactcount + 1
            values["noactcount"] = noact
            values["isactsyncorgflagset"] = True  # this organization holds the claim (SPEC 1.11)
            values["orgmarkedasprimaryforexchangesync"] = True
            delay = schedule.act_cadence_delay(
                found, noact, eligible(Workload.INCOMING, mailbox, values, profile, org))
        values[f["next"]] = schedule.next_run(start, end, delay, profile.minpollingintervalinminutes)
        values[f["transient"]] = 0
        values[f["status"]] = _SUCCESS
        values["transientfailurecount"] = 0
        values["lastsuccessfulsynccompletedon"] = end

    def _on_error(self, workload: Workload, mailbox: MailboxWork, profile: ProfileSettings, org: OrgSettings,
                  start: datetime, end: datetime, error: SyncError, values: dict[str, object],
                  alerts: list[Alert]) -> bool:
        """Record a failed cycle; whether the workload was disabled."""
        f = _FIELDS[workload]
        st = self.stats
        st.errors[error.code] += 1
        count = getattr(mailbox, f["transient"]) + 1 if error.transient else 0
        disable = not error.transient or count >= schedule.TRANSIENT_LIMIT
        values["lastsyncerror"] = error.detail[:2000]
        values["lastsyncerrorcode"] = error.code
        values["lastsyncerrorcount"] = max(count, 1)
        values["lastsyncerroroccurredon"] = end
        values[f["transient"]] = count
        values["transientfailurecount"] = count
        if workload is Workload.ACT and error.code == CONFIGURED_WITH_ANOTHER_ORG:
            values["isactsyncorgflagset"] = False  # another organization holds the claim now
            values["orgmarkedasprimaryforexchangesync"] = False
        if disable:
            st.disabled += 1
            values[f["enabled"]] = False
            values[f["status"]] = int(Status.FAILURE)
            values[f["next"]] = None
        else:
            delay = schedule.error_delay(error.backoff_ms, self.rng if self.jitter else None)
            values[f["next"]] = schedule.next_run(start, end, delay, profile.minpollingintervalinminutes)
        self._log(end.isoformat(), "error", mailbox.emailaddress, workload.name, error.code, disable)
        alerts.extend(alert_rules.for_error(org, mailbox, profile, workload, error, disabled=disable,
                                            attempts=count))
        return disable
