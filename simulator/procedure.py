"""Where a sandbox stands in the setup procedure (SPEC section 1), read from its CRM database.

:func:`procedure_state` looks at the database the ``sss`` setup commands write to and says, for
each step of the procedure, whether it is done, which step comes next, or which step is blocked
and by what concrete problem - with a short explanation of the step and the command that does
it, filled with the values the database knows (organization, administrator, profile, mailbox
addresses, certificate files).

The order matters, as in the real product: the *earliest* step that does not hold is the one to
work on, even when later steps were done once. A certificate that expired after everything
worked therefore shows as a blocked step 1.2, not as a healthy sandbox.

:func:`status_summary` adds the mailbox counts and the recent alerts (``sss status``).

Both only read: a SQLite file is opened read-only (``mode=ro``; SQLite may leave its empty ``-wal``
and ``-shm`` side files, which the next ``sss`` command that writes removes), and nothing is ever
committed to another database.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.pool import NullPool
from sqlmodel import Session, select

from engine.clock import as_utc
from engine.ports import ActMethod, Approval, IncomingMethod, OutgoingMethod, Status
from simulator.crm import s2s
from simulator.crm.db import DatabaseError, check_schema
from simulator.crm.models import (
    EmailServerProfile,
    Mailbox,
    Organization,
    S2SCertificate,
    S2SConfiguration,
    SecurityRole,
    SystemUser,
    SystemUserRoles,
    TestExecutionStatus,
    TraceLog,
)
from simulator.crm.operations import SETUP_STEPS, STEP, SYSTEM_ADMINISTRATOR
from simulator.identity import certs

DONE, NEXT, BLOCKED, TODO = "done", "next", "blocked", "todo"
DEFAULT_PROFILE_NAME = "Exchange Online"
RECENT = timedelta(hours=24)
NOT_APPROVED = "MailboxNotApproved"


@dataclass
class StepState:
    """One step of the setup procedure as it stands in a database."""

    key: str  # stable name, e.g. "install-certificate"
    section: str  # the SPEC section, e.g. "1.2"
    title: str
    status: str  # done, next, blocked or todo
    purpose: str  # what the step is for, in a sentence or two
    reason: str | None = None  # blocked: the concrete problem; next/todo: what is missing
    detail: str | None = None  # done: what is in place
    commands: list[str] = field(default_factory=list)  # what to run for this step (in order)

    def to_dict(self) -> dict:
        return asdict(self)


# The steps, their order and what each waits for are the operations' declarations (SETUP_STEPS).
PURPOSES = {step.key: step.purpose for step in SETUP_STEPS}
STEPS = tuple((step.key, step.section, step.title) for step in SETUP_STEPS)

_THUMBPRINT = re.compile(r"thumbprint ([0-9A-F]{40})")


# ------------------------------------------------------------------------------ opening read-only

def _sqlite_path(db: str) -> Path | None | str:
    """The file of a SQLite database; None for memory; the URL itself for another database."""
    if "://" not in db:
        return Path(db)
    if db.startswith("sqlite:///"):
        rest = db[len("sqlite:///"):]
        path = rest.split("?", 1)[0]
        if path.startswith("file:"):  # a SQLite URI filename (sqlite:///file:PATH?mode=ro&uri=true)
            path = path[len("file:"):]
        return None if path in ("", ":memory:") else Path(path)
    if db.startswith("sqlite:"):
        return None
    return db


def _read_only_engine(db: str) -> Engine | None:
    """An engine that cannot write (SQLite: opened with mode=ro); None when there is no database yet.

    A database of another schema version is refused (:class:`~simulator.crm.db.DatabaseError`)."""
    engine = _open_read_only(db)
    if engine is not None:
        try:
            check_schema(engine, str(db))
        except DatabaseError:
            engine.dispose()
            raise
    return engine


def _open_read_only(db: str) -> Engine | None:
    target = _sqlite_path(str(db))
    if target is None:
        return None
    if isinstance(target, str):
        return create_engine(target, poolclass=NullPool)
    if not target.is_file() or target.stat().st_size == 0:
        return None
    uri = target.resolve().as_uri() + "?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    return create_engine("sqlite://", creator=connect, poolclass=NullPool)


# ------------------------------------------------------------------------------ what the database knows

def _shell(value: str) -> str:
    return shlex.quote(str(value))


@dataclass
class _Facts:
    db_flag: str
    now: datetime | None = None
    org: Organization | None = None
    admin: str | None = None
    admin_ok: bool = False
    tenants: list = field(default_factory=list)
    cert: S2SCertificate | None = None
    config: S2SConfiguration | None = None
    validation: s2s.S2SValidation | None = None
    profiles: list[EmailServerProfile] = field(default_factory=list)
    mailboxes: list[Mailbox] = field(default_factory=list)
    disabled_owners: set[str] = field(default_factory=set)
    found_files: tuple[Path, Path, datetime] | None = None
    search_dirs: list[Path] = field(default_factory=list)

    def cmd(self, text: str) -> str:
        return f"{text}{self.db_flag}"

    @property
    def as_admin(self) -> str:
        return f"--as {_shell(self.admin or 'admin')}"

    @property
    def org_slug(self) -> str:
        name = self.org.name if self.org else "contoso"
        return re.sub(r"[^a-z0-9]+", "", name.lower()) or "contoso"

    @property
    def tenant_admin(self) -> str:
        if self.config is not None and self.config.o365adminemail:
            return self.config.o365adminemail
        tenant = self.org_tenant or (self.tenants[0] if self.tenants else None)
        if tenant is not None and tenant.admins:
            return tenant.admins[0]
        return f"admin@{self.org_slug}.onmicrosoft.com"

    @property
    def org_tenant(self):
        tid = self.org.s2stenantid if self.org else None
        return next((t for t in self.tenants if t.tenant_id == tid), None) if tid else None

    @property
    def server_name(self) -> str:
        if self.config is not None and self.config.rootdomainname:
            return self.config.rootdomainname
        if self.cert is not None:
            cn = _cn(self.cert.subject)
            if cn:
                return cn
        return f"crm.{self.org_slug}.example"

    @property
    def profile(self) -> EmailServerProfile | None:
        """The profile the procedure is about: the organization's default, else the first active one."""
        default = self.org.defaultemailserverprofileid if self.org else None
        chosen = next((p for p in self.profiles if p.emailserverprofileid == default), None)
        if chosen is None:
            chosen = next((p for p in self.profiles if p.statecode == 0), None)
        return chosen or (self.profiles[0] if self.profiles else None)

    def pfx_and_cer(self) -> tuple[str, str]:
        """The certificate files to name in a command: the installed one's, or ones found, or the usual."""
        if self.cert is not None and self.cert.sourcefile:
            pfx = Path(self.cert.sourcefile)
            return _display(pfx), _display(pfx.with_suffix(".cer"))
        if self.found_files is not None:
            return _display(self.found_files[0]), _display(self.found_files[1])
        stem = self.server_name
        return f"certs/{stem}.pfx", f"certs/{stem}.cer"

    @property
    def service_account(self) -> str:
        if self.cert is not None and self.cert.serviceaccount:
            return self.cert.serviceaccount
        return f"{self.org_slug.upper()}\\crmasync"

    def active_mailboxes(self) -> list[Mailbox]:
        """Active mailboxes of enabled users, and of queues."""
        return [m for m in self.mailboxes if m.statecode == 0 and (
            m.regardingobjecttypecode == "queue" or m.regardingobjectid not in self.disabled_owners)]


def _display(path: Path) -> str:
    """A path relative to the working folder when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _cn(subject: str) -> str | None:
    m = re.search(r"CN=([^,]+)", subject or "")
    return m.group(1).strip() if m else None


def _day(when: datetime | None) -> str:
    return f"{as_utc(when):%Y-%m-%d}" if when else "?"


def _minute(when: datetime | None) -> str:
    return f"{as_utc(when):%Y-%m-%d %H:%M} UTC" if when else "?"


def _find_certificate_files(dirs: list[Path], now: datetime) -> tuple[Path, Path, datetime] | None:
    """A .pfx with its .cer, valid now, in ``dirs`` or one level below them (the newest if several)."""
    best: tuple[Path, Path, datetime] | None = None
    seen: set[Path] = set()
    for base in dirs:
        try:
            folders = [base, *sorted(p for p in base.iterdir() if p.is_dir())][:50]
        except OSError:
            continue
        for folder in folders:
            try:
                pfxs = sorted(folder.glob("*.pfx"))[:20]
            except OSError:
                continue
            for pfx in pfxs:
                key = pfx.resolve()
                cer = pfx.with_suffix(".cer")
                if key in seen or not cer.is_file():
                    continue
                seen.add(key)
                try:
                    cert = certs.load_cer(cer)
                except Exception:  # not a certificate: ignore the file
                    continue
                if not isinstance(cert, x509.Certificate):
                    continue
                start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
                if start <= now <= end and (best is None or end > best[2]):
                    best = (pfx, cer, end)
    return best


def _gather(engine: Engine | None, facts: _Facts) -> None:
    if engine is None:
        return
    tables = set(inspect(engine).get_table_names())
    if "organization" not in tables:
        return
    with Session(engine) as s:
        facts.org = s.exec(select(Organization)).first()
        if facts.org is None:
            return
        clock = s2s.load_clock(s)
        facts.now = clock.now()
        admins = s.exec(select(SystemUser).join(
            SystemUserRoles, SystemUserRoles.systemuserid == SystemUser.systemuserid).join(
            SecurityRole, SecurityRole.roleid == SystemUserRoles.roleid).where(
            SecurityRole.name == SYSTEM_ADMINISTRATOR).order_by(SystemUser.domainname)).all()
        enabled = [u for u in admins if not u.isdisabled]
        facts.admin_ok = bool(enabled)
        pick = next((u for u in enabled if u.domainname == "admin"), enabled[0] if enabled else None)
        facts.admin = pick.domainname if pick else None
        facts.tenants = list(s2s.load_identity(s, clock).tenants)
        facts.cert = s.get(S2SCertificate, s2s.CERTIFICATE_TYPE)
        facts.config = s.get(S2SConfiguration, facts.org.organizationid)
        facts.profiles = list(s.exec(select(EmailServerProfile).order_by(EmailServerProfile.name)).all())
        facts.mailboxes = list(s.exec(select(Mailbox).order_by(Mailbox.emailaddress)).all())
        facts.disabled_owners = set(s.exec(select(SystemUser.systemuserid).where(
            SystemUser.isdisabled == True)).all())  # noqa: E712
    facts.validation = s2s.validate_s2s(engine)
    if facts.cert is None:
        facts.found_files = _find_certificate_files(facts.search_dirs, facts.now)


# ------------------------------------------------------------------------------ the steps

class _Eval:
    """A step's own verdict before the order is applied: done, missing (not started) or broken."""

    def __init__(self, state: str, reason: str | None = None, detail: str | None = None,
                 commands: list[str] | None = None) -> None:
        self.state = state
        self.reason = reason
        self.detail = detail
        self.commands = commands or []


def _done(detail: str) -> _Eval:
    return _Eval("done", detail=detail)


def _missing(reason: str, *commands: str) -> _Eval:
    return _Eval("missing", reason, commands=list(commands))


def _broken(reason: str, *commands: str) -> _Eval:
    return _Eval("broken", reason, commands=list(commands))


def _addresses(rows: list[Mailbox], limit: int = 6) -> str:
    names = [m.emailaddress for m in rows]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith(('s', 'x')) else 's'}"


def _select(rows: list[Mailbox], everyone: list[Mailbox]) -> str:
    if len(rows) == len(everyone) and len(rows) > 1:
        return "--all"
    return " ".join(f"--mailbox {_shell(m.emailaddress)}" for m in rows)


def _prerequisites(f: _Facts) -> _Eval:
    if f.org is None:
        return _missing("There is no CRM organization in this database yet.",
                        f.cmd("sss org init --name Contoso --admin-email admin@contoso.example"))
    problems, commands = [], []
    if not f.admin_ok:
        problems.append("no enabled user has the System Administrator role")
    if not f.org.ifdconfigured:
        problems.append("the deployment is not internet-facing (IFD is not configured)")
        commands.append(f.cmd(f"sss org set --ifd {f.as_admin}"))
    if not f.org.hybridconnectorinstalled:
        problems.append("the Dynamics 365 Hybrid Connector is not installed")
        commands.append(f.cmd(f"sss org set --hybrid-connector {f.as_admin}"))
    if problems:
        text = "; ".join(problems)
        return _broken(text[0].upper() + text[1:] + ".", *commands, f.cmd("sss org check"))
    return _done(f"Organization {f.org.name}; System Administrator {f.admin}; IFD configured; "
                 "Hybrid Connector installed.")


def _tenant(f: _Facts) -> _Eval:
    if not f.tenants:
        return _missing("No Office 365 tenant exists in the sandbox's identity service yet.",
                        f.cmd(f"sss tenant create --name {_shell(f.org.name)} --admin {_shell(f.tenant_admin)}"))
    tid = f.org.s2stenantid
    if tid and f.org_tenant is None:
        return _broken(f"The organization's tenant id {tid} belongs to no tenant of the identity service.",
                       f.cmd("sss tenant list"))
    t = f.org_tenant or f.tenants[0]
    return _done(f"Tenant {t.name} ({t.tenant_id}), administrator {', '.join(t.admins)}.")


def _certificate(f: _Facts) -> _Eval:
    if f.cert is not None:
        where = f" from {_display(Path(f.cert.sourcefile))}" if f.cert.sourcefile else ""
        return _done(f"{f.cert.subject}{where}.")
    if f.found_files is not None:
        pfx, cer, end = f.found_files
        return _done(f"Found {_display(pfx)} and {_display(cer)}, valid until {_day(end)}.")
    return _missing("No certificate is installed and no .pfx/.cer pair was found next to the database or in the "
                    "working folder.",
                    f.cmd(f"sss cert new --subject CN={f.server_name} --days 365 --password '<pfx password>' "
                          "--out certs"))


def _renewal(f: _Facts) -> list[str]:
    """Commands that replace the installed certificate with a new one and register it."""
    stem = f"{f.server_name}-{f.now:%Y%m%d}"
    folder = Path(f.cert.sourcefile).parent if f.cert is not None and f.cert.sourcefile else Path("certs")
    out = _display(folder)
    pfx, cer = _display(folder / f"{stem}.pfx"), _display(folder / f"{stem}.cer")
    return [
        f.cmd(f"sss cert new --subject CN={f.server_name} --days 365 --password '<pfx password>' "
              f"--out {_shell(out)} --name {_shell(stem)}"),
        _install_command(f, pfx),
        _configure_command(f, pfx, cer),
    ]


def _install_command(f: _Facts, pfx: str) -> str:
    return f.cmd(f"sss cert install --certificate-file {_shell(pfx)} --password '<pfx password>' "
                 f"--certificate-type S2STokenIssuer --service-account {_shell(f.service_account)} "
                 f"--store-find-type FindBySubjectDistinguishedName --update-crm {f.as_admin}")


def _configure_command(f: _Facts, pfx: str, cer: str) -> str:
    return f.cmd(f"sss s2s configure --root-domain-name {f.server_name} --private-key-password '<pfx password>' "
                 f"--cer-file-path {_shell(cer)} --pfx-file-path {_shell(pfx)} "
                 f"--organization-name {_shell(f.org.name)} --o365-admin-email {_shell(f.tenant_admin)} "
                 f"{f.as_admin}")


def _install(f: _Facts) -> _Eval:
    if f.cert is None:
        pfx, _cer = f.pfx_and_cer()
        return _missing("No certificate is installed as the S2S token issuer yet.", _install_command(f, pfx))
    if f.cert.notafter is not None and f.now > as_utc(f.cert.notafter):
        return _broken(f"The installed certificate {f.cert.subject} expired on {_day(f.cert.notafter)} "
                       f"(the sandbox clock says {_day(f.now)}); make a new one, install it and register it.",
                       *_renewal(f))
    if f.cert.notbefore is not None and f.now < as_utc(f.cert.notbefore):
        return _broken(f"The installed certificate {f.cert.subject} is not valid before {_minute(f.cert.notbefore)}.",
                       *_renewal(f))
    return _done(f"{f.cert.subject}, thumbprint {f.cert.thumbprint}, valid until {_day(f.cert.notafter)}, "
                 f"readable by {f.cert.serviceaccount}.")


def _check(f: _Facts, name: str) -> s2s.S2SCheck | None:
    if f.validation is None:
        return None
    return next((c for c in f.validation.checks if c.name == name), None)


def _configure(f: _Facts) -> _Eval:
    pfx, cer = f.pfx_and_cer()
    command = _configure_command(f, pfx, cer)
    if f.config is None or not f.org.s2stenantid:
        return _missing("ConfigureCrmServerSideSync has not run: the organization has no Exchange Online tenant id "
                        "(S2STenantId).", command)
    if f.cert is not None and f.config.certificatethumbprint != f.cert.thumbprint:
        return _broken(f"The installed certificate (thumbprint {f.cert.thumbprint}) is not the one "
                       f"ConfigureCrmServerSideSync registered (thumbprint {f.config.certificatethumbprint}); "
                       "run it again with the installed certificate's files.", command)
    registered = _check(f, s2s.CHECK_REGISTERED)
    if registered is not None and registered.ok is False and registered.code != "certificate_expired":
        return _broken(registered.detail, command)
    return _done(f"Tenant id {f.org.s2stenantid} stored on {f.org.name}; {f.config.serviceprincipalname} registered "
                 f"on {_day(f.config.configuredon)}.")


def _validate(f: _Facts) -> _Eval:
    v = f.validation
    if v is None:
        return _missing("Server-based authentication cannot be checked yet.", f.cmd("sss s2s validate"))
    if v.ok:
        return _done(f"All checks pass at {_minute(v.checked_at)} (sandbox time).")
    failed = v.failure
    return _broken(f"Authentication failure: {failed.detail}" if failed else "Authentication failure.",
                   f.cmd("sss s2s validate"))


def _last_test_lines(profile: EmailServerProfile) -> list[tuple[str, str, str]]:
    out = []
    for line in (profile.lasttestresponse or "").splitlines():
        name, sep, rest = line.partition(": ")
        result, _sep, response = rest.partition(": ")
        if sep:
            out.append((name, result, response))
    return out


def _stale(f: _Facts, profile: EmailServerProfile, lines: list[tuple[str, str, str]]) -> str | None:
    """Why the stored Test Connection no longer describes the profile, if it does not."""
    for name, result, response in lines:
        if name == "Exchange Online tenant id" and result == "OK" and \
                response.strip() != (profile.exchangeonlinetenantid or "").strip():
            return (f"the profile's tenant id changed since its last Test Connection "
                    f"({_minute(profile.lastteststarttime)})")
        if name == s2s.CHECK_INSTALLED and result == "OK" and f.cert is not None:
            m = _THUMBPRINT.search(response)
            if m and m.group(1) != f.cert.thumbprint:
                return (f"the installed certificate changed since the profile's last Test Connection "
                        f"({_minute(profile.lastteststarttime)})")
    return None


def _profile(f: _Facts) -> _Eval:
    p = f.profile
    if p is None:
        day = f"{f.now:%Y-%m-%d}" if f.now else "2026-01-01"
        return _missing("No email server profile exists yet.",
                        f.cmd(f"sss profile create --name {_shell(DEFAULT_PROFILE_NAME)} --process-email-from {day} "
                              f"{f.as_admin}"))
    name = _shell(p.name)
    test = f.cmd(f"sss profile test --profile {name} {f.as_admin}")
    show = f.cmd(f"sss profile show --profile {name}")
    if p.statecode != 0:
        return _broken(f"Profile {p.name} is inactive, so its mailboxes do not process mail.", show)
    org_tid = f.org.s2stenantid
    typed = (p.exchangeonlinetenantid or "").strip()
    known = {t.tenant_id: t for t in f.tenants}
    if not p.usedefaulttenantid and org_tid and typed != org_tid:
        fix = f.cmd(f"sss profile update --profile {name} --use-default-tenant-id {f.as_admin}")
        other = known.get(typed)
        whose = (f"belongs to the tenant {other.name}" if other is not None
                 else "is the id of no Office 365 tenant")
        return _broken(f"Profile {p.name} has the typed tenant id {typed or '(none)'}, which {whose}; the "
                       f"organization's tenant id (S2STenantId) is {org_tid}.", fix, test)
    if p.usedefaulttenantid and org_tid and typed != org_tid:
        fix = f.cmd(f"sss profile update --profile {name} --use-default-tenant-id {f.as_admin}")
        return _broken(f"Profile {p.name} still holds the tenant id {typed or '(none)'} although the "
                       f"organization's is now {org_tid}; save the profile again to take it over.", fix, test)
    if p.lasttestexecutionstatus is None:
        return _missing(f"Profile {p.name} is saved but Test Connection has not been run on it.", test)
    lines = _last_test_lines(p)
    stale = _stale(f, p, lines)
    if stale:
        return _missing(f"Run Test Connection on profile {p.name} again: {stale}.", test)
    if p.lasttestexecutionstatus == TestExecutionStatus.FAILURE:
        failed = next(((n, r) for n, res, r in lines if res == "FAILED"), None)
        what = f"at the {failed[0]} check: {failed[1]}" if failed else "(no check result was kept)"
        return _broken(f"Test Connection on profile {p.name} failed {what}", show, test)
    extra = " with a warning" if p.lasttestexecutionstatus == TestExecutionStatus.WARNING else ""
    return _done(f"Profile {p.name} (tenant id {typed}); Test Connection passed{extra} on "
                 f"{_minute(p.lastteststarttime)}.")


_METHODS = (("incomingemaildeliverymethod", "incoming email", IncomingMethod.SSS, IncomingMethod),
            ("outgoingemaildeliverymethod", "outgoing email", OutgoingMethod.SSS, OutgoingMethod),
            ("actdeliverymethod", "appointments, contacts and tasks", ActMethod.SSS, ActMethod))


def _method_name(enum, value: int) -> str:
    try:
        return enum(value).name.replace("_", " ").title().replace("Sss", "server-side synchronization")
    except ValueError:
        return str(value)


def _org_defaults(f: _Facts) -> _Eval:
    p = f.profile
    pname = _shell(p.name if p else DEFAULT_PROFILE_NAME)
    command = f.cmd(f"sss settings set --default-profile {pname} --incoming sss --outgoing sss --act sss "
                    f"{f.as_admin}")
    default = f.org.defaultemailserverprofileid
    if not default:
        return _missing("The organization has no default email server profile.", command)
    chosen = next((x for x in f.profiles if x.emailserverprofileid == default), None)
    if chosen is None:
        return _broken(f"The organization's default profile {default} does not exist.", command)
    wrong = [f"{label} is {_method_name(enum, getattr(f.org, attr))}" for attr, label, want, enum in _METHODS
             if getattr(f.org, attr) != want]
    if wrong:
        return _broken("The organization's default " + "; ".join(wrong) + ", not server-side synchronization.",
                       command)
    approval = {(True, True): "required for users and queues", (True, False): "required for users",
                (False, True): "required for queues", (False, False): "not required"}[
        (f.org.requireapprovalforuseremail, f.org.requireapprovalforqueueemail)]
    return _done(f"Default profile {chosen.name}; incoming, outgoing and ACT by server-side synchronization; "
                 f"approval {approval}.")


def _mailbox_settings(f: _Facts) -> _Eval:
    everyone = f.active_mailboxes()
    if not everyone:
        return _missing("The organization has no active mailbox.",
                        f.cmd(f"sss user add --name 'Alice' --email alice@{f.org_slug}.example {f.as_admin}"))
    no_profile = [m for m in everyone if not m.emailserverprofile]
    wrong = [m for m in everyone if m.emailserverprofile and (
        m.incomingemaildeliverymethod != IncomingMethod.SSS or m.outgoingemaildeliverymethod != OutgoingMethod.SSS)]
    if no_profile:
        command = f.cmd(f"sss mailbox apply-defaults {_select(no_profile, everyone)} --no-test-enable {f.as_admin}")
        return _missing(f"{_plural(len(no_profile), 'mailbox')} {'has' if len(no_profile) == 1 else 'have'} no "
                        f"email server profile: {_addresses(no_profile)}.", command)
    if wrong:
        command = f.cmd(f"sss mailbox apply-defaults {_select(wrong, everyone)} --no-test-enable {f.as_admin}")
        return _broken(f"{_plural(len(wrong), 'mailbox')} {'does' if len(wrong) == 1 else 'do'} not use "
                       f"server-side synchronization for incoming and outgoing email: {_addresses(wrong)}.", command)
    return _done(f"Every mailbox ({len(everyone)}) has a profile and uses server-side synchronization.")


def _needs_approval(f: _Facts, m: Mailbox) -> bool:
    if m.regardingobjecttypecode == "queue":
        return f.org.requireapprovalforqueueemail
    return f.org.requireapprovalforuseremail


def _approve(f: _Facts) -> _Eval:
    everyone = f.active_mailboxes()
    if not (f.org.requireapprovalforuseremail or f.org.requireapprovalforqueueemail):
        return _done("The organization does not require approval of email addresses.")
    rows = [m for m in everyone if _needs_approval(f, m)]
    pending = [m for m in rows if m.emailrouteraccessapproval != Approval.APPROVED]
    if not pending:
        return _done(f"Every address that needs approval ({len(rows)}) is approved." if rows
                     else "No mailbox needs approval.")
    command = f.cmd(f"sss mailbox approve {_select(pending, everyone)} {f.as_admin}")
    rejected = [m for m in pending if m.emailrouteraccessapproval == Approval.REJECTED]
    if rejected:
        return _broken(f"{_plural(len(rejected), 'email address')} {'was' if len(rejected) == 1 else 'were'} "
                       f"rejected: {_addresses(rejected)}; approve {'it' if len(rejected) == 1 else 'them'} "
                       "to let the mailbox process mail.", command)
    text = (f"{_plural(len(pending), 'mailbox')} {'is' if len(pending) == 1 else 'are'} not approved: "
            f"{_addresses(pending)}")
    refused = [m for m in pending if m.lastsyncerrorcode == NOT_APPROVED]
    if refused:  # Test & Enable was tried before the approval: a failure, not just a step to do
        return _broken(f"{text}; Test & Enable already failed for {_addresses(refused)} with {NOT_APPROVED}.",
                       command)
    return _missing(text + ".", command)


def _workloads(m: Mailbox) -> list[tuple[str, int, bool]]:
    out = []
    if m.incomingemaildeliverymethod == IncomingMethod.SSS:
        out.append(("incoming", m.incomingemailstatus, m.enabledforincomingemail))
    if m.outgoingemaildeliverymethod == OutgoingMethod.SSS:
        out.append(("outgoing", m.outgoingemailstatus, m.enabledforoutgoingemail))
    if m.actdeliverymethod == ActMethod.SSS and m.regardingobjecttypecode != "queue":
        out.append(("ACT", m.actstatus, m.enabledforact))
    return out


def _test_enable(f: _Facts) -> _Eval:
    everyone = f.active_mailboxes()
    rows = [m for m in everyone if m.emailserverprofile and _workloads(m)]
    if not rows:
        return _missing("No mailbox is configured for server-side synchronization yet.",
                        f.cmd(f"sss mailbox test-enable --all {f.as_admin}"))
    failed = [m for m in rows if any(status == Status.FAILURE for _w, status, _on in _workloads(m))]
    not_run = [m for m in rows if m not in failed and not all(
        status == Status.SUCCESS and on for _w, status, on in _workloads(m))]
    todo = failed + not_run
    if not todo:
        return _done(f"Every mailbox ({len(rows)}) passed Test & Enable and is enabled.")
    command = f.cmd(f"sss mailbox test-enable {_select(todo, everyone)} {f.as_admin}")
    if failed:
        parts = []
        for m in failed[:6]:
            code = m.lastsyncerrorcode or "Failure"
            off = [w for w, status, _on in _workloads(m) if status == Status.FAILURE]
            parts.append(f"{m.emailaddress} ({code}; {_and(off)} off)")
        more = f" and {len(failed) - 6} more" if len(failed) > 6 else ""
        rest = f"; {len(not_run)} more not tested yet" if not_run else ""
        return _broken(f"{_plural(len(failed), 'mailbox')} failed Test & Enable or {'was' if len(failed) == 1 else 'were'}"
                       f" disabled: {', '.join(parts)}{more}{rest}.",
                       f.cmd(f"sss mailbox show -m {_shell(failed[0].emailaddress)}"), command)
    return _missing(f"{_plural(len(not_run), 'mailbox')} {'has' if len(not_run) == 1 else 'have'} not been tested "
                    f"and enabled: {_addresses(not_run)}.", command)


_EVALUATORS = {
    "prerequisites": _prerequisites, "tenant": _tenant, "certificate": _certificate,
    "install-certificate": _install, "configure": _configure, "validate": _validate, "profile": _profile,
    "org-defaults": _org_defaults, "mailbox-settings": _mailbox_settings, "approve": _approve,
    "test-enable": _test_enable,
}


def procedure_state(db: str | Path, *, db_option: str | None = None,
                    search_dirs: list[Path] | None = None) -> list[StepState]:
    """Each setup step of SPEC section 1 as it stands in database ``db`` (a file path or SQLAlchemy URL).

    Exactly one step is the current one - the earliest that does not hold - and it is ``next``
    (not started) or ``blocked`` (a concrete problem). Later steps that hold stay ``done``; the
    others are ``todo``. ``db_option`` is added as ``--db`` to the suggested commands.
    ``search_dirs`` are where to look for certificate files before one is installed (default: the
    database's folder and the working folder). Nothing is written.
    """
    db = str(db)
    facts = _Facts(db_flag=f" --db {_shell(db_option)}" if db_option else "")
    target = _sqlite_path(db)
    if search_dirs is None:
        search_dirs = [Path.cwd()]
        if isinstance(target, Path):
            search_dirs.insert(0, target.resolve().parent)
    facts.search_dirs = list(dict.fromkeys(p.resolve() for p in search_dirs))
    engine = _read_only_engine(db)
    try:
        _gather(engine, facts)
    finally:
        if engine is not None:
            engine.dispose()

    states: list[StepState] = []
    current_found = False
    held: set[str] = set()
    for key, section, title in STEPS:
        waiting = [STEP[n] for n in STEP[key].needs if n not in held]
        if facts.org is None and key != "prerequisites":
            verdict = _Eval("missing", "Waits for the organization (step 1.1).")
        else:
            verdict = _EVALUATORS[key](facts)
        if verdict.state == "done":
            held.add(key)
        if verdict.state == "done":
            status = DONE
        elif not current_found:
            status = BLOCKED if verdict.state == "broken" else NEXT
            current_found = True
        else:
            status = TODO
            if waiting:  # what its operations declare they need, and is not done yet
                verdict.reason = "Waits for " + ", ".join(f"step {w.section} ({w.title})" for w in waiting) + "."
        states.append(StepState(key, section, title, status, PURPOSES[key], verdict.reason, verdict.detail,
                                verdict.commands))
    return states


def current_step(states: list[StepState]) -> StepState | None:
    """The step to work on (``next`` or ``blocked``); None when every step is done."""
    return next((s for s in states if s.status in (NEXT, BLOCKED)), None)


# ------------------------------------------------------------------------------ sss status

@dataclass
class MailboxCounts:
    total: int = 0
    users: int = 0
    queues: int = 0
    approved: int = 0
    pending_approval: int = 0
    rejected: int = 0
    no_profile: int = 0
    enabled: int = 0  # every workload it uses passed Test & Enable and is on
    not_tested: int = 0
    test_scheduled: int = 0  # a transient error put its Test & Enable off: the engine tests it again
    failed: int = 0  # a workload in Failure (disabled)
    retrying: int = 0  # transient errors: still on, retried after a back-off


@dataclass
class RetryingMailbox:
    emailaddress: str
    code: str
    count: int
    next_try: datetime | None
    detail: str | None


@dataclass
class StatusSummary:
    database: str
    organization: str | None
    now: datetime | None
    steps: list[StepState]
    current: StepState | None
    done: int
    mailboxes: MailboxCounts
    failed_mailboxes: list[tuple[str, str]]  # (address, error code)
    retrying_mailboxes: list[RetryingMailbox]
    errors_recent: int
    warnings_recent: int
    recent_since: datetime | None

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("now", "recent_since"):
            out[key] = out[key].isoformat() if out[key] else None
        for r in out["retrying_mailboxes"]:
            r["next_try"] = r["next_try"].isoformat() if r["next_try"] else None
        return out


def status_summary(db: str | Path, *, db_option: str | None = None) -> StatusSummary:
    """Where the procedure stands, the mailboxes by state and the recent alerts; read-only."""
    steps = procedure_state(db, db_option=db_option)
    counts = MailboxCounts()
    failed: list[tuple[str, str]] = []
    retrying: list[RetryingMailbox] = []
    errors = warnings = 0
    org_name = now = since = None
    engine = _read_only_engine(str(db))
    try:
        if engine is not None and "organization" in set(inspect(engine).get_table_names()):
            with Session(engine) as s:
                org = s.exec(select(Organization)).first()
                if org is not None:
                    org_name = org.name
                    now = s2s.load_clock(s).now()
                    since = now - RECENT
                    for m in s.exec(select(Mailbox).where(Mailbox.statecode == 0).order_by(Mailbox.emailaddress)):
                        _count(counts, m, failed, retrying)
                    levels = s.exec(select(TraceLog.level).where(TraceLog.modifiedon >= since)).all()
                    errors = sum(1 for lv in levels if lv == 3)
                    warnings = sum(1 for lv in levels if lv == 2)
    finally:
        if engine is not None:
            engine.dispose()
    current = current_step(steps)
    return StatusSummary(str(db), org_name, now, steps, current, sum(1 for s in steps if s.status == DONE), counts,
                         failed, retrying, errors, warnings, since)


def _count(c: MailboxCounts, m: Mailbox, failed: list, retrying: list) -> None:
    c.total += 1
    if m.regardingobjecttypecode == "queue":
        c.queues += 1
    else:
        c.users += 1
    approval = m.emailrouteraccessapproval
    c.approved += approval == Approval.APPROVED
    c.pending_approval += approval in (Approval.PENDING, Approval.EMPTY)
    c.rejected += approval == Approval.REJECTED
    if not m.emailserverprofile:
        c.no_profile += 1
        return
    work = _workloads(m)
    if any(status == Status.FAILURE for _w, status, _on in work):
        c.failed += 1
        failed.append((m.emailaddress, m.lastsyncerrorcode or "Failure"))
    elif work and all(status == Status.SUCCESS and on for _w, status, on in work):
        c.enabled += 1
    elif m.testemailconfigurationscheduled:
        c.test_scheduled += 1
    else:
        c.not_tested += 1
    transient = max(m.transientfailurecount, m.incomingtransientfailurecount, m.outgoingtransientfailurecount,
                    m.acttransientfailurecount)
    if transient > 0 and not any(status == Status.FAILURE for _w, status, _on in work):
        c.retrying += 1
        later = [t for t in (m.receivingpostponeduntil, m.postponesendinguntil, m.receivingpostponeduntilforact)
                 if t is not None]
        retrying.append(RetryingMailbox(m.emailaddress, m.lastsyncerrorcode or "transient error", transient,
                                        min(later) if later else None, m.lastsyncerror))


__all__ = ["BLOCKED", "DONE", "NEXT", "STEPS", "TODO", "MailboxCounts", "RetryingMailbox", "StatusSummary",
           "StepState", "current_step", "procedure_state", "status_summary"]
