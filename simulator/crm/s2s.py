"""The server-to-server (S2S) steps of the setup flow, SPEC 1.2-1.4, on the fake CRM deployment.

* 1.2 :func:`install_certificate` - ``CertificateReconfiguration.ps1``: the .pfx becomes the
  deployment's S2S token issuer (table ``s2scertificate``).
* 1.3 :func:`configure_server_side_sync` - ``ConfigureCrmServerSideSync``: registers the CRM's
  service principal name and the certificate with the identity service, records server-based
  authentication (table ``s2sconfiguration``) and stores the tenant id on the organization.
* 1.4 :func:`validate_s2s` - server-based authentication validation, the check list behind the
  "Authentication failure" outcome; :func:`s2s_credentials` gives the wire-mode engine what it
  needs to get tokens, or raises that failure.

Everything a learner does between two ``sss`` commands lives in the CRM database: the identity
service (tenants, admins, service principals, keys) and a virtual clock are kept as JSON in the
``simulatorstate`` table (:func:`load_identity`, :func:`load_clock`). Each operation runs in one
transaction and writes nothing when it refuses; a refusal is an :class:`S2SError` whose ``field``
names the offending input (the snake_case name of the script parameter) and whose ``code`` is stable.

When an operation is given no clock it uses the persisted one (and stores it on success, so the
first command fixes the sandbox's "now"); a caller with its own clock (a sandbox) passes it.

A running sandbox keeps its identity service in memory (it answers token requests and checks
EWS tokens). Such a caller passes it as ``identity=``: the operation then starts from that live
service rather than from the stored one, works on a copy, stores the copy, and only after the
commit puts the result into the live service (so a refusal changes neither).

What a refusal's ``code`` means for a caller that must classify it (the HTTP control plane):
:data:`OUT_OF_ORDER_CODES` are steps done too early, :data:`CONFLICT_CODES` names that are
taken, :data:`STATE_CODES` a stored state that cannot be read; every other code is wrong input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine
from sqlmodel import Session, select

from engine.clock import Clock, RealClock, VirtualClock, as_utc, parse_instant
from engine.errors import TokenError
from simulator.crm.admin import SYSTEM_ADMINISTRATOR, AdminError, PrivilegeError
from simulator.crm.inputs import CertificateInput, ClockAdvanceInput, parse
from simulator.crm.models import (
    Organization,
    S2SCertificate,
    S2SConfiguration,
    SimulatorState,
    SystemUser,
)
from simulator.crm.operations import role_names
from simulator.identity import certs
from simulator.identity.certs import CertificateError
from simulator.identity.service import ACS_PRINCIPAL_ID, CRM_APP_ID, IdentityError, IdentityService, Tenant

CERTIFICATE_TYPE = "S2STokenIssuer"
STORE_FIND_TYPES = ("FindBySubjectDistinguishedName", "FindBySubjectName", "FindByThumbprint")
AUTHORIZATION_SERVER_METADATA_URL = "https://accounts.accesscontrol.windows.net/metadata/json/1"
AUTHENTICATION_FAILURE = "Authentication failure"
SUCCESS = "Success"

IDENTITY_KEY = "identity"
CLOCK_KEY = "clock"

_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SERVICE_ACCOUNT = re.compile(r"^[^\\/\s][^\\/]*\\[^\\/]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# How the refusal codes group (see the module docstring).
OUT_OF_ORDER_CODES = frozenset({"no_organization", "certificate_not_installed"})
CONFLICT_CODES = frozenset({"duplicate", "file_exists"})
STATE_CODES = frozenset({"corrupt_state"})
USER_CODES = frozenset({"no_user", "unknown_user", "disabled_user"})  # the acting user is missing or unusable


class S2SError(AdminError):
    """A setup step refused. ``code`` is stable (``wrong_password``, ``unknown_admin``, ...)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        self.code = code
        super().__init__(message, field)


class S2SPrivilegeError(S2SError, PrivilegeError):
    """The acting user lacks the role or privilege the step needs."""


class S2SAuthenticationError(TokenError):
    """Server-to-server authentication cannot work: "Authentication failure" (SPEC 1.4)."""

    def __init__(self, result: S2SValidation) -> None:
        self.result = result
        super().__init__(result.message)


# ------------------------------------------------------------------------------ persisted state

def read_state(session: Session, key: str) -> str | None:
    row = session.get(SimulatorState, key)
    return row.value if row is not None else None


def write_state(session: Session, key: str, value: str, clock: Clock | None = None) -> None:
    """Add (not commit) the value to the session."""
    row = session.get(SimulatorState, key)
    if row is None:
        row = SimulatorState(key=key, value=value)
    row.value = value
    row.modifiedon = clock.now() if clock is not None else None
    session.add(row)


def load_clock(session: Session) -> VirtualClock:
    """The persisted virtual clock; the machine's current time when none is stored yet."""
    text = read_state(session, CLOCK_KEY)
    if text is None:
        return VirtualClock(RealClock().now())
    try:
        return VirtualClock(clock_time(text))
    except (ValueError, KeyError, TypeError):
        raise S2SError("corrupt_state", "the stored sandbox clock cannot be read (table simulatorstate, "
                                        "key 'clock')") from None


def clock_value(now: datetime) -> str:
    """The stored form of the sandbox clock at ``now``."""
    return json.dumps({"now": as_utc(now).isoformat()})


def clock_time(text: str) -> datetime:
    """The time in a stored clock value (ValueError, KeyError or TypeError when it is not one)."""
    return parse_instant(json.loads(text)["now"])


def clock_text(clock: Clock) -> str:
    return clock_value(clock.now())


def save_clock(session: Session, clock: Clock) -> None:
    write_state(session, CLOCK_KEY, clock_text(clock), clock)


def advance_clock(db: Engine, *, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    """Move the persisted clock forward (never back); returns the new time. The amounts are checked
    by the input model of ``clock advance`` (a running sandbox moves its own clock:
    :meth:`simulator.sandbox.Sandbox.advance_clock`)."""
    delta = parse(ClockAdvanceInput, {"days": days, "hours": hours, "minutes": minutes}).span()
    with Session(db) as session:
        clock = load_clock(session)
        clock.advance(delta.total_seconds())
        save_clock(session, clock)
        session.commit()
        return clock.now()


def current_time(db: Engine) -> datetime:
    """The persisted clock's time (stored at first use)."""
    with Session(db) as session:
        clock = load_clock(session)
        if read_state(session, CLOCK_KEY) is None:
            save_clock(session, clock)
            session.commit()
        return clock.now()


def load_identity(session: Session, clock: Clock, *, seed: int = 0, for_update: bool = False) -> IdentityService:
    """The persisted identity service, or a new empty one (not stored until :func:`save_identity`).

    ``for_update`` locks the state row (PostgreSQL) for a read-modify-write in the session's transaction.
    """
    row = session.get(SimulatorState, IDENTITY_KEY, with_for_update=for_update or None)
    text = row.value if row is not None else None
    if text is None:
        return IdentityService(clock, seed)
    try:
        data = json.loads(text)
    except ValueError:
        raise S2SError("corrupt_state", "the stored identity service cannot be read (table simulatorstate, "
                                        "key 'identity')") from None
    try:
        return IdentityService.from_json(data, clock)
    except IdentityError as exc:
        raise S2SError(exc.code, exc.message) from None


def save_identity(session: Session, identity: IdentityService) -> None:
    write_state(session, IDENTITY_KEY, json.dumps(identity.to_json(), sort_keys=True), identity.clock)


def _working_identity(session: Session, clock: Clock, live: IdentityService | None) -> IdentityService:
    """The identity service an operation changes: the stored one, or a copy of the running one.

    Either way the stored row is locked (PostgreSQL) until the transaction ends."""
    if live is None:
        return load_identity(session, clock, for_update=True)
    session.get(SimulatorState, IDENTITY_KEY, with_for_update=True)
    return live.copy(clock)


class _Step:
    """One operation's transaction: a session, its clock, whether the persisted clock must be stored."""

    def __init__(self, db: Engine, clock: Clock | None) -> None:
        self.session = Session(db)
        self.persist_clock = clock is None
        try:
            self.clock: Clock = clock if clock is not None else load_clock(self.session)
        except BaseException:
            self.session.close()
            raise

    def commit(self) -> None:
        if self.persist_clock:
            save_clock(self.session, self.clock)
        self.session.commit()

    def __enter__(self) -> _Step:
        return self

    def __exit__(self, *exc) -> None:
        self.session.close()  # anything not committed is rolled back


# ------------------------------------------------------------------------------ checks shared by the steps

def _organization(session: Session) -> Organization:
    org = session.exec(select(Organization)).first()
    if org is None:
        raise S2SError("no_organization", "the organization does not exist yet (run `sss org init` first)")
    return org


def require_system_administrator(session: Session, who: str | None) -> SystemUser:
    """The acting CRM user, who must hold the System Administrator security role (SPEC 1.1)."""
    who = (who or "").strip()
    if not who:
        raise S2SError("no_user", "is required: the CRM user who runs this step", "as_user")
    user = session.exec(select(SystemUser).where(
        (SystemUser.domainname == who) | (SystemUser.systemuserid == who))).first()
    if user is None:
        raise S2SError("unknown_user", f"no user {who!r} in the organization", "as_user")
    if user.isdisabled:
        raise S2SError("disabled_user", f"user {who!r} is disabled", "as_user")
    if SYSTEM_ADMINISTRATOR not in role_names(session, user.systemuserid):
        raise S2SPrivilegeError("not_system_administrator", f"user {user.domainname} does not have the "
                                f"{SYSTEM_ADMINISTRATOR} security role, which this step needs", "as_user")
    return user


def _cert_error(exc: CertificateError, file_field: str, password_field: str) -> S2SError:
    field_name = password_field if exc.code == certs.WRONG_PASSWORD else file_field
    return S2SError(exc.code, exc.message, field_name)


def _fmt(when: datetime) -> str:
    return f"{as_utc(when):%Y-%m-%d %H:%M:%S} UTC"


# ------------------------------------------------------------------------------ tenant (Office 365 side)

def create_tenant(db: Engine, name: str, domains: list[str], admins: list[str], *,
                  clock: Clock | None = None, identity: IdentityService | None = None) -> Tenant:
    """An Office 365 tenant in the persisted identity service (done by the tenant's admin).

    With ``identity`` (a running sandbox's service) the tenant is added to it as well, after the commit."""
    name = (name or "").strip()
    if not name:
        raise S2SError("invalid_name", "is required, e.g. Contoso", "name")
    doms = [d.strip().lower() for d in domains if d and d.strip()]
    for d in doms:
        if not _HOST.match(d) or "." not in d:
            raise S2SError("invalid_domain", f"{d!r} is not a domain name (e.g. contoso.onmicrosoft.com)", "domain")
    if not admins:
        raise S2SError("no_admin", "is required: at least one Office 365 administrator address", "admin")
    for a in admins:
        if not _EMAIL.match(a.strip()):
            raise S2SError("invalid_admin", f"{a!r} is not an email address", "admin")
    with _Step(db, clock) as step:
        work = _working_identity(step.session, step.clock, identity)
        same = next((t for t in work.tenants if t.name.lower() == name.lower()), None)
        if same is not None:
            raise S2SError("duplicate", f"a tenant named {same.name} already exists (tenant id {same.tenant_id})",
                           "name")
        try:
            tenant = work.add_tenant(name, doms or None, [a.strip() for a in admins])
        except IdentityError as exc:
            raise S2SError(exc.code, exc.message, "admin" if exc.code == "invalid_admin" else "domain") from None
        save_identity(step.session, work)
        step.commit()
    if identity is not None:
        identity.take_state_of(work)
        tenant = identity.tenant(tenant.tenant_id)
    return tenant


def list_tenants(db: Engine, *, identity: IdentityService | None = None) -> list[Tenant]:
    """The tenants of the stored identity service, or of ``identity`` (a running sandbox's)."""
    if identity is not None:
        return identity.tenants
    with Session(db) as session:
        return load_identity(session, load_clock(session)).tenants


# ------------------------------------------------------------------------------ certificates

@dataclass
class NewCertificate:
    pfx_path: Path
    cer_path: Path
    subject: str
    thumbprint: str
    not_before: datetime
    not_after: datetime
    with_private_key: bool


def common_name(subject: str) -> str:
    """The CN of a subject given as ``CN=name`` (the only form the sandbox makes)."""
    text = (subject or "").strip()
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        name = None
    if name is None or len(name) != 1 or not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise S2SError("invalid_subject", f"{subject!r} is not a subject of the form CN=name "
                                          f"(e.g. CN=crm.contoso.com)", "subject")
    value = name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if not isinstance(value, str) or not value.strip():
        raise S2SError("invalid_subject", "the CN is empty", "subject")
    return value.strip()


def new_certificate(subject: str, days: int, password: str, out_dir: str | Path, *, clock: Clock,
                    file_name: str | None = None, with_private_key: bool = True,
                    overwrite: bool = False) -> NewCertificate:
    """A self-signed certificate valid ``days`` from the clock's now: ``<name>.pfx`` and ``<name>.cer``."""
    parse(CertificateInput, {"subject": subject, "days": days, "password": password})  # ranges: the model's
    cn = common_name(subject)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise S2SError("not_a_folder", f"{out} is a file, not a folder", "out")
    stem = file_name or re.sub(r"[^A-Za-z0-9._-]+", "_", cn).strip("._") or "s2s"
    pfx_path, cer_path = out / f"{stem}.pfx", out / f"{stem}.cer"
    if not overwrite:
        for p in (pfx_path, cer_path):
            if p.exists():
                raise S2SError("file_exists", f"{p} already exists (choose another --out or pass --force)", "out")
    key, cert = certs.make_certificate(cn, days, clock)
    try:
        out.mkdir(parents=True, exist_ok=True)
        certs.write_pfx(pfx_path, key if with_private_key else None, cert, password)
        certs.write_cer(cer_path, cert)
    except OSError as exc:
        raise S2SError("unwritable", f"cannot write to {out}: {exc.strerror}", "out") from None
    return NewCertificate(pfx_path, cer_path, cert.subject.rfc4514_string(), certs.thumbprint(cert),
                          cert.not_valid_before_utc, cert.not_valid_after_utc, with_private_key)


@dataclass
class InstalledCertificate:
    thumbprint: str
    subject: str
    not_before: datetime
    not_after: datetime
    certificate_type: str
    service_account: str
    store_find_type: str
    updated_crm: bool
    replaced_thumbprint: str | None = None


def _choice(value: str, options: tuple[str, ...]) -> str | None:
    wanted = (value or "").strip().lower()
    return next((o for o in options if o.lower() == wanted), None)


def install_certificate(db: Engine, as_user: str, certificate_file: str | Path, password: str | None, *,
                        certificate_type: str = CERTIFICATE_TYPE, service_account: str,
                        store_find_type: str = "FindBySubjectDistinguishedName", update_crm: bool = True,
                        clock: Clock | None = None) -> InstalledCertificate:
    """SPEC 1.2: install the .pfx as the deployment's S2S token issuer (CertificateReconfiguration.ps1).

    Without ``update_crm`` the script only imports the certificate on the server; the CRM deployment
    is not changed and nothing is stored.
    """
    with _Step(db, clock) as step:
        s = step.session
        _organization(s)
        user = require_system_administrator(s, as_user)
        ctype = _choice(certificate_type, (CERTIFICATE_TYPE,))
        if ctype is None:
            raise S2SError("wrong_certificate_type",
                           f"{certificate_type!r} is not the certificate type server-side sync needs: use "
                           f"{CERTIFICATE_TYPE} (the certificate the CRM signs its server-to-server tokens with)",
                           "certificate_type")
        find_type = _choice(store_find_type, STORE_FIND_TYPES)
        if find_type is None:
            raise S2SError("unknown_store_find_type",
                           f"{store_find_type!r} is not a store find type the script accepts "
                           f"({', '.join(STORE_FIND_TYPES)})", "store_find_type")
        account = (service_account or "").strip()
        if not _SERVICE_ACCOUNT.match(account):
            raise S2SError("invalid_service_account",
                           f"{service_account!r} is not an account of the form DOMAIN\\account (the account "
                           f"the asynchronous service runs as, which must read the private key)",
                           "service_account")
        try:
            key, cert = certs.load_pfx(certificate_file, password, step.clock, require_valid=True)
        except CertificateError as exc:
            raise _cert_error(exc, "certificate_file", "password") from None
        tp = certs.thumbprint(cert)
        result = InstalledCertificate(tp, cert.subject.rfc4514_string(), cert.not_valid_before_utc,
                                      cert.not_valid_after_utc, ctype, account, find_type, update_crm)
        if not update_crm:
            return result
        row = s.get(S2SCertificate, ctype)
        if row is not None and row.thumbprint != tp:
            result.replaced_thumbprint = row.thumbprint
        if row is None:
            row = S2SCertificate(certificatetype=ctype, thumbprint=tp, subject="", serialnumber="",
                                 certificatepem="", privatekeypem="", serviceaccount="", storefindtype="")
        row.thumbprint = tp
        row.subject = result.subject
        row.serialnumber = format(cert.serial_number, "X")
        row.notbefore = cert.not_valid_before_utc
        row.notafter = cert.not_valid_after_utc
        row.certificatepem = certs.certificate_pem(cert)
        row.privatekeypem = certs.private_key_pem(key)
        row.serviceaccount = account
        row.storefindtype = find_type
        row.sourcefile = str(Path(certificate_file).resolve())
        row.installedon = step.clock.now()
        row.installedby = user.systemuserid
        s.add(row)
        step.commit()
        return result


def installed_certificate(db: Engine) -> S2SCertificate | None:
    with Session(db) as session:
        return session.get(S2SCertificate, CERTIFICATE_TYPE)


# ------------------------------------------------------------------------------ ConfigureCrmServerSideSync

@dataclass
class ConfigureResult:
    organization_name: str
    tenant_id: str
    tenant_name: str
    service_principal_name: str
    thumbprint: str
    key_id: str
    key_end: datetime
    removed_keys: list[str] = field(default_factory=list)  # thumbprints of expired keys dropped
    previous_tenant_id: str | None = None


def configure_server_side_sync(db: Engine, as_user: str, *, root_domain_name: str, private_key_password: str | None,
                               cer_file_path: str | Path, pfx_file_path: str | Path, organization_name: str,
                               o365_admin_email: str, clock: Clock | None = None,
                               identity: IdentityService | None = None) -> ConfigureResult:
    """SPEC 1.3: ConfigureCrmServerSideSync with its six parameters; all three effects or none.

    With ``identity`` (a running sandbox's service) the registration starts from that service and
    is put into it after the commit."""
    with _Step(db, clock) as step:
        s = step.session
        org = _organization(s)
        user = require_system_administrator(s, as_user)
        if (organization_name or "").strip().lower() != org.name.lower():
            raise S2SError("unknown_organization", f"no organization named {organization_name!r} in this "
                                                   f"deployment", "organization_name")
        root = (root_domain_name or "").strip().lower().rstrip(".")
        if not _HOST.match(root):
            raise S2SError("invalid_root_domain_name", f"{root_domain_name!r} is not a server name "
                                                       f"(e.g. crm.contoso.com)", "root_domain_name")
        admin_email = (o365_admin_email or "").strip().lower()
        if not _EMAIL.match(admin_email):
            raise S2SError("invalid_admin", f"{o365_admin_email!r} is not an email address", "o365_admin_email")
        installed = s.get(S2SCertificate, CERTIFICATE_TYPE)
        if installed is None:
            raise S2SError("certificate_not_installed",
                           "no certificate is installed as the S2S token issuer yet: do step 1.2 first "
                           "(sss cert install --certificate-type S2STokenIssuer --update-crm ...)")
        try:
            key, _pfx_cert = certs.load_pfx(pfx_file_path, private_key_password, step.clock, require_valid=True)
        except CertificateError as exc:
            raise _cert_error(exc, "pfx_file_path", "private_key_password") from None
        try:
            cer = certs.load_cer(cer_file_path)
            certs.check_pair(key, cer, pfx_path=pfx_file_path, cer_path=cer_file_path)
            certs.check_validity(cer, step.clock, label=f"The certificate in {cer_file_path}")
        except CertificateError as exc:
            raise _cert_error(exc, "cer_file_path", "private_key_password") from None
        tp = certs.thumbprint(cer)
        if tp != installed.thumbprint:
            raise S2SError("certificate_not_installed",
                           f"the certificate in {cer_file_path} (thumbprint {tp}) is not the one installed as "
                           f"the S2S token issuer (thumbprint {installed.thumbprint}): install it first "
                           f"(step 1.2) or use the installed certificate's files", "cer_file_path")
        work = _working_identity(s, step.clock, identity)
        try:
            tenant = work.tenant_for_admin(admin_email)
        except IdentityError as exc:
            hint = "" if work.tenants else " (no Office 365 tenant exists yet: sss tenant create ...)"
            raise S2SError("unknown_admin", exc.message.rstrip(".") + hint, "o365_admin_email") from None
        spn = f"{CRM_APP_ID}/{root}"
        try:
            work.add_service_principal_name(tenant.tenant_id, CRM_APP_ID, spn)
            registered = work.add_key(tenant.tenant_id, CRM_APP_ID, cer, require_valid=True)
            removed = work.remove_expired_keys(tenant.tenant_id, CRM_APP_ID)
        except IdentityError as exc:
            raise S2SError(exc.code, exc.message) from None
        config = s.get(S2SConfiguration, org.organizationid) or S2SConfiguration(
            organizationid=org.organizationid, authorizationserverprincipalid=ACS_PRINCIPAL_ID, tenantid="",
            rootdomainname="", serviceprincipalname="", certificatethumbprint="", o365adminemail="")
        config.authorizationserverprincipalid = ACS_PRINCIPAL_ID
        config.authorizationservermetadataurl = AUTHORIZATION_SERVER_METADATA_URL
        config.tenantid = tenant.tenant_id
        config.rootdomainname = root
        config.serviceprincipalname = spn
        config.certificatethumbprint = tp
        config.o365adminemail = admin_email
        config.configuredon = step.clock.now()
        config.configuredby = user.systemuserid
        previous = org.s2stenantid
        org.s2stenantid = tenant.tenant_id
        s.add(config)
        s.add(org)
        save_identity(s, work)
        step.commit()
        result = ConfigureResult(org.name, tenant.tenant_id, tenant.name, spn, tp, registered.key_id,
                                 registered.end, [k.thumbprint for k in removed],
                                 previous if previous and previous != tenant.tenant_id else None)
    if identity is not None:
        identity.take_state_of(work)
    return result


# ------------------------------------------------------------------------------ 1.4 validation

@dataclass
class S2SCheck:
    name: str
    ok: bool | None  # None: not checked (an earlier check failed)
    detail: str
    code: str | None = None  # the failure's code


@dataclass
class S2SValidation:
    checks: list[S2SCheck]
    checked_at: datetime
    tenant_id: str | None = None
    thumbprint: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def outcome(self) -> str:
        return SUCCESS if self.ok else AUTHENTICATION_FAILURE

    @property
    def failure(self) -> S2SCheck | None:
        return next((c for c in self.checks if c.ok is False), None)

    @property
    def message(self) -> str:
        failed = self.failure
        if failed is None:
            return "Server-based authentication is configured and the certificate is valid."
        return (f"{AUTHENTICATION_FAILURE}: {failed.detail} Fix: install or update the certificate "
                f"(step 1.2), register it (step 1.3), then retry.")


CHECK_INSTALLED = "S2S certificate installed"
CHECK_VALID = "certificate valid now"
CHECK_CONFIGURED = "server-based authentication configured"
CHECK_TENANT = "Exchange Online tenant id"
CHECK_REGISTERED = "certificate registered with the identity service"


def validate_s2s(db: Engine, clock: Clock | None = None, *, identity: IdentityService | None = None
                 ) -> S2SValidation:
    """SPEC 1.4: can the CRM authenticate server-to-server? Never raises for a failed check.

    ``clock`` defaults to the persisted sandbox clock; ``identity`` to the persisted identity
    service (a running sandbox passes its own).
    """
    with Session(db) as s:
        return _validate(s, clock, identity)[0]


def _validate(s: Session, clock: Clock | None, identity: IdentityService | None
              ) -> tuple[S2SValidation, Organization | None, S2SCertificate | None]:
    if clock is None:
        clock = load_clock(s)
    now = clock.now()
    org = s.exec(select(Organization)).first()
    row = s.get(S2SCertificate, CERTIFICATE_TYPE)
    config = s.get(S2SConfiguration, org.organizationid) if org is not None else None
    if identity is None:
        identity = load_identity(s, clock)
    checks: list[S2SCheck] = []
    add = checks.append
    result = S2SValidation(checks, now, org.s2stenantid if org else None, row.thumbprint if row else None)

    cert = None
    if row is None:
        add(S2SCheck(CHECK_INSTALLED, False, "No certificate is installed as the S2S token issuer.",
                     "certificate_missing"))
    else:
        try:
            cert = x509.load_pem_x509_certificate(row.certificatepem.encode("ascii"))
        except ValueError:
            add(S2SCheck(CHECK_INSTALLED, False, "The installed S2S certificate cannot be read.",
                         "certificate_missing"))
        else:
            add(S2SCheck(CHECK_INSTALLED, True, f"{row.subject}, thumbprint {row.thumbprint}"))
    if cert is None:
        add(S2SCheck(CHECK_VALID, None, "not checked"))
    else:
        try:
            certs.check_validity(cert, clock, label="The installed S2S certificate")
            add(S2SCheck(CHECK_VALID, True, f"valid until {_fmt(cert.not_valid_after_utc)}"))
        except CertificateError as exc:
            code = "certificate_expired" if exc.code == certs.EXPIRED else "certificate_not_yet_valid"
            add(S2SCheck(CHECK_VALID, False, exc.message, code))

    if org is None:
        add(S2SCheck(CHECK_CONFIGURED, False, "The organization does not exist.", "no_organization"))
    elif config is None or config.authorizationserverprincipalid != ACS_PRINCIPAL_ID:
        add(S2SCheck(CHECK_CONFIGURED, False, "Server-based authentication with Exchange Online is not "
                                              "configured (ConfigureCrmServerSideSync has not run).",
                     "not_configured"))
    else:
        add(S2SCheck(CHECK_CONFIGURED, True, f"authorization server principal "
                                             f"{config.authorizationserverprincipalid}, "
                                             f"{config.serviceprincipalname}"))
    if org is None:
        add(S2SCheck(CHECK_TENANT, None, "not checked"))
    elif not org.s2stenantid:
        add(S2SCheck(CHECK_TENANT, False, "The organization has no Exchange Online tenant id (S2STenantId).",
                     "tenant_id_missing"))
    else:
        add(S2SCheck(CHECK_TENANT, True, org.s2stenantid))

    if row is None or org is None or not org.s2stenantid:
        add(S2SCheck(CHECK_REGISTERED, None, "not checked"))
    else:
        add(_registered(identity, org.s2stenantid, row, config, now))
    return result, org, row


def _registered(identity: IdentityService, tenant_id: str, row: S2SCertificate, config: S2SConfiguration | None,
                now: datetime) -> S2SCheck:
    tenant = identity.find_tenant(tenant_id)
    if tenant is None:
        return S2SCheck(CHECK_REGISTERED, False, f"The identity service knows no tenant {tenant_id}.", "unknown_tenant")
    sp = tenant.principals.get(CRM_APP_ID)
    key = sp.key_by_thumbprint(row.thumbprint) if sp is not None else None
    if key is None:
        if config is not None and config.certificatethumbprint and config.certificatethumbprint != row.thumbprint:
            detail = (f"The installed certificate (thumbprint {row.thumbprint}) is not the one registered with the "
                      f"identity service (thumbprint {config.certificatethumbprint}).")
        else:
            detail = (f"The installed certificate (thumbprint {row.thumbprint}) is not registered as a key of the "
                      f"CRM service principal in tenant {tenant.name}.")
        return S2SCheck(CHECK_REGISTERED, False, detail, "certificate_not_registered")
    if key.expired(now) or now < key.start:
        return S2SCheck(CHECK_REGISTERED, False, f"The registered key {key.thumbprint} is valid only from "
                                                 f"{_fmt(key.start)} to {_fmt(key.end)}.", "certificate_expired")
    return S2SCheck(CHECK_REGISTERED, True, f"key {key.key_id} of {sp.display_name} in tenant {tenant.name}")


@dataclass(frozen=True)
class S2SCredentials:
    """What a token source needs: msal's authority tenant, client id and certificate."""

    tenant_id: str
    client_id: str
    private_key_pem: str
    thumbprint: str  # SHA-1, upper-case hex
    certificate_pem: str
    not_after: datetime


def s2s_credentials(db: Engine, clock: Clock | None = None, *, identity: IdentityService | None = None
                    ) -> S2SCredentials:
    """The CRM's S2S credentials from the database, or :class:`S2SAuthenticationError` (a TokenError)."""
    with Session(db) as s:
        result, org, row = _validate(s, clock, identity)
        if not result.ok or org is None or row is None or not org.s2stenantid:
            raise S2SAuthenticationError(result)
        return S2SCredentials(org.s2stenantid, CRM_APP_ID, row.privatekeypem, row.thumbprint, row.certificatepem,
                              row.notafter)
