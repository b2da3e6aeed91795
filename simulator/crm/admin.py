"""The administrator's operations on the fake organization (SPEC section 1), with their checks.

Every operation runs as a named user whose security roles are checked, validates its fields
(an error names the field), and writes nothing when it refuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

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
    Status,
)
from engine.service import finish_values
from simulator.crm.errors import (  # noqa: F401  (re-exported)
    AdminError,
    ConflictError,
    OutOfOrderError,
    PrivilegeError,
    UnknownUserError,
    ValidationError,
)
from simulator.crm.inputs import (  # noqa: F401  (METHOD_FIELDS, ORG_SWITCHES, PROFILE_FIELDS re-exported)
    METHOD_FIELDS,
    ORG_SWITCHES,
    PROFILE_FIELDS,
    AddressInput,
    ApplyDefaultsInput,
    MailboxEditInput,
    MailboxesInput,
    OrganizationInput,
    PrerequisitesInput,
    ProfileInput,
    QueueInput,
    RecordInput,
    RoleInput,
    SettingsInput,
    TestEnableInput,
    UserInput,
    parse,
)
from simulator.crm.models import (
    Account,
    AsyncOperation,
    AsyncState,
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
    TestExecutionStatus,
    TraceLog,
    TrackSetting,
)
from simulator.crm.operations import (  # noqa: F401  (the roles and privileges re-exported)
    ALL_PRIVILEGES,
    OPERATIONS,
    PRIVILEGE_NAMES,
    PRV_ADMIN,
    PRV_APPROVE,
    PRV_READ_MAILBOX,
    PRV_WRITE_MAILBOX,
    SALESPERSON,
    SYSTEM_ADMINISTRATOR,
    out_of_order,
)
from simulator.crm.platform import IdFactory, Platform


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValidationError(message, field)


def validate_profile(values: dict[str, Any], org: Organization) -> dict[str, Any]:
    """Check a whole email server profile (SPEC 2.1): each field by :class:`ProfileInput`, then the
    rules between fields; returns the fields normalized, with the product's defaults."""
    v = parse(ProfileInput, values).given()
    _require(bool(v.get("name")), "name", "is required")
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
    if v.get("useautodiscover", True) is False:
        for key in ("incomingserverlocation", "outgoingserverlocation"):
            loc = (v.get(key) or "").strip()
            _require(bool(loc), key, "is required when auto discover is off")
            _require(loc.lower().startswith(("https://", "http://")), key, f"{loc!r} is not an EWS URL")
    if v.get("usedefaulttenantid", True):
        if not org.s2stenantid:
            raise out_of_order("configure", "the organization has no Exchange Online tenant id yet for the "
                               "profile to take by default (a profile may name its own tenant id instead)",
                               "usedefaulttenantid")
        v["exchangeonlinetenantid"] = org.s2stenantid
    else:
        _require(bool(v.get("exchangeonlinetenantid")), "exchangeonlinetenantid",
                 "is required when usedefaulttenantid is No")
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
    actstatus: int = 0
    enabledforact: bool = False
    emailserverprofile: str | None = None
    # the last error still stands: no success (a sync or a passed test) came after it
    lasterrorcurrent: bool = False


def _error_current(m: Mailbox) -> bool:
    """The last error still stands: a Test & Enable that passed since clears its count, a sync
    cycle that succeeded after it comes later in time."""
    if not m.lastsyncerrorcode or not m.lastsyncerrorcount:
        return False
    success = m.lastsuccessfulsynccompletedon
    return success is None or m.lastsyncerroroccurredon is None or m.lastsyncerroroccurredon >= success


@dataclass
class Prerequisite:
    """One item of the SPEC 1.1 check list."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class ConnectionCheck:
    """One check of Test Connection: what was asked, what came back."""

    name: str
    ok: bool | None  # None: not run (an earlier check failed)
    request: str
    response: str
    code: str | None = None  # e.g. "AuthenticationFailure"


@dataclass
class ConnectionTest:
    """The outcome of Test Connection on an email server profile (stored on the profile)."""

    profileid: str
    started: datetime
    status: int  # TestExecutionStatus
    checks: list[ConnectionCheck]

    @property
    def ok(self) -> bool:
        return self.status == TestExecutionStatus.SUCCESS

    @property
    def outcome(self) -> str:
        failed = next((c for c in self.checks if c.ok is False), None)
        if failed is None:
            return "Success" if self.ok else "Warning"
        return "Authentication failure" if failed.code == AUTHENTICATION_FAILURE_CODE else "Failure"


AUTHENTICATION_FAILURE_CODE = "AuthenticationFailure"


def _mark(check: ConnectionCheck) -> str:
    if check.ok:
        return "OK: "
    if check.ok is False:
        return "FAILED: "
    return "" if check.response.startswith("not run") else "not run: "


class ConnectionProbe(Protocol):
    """Checks of Test Connection that need the services: certificate, token, EWS (wire mode)."""

    async def check(self, tenant_id: str, profile: EmailServerProfile, mailbox_address: str
                    ) -> list[ConnectionCheck]: ...


# option names accepted for the delivery methods (SPEC 2.3), besides their numbers
INCOMING_OPTIONS = {"none": 0, "outlook": 1, "sss": 2, "server-side-synchronization": 2, "email-router": 2,
                    "forward-mailbox": 3}
OUTGOING_OPTIONS = {"none": 0, "outlook": 1, "sss": 2, "server-side-synchronization": 2, "email-router": 2}
ACT_OPTIONS = {"outlook": 0, "sss": 1, "server-side-synchronization": 1, "none": 2}
METHODS = {"incomingemaildeliverymethod": (IncomingMethod, INCOMING_OPTIONS),
           "outgoingemaildeliverymethod": (OutgoingMethod, OUTGOING_OPTIONS),
           "actdeliverymethod": (ActMethod, ACT_OPTIONS)}
SETTINGS_FIELDS = ("emailconnectionchannel", "defaultemailserverprofileid", *METHOD_FIELDS, *ORG_SWITCHES,
                   "trackingprefix", "s2stenantid", "maxuploadfilesize")


def method_value(field: str, value: Any) -> int:
    """A delivery method given by number or name (``sss``, ``outlook``, ``none``, ...)."""
    enum, names = METHODS[field]
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "-").replace("_", "-")
        if key in names:
            return names[key]
        if key.isdigit():
            value = int(key)
    if isinstance(value, int) and not isinstance(value, bool) and value in {m.value for m in enum}:
        return int(value)
    options = ", ".join(f"{n} {m.name.lower()}" for n, m in ((m.value, m) for m in enum))
    raise ValidationError(f"{value!r} is not an option ({options})", field)


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


class Admin:
    """Administrative operations; each takes the acting user (``as_user``: a domain name or id).

    ``probe`` does the service checks of Test Connection (wire mode gives one); ``exchange``
    serves Test & Enable.
    """

    def __init__(self, db: Engine, clock: Clock, platform: Platform, exchange: ExchangePort,
                 ids: IdFactory, on_mailbox_added=None, probe: ConnectionProbe | None = None) -> None:
        self.db = db
        self.clock = clock
        self.platform = platform
        self.exchange = exchange
        self.ids = ids
        self.on_mailbox_added = on_mailbox_added  # callback(address, display name): create the Exchange mailbox
        self.probe = probe
        self.on_settings_changed = None  # callback(): a running sandbox forgets what it cached of profiles

    # -- users and privileges --------------------------------------------------------------
    def _user(self, session: Session, who: str, field: str = "as_user") -> SystemUser:
        who = (who or "").strip()
        if not who:
            raise UnknownUserError("is required: the CRM user who runs this operation", field)
        user = session.exec(select(SystemUser).where(
            (SystemUser.domainname == who) | (SystemUser.systemuserid == who))).first()
        if user is None:
            raise UnknownUserError(f"no user {who!r} in the organization", field)
        if user.isdisabled:
            raise UnknownUserError(f"user {who!r} is disabled", field)
        return user

    def _privileges(self, session: Session, user: SystemUser) -> set[str]:
        rows = session.exec(select(SecurityRole).join(
            SystemUserRoles, SystemUserRoles.roleid == SecurityRole.roleid).where(
            SystemUserRoles.systemuserid == user.systemuserid)).all()
        privs: set[str] = set()
        for role in rows:
            privs.update(p for p in role.privileges.split(",") if p)
        return privs

    def _check(self, session: Session, who: str, operation: str) -> SystemUser:
        """The acting user, when it holds every privilege the operation declares (see OPERATIONS)."""
        user = self._user(session, who)
        missing = [p for p in OPERATIONS[operation].privileges if p not in self._privileges(session, user)]
        if missing:
            names = ", ".join(f"{p} ({PRIVILEGE_NAMES.get(p, p)})" for p in missing)
            raise PrivilegeError(f"user {user.domainname} lacks the privilege {names}", "as_user")
        return user

    def _org(self, session: Session) -> Organization:
        org = session.exec(select(Organization)).first()
        if org is None:
            raise OutOfOrderError("the organization does not exist yet (run `sss org init`)")
        return org

    def user_id(self, who: str) -> str:
        with Session(self.db) as session:
            return self._user(session, who).systemuserid

    # -- building an organization ----------------------------------------------------------
    def create_organization(self, name: str, *, admin_name: str = "Admin", admin_domain: str = "admin",
                            admin_email: str | None = None, tenant_id: str | None = None,
                            ifd: bool = True, hybrid_connector: bool = True) -> str:
        """Create the organization, its standard roles and its first system administrator (all or nothing)."""
        data = parse(OrganizationInput, {"name": name, "admin_name": admin_name, "admin_domain": admin_domain,
                                         "admin_email": admin_email, "tenant_id": tenant_id, "ifd": ifd,
                                         "hybrid_connector": hybrid_connector})
        name, admin_domain = data.name, data.admin_domain or "admin"
        admin_name = data.admin_name or "Admin"
        email = (data.admin_email or f"{admin_domain}@{name.lower().replace(' ', '')}.example").lower()
        with Session(self.db) as session:
            if session.exec(select(Organization)).first() is not None:
                raise ConflictError("the organization already exists")
            org = Organization(organizationid=self.ids.new(), name=name, s2stenantid=data.tenant_id,
                               ifdconfigured=data.ifd is not False,
                               hybridconnectorinstalled=data.hybrid_connector is not False)
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

    def check_organization(self) -> list[Prerequisite]:
        """SPEC 1.1: the prerequisites of server-side synchronization with Exchange Online."""
        with Session(self.db) as session:
            org = session.exec(select(Organization)).first()
            if org is None:
                return [Prerequisite("organization", False, "The CRM organization does not exist.",
                                     "sss org init --name ... --admin-email ...")]
            admins = session.exec(select(SystemUser).join(
                SystemUserRoles, SystemUserRoles.systemuserid == SystemUser.systemuserid).join(
                SecurityRole, SecurityRole.roleid == SystemUserRoles.roleid).where(
                SecurityRole.name == SYSTEM_ADMINISTRATOR, SystemUser.isdisabled == False)).all()  # noqa: E712
            names = ", ".join(sorted(u.domainname for u in admins))
            return [
                Prerequisite("organization", True, f"{org.name} ({org.organizationid})"),
                Prerequisite("System Administrator", bool(admins),
                             f"users with the role: {names}" if admins else "no enabled user has the role",
                             "" if admins else "sss user add --role 'System Administrator' ..."),
                Prerequisite("internet-facing deployment (IFD)", org.ifdconfigured,
                             "the CRM is reachable from the internet" if org.ifdconfigured
                             else "Exchange Online cannot reach the CRM deployment",
                             "" if org.ifdconfigured else "sss org set --ifd --as <admin>"),
                Prerequisite("Dynamics 365 Hybrid Connector", org.hybridconnectorinstalled,
                             "installed" if org.hybridconnectorinstalled else "not installed",
                             "" if org.hybridconnectorinstalled else "sss org set --hybrid-connector --as <admin>"),
            ]

    def set_prerequisites(self, as_user: str, *, ifd: bool | None = None,
                          hybrid_connector: bool | None = None) -> None:
        """Record that IFD is configured / the Hybrid Connector is installed (or not)."""
        data = parse(PrerequisitesInput, {"ifd": ifd, "hybrid_connector": hybrid_connector})
        with Session(self.db) as session:
            self._check(session, as_user, "org set")
            org = self._org(session)
            if data.ifd is not None:
                org.ifdconfigured = data.ifd
            if data.hybrid_connector is not None:
                org.hybridconnectorinstalled = data.hybrid_connector
            session.add(org)
            session.commit()

    def add_user(self, fullname: str, email: str, *, domainname: str | None = None,
                 roles: Iterable[str] = (SALESPERSON,), track: int = TrackSetting.REPLIES_TO_CRM_EMAIL,
                 as_user: str | None = None) -> str:
        """A user with its roles and its mailbox. With ``as_user``, that user must be an administrator."""
        data = parse(UserInput, {"fullname": fullname, "internalemailaddress": email, "domainname": domainname,
                                 "roles": list(roles), "incomingemailfilteringmethod": track})
        email = data.internalemailaddress.lower()
        with Session(self.db) as session:
            if as_user is not None:
                self._check(session, as_user, "user add")
            uid = self._insert_user(session, self._org(session), data.fullname, email, data.domainname,
                                    data.roles or (), data.incomingemailfilteringmethod)
            session.commit()
        self._mailbox_added(email, fullname)
        return uid

    def _insert_user(self, session: Session, org: Organization, fullname: str, email: str,
                     domainname: str | None, roles: Iterable[str], track: int) -> str:
        """A user with its roles and its mailbox (created with the org defaults), in ``session``."""
        _require(track in {t.value for t in TrackSetting}, "incomingemailfilteringmethod",
                 f"{track!r} is not a track setting")
        domainname = domainname or email.split("@")[0]
        if session.exec(select(SystemUser).where(SystemUser.domainname == domainname)).first():
            raise ConflictError(f"{domainname!r} is already a user", "domainname")
        self._address_free(session, email, "internalemailaddress")
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

    def _address_free(self, session: Session, email: str, field: str) -> None:
        if session.exec(select(Mailbox).where(Mailbox.emailaddress == email)).first() is not None:
            raise ConflictError(f"{email!r} is already the address of a mailbox", field)

    def create_role(self, as_user: str, name: str, privileges: Iterable[str]) -> str:
        """A security role made of the named privileges."""
        data = parse(RoleInput, {"name": name, "privileges": list(privileges)})
        with Session(self.db) as session:
            self._check(session, as_user, "user add-role")
            for p in data.privileges:
                _require(p in ALL_PRIVILEGES, "privileges",
                         f"{p!r} is not a privilege ({', '.join(ALL_PRIVILEGES)})")
            if session.exec(select(SecurityRole).where(SecurityRole.name == data.name)).first():
                raise ConflictError(f"a role named {data.name!r} already exists", "name")
            role = SecurityRole(roleid=self.ids.new(), name=data.name, privileges=",".join(data.privileges))
            session.add(role)
            session.commit()
            return role.roleid

    def add_queue(self, name: str, email: str, *, owner: str, track: int = TrackSetting.ALL,
                  as_user: str | None = None) -> str:
        data = parse(QueueInput, {"name": name, "emailaddress": email, "owner": owner,
                                  "incomingemailfilteringmethod": track})
        name, email, track = data.name, data.emailaddress.lower(), data.incomingemailfilteringmethod
        with Session(self.db) as session:
            if as_user is not None:
                self._check(session, as_user, "user add-queue")
            org = self._org(session)
            try:
                owner_user = self._user(session, data.owner)
            except AdminError as exc:
                raise ValidationError(str(exc).split(": ", 1)[-1], "owner") from None
            self._address_free(session, email, "emailaddress")
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
        data = parse(RecordInput, {"kind": kind, "name": name, "emailaddress1": email})
        _require(data.kind in models, "kind", f"{data.kind!r} is not contact, account or lead")
        model, key, name_field = models[data.kind]
        address = data.emailaddress1.lower() if data.emailaddress1 else None
        rid = self.ids.new()
        with Session(self.db) as session:
            self._org(session)
            session.add(model(**{key: rid, name_field: data.name, "emailaddress1": address}))
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

    def _changed(self) -> None:
        self.platform.invalidate_settings()
        if self.on_settings_changed is not None:
            self.on_settings_changed()

    # -- email server profiles (1.5) ----------------------------------------------------------
    def _profile(self, session: Session, ref: str, field: str = "profile") -> EmailServerProfile:
        ref = (ref or "").strip()
        profile = session.get(EmailServerProfile, ref) or session.exec(
            select(EmailServerProfile).where(EmailServerProfile.name == ref)).first()
        if profile is None:
            raise ValidationError(f"no email server profile is named {ref!r}", field)
        return profile

    def profile_id(self, ref: str) -> str:
        with Session(self.db) as session:
            return self._profile(session, ref).emailserverprofileid

    def create_profile(self, as_user: str, **fields: Any) -> str:
        with Session(self.db) as session:
            user = self._check(session, as_user, "profile create")
            org = self._org(session)
            fields = parse(ProfileInput, fields).given()
            fields["ownerid"] = self._owner(session, fields.get("ownerid") or user.systemuserid)
            values = validate_profile(fields, org)
            if session.exec(select(EmailServerProfile).where(EmailServerProfile.name == values["name"])).first():
                raise ConflictError(f"a profile named {values['name']!r} already exists", "name")
            profile = EmailServerProfile(emailserverprofileid=self.ids.new(), **values)
            session.add(profile)
            session.commit()
            return profile.emailserverprofileid

    def _owner(self, session: Session, who: str) -> str:
        """The id of the user named by id or logon name (a profile's owner)."""
        owner = session.exec(select(SystemUser).where(
            (SystemUser.systemuserid == who) | (SystemUser.domainname == who))).first()
        if owner is None:
            raise ValidationError(f"no user {who!r} in the organization", "ownerid")
        return owner.systemuserid

    def update_profile(self, as_user: str, ref: str, **fields: Any) -> None:
        """Change fields of a profile; the whole profile is validated again (SPEC 2.1)."""
        with Session(self.db) as session:
            self._check(session, as_user, "profile update")
            org = self._org(session)
            profile = self._profile(session, ref)
            fields = parse(ProfileInput, fields).given()
            if "ownerid" in fields:
                fields["ownerid"] = self._owner(session, fields["ownerid"])
            current = {k: getattr(profile, k) for k in PROFILE_FIELDS}
            if fields.get("usedefaulttenantid") is False and "exchangeonlinetenantid" not in fields:
                current["exchangeonlinetenantid"] = None  # a typed tenant id is needed
            current.update(fields)
            values = validate_profile(current, org)
            clash = session.exec(select(EmailServerProfile).where(
                EmailServerProfile.name == values["name"],
                EmailServerProfile.emailserverprofileid != profile.emailserverprofileid)).first()
            if clash is not None:
                raise ConflictError(f"a profile named {values['name']!r} already exists", "name")
            for key, value in values.items():
                setattr(profile, key, value)
            session.add(profile)
            session.commit()
        self._changed()

    def set_profile_state(self, as_user: str, ref: str, *, active: bool) -> None:
        """Activate or deactivate a profile (its mailboxes stop processing while it is inactive)."""
        with Session(self.db) as session:
            self._check(session, as_user, "profile activate" if active else "profile deactivate")
            profile = self._profile(session, ref)
            profile.statecode, profile.statuscode = (0, 1) if active else (1, 2)
            session.add(profile)
            session.commit()
        self._changed()

    def profile(self, ref: str) -> dict[str, Any]:
        """Every field of a profile, and how many mailboxes use it."""
        with Session(self.db) as session:
            profile = self._profile(session, ref)
            view = profile.model_dump()
            view["mailboxes"] = len(session.exec(select(Mailbox.mailboxid).where(
                Mailbox.emailserverprofile == profile.emailserverprofileid)).all())
            owner = session.get(SystemUser, profile.ownerid)
            view["owner"] = owner.domainname if owner else profile.ownerid
            return view

    def profiles(self) -> list[dict[str, Any]]:
        with Session(self.db) as session:
            names = session.exec(select(EmailServerProfile.emailserverprofileid)
                                 .order_by(EmailServerProfile.name)).all()
        return [self.profile(pid) for pid in names]

    async def test_connection(self, as_user: str, ref: str) -> ConnectionTest:
        """Test Connection (SPEC 1.5): tenant id, certificate, token, EWS; the result is kept on the profile."""
        with Session(self.db) as session:
            self._check(session, as_user, "profile test")
            profile = self._profile(session, ref)
            owner = session.exec(select(Mailbox.emailaddress).where(
                Mailbox.regardingobjectid == profile.ownerid)).first()
        started = self.clock.now()
        checks: list[ConnectionCheck] = []
        tenant = (profile.exchangeonlinetenantid or "").strip()
        checks.append(ConnectionCheck(
            "Exchange Online tenant id", bool(tenant), "exchangeonlinetenantid of the profile",
            tenant or "the profile has no tenant id", None if tenant else AUTHENTICATION_FAILURE_CODE))
        if tenant:
            if self.probe is None:
                raise AdminError("Test Connection needs the network services: run it from the CLI "
                                 "(sss profile test) or on a wire-mode sandbox")
            checks.extend(await self.probe.check(tenant, profile, owner or ""))
        failed = any(c.ok is False for c in checks)
        status = (TestExecutionStatus.FAILURE if failed else
                  TestExecutionStatus.SUCCESS if all(c.ok for c in checks) else TestExecutionStatus.WARNING)
        with Session(self.db) as session:
            row = session.get(EmailServerProfile, profile.emailserverprofileid)
            row.lastteststarttime = started
            row.lasttestexecutionstatus = int(status)
            row.lasttestrequest = "\n".join(f"{c.name}: {c.request}" for c in checks)
            row.lasttestresponse = "\n".join(f"{c.name}: {_mark(c)}{c.response}" for c in checks)
            session.add(row)
            session.commit()
        return ConnectionTest(profile.emailserverprofileid, started, int(status), checks)

    # -- organization settings (1.6) ----------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The organization's email settings (SPEC 2.2), with the default profile's name."""
        with Session(self.db) as session:
            org = self._org(session)
            view = {k: getattr(org, k) for k in SETTINGS_FIELDS}
            view["name"] = org.name
            view["organizationid"] = org.organizationid
            profile = session.get(EmailServerProfile, org.defaultemailserverprofileid or "")
            view["defaultemailserverprofile"] = profile.name if profile else None
            return view

    def set_settings(self, as_user: str, **fields: Any) -> None:
        """Change organization email settings: default profile (id or name), delivery methods, switches."""
        given = parse(SettingsInput, fields).given()
        with Session(self.db) as session:
            self._check(session, as_user, "settings set")
            org = self._org(session)
            values: dict[str, Any] = {}
            for key, value in given.items():
                if key == "defaultemailserverprofileid":
                    values[key] = self._profile(session, value, key).emailserverprofileid
                elif key in METHODS:
                    values[key] = method_value(key, value)
                else:
                    values[key] = value
            for key, value in values.items():
                setattr(org, key, value)
            session.add(org)
            session.commit()
        self._changed()

    def set_default_profile(self, as_user: str, profileid: str, *, incoming: int = IncomingMethod.SSS,
                            outgoing: int = OutgoingMethod.SSS, act: int = ActMethod.SSS) -> None:
        """SPEC 1.6: the organization's default profile and delivery methods."""
        self.set_settings(as_user, defaultemailserverprofileid=profileid, incomingemaildeliverymethod=incoming,
                          outgoingemaildeliverymethod=outgoing, actdeliverymethod=act)

    def update_org(self, as_user: str, **fields: Any) -> None:
        """Change organization switches (alerts, approval, correlation, tracking tokens)."""
        for key in fields:
            _require(key in ORG_SWITCHES, key, "is not an organization switch")
        self.set_settings(as_user, **fields)

    # -- mailboxes (1.7, 1.8) -----------------------------------------------------------------
    def _mailboxes(self, session: Session, refs: Iterable[str], field: str = "mailboxes") -> list[Mailbox]:
        """Mailboxes by id or email address, in the given order (each at most once); ``field`` is
        the input that named them."""
        refs = parse(MailboxesInput, {"mailboxes": list(refs)}).mailboxes
        by_id = {m.mailboxid: m for m in session.exec(select(Mailbox).where(Mailbox.mailboxid.in_(refs))).all()}
        lowered = [r.lower() for r in refs if r not in by_id]
        by_address = {m.emailaddress: m for m in session.exec(
            select(Mailbox).where(Mailbox.emailaddress.in_(lowered))).all()} if lowered else {}
        out: dict[str, Mailbox] = {}
        for ref in refs:
            mb = by_id.get(ref) or by_address.get(ref.lower())
            if mb is None:
                what = "address" if "@" in ref else "id"
                raise ValidationError(f"no mailbox has the {what} {ref!r}", field)
            out.setdefault(mb.mailboxid, mb)
        return list(out.values())

    def apply_default_settings(self, as_user: str, mailboxids: Iterable[str]) -> None:
        """SPEC 1.7 without the test: the org's default profile and delivery methods on the mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox apply-defaults")
            org = self._org(session)
            if not org.defaultemailserverprofileid:
                raise out_of_order("org-defaults", "the organization has no default email server profile yet",
                                   "defaultemailserverprofileid")
            for mb in self._mailboxes(session, mailboxids):
                _require(mb.statecode == 0, "mailbox", f"mailbox {mb.emailaddress} is not active")
                mb.emailserverprofile = org.defaultemailserverprofileid
                mb.incomingemaildeliverymethod = org.incomingemaildeliverymethod
                mb.outgoingemaildeliverymethod = org.outgoingemaildeliverymethod
                mb.actdeliverymethod = org.actdeliverymethod
                session.add(mb)
            session.commit()
        self._changed()

    async def apply_default_email_settings(self, as_user: str, mailboxes: Iterable[str], *,
                                           test_and_enable: bool = True) -> list[MailboxTestResult]:
        """SPEC 1.7 "Apply default email settings": the defaults, then (by default) Test & Enable."""
        data = parse(ApplyDefaultsInput, {"mailboxes": list(mailboxes), "test_and_enable": test_and_enable})
        refs, test_and_enable = data.mailboxes, data.test_and_enable is not False
        if test_and_enable:  # refuse before writing anything when the test could not run afterwards
            with Session(self.db) as session:
                self._check(session, as_user, "mailbox apply-defaults")
                org = self._org(session)
                if org.incomingemaildeliverymethod != IncomingMethod.SSS and \
                        org.outgoingemaildeliverymethod != OutgoingMethod.SSS and org.actdeliverymethod != ActMethod.SSS:
                    raise out_of_order("org-defaults", "the organization's default delivery methods use server-side "
                                       "synchronization for nothing, so there is nothing to test",
                                       "incomingemaildeliverymethod")
        self.apply_default_settings(as_user, refs)
        if not test_and_enable:
            return []
        return await self.test_and_enable(as_user, refs)

    def edit_mailboxes(self, as_user: str, mailboxes: Iterable[str], **fields: Any) -> None:
        """SPEC 1.7 "Edit several mailboxes at once": profile (id or name) and delivery methods.

        Needs read and write privilege on mailboxes besides the administrator's privilege."""
        given = parse(MailboxEditInput, {"mailboxes": list(mailboxes), **fields}).given()
        mailboxes = given.pop("mailboxes")
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox edit")
            _require(bool(given), "mailboxes", "nothing to change: give a profile or a delivery method")
            values: dict[str, Any] = {}
            for key, value in given.items():
                if key == "emailserverprofile":
                    values[key] = self._profile(session, value, key).emailserverprofileid
                else:
                    values[key] = method_value(key, value)
            for mb in self._mailboxes(session, mailboxes):
                for key, value in values.items():
                    setattr(mb, key, value)
                session.add(mb)
            session.commit()
        self._changed()

    def change_email_address(self, as_user: str, mailbox: str, new_address: str) -> None:
        """SPEC 10.6: a new address resets approval to Pending and the statuses to Not Run."""
        new_address = parse(AddressInput, {"emailaddress": new_address}).emailaddress.lower()
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox change-address")
            [mb] = self._mailboxes(session, [mailbox], "mailbox")
            if mb.emailaddress == new_address:
                return
            self._address_free(session, new_address, "emailaddress")
            mb.emailaddress = new_address
            mb.emailrouteraccessapproval = int(Approval.PENDING)
            for status in ("incomingemailstatus", "outgoingemailstatus", "actstatus", "mailboxstatus"):
                setattr(mb, status, int(Status.NOT_RUN))
            for switch in ("enabledforincomingemail", "enabledforoutgoingemail", "enabledforact"):
                setattr(mb, switch, False)
            mb.testemailconfigurationscheduled = False  # a test put off for the old address is moot
            mb.testemailconfigurationretrycount = 0
            mb.ewsurl = None
            mb.lastautodiscoveredon = None
            if mb.regardingobjecttypecode == "queue":
                queue = session.get(Queue, mb.regardingobjectid)
                if queue is not None:
                    queue.emailaddress = new_address
                    session.add(queue)
            else:
                user = session.get(SystemUser, mb.regardingobjectid)
                if user is not None:
                    user.internalemailaddress = new_address
                    session.add(user)
            session.add(mb)
            session.commit()
            name = mb.name
        self._mailbox_added(new_address, name)
        self._changed()

    def approve(self, as_user: str, mailboxids: Iterable[str], *, approve: bool = True) -> None:
        """SPEC 1.8: approve (or reject) the email addresses of mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox approve" if approve else "mailbox reject")
            for mb in self._mailboxes(session, mailboxids):
                mb.emailrouteraccessapproval = int(Approval.APPROVED if approve else Approval.REJECTED)
                session.add(mb)
            session.commit()

    def reject(self, as_user: str, mailboxids: Iterable[str]) -> None:
        self.approve(as_user, mailboxids, approve=False)

    # -- Test & Enable (1.9, 1.10) ------------------------------------------------------------
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

    # -- views -----------------------------------------------------------------------------
    def mailboxes(self) -> list[MailboxView]:
        with Session(self.db) as session:
            rows = session.exec(select(Mailbox).order_by(Mailbox.emailaddress)).all()
            return [MailboxView(m.mailboxid, m.emailaddress, m.regardingobjecttypecode, m.incomingemailstatus,
                                m.outgoingemailstatus, m.mailboxstatus, m.emailrouteraccessapproval,
                                m.enabledforincomingemail, m.enabledforoutgoingemail, m.lastsyncerrorcode,
                                m.actstatus, m.enabledforact, m.emailserverprofile, _error_current(m))
                    for m in rows]

    def mailbox(self, ref: str) -> dict[str, Any]:
        """Every field of one mailbox (by address or id)."""
        with Session(self.db) as session:
            [mb] = self._mailboxes(session, [ref], "mailbox")
            view = mb.model_dump()
            profile = session.get(EmailServerProfile, mb.emailserverprofile or "")
            view["emailserverprofilename"] = profile.name if profile else None
            return view

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
