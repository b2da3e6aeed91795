"""The organization, its users, roles, queues and records (SPEC 1.1-1.4), and the helpers every
part of :class:`~simulator.crm.admin.Admin` uses: the acting user and its privileges, the
organization row, the callbacks after a mailbox is added or a setting changed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, select

from engine.ports import Approval
from simulator.crm.errors import (
    AdminError,
    ConflictError,
    OutOfOrderError,
    PrivilegeError,
    UnknownUserError,
    ValidationError,
)
from simulator.crm.inputs import (
    OrganizationInput,
    PrerequisitesInput,
    QueueInput,
    RecordInput,
    RoleInput,
    UserInput,
    parse,
)
from simulator.crm.models import (
    DEFAULT_SYNC_FILTERS,
    Account,
    Contact,
    Lead,
    Mailbox,
    Organization,
    Queue,
    SecurityRole,
    SystemUser,
    SystemUserRoles,
    TrackSetting,
    default_filter,
)
from simulator.crm.operations import (
    ALL_PRIVILEGES,
    OPERATIONS,
    PRIVILEGE_NAMES,
    PRV_READ_MAILBOX,
    SALESPERSON,
    SYSTEM_ADMINISTRATOR,
    role_names,
)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValidationError(message, field)


@dataclass
class Prerequisite:
    """One item of the SPEC 1.1 check list."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class OrgMixin:
    """The acting user and its privileges (``_user``, ``_check``), the organization (``_org``), and
    the operations that build it: organization, prerequisites, users, roles, queues, records.

    Also the helpers the other parts share: ``_address_free``, ``_new_mailbox``, ``_mailbox_added``
    (after a mailbox is created), ``_changed`` (after a setting that the engine caches changed).

    Relies on ``self``: ``db``, ``ids``, ``platform``, ``on_mailbox_added``, ``on_settings_changed``.
    """

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
        """The acting user, when it holds every privilege (or the security role) the operation declares
        (see OPERATIONS)."""
        user = self._user(session, who)
        role = OPERATIONS[operation].role
        if role is not None and role not in role_names(session, user.systemuserid):
            raise PrivilegeError(f"user {user.domainname} does not have the {role} security role, which "
                                 f"`sss {operation}` needs", "as_user")
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
        for name, table in DEFAULT_SYNC_FILTERS:  # every user starts with the default sync filters (SPEC 3.6)
            session.add(default_filter(user.systemuserid, name, table))
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
