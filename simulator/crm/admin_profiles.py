"""Email server profiles (SPEC 1.5, 2.1): their validation, their operations and Test Connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session, func, select

from simulator.crm.admin_org import _require
from simulator.crm.errors import AdminError, ConflictError, ValidationError
from simulator.crm.inputs import PROFILE_FIELDS, ProfileInput, parse
from simulator.crm.models import (
    CredentialRetrieval,
    EmailServerProfile,
    Mailbox,
    Organization,
    ServerType,
    SystemUser,
    TestExecutionStatus,
)
from simulator.crm.operations import out_of_order


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


class ProfilesMixin:
    """Email server profiles: create, update, (de)activate, show, and Test Connection.

    Relies on ``self``: ``db``, ``ids``, ``clock``, ``probe`` (the service checks of Test
    Connection), and the helpers ``_check``, ``_org``, ``_changed`` (:class:`OrgMixin`).
    """

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
            view["mailboxes"] = session.exec(select(func.count()).select_from(Mailbox).where(
                Mailbox.emailserverprofile == profile.emailserverprofileid)).one()
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
