"""What a user sees when a command cannot run: one line, no traceback, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator import cli
from simulator.cli import app


@pytest.mark.parametrize("args", [
    ["run", "--minutes", "5"],
    ["profile", "test", "--profile", "Exchange Online", "--as", "admin"],
    ["mailbox", "test-enable", "--all", "--as", "admin"],
])
def test_a_command_that_needs_exchange_on_a_database_without_an_organization(tmp_path, monkeypatch, args):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = tmp_path / "empty.db"
    result = CliRunner().invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in result.output, err
    assert "no organization" in err and "sss org init" in err
    assert not db.exists()  # nothing written, not even the file


def test_an_unexpected_error_is_one_line_and_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug deep inside")

    import simulator.scenarios
    import simulator.workspace

    monkeypatch.setattr(simulator.workspace, "open_workspace", broken)
    monkeypatch.setattr(simulator.scenarios, "open_workspace", broken)  # imported there by name
    (tmp_path / "w.db").touch()  # an empty database: a reading command goes on to open it
    monkeypatch.setattr(sys, "argv", ["sss", "fault", "list", "--db", str(tmp_path / "w.db")])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: sss failed unexpectedly (RuntimeError: a bug deep inside)") and "\n" not in err
    report = Path(err.rsplit("the full report is in ", 1)[1])
    assert report.parent == tmp_path / "home" / "reports"
    text = report.read_text()
    assert text.startswith("sss fault list --db") and "Traceback" in text and "a bug deep inside" in text


def test_fault_list_speaks_of_rules_without_python_values(tmp_path):
    db = str(tmp_path / "w.db")
    runner = CliRunner()
    assert runner.invoke(app, ["org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example",
                               "--db", db]).exit_code == 0
    assert runner.invoke(app, ["fault", "add", "--code", "ErrorServerBusy", "--db", db]).exit_code == 0
    assert runner.invoke(app, ["fault", "add", "--code", "ErrorServerBusy", "--count", "3", "--backoff-ms", "60000",
                               "--mailbox", "alice@contoso.example", "--db", db]).exit_code == 0
    out = runner.invoke(app, ["fault", "list", "--db", db]).output
    assert "None" not in out
    assert "ErrorServerBusy on any operation for every mailbox: every matching call, fired 0 time(s)" in out
    assert "for alice@contoso.example: the next 3 call(s), fired 0 time(s), probability 1.0, back-off 60000 ms" in out


def test_mailbox_list_drops_an_error_that_a_passed_test_answered(tmp_path, monkeypatch):
    """An unapproved mailbox fails Test & Enable (MailboxNotApproved); once approved and tested again,
    the list no longer shows that error as if it still stood."""
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "w.db")
    runner = CliRunner()
    seeded = runner.invoke(app, ["walkthrough", "--scenario", "unapproved-mailbox", "--db", db])
    assert seeded.exit_code == 0, seeded.output
    listed = runner.invoke(app, ["mailbox", "list", "--json", "--db", db])
    rows = {r["emailaddress"]: r for r in json.loads(listed.output)}
    failing = [a for a, r in rows.items() if r["lastsyncerrorcode"] == "MailboxNotApproved"]
    assert failing and all(rows[a]["lasterrorcurrent"] for a in failing)
    for address in failing:
        ok = runner.invoke(app, ["mailbox", "approve", "--mailbox", address, "--as", "admin", "--db", db])
        assert ok.exit_code == 0, ok.output
        ok = runner.invoke(app, ["mailbox", "test-enable", "--mailbox", address, "--as", "admin", "--db", db])
        assert ok.exit_code == 0, ok.output
    rows = {r["emailaddress"]: r for r in json.loads(runner.invoke(app, ["mailbox", "list", "--json", "--db", db]).output)}
    assert not any(rows[a]["lasterrorcurrent"] for a in failing)
    table = runner.invoke(app, ["mailbox", "list", "--db", db]).output
    assert "MailboxNotApproved" not in table


def test_adding_a_user_twice_names_the_option_the_user_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "w.db")
    runner = CliRunner()
    made = runner.invoke(app, ["org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example",
                               "--db", db])
    assert made.exit_code == 0, made.output
    add = ["user", "add", "--name", "Alice", "--email", "alice@contoso.example", "--as", "admin", "--db", db]
    assert runner.invoke(app, add).exit_code == 0
    again = runner.invoke(app, ["user", "add", "--name", "Alice B", "--email", "alice@fabrikam.example",
                                "--as", "admin", "--db", db])
    assert again.exit_code == 1
    assert again.stderr.strip() == "Error: --email: 'alice' is already a user", again.stderr
    typed = runner.invoke(app, ["user", "add", "--name", "Alice C", "--email", "ac@contoso.example",
                                "--domain", "alice", "--as", "admin", "--db", db])
    assert typed.stderr.strip() == "Error: --domain: 'alice' is already a user", typed.stderr


def test_a_read_only_database_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    """Every command writes through the same path; a database opened read-only (the SQLite URI
    mode a read-only file gets) is refused in one line, and the file is left as it was."""
    from trial import Trial, all_rows

    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    trial = Trial(f"sqlite:///{tmp_path / 'sss.db'}", tmp_path)
    trial.org_init()
    before = all_rows(trial.url)
    read_only = f"sqlite:///file:{tmp_path / 'sss.db'}?mode=ro&uri=true"
    for args in (("user", "add", "--name", "Eve", "--email", "eve@contoso.com", "--as", "admin"),
                 ("fault", "add", "--code", "ErrorServerBusy")):
        result = CliRunner().invoke(app, [*args, "--db", read_only])
        err = result.stderr.strip()
        assert result.exit_code == 1 and "\n" not in err and "Traceback" not in result.output + err, err
        assert err.startswith("Error: database: it cannot be written") and "--db" in err, err
    assert all_rows(trial.url) == before


@pytest.mark.parametrize(("args", "says"), [
    (["--days", "9999999"], "Error: --days: '9999999' is out of range (from 0 to 36600)"),
    (["--hours", "soon"], "Error: --hours: 'soon' is not a number (from 0 to 878400)"),
    (["--days", "-1"], "Error: --days: '-1' is out of range (from 0 to 36600)"),
    ([], "Error: nothing to advance: give --days, --hours or --minutes (more than 0)"),
    (["--hours", "0"], "Error: nothing to advance: give --days, --hours or --minutes (more than 0)"),
])
def test_a_clock_advance_out_of_range_names_the_option_and_leaves_the_clock(tmp_path, monkeypatch, args, says):
    """The clock advance reads its amounts through its input model (the one range check): the value
    comes back as typed, and the stored clock does not move."""
    from trial import Trial, all_rows

    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    trial = Trial(f"sqlite:///{tmp_path / 'sss.db'}", tmp_path)
    trial.org_init()
    before = all_rows(trial.url)
    result = CliRunner().invoke(app, ["clock", "advance", *args, "--db", str(tmp_path / "sss.db")])
    assert result.exit_code == 1 and result.stderr.strip() == says, result.output
    assert all_rows(trial.url) == before
    moved = CliRunner().invoke(app, ["clock", "advance", "--days", "1.5", "--db", str(tmp_path / "sss.db")])
    assert moved.exit_code == 0 and all_rows(trial.url) != before


@pytest.mark.parametrize("args", [
    ["mailbox", "list"], ["mailbox", "show", "-m", "alice@contoso.example"], ["user", "list"], ["email", "list"],
    ["fault", "list"], ["tenant", "list"], ["clock", "show"], ["alerts"], ["settings", "show"], ["profile", "show"],
    ["org", "check"], ["act", "links"], ["act", "directions"],
    ["user", "add", "--name", "Bob", "--email", "bob@contoso.example", "--as", "admin"],
    ["fault", "add", "--code", "ErrorServerBusy"], ["clock", "advance", "--hours", "1"],
    ["profile", "create", "--name", "Exchange Online", "--as", "admin"],
])
def test_a_command_that_does_not_start_a_sandbox_refuses_a_database_that_does_not_exist(tmp_path, monkeypatch,
                                                                                        args):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = tmp_path / "mistyped.db"
    result = CliRunner().invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith(f"Error: --db: {db} does not exist, so there is no organization yet: start with "
                          "sss org init") and "\n" not in err, err
    assert not db.exists()  # a typo does not leave an empty sandbox behind


@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "is a folder; give a file in it"),
    (lambda p: p.write_text("my notes"), "is not a SQLite database"),
])
def test_the_demo_refuses_a_database_path_it_must_not_replace(tmp_path, monkeypatch, make, says):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    target = tmp_path / "taken"
    make(target)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["demo", "--db", str(target), "--hours", "0.1"])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err == err.splitlines()[0] and err.startswith(f"Error: --db: {target} {says}"), err
    assert "unexpectedly" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing removed, nothing written
    if target.is_file():
        assert target.read_text() == "my notes"


def test_the_demo_refuses_a_database_in_a_folder_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    target = tmp_path / "no" / "such" / "demo.db"
    result = CliRunner().invoke(app, ["demo", "--db", str(target), "--hours", "0.1"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().startswith(f"Error: --db: {target} cannot be written ({target.parent} is not")
    assert not (tmp_path / "no").exists() and not (tmp_path / "home" / "reports").exists()


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_a_negative_seed_is_refused_naming_the_value_typed(tmp_path, command):
    result = CliRunner().invoke(app, [command, "--seed", "-5", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2, result.output
    assert f"{command}: Invalid value '-5' for '--seed':" in result.stderr, result.stderr
    assert not (tmp_path / "x.db").exists()


def test_the_demo_keeps_a_sandbox_it_did_not_make_and_replaces_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    own = tmp_path / "demo.db"
    assert runner.invoke(app, ["demo", "--db", str(own), "--hours", "0.1"]).exit_code == 0
    assert runner.invoke(app, ["demo", "--db", str(own), "--hours", "0.1"]).exit_code == 0  # its own: replaced

    precious = tmp_path / "precious.db"
    assert runner.invoke(app, ["org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example",
                               "--db", str(precious)]).exit_code == 0
    before = precious.read_bytes()
    result = runner.invoke(app, ["demo", "--db", str(precious), "--hours", "0.1"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().startswith(f"Error: --db: {precious} holds a sandbox the demo did not make")
    assert precious.read_bytes() == before

    default = tmp_path / "sss-demo.db"  # the demo's own default name: replaced even without its mark
    precious.rename(default)
    assert runner.invoke(app, ["demo", "--db", str(default), "--hours", "0.1"]).exit_code == 0


@pytest.mark.parametrize("given, says", [
    ("", "it is empty; give a SQLite file path"),
    ("{tmp}", "it is a folder; give a file in it, e.g. {tmp}/sss.db"),
    ("{tmp}/notes.txt", "it is not a SQLite database"),
])
@pytest.mark.parametrize("command", [["status"], ["mailbox", "list"], ["org", "init", "--name", "Contoso",
                                                                        "--admin-email", "admin@contoso.example"]])
def test_a_db_that_cannot_be_a_database_is_a_usage_error(tmp_path, command, given, says):
    (tmp_path / "notes.txt").write_text("my notes")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, [*command, "--db", given.format(tmp=tmp_path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and "for '--db'" in err and says.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "notes.txt").read_text() == "my notes"


def test_serve_refuses_options_that_cannot_work_before_building_anything(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = tmp_path / "serve.db"
    (tmp_path / "afile").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--info-json", str(tmp_path / "no" / "info.json")], f"--info-json: {tmp_path / 'no'} is not a folder"),
            (["--info-json", str(tmp_path)], f"--info-json: {tmp_path} is a folder"),
            (["--state-dir", str(tmp_path / "afile")], f"--state-dir: {tmp_path / 'afile'} is a file"),
            (["--http-port", str(port)], f"--http-port: {port} cannot be used on 127.0.0.1"),
            (["--smtp-port", str(port)], f"--smtp-port: {port} cannot be used on 127.0.0.1"),
        ]
        for args, says in cases:
            result = CliRunner().invoke(app, ["serve", "--virtual", "--db", str(db), *args])
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.strip().startswith(f"Error: {says}"), result.stderr
            assert not db.exists()  # refused before the organization is built


def test_mailbox_show_names_the_option_typed_for_an_empty_address(tmp_path):
    result = CliRunner().invoke(app, ["mailbox", "show", "--mailbox", " ", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: --mailbox: is empty"), result.stderr


@pytest.mark.parametrize("args", [
    ["tenant", "create", "--name", "Contoso", "--domain", "bad", "--admin", "x@contoso.onmicrosoft.com"],
    ["cert", "new", "--subject", "crm.contoso.com", "--password", "x"],
])
def test_a_refused_first_step_leaves_no_database_behind(tmp_path, monkeypatch, args):
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "new.db"
    result = CliRunner().invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == []  # no database, no -wal


def test_a_refused_first_step_keeps_a_database_another_process_wrote_into(tmp_path, monkeypatch):
    """The file a refused step started is removed only while it holds nothing a step wrote: a second
    process that created a tenant in it meanwhile keeps its tenant."""
    from simulator.crm import s2s
    from simulator.crm.db import make_engine, sqlite_url
    from simulator.crm.errors import ValidationError

    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))
    db = tmp_path / "new.db"
    real = s2s.create_tenant

    def raced(engine, *_args):
        other = make_engine(sqlite_url(db))  # the other process, on its own connection
        try:
            real(other, "Fabrikam", ["fabrikam.onmicrosoft.com"], ["admin@fabrikam.onmicrosoft.com"])
        finally:
            other.dispose()
        raise ValidationError("refused after the other process wrote", "name")

    monkeypatch.setattr(s2s, "create_tenant", raced)
    result = CliRunner().invoke(app, ["tenant", "create", "--name", "Contoso", "--domain", "contoso.onmicrosoft.com",
                                      "--admin", "admin@contoso.onmicrosoft.com", "--db", str(db)])
    assert result.exit_code == 1 and "refused after the other process wrote" in result.stderr
    monkeypatch.setattr(s2s, "create_tenant", real)
    listed = CliRunner().invoke(app, ["tenant", "list", "--db", str(db)])
    assert listed.exit_code == 0 and "Fabrikam" in listed.output, listed.output
