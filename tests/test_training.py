"""Training sessions without hints: the product shows the symptom, `sss training check` judges the fix.

Each scenario is built once per module with hints off (:func:`simulator.training.start`) and copied
for every test that changes it. A test shows that the symptom is real in what the product shows
(Test Connection, alerts, mailbox fields, status counts), that `sss training check` says "not
fixed" without giving the answer away, then fixes the fault through the CLI as a learner would and
expects "fixed" with an explanation that names the cause. While the session is open, `sss status`
and `sss walkthrough` must hold the diagnosis back and the fault rules are the trainer's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trial import all_rows, runner

from simulator import training
from simulator.cli import app
from simulator.crm.db import sqlite_url
from simulator.scenarios import (
    ACT_CLAIMED,
    MAILBOX_OPERATOR,
    OPERATOR_ROLE,
    OTHER_ORG_ID,
    SCENARIOS,
    THROTTLED,
    UNAPPROVED,
)

PROFILE = "Exchange Online"
PW = "Pa55word"
TENANT_ADMIN = "admin@contoso.onmicrosoft.com"
CARL = "carl@fabrikam.example"
SUPPORT = "support@contoso.example"


@pytest.fixture(scope="module", autouse=True)
def sandbox_home(tmp_path_factory):
    """One sandbox CA for the module's wire-mode commands."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSS_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("SSS_DB", raising=False)
        yield


class _Templates(dict):
    """Each scenario built without hints on first use, once per module."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> Path:
        seeded = training.start(name, self.folder / f"{name}.db", hints=False)
        self[name] = seeded.database
        return seeded.database


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> _Templates:
    return _Templates(tmp_path_factory.mktemp("training"))


@pytest.fixture
def scenario(templates, tmp_path):
    """A private copy of a scenario's database, its training session open."""
    def copy(name: str) -> Path:
        src = templates[name]
        dst = tmp_path / src.name
        for suffix in ("", "-wal"):
            if Path(f"{src}{suffix}").exists():
                shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
        return dst
    return copy


def sss(db: Path, *args: str, code: int = 0):
    result = runner.invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def refused_in_one_line(result) -> str:
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in result.output, result.output
    return err


def flat(text: str) -> str:
    return " ".join(text.split())


def mailboxes(db: Path) -> dict[str, dict]:
    return {r["emailaddress"]: r for r in json.loads(sss(db, "mailbox", "list", "--json").stdout)}


def mailbox(db: Path, address: str) -> dict:
    return json.loads(sss(db, "mailbox", "show", "-m", address, "--json").stdout)["mailbox"]


def not_fixed(db: Path) -> dict:
    """`sss training check`: exit 1, what does not hold yet, no answer, the session still open."""
    verdict = json.loads(sss(db, "training", "check", "--json", code=1).stdout)
    assert verdict["fixed"] is False and verdict["remaining"], verdict
    assert verdict["explanation"] == "" and verdict["ended"] is False
    assert training.session(db) is not None
    return verdict


def fixed(db: Path) -> str:
    """`sss training check`: exit 0, the explanation in three parts, the session ended, the walkthrough back."""
    result = sss(db, "training", "check")
    out = flat(result.stdout)
    assert out.startswith("Fixed:"), out
    for part in ("What was wrong:", "Where it showed:", "What fixes it:", "The training session has ended"):
        assert part in out
    assert training.session(db) is None
    assert "steps done" in sss(db, "walkthrough").stdout  # the hints are back
    return out


# ------------------------------------------------------------------------------ a session without hints

@pytest.fixture(scope="module")
def cli_seeded(tmp_path_factory):
    """`sss walkthrough --scenario unapproved-mailbox --no-hints`, as a learner starts."""
    folder = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = runner.invoke(app, ["walkthrough", "--scenario", "unapproved-mailbox", "--no-hints",
                                     "--db", "training.db"])
    assert result.exit_code == 0, result.output + result.stderr
    return folder / "training.db", result.stdout


def test_seeding_without_hints_tells_the_story_and_how_to_sign_in_only(cli_seeded):
    db, out = cli_seeded
    story = SCENARIOS["unapproved-mailbox"]
    assert flat(story.story) in flat(out)
    assert "Where to start" not in out and flat(story.hint)[:40] not in flat(out)
    assert "--as admin" in out and "crm.contoso.example.pfx" in out and "contoso-s2s" in out
    assert "sss training check --db training.db" in flat(out)
    assert "sss walkthrough --db" not in out  # closed during the session
    session = training.session(db)
    assert (session.scenario, session.hints, session.open) == ("unapproved-mailbox", False, True)
    assert session.started_at.isoformat() == "2026-01-05T08:00:00+00:00"  # the sandbox time when it was ready
    assert training.hidden_session(db) == session


def test_status_and_walkthrough_hold_back_the_diagnosis(cli_seeded):
    db, _ = cli_seeded
    before = all_rows(sqlite_url(db), create=False)
    out = flat(sss(db, "status").stdout)
    assert "3 approved, 1 pending approval" in out and "3 enabled, 1 failed" in out
    assert "Alerts in the last 24 hours (sandbox time): 2 errors, 0 warnings." in out
    for secret in ("blocked at", "1.8", "MailboxNotApproved", UNAPPROVED, "sss mailbox", "Read them"):
        assert secret not in out
    data = json.loads(sss(db, "status", "--json").stdout)
    assert data["mailboxes"]["pending_approval"] == 1 and data["errors_recent"] == 2
    assert data["training"] == {"scenario": "unapproved-mailbox", "hints": False,
                                "started_at": "2026-01-05T08:00:00+00:00"}
    assert not {"steps", "current", "failed_mailboxes", "retrying_mailboxes"} & set(data)
    for args in (("walkthrough",), ("walkthrough", "--json")):
        err = refused_in_one_line(sss(db, *args, code=1))
        assert "training session without hints" in err and "sss training check" in err
    # what the product shows still answers: the learner reads these
    assert mailbox(db, UNAPPROVED)["lastsyncerrorcode"] == "MailboxNotApproved"
    assert "MailboxNotApproved" in sss(db, "alerts", "--level", "error").stdout
    assert PROFILE in sss(db, "profile", "show").stdout and "requireapprovalforuseremail" in sss(
        db, "settings", "show").stdout
    assert all_rows(sqlite_url(db), create=False) == before  # reading wrote nothing


def test_the_fault_rules_are_the_trainers(scenario):
    db = scenario("throttled-mailbox")
    before = all_rows(sqlite_url(db), create=False)
    for args in (("fault", "list"), ("fault", "list", "--json"), ("fault", "clear"),
                 ("fault", "add", "--code", "ErrorServerBusy")):
        err = refused_in_one_line(sss(db, *args, code=1))
        assert "for the trainer" in err and "sss training check" in err
    assert all_rows(sqlite_url(db), create=False) == before  # the rule is still there, nothing added
    sss(db, "training", "check", "--give-up", code=1)
    assert "ErrorServerBusy" in sss(db, "fault", "list").stdout  # after the session: the trainer's view again


def test_check_without_a_session_is_refused(tmp_path):
    missing = tmp_path / "none.db"
    err = refused_in_one_line(sss(missing, "training", "check", code=1))
    assert "no training session is open" in err
    assert not missing.exists()
    db = tmp_path / "org.db"
    sss(db, "org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example")
    err = refused_in_one_line(sss(db, "training", "check", "--json", code=1))
    assert "no training session is open" in err and "--no-hints" in err
    assert sss(db, "walkthrough").exit_code == 0 and sss(db, "fault", "list").exit_code == 0


def test_a_bad_scenario_name_or_a_lone_no_hints_is_refused(tmp_path):
    db = tmp_path / "n.db"
    err = refused_in_one_line(sss(db, "walkthrough", "--scenario", "no-such-thing", "--no-hints", code=1))
    assert "'no-such-thing' is not a scenario" in err
    assert all(name in err for name in SCENARIOS)
    assert not db.exists()
    err = refused_in_one_line(sss(db, "walkthrough", "--no-hints", code=2))
    assert "--no-hints goes with --scenario" in err


def test_giving_up_shows_the_answer_and_ends_the_session(scenario):
    db = scenario("wrong-tenant-id")
    result = sss(db, "training", "check", "--give-up", code=1)  # still not fixed
    out = flat(result.stdout)
    assert out.startswith("Not fixed yet: wrong-tenant-id.")
    assert "What was wrong:" in out and "3f2504e0-4f89-41d3-9a0c-0305e82c3301" in out and "S2STenantId" in out
    assert "--use-default-tenant-id" in out
    assert training.session(db) is None
    assert "steps done" in sss(db, "walkthrough").stdout
    err = refused_in_one_line(sss(db, "training", "check", code=1))
    assert "ended" in err and "gave up" in err


# ------------------------------------------------------------------------------ the scenarios, fixed as a learner would

def test_expired_certificate(scenario, tmp_path):
    db = scenario("expired-certificate")
    old = training.session(db).planted["thumbprint"]
    failed = sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin", code=1)
    assert flat(failed.stderr).startswith("Authentication failure:") and "expired" in failed.stderr
    assert {r["lastsyncerrorcode"] for r in mailboxes(db).values()} == {"AuthenticationFailure"}
    assert "AuthenticationFailure" in sss(db, "alerts", "--level", "error").stdout
    verdict = not_fixed(db)
    assert verdict["remaining"][0] == f"Test Connection on profile '{PROFILE}' has not passed since the session began."
    assert not any("certificate" in line for line in verdict["remaining"])  # that would be the answer

    new = tmp_path / "new"
    sss(db, "cert", "new", "--subject", "CN=crm.contoso.example", "--password", PW, "--out", str(new),
        "--name", "crm2")
    sss(db, "cert", "install", "--certificate-file", str(new / "crm2.pfx"), "--password", PW, "--certificate-type",
        "S2STokenIssuer", "--service-account", "CONTOSO\\crmasync", "--update-crm", "--as", "admin")
    sss(db, "s2s", "configure", "--root-domain-name", "crm.contoso.example", "--private-key-password", PW,
        "--cer-file-path", str(new / "crm2.cer"), "--pfx-file-path", str(new / "crm2.pfx"), "--organization-name",
        "Contoso", "--o365-admin-email", TENANT_ADMIN, "--as", "admin")
    sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin")
    assert not_fixed(db)["remaining"] == [  # disabled by the failures since the expiry
        "4 mailboxes are not tested and enabled: admin@contoso.example, alice@contoso.example, "
        "bob@contoso.example, support@contoso.example."]
    sss(db, "mailbox", "test-enable", "--all", "--as", "admin")
    out = fixed(db)
    assert f"(thumbprint {old}) expired on 2027-01-05" in out and "AuthenticationFailure" in out


def test_unapproved_mailbox(scenario):
    db = scenario("unapproved-mailbox")
    bob = mailbox(db, UNAPPROVED)
    assert (bob["emailrouteraccessapproval"], bob["lastsyncerrorcode"]) == (2, "MailboxNotApproved")
    verdict = not_fixed(db)
    assert verdict["remaining"] == [f"{UNAPPROVED} is not tested and enabled for every workload it uses."]
    # a way round that is not the fix: approval no longer required; bob works but is still not approved
    sss(db, "settings", "set", "--no-require-approval-users", "--as", "admin")
    sss(db, "mailbox", "test-enable", "--mailbox", UNAPPROVED, "--as", "admin")
    assert not_fixed(db)["remaining"] == [f"{UNAPPROVED} works, but its email address is still not approved."]
    sss(db, "mailbox", "approve", "--mailbox", UNAPPROVED, "--as", "admin")
    out = fixed(db)
    assert "was never approved" in out and "MailboxNotApproved" in out and "requireapprovalforuseremail" in out


def test_wrong_tenant_id(scenario):
    db = scenario("wrong-tenant-id")
    failed = sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin", code=1)
    assert "3f2504e0-4f89-41d3-9a0c-0305e82c3301" in flat(failed.stdout + failed.stderr)
    assert sss(db, "status").stdout.count("4 not tested") == 1
    assert len(not_fixed(db)["remaining"]) == 2
    sss(db, "profile", "update", "--profile", PROFILE, "--use-default-tenant-id", "--as", "admin")
    assert not_fixed(db)["remaining"][0].startswith("Test Connection on profile")
    sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin")
    sss(db, "mailbox", "test-enable", "--all", "--as", "admin")
    out = fixed(db)
    assert "typed Exchange Online tenant id, 3f2504e0-4f89-41d3-9a0c-0305e82c3301" in out and "S2STenantId" in out


def test_throttled_mailbox_goes_away_by_itself(scenario):
    db = scenario("throttled-mailbox")
    data = json.loads(sss(db, "status", "--json").stdout)
    assert data["mailboxes"]["retrying"] == 1 and data["warnings_recent"] >= 1
    alice = mailbox(db, THROTTLED)
    assert alice["lastsyncerrorcode"] == "ErrorServerBusy" and alice["incomingtransientfailurecount"] >= 1
    assert alice["enabledforincomingemail"]  # transient: still enabled, retried later
    assert "ErrorServerBusy" in sss(db, "alerts", "--level", "warning").stdout
    assert f"{THROTTLED} still has transient failures in a row (ErrorServerBusy) and is retried later." in \
        not_fixed(db)["remaining"]
    sss(db, "run", "--minutes", "10")  # still inside the throttled hour
    assert not_fixed(db)["remaining"]
    sss(db, "run", "--minutes", "60")  # past it
    alice = mailbox(db, THROTTLED)
    assert alice["incomingtransientfailurecount"] == 0 and alice["enabledforincomingemail"]
    out = fixed(db)
    assert "transient error" in out and "went away by itself" in out and "Nothing to change" in out


def test_missing_approval_privilege(scenario):
    db = scenario("missing-approval-privilege")
    name, _email, logon = MAILBOX_OPERATOR
    err = refused_in_one_line(sss(db, "mailbox", "approve", "--all", "--as", logon, code=1))
    assert f"user {logon} lacks the privilege prvApproveRejectEmailAddress" in err
    rows = mailboxes(db)
    assert len(rows) == 5 and {(r["emailrouteraccessapproval"], r["lastsyncerrorcode"]) for r in rows.values()} == {
        (2, "MailboxNotApproved")}
    users = {u["domainname"]: u for u in json.loads(sss(db, "user", "list", "--json").stdout)}
    assert users[logon]["roles"] == [OPERATOR_ROLE]
    verdict = not_fixed(db)
    assert verdict["remaining"][0].startswith("5 mailboxes are not tested and enabled")
    assert not any("privilege" in line or "approv" in line for line in verdict["remaining"])
    sss(db, "mailbox", "approve", "--all", "--as", "admin")
    sss(db, "mailbox", "test-enable", "--all", "--as", "admin")
    out = fixed(db)
    assert f"{name} ({logon})" in out and OPERATOR_ROLE in out and "prvApproveRejectEmailAddress" in out


def test_act_claimed_by_another_org(scenario):
    db = scenario("act-claimed-by-another-org")
    bob = mailbox(db, ACT_CLAIMED)
    assert (bob["actstatus"], bob["enabledforact"], bob["lastsyncerrorcode"]) == (
        2, False, "ConfiguredWithAnotherOrganization")
    assert bob["enabledforincomingemail"] and bob["enabledforoutgoingemail"]  # email works
    assert "ConfiguredWithAnotherOrganization" in sss(db, "alerts", "--level", "error").stdout
    assert not_fixed(db)["remaining"][0] == (f"{ACT_CLAIMED}'s appointments, contacts and tasks (ACT) are not "
                                             "enabled.")
    sss(db, "mailbox", "test-enable", "--mailbox", ACT_CLAIMED, "--as", "admin", code=1)  # the claim stands
    not_fixed(db)
    sss(db, "mailbox", "test-enable", "--mailbox", ACT_CLAIMED, "--this-org-only", "--as", "admin")
    out = fixed(db)
    assert OTHER_ORG_ID in out and "this org only" in out and "--this-org-only" in out


def test_process_email_from_in_the_future(scenario):
    db = scenario("process-email-from-future")
    assert json.loads(sss(db, "email", "list", "--json").stdout) == []  # mail arrived, nothing tracked
    data = json.loads(sss(db, "status", "--json").stdout)
    assert data["mailboxes"]["enabled"] == 4 and data["errors_recent"] == 0 and data["warnings_recent"] == 0
    [profile] = json.loads(sss(db, "profile", "show", "--json").stdout)
    assert profile["processemailsreceivedafter"].startswith("2027-01-04")
    assert not_fixed(db)["remaining"] == ["No email that arrived has been tracked yet."]
    # the profile alone is not enough: Test & Enable copied the date onto every mailbox
    sss(db, "profile", "update", "--profile", PROFILE, "--process-email-from", "2026-01-01", "--as", "admin")
    sss(db, "mail", "deliver", "--from", CARL, "--to", SUPPORT, "--subject", "Still waiting")
    sss(db, "run", "--minutes", "15")
    assert json.loads(sss(db, "email", "list", "--json").stdout) == []
    assert not_fixed(db)["remaining"] == ["No email that arrived has been tracked yet."]
    sss(db, "mailbox", "test-enable", "--all", "--start-date", "2026-01-05", "--as", "admin")
    sss(db, "run", "--minutes", "15")
    tracked = {e["subject"] for e in json.loads(sss(db, "email", "list", "--json").stdout)}
    assert {"Order 1042 has not arrived", "Still waiting"} <= tracked
    out = fixed(db)
    assert "processemailsreceivedafter" in out and "2027-01-04" in out and "--start-date" in out


def test_autodiscover_off_and_a_wrong_location(scenario):
    db = scenario("autodiscover-off-wrong-location")
    [profile] = json.loads(sss(db, "profile", "show", "--json").stdout)
    assert profile["useautodiscover"] is False and profile["incomingserverlocation"].endswith("/EWS/Exchange.amsx")
    assert "EWS: FAILED" in profile["lasttestresponse"]
    failed = sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin", code=1)
    assert "Exchange.amsx" in flat(failed.stderr)
    assert json.loads(sss(db, "status", "--json").stdout)["mailboxes"]["not_tested"] == 4
    assert not_fixed(db)["remaining"] == [
        f"Test Connection on profile '{PROFILE}' has not passed since the session began.",
        "4 mailboxes are not tested and enabled: admin@contoso.example, alice@contoso.example, "
        "bob@contoso.example, support@contoso.example."]
    sss(db, "profile", "update", "--profile", PROFILE, "--autodiscover", "--as", "admin")
    sss(db, "profile", "test", "--profile", PROFILE, "--as", "admin")
    sss(db, "mailbox", "test-enable", "--all", "--as", "admin")
    out = fixed(db)
    assert "useautodiscover" in out and '"amsx" for "asmx"' in out and "--autodiscover" in out
