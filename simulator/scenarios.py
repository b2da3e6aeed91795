"""Training scenarios: a sandbox database set up the way a learner would, then broken in a common way.

Each scenario builds a fresh CRM database through the same operations the ``sss`` setup
commands run (the S2S functions of :mod:`simulator.crm.s2s`, then the
:class:`~simulator.crm.admin.Admin` operations inside :func:`~simulator.workspace.open_workspace`,
with the loopback network services for Test Connection and Test & Enable), and then puts one
fault into it for the learner to find:

* ``expired-certificate`` - everything worked, then a year and more went by: the S2S certificate
  has expired, so every token request is refused ("Authentication failure").
* ``unapproved-mailbox`` - one user's email address was never approved although the organization
  requires approval; its Test & Enable failed.
* ``wrong-tenant-id`` - the email server profile was saved with a typed Exchange Online tenant id
  that is not the tenant's; Test Connection cannot get a token.
* ``throttled-mailbox`` - Exchange Online answers one mailbox's calls with ``ErrorServerBusy`` for
  an hour of sandbox time; the engine keeps retrying it with a back-off while the other mailboxes
  work, and the mailbox recovers by itself once the hour is over.
* ``missing-approval-privilege`` - the user who set up the mailboxes has a role without the
  privilege to approve email addresses; her approval was refused, so no mailbox is approved and
  every Test & Enable failed.
* ``act-claimed-by-another-org`` - one user's Exchange mailbox is claimed for appointments,
  contacts and tasks by another organization; that mailbox's ACT test failed.
* ``process-email-from-future`` - the profile's "process email from" date lies a year ahead, so
  nothing is tracked although every mailbox is enabled.
* ``autodiscover-off-wrong-location`` - the profile has Autodiscover off and a mistyped Exchange Web
  Services address; Test Connection fails and the mailboxes were never tested.

:func:`seed_scenario` builds one of them. ``sss walkthrough --scenario NAME --db FILE`` calls it
(through :func:`simulator.training.start`, which also records the training session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session

from engine.clock import VirtualClock
from simulator.crm import s2s
from simulator.crm.admin import AdminError
from simulator.crm.db import make_engine, sqlite_url
from simulator.crm.errors import PrivilegeError
from simulator.crm.operations import MAILBOX_ADMIN
from simulator.faults import FaultRule
from simulator.sandbox import DEFAULT_START
from simulator.workspace import SEED_KEY, open_workspace

ORG_NAME = "Contoso"
ADMIN = "admin"
ADMIN_EMAIL = "admin@contoso.example"
TENANT_ADMIN = "admin@contoso.onmicrosoft.com"
TENANT_DOMAIN = "contoso.onmicrosoft.com"
ROOT_DOMAIN = "crm.contoso.example"
SERVICE_ACCOUNT = "CONTOSO\\crmasync"
CERT_PASSWORD = "contoso-s2s"
CERT_DAYS = 365
PROFILE_NAME = "Exchange Online"
USERS = (("Alice Adams", "alice@contoso.example"), ("Bob Brown", "bob@contoso.example"))
QUEUE = ("Support", "support@contoso.example")
UNAPPROVED = "bob@contoso.example"
THROTTLED = "alice@contoso.example"
THROTTLE_BACKOFF_MS = 600_000  # ten minutes between tries: fewer than ten tries in the hour, so it is never disabled
THROTTLE_MINUTES = 60  # how long Exchange Online throttles that mailbox (sandbox time, from the rule's start)
OUTSIDER = "carl@fabrikam.example"
# missing-approval-privilege: the user who set up the mailboxes, and her role (no approval privilege)
MAILBOX_OPERATOR = ("Dana Diaz", "dana@contoso.example", "dana")
OPERATOR_ROLE = "Email Administrator"
# act-claimed-by-another-org: the mailbox and the organization that holds its ACT claim
ACT_CLAIMED = "bob@contoso.example"
OTHER_ORG_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER_ORG_CLAIM_AGE = timedelta(days=30)
# process-email-from-future: the profile's "process email from" date, a year ahead (the year mistyped)
FUTURE_PROCESS_FROM = datetime(2027, 1, 4, tzinfo=UTC)
# autodiscover-off-wrong-location: the EWS path as it was typed (the right one ends in Exchange.asmx)
EWS_PATH = "/EWS/Exchange.asmx"
MISTYPED_EWS_PATH = "/EWS/Exchange.amsx"


class ScenarioError(AdminError):
    """A scenario cannot be built (unknown name, the database file exists, ...)."""


@dataclass
class Seeded:
    """What :func:`seed_scenario` built."""

    scenario: str
    database: Path
    certificate_dir: Path
    pfx_path: Path
    cer_path: Path
    certificate_password: str
    admin: str
    tenant_admin: str
    mailboxes: list[str] = field(default_factory=list)
    # what was planted, for the training check (e.g. the expired certificate's thumbprint); not for the learner
    planted: dict[str, str] = field(default_factory=dict)


@dataclass
class _Plan:
    """How the common setup goes for one scenario (the fault is what differs)."""

    wrong_tenant_id: str | None = None  # the profile is saved with this typed tenant id
    unapproved: str | None = None  # this mailbox is never approved
    test_and_enable: bool = True
    warning_alerts: bool = False
    throttle: str | None = None  # this mailbox's EWS calls answer ErrorServerBusy
    run_minutes: int = 0  # run the engine this long at the end of the setup
    advance_days: float = 0  # then move the clock this far (outside the network session)
    run_after_minutes: int = 0  # and run the engine again this long
    operator_without_approval: bool = False  # 1.7-1.9 done by a user whose role cannot approve addresses
    act_claimed: str | None = None  # this Exchange mailbox's ACT is claimed by another organization
    process_email_from: datetime | None = None  # the profile's date (default: a day before the start)
    mistyped_location: bool = False  # Autodiscover off, a mistyped EWS address in the profile
    mail_to_queue: bool = False  # the mail of the run goes to the queue too (it tracks all email)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    story: str  # what the learner is told happened
    hint: str  # where to start looking, without the answer
    plan: _Plan


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(
        "expired-certificate", "The certificate ran out",
        "Contoso's server-side synchronization was set up a year ago and mail flowed fine. "
        "Nobody has touched the configuration since, but this morning users say that no new email "
        "is being tracked and nothing they send from the CRM goes out.",
        "Read the error alerts (sss alerts --level error) and the mailbox list. Then compare what "
        "Test Connection and the server-based authentication validation say with the sandbox's "
        "current time (sss clock show). The walkthrough shows which setup step no longer holds.",
        _Plan(run_minutes=15, advance_days=CERT_DAYS + 35, run_after_minutes=15)),
    Scenario(
        "unapproved-mailbox", "One mailbox does not sync",
        "The administrator configured every mailbox and ran Test & Enable on all of them. Alice, "
        "the administrator and the Support queue work; Bob's mailbox does not.",
        "Look at Bob's mailbox (sss mailbox show -m bob@contoso.example) and its alerts. Which "
        "organization setting decides whether a mailbox may process mail, and what does it require?",
        _Plan(unapproved=UNAPPROVED)),
    Scenario(
        "wrong-tenant-id", "Test Connection fails",
        "The administrator created the email server profile by hand, typing the Exchange Online "
        "tenant id from a note, and then configured and approved the mailboxes. Test Connection on "
        "the profile fails, so nobody has tested and enabled the mailboxes yet.",
        "Read the profile's last Test Connection (sss profile show --profile \"Exchange Online\"). "
        "Where does the profile's tenant id come from, and what does the organization itself know "
        "about its tenant (sss settings show, sss tenant list)?",
        _Plan(wrong_tenant_id="3f2504e0-4f89-41d3-9a0c-0305e82c3301", test_and_enable=False)),
    Scenario(
        "throttled-mailbox", "One mailbox is slow",
        "Everything is set up and most mail is tracked within minutes, but Alice complains that "
        "email to her takes much longer to show up in the CRM than her colleagues' does.",
        "Start with sss status and the warnings (sss alerts --level warning). Look at Alice's "
        "mailbox fields that record errors and the next run times. Is the problem on the CRM side "
        "or in Exchange Online, and will it go away by itself? Run the engine longer "
        "(sss run --minutes 60) and watch what changes. When you have your answer, sss fault list shows "
        "what this sandbox's Exchange Online was told to do.",
        _Plan(warning_alerts=True, throttle=THROTTLED, run_minutes=30)),
    Scenario(
        "missing-approval-privilege", "No mailbox processes mail",
        "Dana Diaz looks after email in Contoso's CRM; she was given an \"Email Administrator\" role for it. "
        "After the administrator had saved the email server profile, Dana applied the default email "
        "settings to every mailbox and ran Test & Enable on all of them. She remembers that one step on "
        "her list answered with an error she did not understand, so she went on with the next one. "
        "No mailbox processes any mail.",
        "Read the mailbox list and the alerts of one mailbox. Then find out who Dana is in the CRM "
        "(sss user list) and do her steps again as her (--as dana): what does the CRM answer, and what "
        "does that step need that her role does not give?",
        _Plan(operator_without_approval=True)),
    Scenario(
        "act-claimed-by-another-org", "Bob's calendar does not sync",
        "Bob Brown joined Contoso from Fabrikam, a sister company whose own CRM organization works "
        "against the same Exchange Online. His email is tracked fine, but the appointments, contacts "
        "and tasks he keeps in Contoso's CRM never show up in his mailbox.",
        "Read Bob's mailbox (sss mailbox show -m bob@contoso.example) and its alerts: which workload "
        "failed, and what does the error say about the Exchange mailbox? Then read the options of "
        "Test & Enable (sss mailbox test-enable --help).",
        _Plan(act_claimed=ACT_CLAIMED, run_minutes=15)),
    Scenario(
        "process-email-from-future", "Nothing is tracked",
        "The administrator set everything up this morning: Test Connection passed, and every mailbox "
        "is approved, tested and enabled without a single error. Mail keeps arriving in Exchange "
        "Online, but not one email has become an activity in the CRM.",
        "The engine runs (sss run --minutes 15 says what it did) and no mailbox reports an error. "
        "Compare the time the mail arrived with the profile's and the mailboxes' fields that decide "
        "which mail is too old to process (sss profile show, sss mailbox show), and with the sandbox "
        "time (sss clock show).",
        _Plan(process_email_from=FUTURE_PROCESS_FROM, run_minutes=30, mail_to_queue=True)),
    Scenario(
        "autodiscover-off-wrong-location", "Test Connection cannot reach Exchange",
        "The administrator read that Autodiscover is slow, so he saved the email server profile with "
        "Autodiscover off and typed the Exchange Web Services address for incoming and outgoing email "
        "himself. Test Connection on the profile fails, so nobody has tested and enabled the mailboxes "
        "yet.",
        "Read the profile and its last Test Connection (sss profile show --profile \"Exchange Online\"): "
        "which check failed, and which address did it use? How else can a profile find Exchange Web "
        "Services (sss profile update --help)?",
        _Plan(mistyped_location=True, test_and_enable=False)),
)}


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def _sqlite_path(db: str) -> Path:
    if "://" not in db:
        return Path(db)
    prefix = "sqlite:///"
    if not db.startswith(prefix) or db[len(prefix):] in ("", ":memory:"):
        raise ScenarioError(f"a training scenario is built in a new SQLite file; {db!r} is not one "
                            "(give a file path, e.g. --db training.db)", "db")
    return Path(db[len(prefix):])


def _prepare_file(path: Path, force: bool) -> None:
    """Remove what a new database must not find: the old file (only with ``force``) and its journals."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        extra = Path(f"{path}{suffix}")
        if extra.exists() and (force or suffix):
            extra.unlink()


def _say_nothing(_text: str) -> None:
    return None


def check_target(name: str, db: str | Path, force: bool = False) -> tuple[Scenario, Path, Path]:
    """The scenario, database file and certificate folder, or ``ScenarioError`` if they cannot be used."""
    scenario = SCENARIOS.get((name or "").strip().lower())
    if scenario is None:
        raise ScenarioError(f"{name!r} is not a scenario ({', '.join(SCENARIOS)})", "scenario")
    path = _sqlite_path(str(db)).expanduser().resolve()
    if path.is_dir():
        raise ScenarioError(f"{path} is a folder, not a database file", "db")
    if path.exists() and path.stat().st_size > 0 and not force:
        raise ScenarioError(f"{path} already exists and is not empty; choose a new file or pass --force "
                            "to replace it", "db")
    if not path.parent.is_dir():
        raise ScenarioError(f"the folder {path.parent} does not exist", "db")
    cert_dir = path.parent / f"{path.stem}-certs"
    if cert_dir.exists() and not cert_dir.is_dir():
        raise ScenarioError(f"{cert_dir} is a file; the scenario keeps its certificate files in that folder", "db")
    return scenario, path, cert_dir


async def seed_scenario(name: str, db: str | Path, *, force: bool = False, seed: int = 0,
                        say: Callable[[str], None] = _say_nothing) -> Seeded:
    """Build scenario ``name`` in a new SQLite database ``db``; its certificate files go to ``<db>-certs``.

    Refuses (``ScenarioError``) an unknown name and an existing non-empty file unless ``force``.
    ``say`` gets one line per stage of the setup."""
    scenario, path, cert_dir = check_target(name, db, force)
    _prepare_file(path, force)
    quiet = logging.getLogger("exchangelib")  # its connection-pool notices under throttling are not for learners
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return await _build(scenario, path, cert_dir, seed, say)
    except BaseException:
        for suffix in ("", "-wal", "-shm"):  # a half-built sandbox is no use to anybody
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        quiet.setLevel(level)


async def _mail_and_run(ws, minutes: int, to_queue: bool = False) -> None:
    """A message from outside to each user (and the queue), then the engine for ``minutes`` of sandbox time."""
    for fullname, email in USERS:
        ws.sb.deliver_text(OUTSIDER, [email], f"Question for {fullname.split()[0]}",
                           "Could you send me the latest price list?")
    if to_queue:
        ws.sb.deliver_text(OUTSIDER, [QUEUE[1]], "Order 1042 has not arrived", "Where is my order?")
    await ws.sb.run_until(ws.clock.now() + timedelta(minutes=minutes))


async def _build(scenario: Scenario, path: Path, cert_dir: Path, seed: int,
                 say: Callable[[str], None]) -> Seeded:
    plan = scenario.plan
    db = str(path)
    planted: dict[str, str] = {}
    engine = make_engine(sqlite_url(path))
    try:
        with Session(engine) as session:  # the sandbox's clock starts at a fixed time: same dates every run
            s2s.save_clock(session, VirtualClock(DEFAULT_START))
            s2s.write_state(session, SEED_KEY, str(seed))
            session.commit()

        # 1.1: the organization, its administrator, users and a queue
        async with open_workspace(db) as ws:
            ws.admin.create_organization(ORG_NAME, admin_name="Admin", admin_domain=ADMIN, admin_email=ADMIN_EMAIL)
            for fullname, email in USERS:
                ws.admin.add_user(fullname, email, as_user=ADMIN)
            ws.admin.add_queue(QUEUE[0], QUEUE[1], owner=ADMIN, as_user=ADMIN)
            if plan.operator_without_approval:  # every mailbox privilege but the approval one
                ws.admin.create_role(ADMIN, OPERATOR_ROLE, MAILBOX_ADMIN)
                name, email, logon = MAILBOX_OPERATOR
                ws.admin.add_user(name, email, domainname=logon, roles=[OPERATOR_ROLE], as_user=ADMIN)
        say(f"Organization {ORG_NAME} with users {', '.join(e for _, e in USERS)}, queue {QUEUE[1]} "
            f"and System Administrator {ADMIN}.")
        if plan.operator_without_approval:
            say(f"User {MAILBOX_OPERATOR[2]} ({MAILBOX_OPERATOR[1]}) added with the role {OPERATOR_ROLE}.")

        # the Office 365 side, the certificate, 1.2 and 1.3
        s2s.create_tenant(engine, ORG_NAME, [TENANT_DOMAIN], [TENANT_ADMIN])
        with Session(engine) as session:
            clock = s2s.load_clock(session)
        made = s2s.new_certificate(f"CN={ROOT_DOMAIN}", CERT_DAYS, CERT_PASSWORD, cert_dir, clock=clock,
                                   overwrite=True)  # the scenario's own two files, left by an earlier build
        s2s.install_certificate(engine, ADMIN, made.pfx_path, CERT_PASSWORD, service_account=SERVICE_ACCOUNT)
        s2s.configure_server_side_sync(engine, ADMIN, root_domain_name=ROOT_DOMAIN,
                                       private_key_password=CERT_PASSWORD, cer_file_path=made.cer_path,
                                       pfx_file_path=made.pfx_path, organization_name=ORG_NAME,
                                       o365_admin_email=TENANT_ADMIN)
        planted.update(thumbprint=made.thumbprint, certificate_expires=made.not_after.isoformat())
        say(f"Office 365 tenant for {TENANT_ADMIN}; certificate {made.pfx_path.name} installed and registered "
            "(ConfigureCrmServerSideSync).")

        # 1.5-1.9 with the network services running
        async with open_workspace(db, wire=True) as ws:
            admin = ws.admin
            start = ws.clock.now()
            fields = {"name": PROFILE_NAME,
                      "processemailsreceivedafter": plan.process_email_from or start - timedelta(days=1)}
            if plan.wrong_tenant_id:
                fields.update(usedefaulttenantid=False, exchangeonlinetenantid=plan.wrong_tenant_id)
            if plan.mistyped_location:  # this server's address as it was typed, one letter pair swapped
                typed = ws.wire.base_url + MISTYPED_EWS_PATH
                fields.update(useautodiscover=False, incomingserverlocation=typed, outgoingserverlocation=typed)
                planted["location"] = typed
            profileid = admin.create_profile(ADMIN, **fields)
            if plan.mistyped_location:
                say(f"Email server profile {PROFILE_NAME!r} saved with Autodiscover off and the EWS address {typed}.")
            else:
                test = await admin.test_connection(ADMIN, profileid)
                say(f"Email server profile {PROFILE_NAME!r} saved; Test Connection: {test.outcome}.")
            settings = {}
            if plan.warning_alerts:
                settings["generatealertsforwarnings"] = True
            admin.set_settings(ADMIN, defaultemailserverprofileid=profileid, incomingemaildeliverymethod="sss",
                               outgoingemaildeliverymethod="sss", actdeliverymethod="sss", **settings)
            operator = MAILBOX_OPERATOR[2] if plan.operator_without_approval else ADMIN
            everyone = [m.mailboxid for m in admin.mailboxes()]
            await admin.apply_default_email_settings(operator, everyone, test_and_enable=False)
            try:
                admin.approve(operator, [m.mailboxid for m in admin.mailboxes() if m.emailaddress != plan.unapproved])
            except PrivilegeError as exc:
                if not plan.operator_without_approval:
                    raise
                say(f"Default email settings applied to every mailbox by {operator}; the approval was refused: {exc}")
            else:
                say("Default email settings applied to every mailbox"
                    + (" and their addresses approved." if not plan.unapproved else "; addresses approved."))
            if plan.act_claimed:  # another organization syncs this Exchange mailbox's ACT since a month
                ws.sb.store.stamp_act_org(plan.act_claimed, OTHER_ORG_ID, start - OTHER_ORG_CLAIM_AGE)
                say(f"The Exchange mailbox {plan.act_claimed} is claimed for ACT by organization {OTHER_ORG_ID}.")
            if plan.test_and_enable:
                await admin.test_and_enable(operator, everyone)
                say(f"Test & Enable run on every mailbox{f' by {operator}' if operator != ADMIN else ''}.")
            if plan.throttle:
                rule = ws.sb.add_rule(FaultRule(code="ErrorServerBusy", mailbox=plan.throttle,
                                                backoff_ms=THROTTLE_BACKOFF_MS, start=ws.clock.now(),
                                                minutes=THROTTLE_MINUTES))
                until = ws.clock.now() + timedelta(minutes=THROTTLE_MINUTES)
                planted["throttled_until"] = until.isoformat()
                say(f"Exchange Online throttles {plan.throttle} from {rule.start} for {THROTTLE_MINUTES} minutes.")
            if plan.run_minutes:
                await _mail_and_run(ws, plan.run_minutes, plan.mail_to_queue)
                say(f"Mail delivered and the engine run for {plan.run_minutes} minutes.")
            mailboxes = [m.emailaddress for m in admin.mailboxes()]
        if plan.mistyped_location:  # tested as the learner will test it: the typed server is not there any more
            async with open_workspace(db, wire=True) as ws:
                test = await ws.admin.test_connection(ADMIN, PROFILE_NAME)
            say(f"Test Connection on {PROFILE_NAME!r}: {test.outcome}.")
        if plan.advance_days:
            now = s2s.advance_clock(engine, days=plan.advance_days)
            say(f"Time passes: the sandbox clock is now {now:%Y-%m-%d %H:%M} UTC.")
        if plan.run_after_minutes:
            async with open_workspace(db, wire=True) as ws:
                await _mail_and_run(ws, plan.run_after_minutes)
            say(f"More mail delivered and the engine run for {plan.run_after_minutes} minutes.")
    finally:
        engine.dispose()
    return Seeded(scenario.name, path, cert_dir, Path(made.pfx_path), Path(made.cer_path), CERT_PASSWORD, ADMIN,
                  TENANT_ADMIN, mailboxes, planted)
