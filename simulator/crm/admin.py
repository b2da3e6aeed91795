"""The administrator's operations on the fake organization (SPEC section 1), with their checks.

Every operation runs as a named user whose security roles are checked, validates its fields
(an error names the field), and writes nothing when it refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from engine.clock import Clock, as_utc
from engine.mailbox_test import MailboxTestResult, test_and_enable
from engine.ports import (
    ActMethod,
    Approval,
    ExchangePort,
    IncomingMethod,
    OutgoingMethod,
)
from engine.service import finish_values
from simulator.crm.models import (
    Account,
    Contact,
    CredentialRetrieval,
    EmailServerProfile,
    Lead,
    Mailbox,
    Organization,
    Queue,
    SecurityRole,
    ServerType,
    SystemUser,
    SystemUserRoles,
    TrackSetting,
)
from simulator.crm.platform import IdFactory, Platform

SYSTEM_ADMINISTRATOR = "System Administrator"
SALESPERSON = "Salesperson"
PRV_APPROVE = "prvApproveRejectEmailAddress"
PRV_READ_MAILBOX = "prvReadMailbox"
PRV_WRITE_MAILBOX = "prvWriteMailbox"
PRV_ADMIN = "prvConfigureEmailServerSideSync"
ALL_PRIVILEGES = (PRV_APPROVE, PRV_READ_MAILBOX, PRV_WRITE_MAILBOX, PRV_ADMIN)


class AdminError(ValueError):
    """An operation refused; ``field`` names the offending input where there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ValidationError(AdminError):
    pass


class PrivilegeError(AdminError):
    pass


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValidationError(message, field)


PROFILE_FIELDS = {
    "name", "description", "servertype", "usedefaulttenantid", "exchangeonlinetenantid", "useautodiscover",
    "incomingserverlocation", "outgoingserverlocation", "processemailsreceivedafter",
    "minpollingintervalinminutes", "maxconcurrentconnections", "moveundeliveredemails", "sendemailalert",
    "timeoutmailboxconnection", "timeoutmailboxconnectionafteramount", "incomingcredentialretrieval",
    "outgoingcredentialretrieval", "ownerid",
}


def validate_profile(values: dict[str, Any], org: Organization) -> dict[str, Any]:
    """Check the fields of an email server profile (SPEC 2.1); returns them normalized."""
    unknown = set(values) - PROFILE_FIELDS
    _require(not unknown, sorted(unknown)[0] if unknown else "", "is not a field of an email server profile")
    v = dict(values)
    name = (v.get("name") or "").strip()
    _require(bool(name), "name", "is required")
    _require(len(name) <= 100, "name", "is longer than 100 characters")
    v["name"] = name
    _require(len(v.get("description") or "") <= 2000, "description", "is longer than 2000 characters")
    st = v.get("servertype", ServerType.EXCHANGE_ONLINE_HYBRID)
    _require(st in {s.value for s in ServerType}, "servertype",
             f"{st!r} is not a server type (0 Exchange Server, 1 Other (POP3/SMTP), 2 Exchange Server (Hybrid), "
             "3 Exchange Online (Hybrid), 4 IMAP/SMTP)")
    _require(st == ServerType.EXCHANGE_ONLINE_HYBRID, "servertype",
             "only 3 Exchange Online (Hybrid) is simulated")
    v["servertype"] = int(st)
    for key in ("incomingcredentialretrieval", "outgoingcredentialretrieval"):
        cr = v.get(key, CredentialRetrieval.SERVER_TO_SERVER)
        _require(cr in {c.value for c in CredentialRetrieval}, key, f"{cr!r} is not a credential retrieval option")
        _require(cr == CredentialRetrieval.SERVER_TO_SERVER, key,
                 "an Exchange Online (Hybrid) profile authenticates server-to-server (2)")
    mp = v.get("minpollingintervalinminutes", 5)
    _require(isinstance(mp, int) and 0 <= mp <= 1440, "minpollingintervalinminutes",
             f"{mp!r} is out of range (0 to 1440 minutes)")
    mc = v.get("maxconcurrentconnections", 10)
    _require(isinstance(mc, int) and 1 <= mc <= 300, "maxconcurrentconnections", f"{mc!r} is out of range (1 to 300)")
    to = v.get("timeoutmailboxconnectionafteramount", 60000)
    _require(isinstance(to, int) and 0 <= to <= 100000, "timeoutmailboxconnectionafteramount",
             f"{to!r} is out of range (0 to 100000 ms)")
    if v.get("useautodiscover", True) is False:
        for key in ("incomingserverlocation", "outgoingserverlocation"):
            loc = (v.get(key) or "").strip()
            _require(bool(loc), key, "is required when auto discover is off")
            _require(loc.lower().startswith(("https://", "http://")), key, f"{loc!r} is not an EWS URL")
    if v.get("usedefaulttenantid", True):
        _require(bool(org.s2stenantid), "usedefaulttenantid",
                 "the organization has no Exchange Online tenant id yet: run ConfigureCrmServerSideSync "
                 "(sss s2s configure) first, or set usedefaulttenantid to No and type the tenant id")
        v["exchangeonlinetenantid"] = org.s2stenantid
    else:
        tid = (v.get("exchangeonlinetenantid") or "").strip()
        _require(bool(tid), "exchangeonlinetenantid", "is required when usedefaulttenantid is No")
        _require(len(tid) <= 36, "exchangeonlinetenantid", "is longer than 36 characters")
        v["exchangeonlinetenantid"] = tid
    when = v.get("processemailsreceivedafter")
    if when is not None:
        _require(isinstance(when, datetime), "processemailsreceivedafter", f"{when!r} is not a date and time")
        v["processemailsreceivedafter"] = as_utc(when)
    return v


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


class Admin:
    """Administrative operations; each takes the acting user (``as_user``: a domain name or id)."""

    def __init__(self, db: Engine, clock: Clock, platform: Platform, exchange: ExchangePort,
                 ids: IdFactory, on_mailbox_added=None) -> None:
        self.db = db
        self.clock = clock
        self.platform = platform
        self.exchange = exchange
        self.ids = ids
        self.on_mailbox_added = on_mailbox_added  # callback(address, display name): create the Exchange mailbox

    # -- users and privileges --------------------------------------------------------------
    def _user(self, session: Session, who: str) -> SystemUser:
        user = session.exec(select(SystemUser).where(
            (SystemUser.domainname == who) | (SystemUser.systemuserid == who))).first()
        if user is None:
            raise AdminError(f"no user {who!r} in the organization", "as_user")
        if user.isdisabled:
            raise AdminError(f"user {who!r} is disabled", "as_user")
        return user

    def _privileges(self, session: Session, user: SystemUser) -> set[str]:
        rows = session.exec(select(SecurityRole).join(
            SystemUserRoles, SystemUserRoles.roleid == SecurityRole.roleid).where(
            SystemUserRoles.systemuserid == user.systemuserid)).all()
        privs: set[str] = set()
        for role in rows:
            privs.update(p for p in role.privileges.split(",") if p)
        return privs

    def _check(self, session: Session, who: str, *needed: str) -> SystemUser:
        user = self._user(session, who)
        missing = [p for p in needed if p not in self._privileges(session, user)]
        if missing:
            raise PrivilegeError(f"user {user.domainname} lacks the privilege {', '.join(missing)}", "as_user")
        return user

    def _org(self, session: Session) -> Organization:
        org = session.exec(select(Organization)).first()
        if org is None:
            raise AdminError("the organization does not exist yet (run `sss org init`)")
        return org

    # -- building an organization ----------------------------------------------------------
    def create_organization(self, name: str, *, admin_name: str = "Admin", admin_domain: str = "admin",
                            admin_email: str | None = None, tenant_id: str | None = None) -> str:
        """Create the organization, its standard roles and its first system administrator (all or nothing)."""
        _require(bool(name.strip()), "name", "is required")
        domain = name.strip().lower().replace(" ", "") + ".example"
        email = (admin_email or f"{admin_domain}@{domain}").strip().lower()
        with Session(self.db) as session:
            if session.exec(select(Organization)).first() is not None:
                raise AdminError("the organization already exists")
            org = Organization(organizationid=self.ids.new(), name=name.strip(), s2stenantid=tenant_id,
                               ifdconfigured=True, hybridconnectorinstalled=True)
            session.add(org)
            session.add(SecurityRole(roleid=self.ids.new(), name=SYSTEM_ADMINISTRATOR,
                                     privileges=",".join(ALL_PRIVILEGES)))
            session.add(SecurityRole(roleid=self.ids.new(), name=SALESPERSON, privileges=PRV_READ_MAILBOX))
            self._insert_user(session, org, admin_name, email, admin_domain, [SYSTEM_ADMINISTRATOR],
                              TrackSetting.REPLIES_TO_CRM_EMAIL)
            session.commit()
            orgid = org.organizationid
        self._mailbox_added(email, admin_name)
        return orgid

    def add_user(self, fullname: str, email: str, *, domainname: str | None = None,
                 roles: Iterable[str] = (SALESPERSON,), track: int = TrackSetting.REPLIES_TO_CRM_EMAIL) -> str:
        email = email.strip().lower()
        with Session(self.db) as session:
            uid = self._insert_user(session, self._org(session), fullname, email, domainname, roles, track)
            session.commit()
        self._mailbox_added(email, fullname)
        return uid

    def _insert_user(self, session: Session, org: Organization, fullname: str, email: str,
                     domainname: str | None, roles: Iterable[str], track: int) -> str:
        """A user with its roles and its mailbox (created with the org defaults), in ``session``."""
        _require("@" in email, "internalemailaddress", f"{email!r} is not an email address")
        _require(track in {t.value for t in TrackSetting}, "incomingemailfilteringmethod",
                 f"{track!r} is not a track setting")
        domainname = domainname or email.split("@")[0]
        if session.exec(select(SystemUser).where(SystemUser.domainname == domainname)).first():
            raise ValidationError(f"{domainname!r} is already a user", "domainname")
        user = SystemUser(systemuserid=self.ids.new(), fullname=fullname, domainname=domainname,
                          internalemailaddress=email, incomingemailfilteringmethod=int(track))
        session.add(user)
        for role_name in roles:
            role = session.exec(select(SecurityRole).where(SecurityRole.name == role_name)).first()
            if role is None:
                raise ValidationError(f"{role_name!r} is not a security role", "roles")
            session.add(SystemUserRoles(systemuserid=user.systemuserid, roleid=role.roleid))
        session.add(self._new_mailbox(org, fullname, email, user.systemuserid, user.systemuserid, "systemuser"))
        return user.systemuserid

    def add_queue(self, name: str, email: str, *, owner: str, track: int = TrackSetting.ALL) -> str:
        email = email.strip().lower()
        _require("@" in email, "emailaddress", f"{email!r} is not an email address")
        with Session(self.db) as session:
            org = self._org(session)
            owner_user = self._user(session, owner)
            queue = Queue(queueid=self.ids.new(), name=name, emailaddress=email, ownerid=owner_user.systemuserid,
                          incomingemailfilteringmethod=int(track))
            session.add(queue)
            session.add(self._new_mailbox(org, name, email, owner_user.systemuserid, queue.queueid, "queue"))
            session.commit()
            qid = queue.queueid
        self._mailbox_added(email, name)
        return qid

    def add_record(self, kind: str, name: str, email: str | None) -> str:
        """Add a contact, account or lead."""
        models = {"contact": (Contact, "contactid", "fullname"), "account": (Account, "accountid", "name"),
                  "lead": (Lead, "leadid", "fullname")}
        _require(kind in models, "kind", f"{kind!r} is not contact, account or lead")
        model, key, name_field = models[kind]
        rid = self.ids.new()
        with Session(self.db) as session:
            session.add(model(**{key: rid, name_field: name, "emailaddress1": email.lower() if email else None}))
            session.commit()
        self.platform.invalidate_directory()
        return rid

    def _new_mailbox(self, org: Organization, name: str, email: str, ownerid: str, regarding: str,
                     regarding_type: str) -> Mailbox:
        return Mailbox(
            mailboxid=self.ids.new(), name=name, emailaddress=email, ownerid=ownerid, regardingobjectid=regarding,
            regardingobjecttypecode=regarding_type, emailserverprofile=org.defaultemailserverprofileid,
            incomingemaildeliverymethod=org.incomingemaildeliverymethod,
            outgoingemaildeliverymethod=org.outgoingemaildeliverymethod, actdeliverymethod=org.actdeliverymethod,
            emailrouteraccessapproval=int(Approval.PENDING),
        )

    def _mailbox_added(self, email: str, name: str) -> None:
        self.platform.invalidate_directory()
        if self.on_mailbox_added is not None:
            self.on_mailbox_added(email, name)

    # -- profile and defaults --------------------------------------------------------------
    def create_profile(self, as_user: str, **fields: Any) -> str:
        with Session(self.db) as session:
            user = self._check(session, as_user, PRV_ADMIN)
            org = self._org(session)
            fields.setdefault("ownerid", user.systemuserid)
            values = validate_profile(fields, org)
            if session.exec(select(EmailServerProfile).where(EmailServerProfile.name == values["name"])).first():
                raise ValidationError(f"a profile named {values['name']!r} already exists", "name")
            profile = EmailServerProfile(emailserverprofileid=self.ids.new(), **values)
            session.add(profile)
            session.commit()
            return profile.emailserverprofileid

    def set_default_profile(self, as_user: str, profileid: str, *, incoming: int = IncomingMethod.SSS,
                            outgoing: int = OutgoingMethod.SSS, act: int = ActMethod.SSS) -> None:
        """SPEC 1.6: the organization's default profile and delivery methods."""
        with Session(self.db) as session:
            self._check(session, as_user, PRV_ADMIN)
            org = self._org(session)
            if session.get(EmailServerProfile, profileid) is None:
                raise ValidationError(f"no profile has the id {profileid!r}", "defaultemailserverprofileid")
            _require(incoming in {m.value for m in IncomingMethod}, "incomingemaildeliverymethod", f"{incoming!r} is not an option")
            _require(outgoing in {m.value for m in OutgoingMethod}, "outgoingemaildeliverymethod", f"{outgoing!r} is not an option")
            _require(act in {m.value for m in ActMethod}, "actdeliverymethod", f"{act!r} is not an option")
            org.defaultemailserverprofileid = profileid
            org.incomingemaildeliverymethod = int(incoming)
            org.outgoingemaildeliverymethod = int(outgoing)
            org.actdeliverymethod = int(act)
            session.add(org)
            session.commit()

    def update_org(self, as_user: str, **fields: Any) -> None:
        """Change organization switches (alerts, approval, correlation, tracking tokens)."""
        allowed = {"requireapprovalforuseremail", "requireapprovalforqueueemail", "emailcorrelationenabled",
                   "trackingtokenenabled", "enablesmartmatching", "tracksentitems", "generatealertsforerrors",
                   "generatealertsforwarnings", "generatealertsforinformation",
                   "notifymailboxownerofemailserverlevelalerts"}
        with Session(self.db) as session:
            self._check(session, as_user, PRV_ADMIN)
            org = self._org(session)
            for key, value in fields.items():
                _require(key in allowed, key, "is not an organization email setting that can be changed here")
                _require(isinstance(value, bool), key, f"{value!r} is not Yes/No")
                setattr(org, key, value)
            session.add(org)
            session.commit()
        self.platform.invalidate_settings()

    def apply_default_settings(self, as_user: str, mailboxids: Iterable[str]) -> None:
        """SPEC 1.7: the org's default profile and delivery methods on the selected mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, PRV_ADMIN, PRV_READ_MAILBOX, PRV_WRITE_MAILBOX)
            org = self._org(session)
            if not org.defaultemailserverprofileid:
                raise AdminError("the organization has no default email server profile (SPEC 1.6 comes first)",
                                 "defaultemailserverprofileid")
            for mb in self._mailboxes(session, mailboxids):
                mb.emailserverprofile = org.defaultemailserverprofileid
                mb.incomingemaildeliverymethod = org.incomingemaildeliverymethod
                mb.outgoingemaildeliverymethod = org.outgoingemaildeliverymethod
                mb.actdeliverymethod = org.actdeliverymethod
                session.add(mb)
            session.commit()

    def _mailboxes(self, session: Session, mailboxids: Iterable[str]) -> list[Mailbox]:
        ids = list(mailboxids)
        rows = {m.mailboxid: m for m in session.exec(select(Mailbox).where(Mailbox.mailboxid.in_(ids))).all()}
        for mid in ids:
            if mid not in rows:
                raise ValidationError(f"no mailbox has the id {mid!r}", "mailboxid")
        return [rows[mid] for mid in ids]

    def approve(self, as_user: str, mailboxids: Iterable[str], *, approve: bool = True) -> None:
        """SPEC 1.8: approve (or reject) the email addresses of mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, PRV_APPROVE)
            for mb in self._mailboxes(session, mailboxids):
                mb.emailrouteraccessapproval = int(Approval.APPROVED if approve else Approval.REJECTED)
                session.add(mb)
            session.commit()

    # -- Test & Enable -----------------------------------------------------------------------
    async def test_and_enable(self, as_user: str, mailboxids: Iterable[str], *,
                              start_date: datetime | None = None) -> list[MailboxTestResult]:
        """SPEC 1.9: test the selected mailboxes and enable what passes."""
        ids = list(mailboxids)
        with Session(self.db) as session:
            self._check(session, as_user, PRV_ADMIN, PRV_READ_MAILBOX, PRV_WRITE_MAILBOX)
            rows = self._mailboxes(session, ids)
            for mb in rows:
                if not mb.emailserverprofile:
                    raise AdminError(f"mailbox {mb.emailaddress} has no email server profile", "emailserverprofile")
                if mb.incomingemaildeliverymethod != IncomingMethod.SSS and \
                        mb.outgoingemaildeliverymethod != OutgoingMethod.SSS:
                    raise AdminError(f"mailbox {mb.emailaddress} uses server-side synchronization for nothing",
                                     "incomingemaildeliverymethod")
        works = self.platform.mailbox_work(ids)
        if start_date is not None:
            start_date = as_utc(start_date)
        org = self.platform.org_settings()
        profiles = self.platform.profiles()
        results, updates, alerts = [], [], []
        for work in works:
            profile = profiles[work.profileid]
            result = await test_and_enable(self.exchange, self.clock, org, profile, work, start_date=start_date)
            finish_values(work, result.update.values, profile, org)
            results.append(result)
            updates.append(result.update)
            alerts.extend(result.alerts)
        self.platform.update_mailboxes(updates)
        self.platform.write_alerts(alerts)
        return results

    # -- views -----------------------------------------------------------------------------
    def mailboxes(self) -> list[MailboxView]:
        with Session(self.db) as session:
            rows = session.exec(select(Mailbox).order_by(Mailbox.emailaddress)).all()
            return [MailboxView(m.mailboxid, m.emailaddress, m.regardingobjecttypecode, m.incomingemailstatus,
                                m.outgoingemailstatus, m.mailboxstatus, m.emailrouteraccessapproval,
                                m.enabledforincomingemail, m.enabledforoutgoingemail, m.lastsyncerrorcode)
                    for m in rows]

    def mailbox_id(self, address: str) -> str:
        with Session(self.db) as session:
            mb = session.exec(select(Mailbox).where(Mailbox.emailaddress == address.strip().lower())).first()
            if mb is None:
                raise ValidationError(f"no mailbox has the address {address!r}", "emailaddress")
            return mb.mailboxid




