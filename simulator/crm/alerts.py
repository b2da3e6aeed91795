"""What the platform records when things go wrong: item-level error rows (kept three days), alerts
in the trace log, and the profile alert email when most mailboxes of a profile fail."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, insert, or_, select, update

from engine.ports import Alert, ItemError, MailboxUpdate, Status
from simulator.crm.models import EMAIL_STATE_OF_STATUS, EmailStatus, SystemUser
from simulator.crm.platform_sql import PRO, E, M, T, X

ITEM_ROW_RETENTION = timedelta(days=3)
ALERT_EMAIL_WINDOW = timedelta(hours=1)  # sendemailalert: failures counted over the last hour, one email an hour


class AlertsMixin:
    """Item error rows, alerts and the profile alert email.

    Uses ``self.clock``, ``self.ids``, ``self._begin``, ``self.on_notification``, ``self._last_purge`` and
    the pending ``self._item_rows``."""

    def record_item_errors(self, errors: list[ItemError]) -> None:
        now = self.clock.now()
        for e in errors:
            self._item_rows.append(dict(
                mailboxid=e.mailboxid, exchangeentryid=e.exchangeentryid, objectid=e.objectid, objecttypecode=e.objecttypecode,
                itemstate=int(e.state), lastsyncerror=e.errorname, lastsyncerrordetail=e.detail[:2000], retries=0,
                lastsyncerroroccurredon=now))

    def _purge_old_item_rows(self) -> None:
        now = self.clock.now()
        if self._last_purge is not None and now - self._last_purge < timedelta(hours=1):
            return
        self._last_purge = now
        with self._begin() as conn:
            conn.execute(X.delete().where(X.c.lastsyncerroroccurredon < now - ITEM_ROW_RETENTION))

    def write_alerts(self, alerts: list[Alert]) -> None:
        """Write alerts; a repeat for the same record, wall, code and level updates the row."""
        if not alerts:
            return
        now = self.clock.now()
        with self._begin() as conn:
            for a in alerts:
                existing = conn.execute(select(T.c.tracelogid).where(
                    T.c.regardingobjectid == a.regardingobjectid, T.c.ownerid == a.ownerid,
                    T.c.tracecode == a.tracecode, T.c.level == int(a.level))).scalar()
                if existing is not None:
                    conn.execute(update(T).where(T.c.tracelogid == existing).values(
                        text=a.text, modifiedon=now, errorcount=T.c.errorcount + 1))
                else:
                    conn.execute(insert(T).values(
                        level=int(a.level), regardingobjectid=a.regardingobjectid,
                        regardingobjecttypecode=a.regardingobjecttypecode, ownerid=a.ownerid, tracecode=a.tracecode,
                        text=a.text, errorcount=1, createdon=now, modifiedon=now))

    def _after_errors(self, updates: list[MailboxUpdate]) -> None:
        failed = [u.mailboxid for u in updates if u.values.get("lastsyncerroroccurredon") is not None]
        if failed:
            self.check_profile_failures(failed)

    def check_profile_failures(self, mailboxids: list[str]) -> list[str]:
        """The profile alert email (``sendemailalert``, SPEC 4): when more than half of a profile's
        mailboxes failed within the last hour, one email to the profile owner (at most one an hour).

        A mailbox counts as failed when a workload's status is Failure and its last error is
        less than an hour old. The email is an activity regarding the profile, handed to
        ``on_notification`` for delivery. Returns the ids of the profiles that were mailed."""
        now = self.clock.now()
        since = now - ALERT_EMAIL_WINDOW
        mailed: list[str] = []
        with self._begin() as conn:
            profileids = conn.execute(select(M.c.emailserverprofile).distinct().where(
                M.c.mailboxid.in_(mailboxids), M.c.emailserverprofile.is_not(None))).scalars().all()
            for pid in sorted(profileids):
                profile = conn.execute(select(PRO.c.name, PRO.c.ownerid, PRO.c.sendemailalert).where(
                    PRO.c.emailserverprofileid == pid)).first()
                if profile is None or not profile.sendemailalert:
                    continue
                total = conn.execute(select(func.count()).where(M.c.emailserverprofile == pid)).scalar()
                failed = conn.execute(select(func.count()).where(
                    M.c.emailserverprofile == pid, M.c.lastsyncerroroccurredon >= since,
                    or_(M.c.incomingemailstatus == Status.FAILURE, M.c.outgoingemailstatus == Status.FAILURE,
                        M.c.actstatus == Status.FAILURE))).scalar()
                if not total or failed * 2 <= total:
                    continue
                already = conn.execute(select(E.c.activityid).where(
                    E.c.regardingobjectid == pid, E.c.regardingobjecttypecode == "emailserverprofile",
                    E.c.createdon >= since).limit(1)).first()
                if already is not None:
                    continue
                owner = conn.execute(select(SystemUser.internalemailaddress).where(
                    SystemUser.systemuserid == profile.ownerid)).scalar()
                if owner is None:
                    continue
                subject = f"Email server profile {profile.name}: {failed} of {total} mailboxes failed"
                body = (f"In the last hour {failed} of the {total} mailboxes that use the email server profile "
                        f"{profile.name} failed to synchronize. Open the alerts of the profile and of its "
                        "mailboxes to see why, fix the cause, then test and enable the mailboxes again.")
                conn.execute(insert(E).values(
                    activityid=self.ids.new(), subject=subject, description=body, sender=None, torecipients=owner,
                    directioncode=True, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENT],
                    statuscode=EmailStatus.SENT, ownerid=profile.ownerid, regardingobjectid=pid,
                    regardingobjecttypecode="emailserverprofile", senton=now, createdon=now, modifiedon=now))
                mailed.append((pid, owner, subject, body))
        for _pid, owner, subject, body in mailed:
            if self.on_notification is not None:
                self.on_notification(owner, subject, body)
        return [m[0] for m in mailed]
