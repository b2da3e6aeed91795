"""Test & Enable of mailboxes (SPEC 1.9) and the async job that runs it for a profile (SPEC 1.10)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from engine.clock import as_utc
from engine.mailbox_test import MailboxTestResult, test_and_enable
from engine.ports import ActMethod, IncomingMethod, OutgoingMethod
from engine.service import finish_values
from simulator.crm.errors import OutOfOrderError, ValidationError
from simulator.crm.inputs import TestEnableInput, parse
from simulator.crm.models import AsyncOperation, AsyncState, EmailServerProfile, Mailbox, SystemUser
from simulator.crm.operations import out_of_order

TEST_ENABLE_JOB = "Test and enable mailboxes of an email server profile"
JOB_PROGRESS_STEPS = 50
ALERT_EMAIL_WINDOW = timedelta(hours=1)


def test_result_view(result: MailboxTestResult, address: str, *, details: bool = False) -> dict[str, Any]:
    """One mailbox's Test & Enable result as reports show it (the job's entries, the HTTP answers).

    A workload whose test a transient error put off shows SCHEDULED: neither passed nor failed."""
    view = {"mailboxid": result.mailboxid, "emailaddress": address, "ok": result.ok,
            "incoming": result.status_name("incoming"), "outgoing": result.status_name("outgoing"),
            "act": result.status_name("act"), "errors": {w: e.code for w, e in result.errors.items()},
            "retry_scheduled": result.retry_scheduled,
            "scheduled": {w: e.code for w, e in result.scheduled.items()},
            "retry_at": result.retry_at.isoformat() if result.retry_at else None}
    if details:
        view["details"] = {w: e.detail for w, e in (result.errors | result.scheduled).items()}
    return view


class EnableMixin:
    """Test & Enable of mailboxes, the async job of a profile's Test & Enable, and the jobs' views.

    Relies on ``self``: ``db``, ``clock``, ``ids``, ``platform`` (the mailboxes' work, settings and
    profiles as the engine sees them; it writes the results), ``exchange``, and the helpers
    ``_check`` (:class:`OrgMixin`), ``_profile`` (:class:`ProfilesMixin`), ``_mailboxes``
    (:class:`MailboxesMixin`).
    """

    def _testable(self, session: Session, as_user: str, refs: Iterable[str],
                  start_date: datetime | None) -> tuple[SystemUser, list[Mailbox]]:
        user = self._check(session, as_user, "mailbox test-enable")
        rows = self._mailboxes(session, refs)
        for mb in rows:
            if not mb.emailserverprofile:
                raise out_of_order("mailbox-settings", f"mailbox {mb.emailaddress} has no email server profile")
            if mb.incomingemaildeliverymethod != IncomingMethod.SSS and \
                    mb.outgoingemaildeliverymethod != OutgoingMethod.SSS and mb.actdeliverymethod != ActMethod.SSS:
                raise out_of_order("mailbox-settings", f"mailbox {mb.emailaddress} uses server-side "
                                   "synchronization for nothing")
            if start_date is not None:
                profile = session.get(EmailServerProfile, mb.emailserverprofile)
                floor = profile.processemailsreceivedafter if profile else None
                if floor is not None and as_utc(start_date) < floor:
                    raise ValidationError(f"{as_utc(start_date):%Y-%m-%d %H:%M} is before the profile's "
                                          f"\"process email from\" date {floor:%Y-%m-%d %H:%M}", "start_date")
        return user, rows

    async def test_and_enable(self, as_user: str, mailboxids: Iterable[str], *,
                              start_date: datetime | None = None,
                              this_org_only: bool = False) -> list[MailboxTestResult]:
        """SPEC 1.9: test the selected mailboxes and enable what passes."""
        data = parse(TestEnableInput, {"mailboxes": list(mailboxids), "start_date": start_date,
                                       "this_org_only": this_org_only})
        with Session(self.db) as session:
            _user, rows = self._testable(session, as_user, data.mailboxes, data.start_date)
            ids = [mb.mailboxid for mb in rows]
        return await self._test_batch(ids, data.start_date, bool(data.this_org_only))

    async def _test_batch(self, ids: list[str], start_date: datetime | None, this_org_only: bool, *,
                          isolate: bool = False) -> list[MailboxTestResult | Exception]:
        """Test & Enable each mailbox in turn, then write their rows and alerts in one go.

        With ``isolate`` an unexpected exception of one mailbox's test is returned in its place
        (and that mailbox left as it was) instead of ending the batch."""
        works = self.platform.mailbox_work(ids)
        org = self.platform.org_settings()
        profiles = self.platform.profiles()
        results: list[MailboxTestResult | Exception] = []
        updates, alerts = [], []
        for work in works:
            profile = profiles[work.profileid]
            try:
                result = await test_and_enable(self.exchange, self.clock, org, profile, work,
                                               start_date=start_date, this_org_only=this_org_only)
            except Exception as exc:
                if not isolate:
                    raise
                results.append(exc)
                continue
            finish_values(work, result.update.values, profile, org)
            results.append(result)
            updates.append(result.update)
            alerts.extend(result.alerts)
        self.platform.update_mailboxes(updates)
        self.platform.write_alerts(alerts)
        return results

    def start_profile_test_and_enable(self, as_user: str, ref: str) -> str:
        """SPEC 1.10: queue an async job that tests and enables every mailbox of the profile."""
        with Session(self.db) as session:
            user = self._check(session, as_user, "profile test-enable")
            profile = self._profile(session, ref)
            job = AsyncOperation(asyncoperationid=self.ids.new(), name=f"{TEST_ENABLE_JOB}: {profile.name}",
                                 operationtype="TestAndEnableMailboxes", ownerid=user.systemuserid,
                                 regardingobjectid=profile.emailserverprofileid, statecode=int(AsyncState.WAITING),
                                 progress=0, result=json.dumps({"mailboxes": []}), createdon=self.clock.now())
            session.add(job)
            session.commit()
            return job.asyncoperationid

    async def run_job(self, jobid: str, progress=None) -> dict[str, Any]:
        """Run a waiting job (the asynchronous service's part); each mailbox's result is kept as it goes.

        A mailbox whose test fails does not stop the job; ``progress(done, total)`` is called after each.
        A mailbox whose test a transient error put off is counted as ``scheduled``, not as failed
        (unless another of its workloads failed); the engine tests it again later."""
        with Session(self.db) as session:
            job = session.get(AsyncOperation, jobid)
            if job is None:
                raise ValidationError(f"no job has the id {jobid!r}", "job")
            if job.statecode != AsyncState.WAITING:
                raise OutOfOrderError(f"job {jobid} is {AsyncState(job.statecode).name.lower().replace('_', ' ')}, "
                                      "not waiting", "job")
            addresses = dict(session.exec(select(Mailbox.mailboxid, Mailbox.emailaddress).where(
                Mailbox.emailserverprofile == job.regardingobjectid).order_by(Mailbox.emailaddress)).all())
            ids = list(addresses)
            job.statecode = int(AsyncState.IN_PROGRESS)
            job.startedon = self.clock.now()
            session.add(job)
            session.commit()
        entries: list[dict[str, Any]] = []
        state = AsyncState.SUCCEEDED
        # tested in chunks of 2% of the mailboxes, each chunk's rows written at once with the job's
        # progress: often enough to follow, and no rewrite of the growing result per mailbox
        every = max(1, len(ids) // JOB_PROGRESS_STEPS)
        try:
            for start in range(0, len(ids), every):
                chunk = ids[start:start + every]
                for mid, r in zip(chunk, await self._test_batch(chunk, None, False, isolate=True), strict=True):
                    if isinstance(r, Exception):  # one mailbox's trouble must not end the job
                        entry = {"mailboxid": mid, "emailaddress": addresses[mid], "ok": False,
                                 "errors": {"job": f"{type(r).__name__}: {r}"}}
                    else:
                        entry = test_result_view(r, addresses[mid])
                    entries.append(entry)
                self._job_progress(jobid, entries, len(entries), len(ids))
                if progress is not None:
                    for n in range(start + 1, start + len(chunk) + 1):
                        progress(n, len(ids))
        except BaseException:
            state = AsyncState.FAILED
            raise
        finally:
            self._job_progress(jobid, entries, len(entries), len(ids), final=state)
        return self.job(jobid)

    def _job_progress(self, jobid: str, entries: list[dict], done: int, total: int,
                      final: AsyncState | None = None) -> None:
        with Session(self.db) as session:
            job = session.get(AsyncOperation, jobid)
            job.progress = 100 if total == 0 and final else int(100 * done / total) if total else 0
            failed = sum(1 for e in entries if e["errors"])
            scheduled = sum(1 for e in entries if e.get("retry_scheduled"))
            job.result = json.dumps({"total": total, "done": done, "failed": failed, "scheduled": scheduled,
                                     "mailboxes": entries})
            if final is not None:
                job.statecode = int(final)
                job.completedon = self.clock.now()
            session.add(job)
            session.commit()

    def jobs(self) -> list[dict[str, Any]]:
        with Session(self.db) as session:
            ids = session.exec(select(AsyncOperation.asyncoperationid).order_by(
                AsyncOperation.createdon, AsyncOperation.asyncoperationid)).all()
        return [self.job(j) for j in ids]

    def waiting_jobs(self) -> list[str]:
        with Session(self.db) as session:
            return list(session.exec(select(AsyncOperation.asyncoperationid).where(
                AsyncOperation.statecode == int(AsyncState.WAITING)).order_by(AsyncOperation.createdon)).all())

    def job(self, jobid: str) -> dict[str, Any]:
        with Session(self.db) as session:
            job = session.get(AsyncOperation, jobid)
            if job is None:
                raise ValidationError(f"no job has the id {jobid!r}", "job")
            view = job.model_dump()
            view["state"] = AsyncState(job.statecode).name.lower().replace("_", " ")
            view["result"] = json.loads(job.result) if job.result else None
            return view
