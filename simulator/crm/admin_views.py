"""The read-only views of the organization: mailboxes, one mailbox, users, alerts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, func, select

from simulator.crm.admin_org import _require
from simulator.crm.models import (
    Email,
    EmailServerProfile,
    Mailbox,
    SecurityRole,
    SystemUser,
    SystemUserRoles,
    TraceLog,
)


@dataclass
class MailboxView:
    mailboxid: str
    emailaddress: str
    owner_type: str
    incomingemailstatus: int
    outgoingemailstatus: int
    mailboxstatus: int
    emailrouteraccessapproval: int
    enabledforincomingemail: bool
    enabledforoutgoingemail: bool
    lastsyncerrorcode: str | None
    actstatus: int = 0
    enabledforact: bool = False
    emailserverprofile: str | None = None
    # the last error still stands: no success (a sync or a passed test) came after it
    lasterrorcurrent: bool = False
    name: str = ""  # the user's or queue's name


def _error_current(m: Mailbox) -> bool:
    """The last error still stands: a Test & Enable that passed since clears its count, a sync
    cycle that succeeded after it comes later in time."""
    if not m.lastsyncerrorcode or not m.lastsyncerrorcount:
        return False
    success = m.lastsuccessfulsynccompletedon
    return success is None or m.lastsyncerroroccurredon is None or m.lastsyncerroroccurredon >= success


class ViewsMixin:
    """The views: every mailbox, one mailbox (and its id), every user, the alerts (trace log).

    Relies on ``self``: ``db``, and the helpers ``_user`` (:class:`OrgMixin`), ``_mailboxes``
    (:class:`MailboxesMixin`).
    """

    def mailboxes(self) -> list[MailboxView]:
        return self.mailbox_page()[1]

    def mailbox_page(self, offset: int = 0, limit: int | None = None, search: str | None = None,
                     active_only: bool = False) -> tuple[int, list[MailboxView]]:
        """How many mailboxes match, and the ``limit`` of them from ``offset`` by address (a view's
        page); ``search`` keeps those whose address or name contains it."""
        with Session(self.db) as session:
            q = select(Mailbox)
            if active_only:
                q = q.where(Mailbox.statecode == 0)
            if search:
                pattern = f"%{search.strip().lower()}%"
                q = q.where(func.lower(Mailbox.emailaddress).like(pattern) | func.lower(Mailbox.name).like(pattern))
            total = session.exec(select(func.count()).select_from(q.subquery())).one()
            q = q.order_by(Mailbox.emailaddress).offset(offset)
            if limit is not None:
                q = q.limit(limit)
            rows = session.exec(q).all()
            return total, [MailboxView(m.mailboxid, m.emailaddress, m.regardingobjecttypecode, m.incomingemailstatus,
                                       m.outgoingemailstatus, m.mailboxstatus, m.emailrouteraccessapproval,
                                       m.enabledforincomingemail, m.enabledforoutgoingemail, m.lastsyncerrorcode,
                                       m.actstatus, m.enabledforact, m.emailserverprofile, _error_current(m), m.name)
                           for m in rows]

    def users(self) -> list[dict[str, Any]]:
        """Every user: logon name, full name, address, security roles, whether disabled (by logon name)."""
        with Session(self.db) as session:
            roles: dict[str, list[str]] = {}
            for uid, name in session.exec(select(SystemUserRoles.systemuserid, SecurityRole.name).join(
                    SecurityRole, SecurityRole.roleid == SystemUserRoles.roleid).order_by(SecurityRole.name)):
                roles.setdefault(uid, []).append(name)
            return [{"domainname": u.domainname, "fullname": u.fullname, "internalemailaddress": u.internalemailaddress,
                     "roles": roles.get(u.systemuserid, []), "isdisabled": u.isdisabled, "systemuserid": u.systemuserid}
                    for u in session.exec(select(SystemUser).order_by(SystemUser.domainname))]

    def mailbox(self, ref: str) -> dict[str, Any]:
        """Every field of one mailbox (by address or id)."""
        with Session(self.db) as session:
            [mb] = self._mailboxes(session, [ref], "mailbox")
            view = mb.model_dump()
            profile = session.get(EmailServerProfile, mb.emailserverprofile or "")
            view["emailserverprofilename"] = profile.name if profile else None
            return view

    def emails(self, limit: int = 50) -> list[dict[str, Any]]:
        """Email activities, newest first, every column."""
        with Session(self.db) as session:
            rows = session.exec(select(Email).order_by(Email.createdon.desc(), Email.activityid).limit(limit)).all()
            return [r.model_dump() for r in rows]

    def mailbox_id(self, address: str) -> str:
        with Session(self.db) as session:
            [mb] = self._mailboxes(session, [address], "mailbox")
            return mb.mailboxid

    def alerts(self, *, user: str | None = None, level: int | None = None, regarding: str | None = None,
               limit: int = 200) -> list[dict[str, Any]]:
        """Alerts (trace log), newest first: on a user's wall, of a level, about one mailbox or profile."""
        with Session(self.db) as session:
            q = select(TraceLog)
            if user is not None:
                q = q.where(TraceLog.ownerid == self._user(session, user, "user").systemuserid)
            if level is not None:
                _require(level in (1, 2, 3), "level", f"{level!r} is not a level (1 information, 2 warning, 3 error)")
                q = q.where(TraceLog.level == level)
            if regarding is not None:
                q = q.where(TraceLog.regardingobjectid == regarding)
            rows = session.exec(q.order_by(TraceLog.modifiedon.desc(), TraceLog.tracelogid.desc()).limit(limit)).all()
            regarding = {t.regardingobjectid for t in rows}  # names of just the records shown
            names = dict(session.exec(select(Mailbox.mailboxid, Mailbox.emailaddress).where(
                Mailbox.mailboxid.in_(regarding))).all())
            names.update(session.exec(select(EmailServerProfile.emailserverprofileid, EmailServerProfile.name).where(
                EmailServerProfile.emailserverprofileid.in_(regarding))).all())
            owners = dict(session.exec(select(SystemUser.systemuserid, SystemUser.domainname).where(
                SystemUser.systemuserid.in_({t.ownerid for t in rows}))).all())
            out = []
            for t in rows:
                view = t.model_dump()
                view["regarding"] = names.get(t.regardingobjectid, t.regardingobjectid)
                view["owner"] = owners.get(t.ownerid, t.ownerid)
                out.append(view)
            return out
