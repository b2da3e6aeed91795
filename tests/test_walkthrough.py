"""`sss walkthrough`, `sss status` and the training scenarios.

The setup procedure is driven through the CLI one command at a time, as a learner would, and
after each command :func:`simulator.procedure.procedure_state` must name the next step. Each
training scenario is built once per module and copied for every test that changes it: the
walkthrough must point at the planted problem, and fixing it the way a learner would must move
the walkthrough on. Reading the state must never write to the database.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trial import all_rows, runner

from simulator import (
    cli_walkthrough,  # noqa: F401  (registers `sss walkthrough` and `sss status`)
    training,
)
from simulator.cli import app
from simulator.crm.db import sqlite_url
from simulator.procedure import (
    BLOCKED,
    DONE,
    NEXT,
    STEPS,
    TODO,
    current_step,
    procedure_state,
    status_summary,
)
from simulator.scenarios import CERT_PASSWORD, SCENARIOS, THROTTLED, UNAPPROVED, seed_scenario

PW = "Pa55word"
TENANT_ADMIN = "admin@contoso.onmicrosoft.com"
KEYS = [key for key, _section, _title in STEPS]


@pytest.fixture(scope="module", autouse=True)
def sandbox_home(tmp_path_factory):
    """One sandbox CA for the module's wire-mode commands."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSS_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("SSS_DB", raising=False)
        yield


def sss(db: Path, *args: str, ok: bool = True):
    result = runner.invoke(app, [*args, "--db", str(db)])
    if ok:
        assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def current(db: Path):
    step = current_step(procedure_state(db))
    return (step.key, step.status) if step else None


def snapshot(db: Path) -> dict[str, list]:
    return all_rows(sqlite_url(db), create=False)


def copy_db(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


# ------------------------------------------------------------------------------ the procedure, step by step

@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The whole setup done through the CLI; the procedure state recorded after every command."""
    folder = tmp_path_factory.mktemp("walk")
    db = folder / "sss.db"
    pfx, cer = folder / "certs" / "crm.contoso.example.pfx", folder / "certs" / "crm.contoso.example.cer"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        seen = {"empty": procedure_state(db)}
        commands = {
            "org init": ("org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example"),
            "tenant create": ("tenant", "create", "--name", "Contoso", "--admin", TENANT_ADMIN),
            "cert new": ("cert", "new", "--subject", "CN=crm.contoso.example", "--password", PW,
                         "--out", str(folder / "certs")),
            "cert install": ("cert", "install", "--certificate-file", str(pfx), "--password", PW,
                             "--certificate-type", "S2STokenIssuer", "--service-account", "CONTOSO\\crmasync",
                             "--update-crm", "--as", "admin"),
            "s2s configure": ("s2s", "configure", "--root-domain-name", "crm.contoso.example",
                              "--private-key-password", PW, "--cer-file-path", str(cer), "--pfx-file-path", str(pfx),
                              "--organization-name", "Contoso", "--o365-admin-email", TENANT_ADMIN, "--as", "admin"),
            "profile create": ("profile", "create", "--name", "Exchange Online", "--process-email-from",
                               "2020-01-01", "--as", "admin"),
            "profile test": ("profile", "test", "--profile", "Exchange Online", "--as", "admin"),
            "settings set": ("settings", "set", "--default-profile", "Exchange Online", "--as", "admin"),
            "user add": ("user", "add", "--name", "Alice", "--email", "alice@contoso.example", "--as", "admin"),
            "apply-defaults": ("mailbox", "apply-defaults", "--mailbox", "admin@contoso.example",
                               "--no-test-enable", "--as", "admin"),
            "approve": ("mailbox", "approve", "--all", "--as", "admin"),
            "test-enable": ("mailbox", "test-enable", "--all", "--as", "admin"),
        }
        for label, args in commands.items():
            sss(db, *args)
            seen[label] = procedure_state(db)
    return db, seen


@pytest.mark.parametrize(("after", "expected"), [
    ("empty", ("prerequisites", NEXT)),
    ("org init", ("tenant", NEXT)),
    ("tenant create", ("certificate", NEXT)),
    ("cert new", ("install-certificate", NEXT)),
    ("cert install", ("configure", NEXT)),
    ("s2s configure", ("profile", NEXT)),
    ("profile create", ("profile", NEXT)),
    ("profile test", ("org-defaults", NEXT)),
    ("settings set", ("mailbox-settings", NEXT)),
    ("user add", ("mailbox-settings", NEXT)),
    ("apply-defaults", ("approve", NEXT)),
    ("approve", ("test-enable", NEXT)),
    ("test-enable", None),
])
def test_each_command_moves_the_walkthrough_on(walked, after, expected):
    _db, seen = walked
    states = seen[after]
    assert [s.key for s in states] == KEYS
    step = current_step(states)
    assert ((step.key, step.status) if step else None) == expected
    # exactly one current step; everything before it is done
    at = KEYS.index(expected[0]) if expected else len(KEYS)
    assert all(s.status == DONE for s in states[:at])
    assert sum(s.status in (NEXT, BLOCKED) for s in states) == (1 if expected else 0)
    for s in states[at + 1:]:
        assert s.status in (DONE, TODO)
    for s in states:
        assert s.purpose and s.title and s.section.startswith("1.")
        if s.status == NEXT:
            assert s.reason and s.commands


def test_the_next_command_carries_the_known_values(walked):
    db, seen = walked
    folder = db.parent
    first = current_step(seen["empty"])
    assert first.commands[0].startswith("sss org init")
    assert "no CRM organization" in first.reason
    assert current_step(seen["org init"]).commands == [
        f"sss tenant create --name Contoso --admin {TENANT_ADMIN}"]
    install = current_step(seen["cert new"])
    assert "certs/crm.contoso.example.pfx" in install.commands[0]  # the file the learner just made
    assert "--as admin" in install.commands[0] and "--update-crm" in install.commands[0]
    certificate = next(s for s in seen["cert new"] if s.key == "certificate")
    assert certificate.status == DONE and "crm.contoso.example.pfx" in certificate.detail
    configure = current_step(seen["cert install"]).commands[0]
    for value in ("--root-domain-name crm.contoso.example", "certs/crm.contoso.example.cer",
                  "certs/crm.contoso.example.pfx", "--organization-name Contoso",
                  f"--o365-admin-email {TENANT_ADMIN}"):
        assert value in configure
    assert str(folder) not in configure  # shown relative to the working folder it was made in
    test = current_step(seen["profile create"])
    assert "Test Connection has not been run" in test.reason
    assert test.commands == ["sss profile test --profile 'Exchange Online' --as admin"]
    assert "--default-profile 'Exchange Online'" in current_step(seen["profile test"]).commands[0]
    settings = current_step(seen["settings set"])
    assert settings.reason == "1 mailbox has no email server profile: admin@contoso.example."
    assert "--mailbox admin@contoso.example --no-test-enable" in settings.commands[0]
    approve = current_step(seen["apply-defaults"])
    assert approve.reason == "2 mailboxes are not approved: admin@contoso.example, alice@contoso.example."
    assert approve.commands == ["sss mailbox approve --all --as admin"]
    assert current_step(seen["approve"]).commands == ["sss mailbox test-enable --all --as admin"]


def test_db_option_is_added_to_commands(tmp_path):
    states = procedure_state(tmp_path / "x.db", db_option="x.db")
    assert current_step(states).commands[0].endswith(" --db x.db")


def test_a_missing_prerequisite_blocks_step_one(tmp_path):
    db = tmp_path / "sss.db"
    sss(db, "org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example", "--no-ifd")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("prerequisites", BLOCKED)
    assert "IFD is not configured" in step.reason
    assert step.commands[0] == "sss org set --ifd --as admin"


def test_an_earlier_step_that_broke_is_reported_first(walked, tmp_path):
    """Everything worked; a year later the certificate has expired: 1.2 is blocked, not 'all done'."""
    db = copy_db(walked[0], tmp_path)
    sss(db, "clock", "advance", "--days", "400")
    states = procedure_state(db)
    step = current_step(states)
    assert (step.key, step.status) == ("install-certificate", BLOCKED)
    assert "expired on" in step.reason
    assert {s.key: s.status for s in states}["test-enable"] == DONE  # still done once, but not the point


# ------------------------------------------------------------------------------ read-only, JSON, status

def test_reading_the_state_writes_nothing(walked, tmp_path):
    db = copy_db(walked[0], tmp_path)
    before, stat = snapshot(db), db.stat()
    procedure_state(db)
    status_summary(db)
    assert runner.invoke(app, ["walkthrough", "--db", str(db)]).exit_code == 0
    assert runner.invoke(app, ["status", "--db", str(db)]).exit_code == 0
    assert snapshot(db) == before
    assert (db.stat().st_mtime_ns, db.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
    missing = tmp_path / "nothing-here.db"
    assert current(missing) == ("prerequisites", NEXT)
    assert runner.invoke(app, ["status", "--db", str(missing)]).exit_code == 0
    assert not missing.exists()


def test_walkthrough_json(walked, tmp_path):
    db = copy_db(walked[0], tmp_path)
    result = sss(db, "walkthrough", "--json")
    steps = json.loads(result.stdout)
    assert isinstance(steps, list) and [s["key"] for s in steps] == KEYS
    for s in steps:
        assert set(s) == {"key", "section", "title", "status", "purpose", "reason", "detail", "commands"}
        assert s["status"] in (DONE, NEXT, BLOCKED, TODO)
        assert isinstance(s["commands"], list)
    assert all(s["status"] == DONE for s in steps)
    assert steps[3]["section"] == "1.2" and "thumbprint" in steps[3]["detail"]


def test_walkthrough_text_marks_and_command(tmp_path):
    db = tmp_path / "sss.db"
    sss(db, "org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example")
    out = sss(db, "walkthrough").stdout
    assert "1 of 11 steps done" in out
    assert "✓ 1.1  Prerequisites" in out
    assert "→ 1.1  Office 365 tenant" in out
    assert "Next: 1.1 Office 365 tenant" in out
    assert f"sss tenant create --name Contoso --admin {TENANT_ADMIN} --db {db}" in out


# ------------------------------------------------------------------------------ training scenarios

class _Built(dict):
    """Scenario databases built on first use (once per module): only the scenarios this module reads."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> Path:
        import asyncio

        seeded = asyncio.run(seed_scenario(name, self.folder / f"{name}.db"))
        assert seeded.pfx_path.is_file() and seeded.cer_path.is_file()
        self[name] = seeded.database
        return seeded.database


@pytest.fixture(scope="module")
def scenario_dbs(tmp_path_factory) -> dict[str, Path]:
    return _Built(tmp_path_factory.mktemp("scenarios"))


@pytest.fixture
def scenario(scenario_dbs, tmp_path):
    """A private copy of a scenario's database."""
    return lambda name: copy_db(scenario_dbs[name], tmp_path)


def test_expired_certificate_points_at_step_1_2(scenario, tmp_path):
    db = scenario("expired-certificate")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("install-certificate", BLOCKED)
    assert "expired on 2027-01-05" in step.reason
    assert [c.split()[1:3] for c in step.commands] == [["cert", "new"], ["cert", "install"], ["s2s", "configure"]]
    # since the expiry the engine fails to authenticate, and says so in the alerts and in sss status
    summary = status_summary(db)
    assert summary.errors_recent >= 1 and summary.mailboxes.failed >= 1
    assert {code for _address, code in summary.failed_mailboxes} == {"AuthenticationFailure"}
    assert "AuthenticationFailure" in sss(db, "alerts", "--level", "error").stdout
    # the learner's fix: a new certificate, installed and registered
    new_pfx, new_cer = tmp_path / "new" / "crm2.pfx", tmp_path / "new" / "crm2.cer"
    sss(db, "cert", "new", "--subject", "CN=crm.contoso.example", "--password", PW, "--out", str(tmp_path / "new"),
        "--name", "crm2")
    sss(db, "cert", "install", "--certificate-file", str(new_pfx), "--password", PW, "--certificate-type",
        "S2STokenIssuer", "--service-account", "CONTOSO\\crmasync", "--update-crm", "--as", "admin")
    assert current(db) == ("configure", BLOCKED)  # installed, but not the certificate registered in 1.3
    sss(db, "s2s", "configure", "--root-domain-name", "crm.contoso.example", "--private-key-password", PW,
        "--cer-file-path", str(new_cer), "--pfx-file-path", str(new_pfx), "--organization-name", "Contoso",
        "--o365-admin-email", TENANT_ADMIN, "--as", "admin")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("profile", NEXT)
    assert "certificate changed since" in step.reason
    sss(db, "profile", "test", "--profile", "Exchange Online", "--as", "admin")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("test-enable", BLOCKED)  # disabled by the failures since the expiry
    assert "AuthenticationFailure" in step.reason
    assert len(status_summary(db).failed_mailboxes) == 4  # every mailbox: hence --all
    assert step.commands[-1] == "sss mailbox test-enable --all --as admin"
    sss(db, "mailbox", "test-enable", "--all", "--as", "admin")
    assert current(db) is None


def test_unapproved_mailbox_points_at_step_1_8(scenario):
    db = scenario("unapproved-mailbox")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("approve", BLOCKED)
    assert step.reason.startswith(f"1 mailbox is not approved: {UNAPPROVED}")
    assert "MailboxNotApproved" in step.reason
    assert step.commands == [f"sss mailbox approve --mailbox {UNAPPROVED} --as admin"]
    sss(db, "mailbox", "approve", "--mailbox", UNAPPROVED, "--as", "admin")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("test-enable", BLOCKED)
    assert f"{UNAPPROVED} (MailboxNotApproved" in step.reason
    assert step.commands[-1] == f"sss mailbox test-enable --mailbox {UNAPPROVED} --as admin"
    sss(db, "mailbox", "test-enable", "--mailbox", UNAPPROVED, "--as", "admin")
    assert current(db) is None


def test_wrong_tenant_id_points_at_step_1_5(scenario):
    db = scenario("wrong-tenant-id")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("profile", BLOCKED)
    assert "is the id of no Office 365 tenant" in step.reason
    assert "S2STenantId" in step.reason
    shown = sss(db, "profile", "show", "--profile", "Exchange Online").stdout
    assert "access token: FAILED" in shown  # the stored Test Connection failed getting a token
    sss(db, "profile", "update", "--profile", "Exchange Online", "--use-default-tenant-id", "--as", "admin")
    step = current_step(procedure_state(db))
    assert (step.key, step.status) == ("profile", NEXT)
    assert "tenant id changed since" in step.reason
    sss(db, "profile", "test", "--profile", "Exchange Online", "--as", "admin")
    assert current(db) == ("test-enable", NEXT)


def test_wrong_tenant_id_also_fails_test_and_enable(scenario):
    db = scenario("wrong-tenant-id")
    result = sss(db, "mailbox", "test-enable", "--mailbox", "alice@contoso.example", "--as", "admin", ok=False)
    assert result.exit_code == 1
    shown = json.loads(sss(db, "mailbox", "show", "--mailbox", "alice@contoso.example", "--json").stdout)
    assert shown["mailbox"]["lastsyncerrorcode"] == "AuthenticationFailure"
    assert "Tenant '3f2504e0" in shown["mailbox"]["lastsyncerror"]


def test_throttled_mailbox_shows_in_status_and_alerts(scenario):
    db = scenario("throttled-mailbox")
    assert current(db) is None  # the setup itself is fine
    summary = status_summary(db)
    assert summary.mailboxes.retrying == 1
    [retrying] = summary.retrying_mailboxes
    assert (retrying.emailaddress, retrying.code) == (THROTTLED, "ErrorServerBusy")
    assert retrying.count >= 1 and retrying.next_try is not None
    assert summary.warnings_recent >= 1
    out = sss(db, "status").stdout
    assert f"retrying {THROTTLED}: ErrorServerBusy" in out
    out = sss(db, "walkthrough").stdout
    assert f"1 mailbox keeps failing with transient errors and is retried later: {THROTTLED}" in out
    assert "ErrorServerBusy" in sss(db, "alerts", "--level", "warning").stdout
    data = json.loads(sss(db, "status", "--json").stdout)
    assert data["mailboxes"]["retrying"] == 1 and data["current"] is None


def test_seeding_refuses_an_existing_database(scenario_dbs, tmp_path):
    db = copy_db(scenario_dbs["unapproved-mailbox"], tmp_path)
    before = snapshot(db)
    result = runner.invoke(app, ["walkthrough", "--scenario", "expired-certificate", "--db", str(db)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert snapshot(db) == before
    result = runner.invoke(app, ["walkthrough", "--scenario", "no-such-thing", "--db", str(tmp_path / "n.db")])
    assert result.exit_code == 1 and "expired-certificate" in result.stderr
    assert not (tmp_path / "n.db").exists()


def test_seeding_from_the_cli_prints_the_story_and_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["walkthrough", "--scenario", "unapproved-mailbox", "--db", "training.db"])
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    assert SCENARIOS["unapproved-mailbox"].hint.split(".")[0] in " ".join(out.split())
    assert CERT_PASSWORD in out and "sss walkthrough --db training.db" in out
    assert current(tmp_path / "training.db") == ("approve", BLOCKED)
    # a training session with hints: recorded for sss training check, and nothing is held back
    assert "sss training check --db training.db" in out
    session = training.session(tmp_path / "training.db")
    assert (session.scenario, session.hints) == ("unapproved-mailbox", True)
    assert "blocked at 1.8" in runner.invoke(app, ["status", "--db", "training.db"]).stdout
    listed = runner.invoke(app, ["walkthrough", "--list-scenarios"]).stdout
    assert all(name in listed for name in SCENARIOS)
