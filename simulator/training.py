"""Training sessions: a learner practises diagnosing a planted fault, then is told whether it is fixed.

``sss walkthrough --scenario NAME`` builds a training scenario (:mod:`simulator.scenarios`) and,
through :func:`start`, records a training session in the sandbox's database (the
``simulatorstate`` row :data:`TRAINING_KEY`: the scenario, whether hints are on, the sandbox time
it started, and what the scenario planted). While a session **without hints** is open, the
commands that would give the diagnosis away hold back: ``sss walkthrough`` refuses, ``sss
status`` shows only the counts the product shows, the fault rules are the trainer's (see
:func:`hidden_session`). Everything else the product shows - alerts, mailbox and profile fields,
Test Connection - is what the learner reads.

:func:`check` judges, from the database as the product left it, whether the scenario's fault is
fixed: each scenario has a rule (:data:`RULES`) made of conditions on the product's state (a
mailbox approved and tested & enabled, Test Connection passed since the session began, ...).
What does not hold yet is said without the answer: the conditions that would name the cause
(:attr:`_Condition.cause`) are said only once every symptom is gone. The explanation - what was
wrong, where it showed, what fixes it - comes with a verdict that is fixed, or when the learner
gives up; either ends the session, so the walkthrough shows its hints again.

The web console and the CLI call the same functions: :func:`start` (or :func:`start_async`
inside a running event loop), :func:`session`, :func:`hidden_session` and :func:`check`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import inspect
from sqlmodel import Session, select

from engine.clock import as_utc, parse_instant
from engine.ports import Approval, Status
from simulator.crm import s2s
from simulator.crm.errors import AdminError
from simulator.crm.models import (
    Email,
    EmailServerProfile,
    Mailbox,
    Organization,
    S2SCertificate,
    SecurityRole,
    SystemUser,
    SystemUserRoles,
    TestExecutionStatus,
    TraceLog,
)
from simulator.crm.operations import PRIVILEGE_NAMES, PRV_APPROVE
from simulator.procedure import _read_only_engine, _workloads
from simulator.scenarios import (
    ACT_CLAIMED,
    EWS_PATH,
    FUTURE_PROCESS_FROM,
    MAILBOX_OPERATOR,
    OPERATOR_ROLE,
    OTHER_ORG_ID,
    PROFILE_NAME,
    SCENARIOS,
    THROTTLE_BACKOFF_MS,
    THROTTLED,
    UNAPPROVED,
    Seeded,
    seed_scenario,
)
from simulator.workspace import database_url

TRAINING_KEY = "training"
FIXED, GAVE_UP = "fixed", "gave up"
_PROFILE = f"'{PROFILE_NAME}'"


class TrainingError(AdminError):
    """A training request that cannot be answered (no session open, an unreadable record)."""


# ------------------------------------------------------------------------------ the session record

@dataclass(frozen=True)
class Training:
    """A training session as recorded in the sandbox's database."""

    scenario: str
    hints: bool
    started_at: datetime  # sandbox time, when the scenario was ready
    planted: dict[str, str] = field(default_factory=dict)  # what the scenario planted (see Seeded.planted)
    ended_at: datetime | None = None
    outcome: str | None = None  # FIXED or GAVE_UP once ended

    @property
    def open(self) -> bool:
        return self.ended_at is None

    def to_json(self) -> str:
        data = asdict(self)
        data["started_at"] = as_utc(self.started_at).isoformat()
        data["ended_at"] = as_utc(self.ended_at).isoformat() if self.ended_at else None
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Training:
        data = json.loads(text)
        return cls(scenario=str(data["scenario"]), hints=bool(data["hints"]),
                   started_at=parse_instant(data["started_at"]),
                   planted={str(k): str(v) for k, v in (data.get("planted") or {}).items()},
                   ended_at=parse_instant(data["ended_at"]) if data.get("ended_at") else None,
                   outcome=data.get("outcome"))


def _record(db: str | Path) -> Training | None:
    """The stored training record (open or ended), read without writing; None when there is none."""
    engine = _read_only_engine(str(db))
    if engine is None:
        return None
    try:
        if "simulatorstate" not in inspect(engine).get_table_names():
            return None
        with Session(engine) as session:
            text = s2s.read_state(session, TRAINING_KEY)
    finally:
        engine.dispose()
    if text is None:
        return None
    try:
        return Training.from_json(text)
    except (ValueError, KeyError, TypeError):
        raise TrainingError(f"the training session stored in {db} cannot be read (table simulatorstate, key "
                            f"'{TRAINING_KEY}'): build the scenario again with sss walkthrough --scenario NAME "
                            "--force", "db") from None


def _write(db: str | Path, training: Training) -> None:
    from simulator.crm.db import make_engine

    engine = make_engine(database_url(str(db)))
    try:
        with Session(engine) as session:
            s2s.write_state(session, TRAINING_KEY, training.to_json())
            session.commit()
    finally:
        engine.dispose()


def session(db: str | Path) -> Training | None:
    """The open training session of database ``db`` (with or without hints); None when none is open."""
    training = _record(db)
    return training if training is not None and training.open else None


def hidden_session(db: str | Path) -> Training | None:
    """The open training session without hints, during which the diagnosis must not be shown."""
    training = session(db)
    return training if training is not None and not training.hints else None


async def start_async(name: str, db: str | Path, *, hints: bool = True, force: bool = False, seed: int = 0,
                      say: Callable[[str], None] = lambda _text: None) -> Seeded:
    """Build scenario ``name`` in a new database ``db`` and open a training session on it.

    Refuses what :func:`simulator.scenarios.seed_scenario` refuses (an unknown name, an existing
    file without ``force``) with :class:`~simulator.scenarios.ScenarioError`."""
    seeded = await seed_scenario(name, db, force=force, seed=seed, say=say)
    from simulator.crm.db import make_engine

    engine = make_engine(database_url(str(seeded.database)))
    try:
        with Session(engine) as s:
            now = s2s.load_clock(s).now()
    finally:
        engine.dispose()
    _write(seeded.database, Training(seeded.scenario, hints, now, dict(seeded.planted)))
    return seeded


def start(name: str, db: str | Path, *, hints: bool = True, force: bool = False, seed: int = 0,
          say: Callable[[str], None] = lambda _text: None) -> Seeded:
    """:func:`start_async` from code that runs no event loop (the CLI)."""
    return asyncio.run(start_async(name, db, hints=hints, force=force, seed=seed, say=say))


# ------------------------------------------------------------------------------ what the database shows

@dataclass
class _Facts:
    """The product's state a rule judges, read from the database."""

    now: datetime
    org: Organization
    profile: EmailServerProfile | None
    mailboxes: list[Mailbox]  # active ones, by address
    cert: S2SCertificate | None
    tracked_incoming: int  # incoming email activities
    alerts: dict[tuple[int, str], int]  # (level, trace code) -> alerts
    roles: dict[str, list[str]]  # logon name -> its security roles
    privileges: dict[str, set[str]]  # role name -> its privileges

    def mailbox(self, address: str) -> Mailbox | None:
        return next((m for m in self.mailboxes if m.emailaddress == address), None)

    def alert_count(self, code: str, level: int | None = None) -> int:
        return sum(n for (lv, c), n in self.alerts.items() if c == code and (level is None or lv == level))


def _gather(db: str | Path) -> _Facts:
    engine = _read_only_engine(str(db))
    if engine is None:
        raise TrainingError(f"{db} holds no sandbox", "db")
    try:
        with Session(engine) as s:
            org = s.exec(select(Organization)).first()
            if org is None:
                raise TrainingError(f"{db} holds no organization", "db")
            profiles = list(s.exec(select(EmailServerProfile).order_by(EmailServerProfile.name)))
            profile = next((p for p in profiles if p.emailserverprofileid == org.defaultemailserverprofileid),
                           profiles[0] if profiles else None)
            roles: dict[str, list[str]] = {}
            for logon, role in s.exec(select(SystemUser.domainname, SecurityRole.name).join(
                    SystemUserRoles, SystemUserRoles.systemuserid == SystemUser.systemuserid).join(
                    SecurityRole, SecurityRole.roleid == SystemUserRoles.roleid)):
                roles.setdefault(logon, []).append(role)
            alerts: dict[tuple[int, str], int] = {}
            for level, code in s.exec(select(TraceLog.level, TraceLog.tracecode)):
                alerts[(level, code)] = alerts.get((level, code), 0) + 1
            return _Facts(
                now=s2s.load_clock(s).now(), org=org, profile=profile,
                mailboxes=list(s.exec(select(Mailbox).where(Mailbox.statecode == 0).order_by(Mailbox.emailaddress))),
                cert=s.get(S2SCertificate, s2s.CERTIFICATE_TYPE),
                tracked_incoming=len(s.exec(select(Email.activityid).where(
                    Email.directioncode == False)).all()),  # noqa: E712
                alerts=alerts, roles=roles,
                privileges={r.name: {p for p in r.privileges.split(",") if p} for r in s.exec(select(SecurityRole))})
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ conditions

@dataclass(frozen=True)
class _Condition:
    holds: bool
    text: str  # what does not hold, said to the learner
    cause: bool = False  # it names the cause: said only once every symptom holds


def _enabled(m: Mailbox) -> bool:
    work = _workloads(m)
    return bool(work) and all(status == Status.SUCCESS and on for _w, status, on in work)


def _addresses(rows: list[Mailbox]) -> str:
    return ", ".join(m.emailaddress for m in rows)


def _every_mailbox_enabled(f: _Facts) -> _Condition:
    todo = [m for m in f.mailboxes if m.emailserverprofile and not _enabled(m)]
    n = len(todo)
    return _Condition(not todo, f"{n} mailbox{'' if n == 1 else 'es'} {'is' if n == 1 else 'are'} not tested and "
                                f"enabled: {_addresses(todo)}.")


def _mailbox_enabled(f: _Facts, address: str) -> _Condition:
    m = f.mailbox(address)
    return _Condition(m is not None and _enabled(m), f"{address} is not tested and enabled for every workload "
                                                     "it uses.")


def _tested_since(f: _Facts, t: Training) -> _Condition:
    p = f.profile
    ok = (p is not None and p.lasttestexecutionstatus == TestExecutionStatus.SUCCESS
          and p.lastteststarttime is not None and as_utc(p.lastteststarttime) >= as_utc(t.started_at))
    return _Condition(ok, f"Test Connection on profile {_PROFILE} has not passed since the session began.")


def _day(when: datetime | None) -> str:
    return f"{as_utc(when):%Y-%m-%d %H:%M} UTC" if when else "?"


def _alerts(f: _Facts, code: str, level: int = 3) -> str:
    n = f.alert_count(code, level)
    word = {3: "Error", 2: "Warning", 1: "Information"}[level]
    return f"{n} {word} alert{'' if n == 1 else 's'} {code}"


# ------------------------------------------------------------------------------ the rules, one per scenario

@dataclass(frozen=True)
class _Rule:
    conditions: Callable[[_Facts, Training], list[_Condition]]
    explain: Callable[[_Facts, Training], tuple[str, str, str]]  # what was wrong, where it showed, what fixes it


def _expired_certificate(f: _Facts, t: Training) -> list[_Condition]:
    old = t.planted.get("thumbprint")
    return [_tested_since(f, t), _every_mailbox_enabled(f),
            _Condition(f.cert is not None and f.cert.thumbprint != old,
                       "The S2S certificate in use is still the one the session began with.", cause=True)]


def _expired_certificate_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    old, expired = t.planted.get("thumbprint", "?"), t.planted.get("certificate_expires")
    now = (f"; now the certificate {f.cert.thumbprint}, valid until {_day(f.cert.notafter)}, is installed"
           if f.cert is not None and f.cert.thumbprint != old else "")
    return (f"The S2S certificate the CRM signs its token requests with (thumbprint {old}) expired on "
            f"{_day(parse_instant(expired)) if expired else 'its end date'}. From then on the identity service "
            f"refused every token, so nothing reached Exchange Online{now}.",
            f"{_alerts(f, 'AuthenticationFailure')}; every mailbox's workloads in Failure with lastsyncerrorcode "
            "AuthenticationFailure (sss status, sss mailbox list); the check \"certificate valid now\" of sss s2s "
            "validate and of Test Connection, against the sandbox time (sss clock show).",
            "Make a new certificate (sss cert new), install it as the S2S token issuer (sss cert install ... "
            "--update-crm), register it with the tenant (sss s2s configure), run Test Connection again (sss profile "
            f"test --profile {_PROFILE}), then test and enable every mailbox again (sss mailbox test-enable --all): "
            "the failures since the expiry had disabled them.")


def _unapproved(f: _Facts, t: Training) -> list[_Condition]:
    m = f.mailbox(UNAPPROVED)
    return [_mailbox_enabled(f, UNAPPROVED),
            _Condition(m is not None and m.emailrouteraccessapproval == Approval.APPROVED,
                       f"{UNAPPROVED} works, but its email address is still not approved.", cause=True)]


def _unapproved_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    return (f"The organization requires approval of users' email addresses (requireapprovalforuseremail), and "
            f"{UNAPPROVED}'s address was never approved. Test & Enable refuses an unapproved mailbox.",
            f"The mailbox {UNAPPROVED}: emailrouteraccessapproval Pending Approval, its workloads in Failure with "
            f"lastsyncerrorcode MailboxNotApproved (sss mailbox show -m {UNAPPROVED}); "
            f"{_alerts(f, 'MailboxNotApproved')} about it.",
            f"Approve the address as a user whose role holds {PRV_APPROVE} (sss mailbox approve --mailbox "
            f"{UNAPPROVED} --as admin), then test and enable the mailbox again (sss mailbox test-enable --mailbox "
            f"{UNAPPROVED} --as admin).")


def _wrong_tenant(f: _Facts, t: Training) -> list[_Condition]:
    p = f.profile
    right = p is not None and (p.exchangeonlinetenantid or "").strip() == (f.org.s2stenantid or "")
    return [_tested_since(f, t), _every_mailbox_enabled(f),
            _Condition(right, f"The profile {_PROFILE} does not use the organization's tenant id.", cause=True)]


def _wrong_tenant_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    wrong = SCENARIOS["wrong-tenant-id"].plan.wrong_tenant_id
    return (f"The profile {_PROFILE} was saved with a typed Exchange Online tenant id, {wrong}, which is no Office "
            f"365 tenant; the organization's own tenant id (S2STenantId, stored by ConfigureCrmServerSideSync) is "
            f"{f.org.s2stenantid}. Tokens are asked of the profile's tenant, so no token came.",
            f"The profile's fields usedefaulttenantid No and exchangeonlinetenantid {wrong}, and its last "
            f"Test Connection, which failed at the \"access token\" check (sss profile show --profile {_PROFILE}); "
            "compare sss settings show and sss tenant list.",
            f"Let the profile take the organization's tenant id (sss profile update --profile {_PROFILE} "
            f"--use-default-tenant-id --as admin), run Test Connection again (sss profile test --profile {_PROFILE} "
            "--as admin), then test and enable the mailboxes (sss mailbox test-enable --all --as admin).")


def _throttled(f: _Facts, t: Training) -> list[_Condition]:
    m = f.mailbox(THROTTLED)
    until = parse_instant(t.planted["throttled_until"]) if "throttled_until" in t.planted else t.started_at
    counts = ((m.transientfailurecount, m.incomingtransientfailurecount, m.outgoingtransientfailurecount,
               m.acttransientfailurecount) if m is not None else (1,))
    synced = (m is not None and m.lastsuccessfulsynccompletedon is not None
              and as_utc(m.lastsuccessfulsynccompletedon) >= as_utc(until))
    return [_mailbox_enabled(f, THROTTLED),
            _Condition(not any(counts), f"{THROTTLED} still has transient failures in a row "
                                        f"({m.lastsyncerrorcode if m is not None else '?'}) and is retried later."),
            _Condition(synced, f"{THROTTLED} has not completed a sync since the session began.")]


def _throttled_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    until = t.planted.get("throttled_until")
    end = _day(parse_instant(until)) if until else "?"
    return (f"Nothing in the configuration: Exchange Online throttled {THROTTLED} (ErrorServerBusy, asking for "
            f"{THROTTLE_BACKOFF_MS // 60_000} minutes of back-off) until {end}. "
            "That is a transient error: the engine keeps the mailbox enabled, waits and tries again, and it had "
            "fewer than ten failures in a row, so it was never disabled. It went away by itself.",
            f"sss status counted {THROTTLED} as retrying; its fields lastsyncerrorcode ErrorServerBusy, "
            "transientfailurecount and incomingtransientfailurecount, and the next run times "
            f"(receivingpostponeduntil) that moved on; {_alerts(f, 'ErrorServerBusy', 2)}.",
            "Nothing to change: run the engine past the end of the throttling (sss run --minutes 60); the next "
            "try succeeds and the counts go back to 0. Changing the profile or testing the mailbox again does not "
            "make Exchange Online answer sooner.")


def _missing_privilege(f: _Facts, t: Training) -> list[_Condition]:
    pending = [m for m in f.mailboxes if m.emailrouteraccessapproval != Approval.APPROVED]
    return [_every_mailbox_enabled(f),
            _Condition(not pending, f"{len(pending)} mailbox address(es) are still not approved: "
                                    f"{_addresses(pending)}.", cause=True)]


def _missing_privilege_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    name, _email, logon = MAILBOX_OPERATOR
    roles = ", ".join(f.roles.get(logon, [])) or "none"
    return (f"{name} ({logon}), who set up the mailboxes, has only the role {OPERATOR_ROLE}, which lacks the "
            f"privilege {PRV_APPROVE} ({PRIVILEGE_NAMES[PRV_APPROVE]}). Her approval was refused, so no address "
            "was approved, and Test & Enable refuses every unapproved mailbox while the organization requires "
            "approval.",
            f"Every mailbox Pending Approval with its workloads in Failure, lastsyncerrorcode MailboxNotApproved "
            f"(sss mailbox list); {_alerts(f, 'MailboxNotApproved')}; sss user list shows {logon}'s roles "
            f"({roles}); sss mailbox approve --all --as {logon} is refused naming the privilege.",
            f"Approve the addresses as a user whose role holds {PRV_APPROVE} - System Administrator does (sss "
            "mailbox approve --all --as admin) - then test and enable every mailbox again (sss mailbox "
            "test-enable --all --as admin).")


def _act_claimed(f: _Facts, t: Training) -> list[_Condition]:
    m = f.mailbox(ACT_CLAIMED)
    act = m is not None and m.actstatus == Status.SUCCESS and m.enabledforact
    return [_Condition(act, f"{ACT_CLAIMED}'s appointments, contacts and tasks (ACT) are not enabled."),
            _mailbox_enabled(f, ACT_CLAIMED)]


def _act_claimed_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    return (f"The Exchange mailbox {ACT_CLAIMED} was claimed for appointments, contacts and tasks by another "
            f"organization ({OTHER_ORG_ID}, Fabrikam's CRM). An Exchange mailbox syncs ACT with one organization "
            "at a time, so this organization's ACT test failed; email kept working.",
            f"The mailbox {ACT_CLAIMED}: actstatus Failure with ACT off, lastsyncerrorcode "
            f"ConfiguredWithAnotherOrganization, isactsyncorgflagset No (sss mailbox show -m {ACT_CLAIMED}); "
            f"{_alerts(f, 'ConfiguredWithAnotherOrganization')} about it.",
            f"Test and enable the mailbox with \"Sync items with Exchange from this org only\" (sss mailbox "
            f"test-enable --mailbox {ACT_CLAIMED} --this-org-only --as admin): this organization takes the claim "
            "over, and the other organization stops syncing that mailbox's ACT.")


def _future_date(f: _Facts, t: Training) -> list[_Condition]:
    p = f.profile
    later = [m for m in f.mailboxes if m.processemailreceivedafter is not None
             and as_utc(m.processemailreceivedafter) > as_utc(f.now)]
    profile_ok = p is not None and (p.processemailsreceivedafter is None
                                    or as_utc(p.processemailsreceivedafter) <= as_utc(f.now))
    return [_Condition(f.tracked_incoming > 0, "No email that arrived has been tracked yet."),
            _Condition(profile_ok, f"The profile {_PROFILE}'s \"process email from\" date is still after the "
                                   "sandbox time.", cause=True),
            _Condition(not later, f"{len(later)} mailbox(es) still ignore mail received before a date after the "
                                  f"sandbox time: {_addresses(later)}.", cause=True)]


def _future_date_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    return (f"The profile's \"process email from\" date (processemailsreceivedafter) was "
            f"{_day(FUTURE_PROCESS_FROM)}, a year ahead: the year was mistyped. The engine passes over mail received "
            "before that date, and Test & Enable copied the date onto each mailbox (its processemailreceivedafter), "
            "so nothing that arrived could be tracked. Nothing failed, so there was no error and no alert.",
            "No alert and no error anywhere: every mailbox enabled, the engine polling (sss run), but no email "
            f"activity (sss email list); the profile's processemailsreceivedafter (sss profile show --profile "
            f"{_PROFILE}) and each mailbox's processemailreceivedafter (sss mailbox show) later than the sandbox "
            "time (sss clock show).",
            f"Set the profile's date in the past (sss profile update --profile {_PROFILE} --process-email-from "
            "2026-01-01 --as admin), then test and enable the mailboxes again with a start date, which replaces "
            "their own date (sss mailbox test-enable --all --start-date 2026-01-05 --as admin), and run the "
            "engine (sss run --minutes 15).")


def _location_tested(p: EmailServerProfile | None) -> bool:
    """The profile finds EWS by Autodiscover, or by typed addresses that its last Test Connection used."""
    if p is None:
        return False
    request = p.lasttestrequest or ""
    if p.useautodiscover:
        return "Autodiscover for" in request
    locations = [(p.incomingserverlocation or "").strip(), (p.outgoingserverlocation or "").strip()]
    return (all(loc.lower().endswith(EWS_PATH.lower()) for loc in locations)
            and f"at {locations[0]}" in request)


def _wrong_location(f: _Facts, t: Training) -> list[_Condition]:
    return [_tested_since(f, t), _every_mailbox_enabled(f),
            _Condition(_location_tested(f.profile), f"The way profile {_PROFILE} finds Exchange Web Services is "
                                                    "not the one its last Test Connection passed with.", cause=True)]


def _wrong_location_why(f: _Facts, t: Training) -> tuple[str, str, str]:
    typed = t.planted.get("location", "?")
    return (f"The profile had Autodiscover off (useautodiscover No) and an Exchange Web Services address typed by "
            f"hand, {typed}: \"amsx\" for \"asmx\", on a server that no longer answers there. Test Connection and "
            "the engine use a typed address instead of asking Autodiscover, so they never reached Exchange.",
            f"The profile's last Test Connection, which failed at the EWS check naming that address (sss profile show "
            f"--profile {_PROFILE}); its fields useautodiscover, incomingserverlocation and outgoingserverlocation; "
            "the mailboxes never tested (sss status: not tested).",
            f"Turn Autodiscover on (sss profile update --profile {_PROFILE} --autodiscover --as admin): the "
            "sandbox's services get a new port at each start, so only Autodiscover keeps finding them. Then run "
            f"Test Connection again (sss profile test --profile {_PROFILE} --as admin) and test and enable every "
            "mailbox (sss mailbox test-enable --all --as admin).")


RULES: dict[str, _Rule] = {
    "expired-certificate": _Rule(_expired_certificate, _expired_certificate_why),
    "unapproved-mailbox": _Rule(_unapproved, _unapproved_why),
    "wrong-tenant-id": _Rule(_wrong_tenant, _wrong_tenant_why),
    "throttled-mailbox": _Rule(_throttled, _throttled_why),
    "missing-approval-privilege": _Rule(_missing_privilege, _missing_privilege_why),
    "act-claimed-by-another-org": _Rule(_act_claimed, _act_claimed_why),
    "process-email-from-future": _Rule(_future_date, _future_date_why),
    "autodiscover-off-wrong-location": _Rule(_wrong_location, _wrong_location_why),
}


# ------------------------------------------------------------------------------ the verdict

@dataclass
class Verdict:
    """Whether the scenario's fault is fixed. ``remaining`` says what does not hold yet, without the
    answer; ``explanation`` (what was wrong, where it showed, what fixes it) is filled only when
    the fault is fixed or the learner gave up. ``ended``: this check closed the session."""

    scenario: str
    fixed: bool
    remaining: list[str]
    explanation: str
    ended: bool = False
    hints: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _no_session(db: str | Path) -> TrainingError:
    ended = _record(db)
    if ended is not None:
        return TrainingError(f"the training session on {ended.scenario} in {db} ended at {_day(ended.ended_at)} "
                             f"({ended.outcome}); start a new one with sss walkthrough --scenario NAME --no-hints "
                             "--db FILE", "db")
    return TrainingError(f"no training session is open in {db}: start one with sss walkthrough --scenario NAME "
                         "--no-hints --db FILE", "db")


def check(db: str | Path, *, give_up: bool = False) -> Verdict:
    """Judge the open training session of ``db``: fixed or not, what does not hold yet, and - when
    fixed or with ``give_up`` - the explanation; either ends the session (the hints come back).

    Without an open session: :class:`TrainingError`."""
    training = session(db)
    if training is None:
        raise _no_session(db)
    rule = RULES.get(training.scenario)
    if rule is None:
        raise TrainingError(f"the training session in {db} is on {training.scenario!r}, a scenario this version "
                            "cannot judge", "db")
    facts = _gather(db)
    conditions = rule.conditions(facts, training)
    fixed = all(c.holds for c in conditions)
    symptoms = [c.text for c in conditions if not c.holds and not c.cause]
    remaining = symptoms or [c.text for c in conditions if not c.holds]
    explanation = ""
    ended = False
    if fixed or give_up:
        wrong, showed, fix = rule.explain(facts, training)
        explanation = f"What was wrong: {wrong}\nWhere it showed: {showed}\nWhat fixes it: {fix}"
        _write(db, replace(training, ended_at=facts.now, outcome=FIXED if fixed else GAVE_UP))
        ended = True
    return Verdict(training.scenario, fixed, remaining, explanation, ended, training.hints)


__all__ = ["FIXED", "GAVE_UP", "RULES", "TRAINING_KEY", "Training", "TrainingError", "Verdict", "check",
           "hidden_session", "session", "start", "start_async"]
