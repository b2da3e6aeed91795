"""Each operation is declared once (simulator/crm/operations.py, inputs.py), and every way in
reads that declaration: the same bad input is refused the same way by the Python API, the CLI and
the HTTP control plane, naming the same field as each user wrote it, and writes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from test_control_admin import ALICE, GHOST, _state, _with_api
from trial import ADMIN, check_refused

from simulator.cli import app
from simulator.crm.errors import AdminError
from simulator.crm.inputs import COMMON_FLAGS
from simulator.crm.operations import OPERATIONS, SETUP_STEPS, STEP
from simulator.procedure import TODO, procedure_state


@dataclass
class Bad:
    """One bad input of an operation, as each adapter's user writes it."""

    operation: str
    python: Any  # admin -> the call
    cli: tuple[str, ...]
    http: tuple[str, str, Any]  # method, path, JSON body
    field: str | None  # the field the refusal names (JSON key and Python field)
    says: str  # what every adapter's message says
    status: int = 400

    @property
    def option(self) -> str | None:
        if self.field is None:
            return None
        model = OPERATIONS[self.operation].model
        return model.flag(self.field) if self.field in model.model_fields else COMMON_FLAGS.get(self.field)


LONG = "x" * 101
BAD = [
    Bad("profile create", lambda a: a.create_profile(ADMIN, name="EXO", minpollingintervalinminutes=2000),
        ("profile", "create", "--name", "EXO", "--min-polling-interval", "2000"),
        ("POST", "/_sim/profiles", {"name": "EXO", "minpollingintervalinminutes": 2000}),
        "minpollingintervalinminutes", "is out of range (from 0 to 1440)"),
    Bad("profile create", lambda a: a.create_profile(ADMIN, name="EXO", maxconcurrentconnections="many"),
        ("profile", "create", "--name", "EXO", "--max-connections", "many"),
        ("POST", "/_sim/profiles", {"name": "EXO", "maxconcurrentconnections": "many"}),
        "maxconcurrentconnections", "'many' is not a whole number (from 1 to 300)"),
    Bad("profile create", lambda a: a.create_profile(ADMIN, name="EXO", processemailsreceivedafter="2026-13-45"),
        ("profile", "create", "--name", "EXO", "--process-email-from", "2026-13-45"),
        ("POST", "/_sim/profiles", {"name": "EXO", "processemailsreceivedafter": "2026-13-45"}),
        "processemailsreceivedafter", "'2026-13-45' is not a date and time"),
    Bad("profile create", lambda a: a.create_profile(ADMIN, name=LONG),
        ("profile", "create", "--name", LONG), ("POST", "/_sim/profiles", {"name": LONG}),
        "name", "is longer than 100 characters"),
    Bad("settings set", lambda a: a.set_settings(ADMIN, incomingemaildeliverymethod="carrier-pigeon"),
        ("settings", "set", "--incoming", "carrier-pigeon"),
        ("PATCH", "/_sim/settings", {"incomingemaildeliverymethod": "carrier-pigeon"}),
        "incomingemaildeliverymethod", "'carrier-pigeon' is not an option"),
    Bad("settings set", lambda a: a.set_settings(ADMIN, defaultemailserverprofileid="Nope"),
        ("settings", "set", "--default-profile", "Nope"),
        ("PATCH", "/_sim/settings", {"defaultemailserverprofileid": "Nope"}),
        "defaultemailserverprofileid", "no email server profile is named 'Nope'"),
    Bad("mailbox approve", lambda a: a.approve(ADMIN, [ALICE, GHOST]),
        ("mailbox", "approve", "--mailbox", ALICE, "--mailbox", GHOST),
        ("POST", "/_sim/mailboxes/approve", {"mailboxes": [ALICE, GHOST]}),
        "mailboxes", f"no mailbox has the address '{GHOST}'"),
    Bad("mailbox change-address", lambda a: a.change_email_address(ADMIN, ALICE, "not-an-address"),
        ("mailbox", "edit", "--mailbox", ALICE, "--email-address", "not-an-address"),
        ("PATCH", f"/_sim/mailboxes/{ALICE}", {"emailaddress": "not-an-address"}),
        "emailaddress", "'not-an-address' is not an email address"),
    Bad("mailbox edit", lambda a: a.edit_mailboxes(ADMIN, [ALICE], actdeliverymethod="telepathy"),
        ("mailbox", "edit", "--mailbox", ALICE, "--act", "telepathy"),
        ("PATCH", "/_sim/mailboxes", {"mailboxes": [ALICE], "actdeliverymethod": "telepathy"}),
        "actdeliverymethod", "'telepathy' is not an option"),
    Bad("mailbox test-enable", lambda a: a.test_and_enable(ADMIN, [ALICE], start_date="next tuesday"),
        ("mailbox", "test-enable", "--mailbox", ALICE, "--start-date", "next tuesday"),
        ("POST", "/_sim/mailboxes/test-enable", {"mailboxes": [ALICE], "start_date": "next tuesday"}),
        "start_date", "'next tuesday' is not a date and time"),
    Bad("mailbox apply-defaults", lambda a: a.apply_default_email_settings(ADMIN, [ALICE]),
        ("mailbox", "apply-defaults", "--mailbox", ALICE),
        ("POST", "/_sim/mailboxes/apply-defaults", {"mailboxes": [ALICE]}),
        "defaultemailserverprofileid", "do step 1.6 (Default profile and delivery methods) first", status=409),
]
IDS = [f"{b.operation}:{b.field}:{b.says[:20]}" for b in BAD]


def _text(exc: AdminError) -> str:
    text = str(exc)
    return text[len(exc.field) + 2:] if exc.field and text.startswith(f"{exc.field}: ") else text


def test_the_python_api_refuses_each_bad_input_naming_the_field(tmp_path):
    async def scenario(wire, _api):
        for bad in BAD:
            before = _state(wire)
            with pytest.raises(AdminError) as exc:
                result = bad.python(wire.sb.admin)
                if asyncio.iscoroutine(result):
                    await result
            assert exc.value.field == bad.field, (bad, exc.value)
            assert bad.says in _text(exc.value), (bad, exc.value)
            assert _state(wire) == before, f"{bad} wrote something"

    asyncio.run(_with_api(tmp_path, scenario))


def test_the_control_plane_refuses_each_bad_input_naming_the_json_key(tmp_path):
    async def scenario(wire, api):
        for bad in BAD:
            before = _state(wire)
            method, path, body = bad.http
            status, answer, _ = await api(method, path, body)
            assert (status, answer["field"]) == (bad.status, bad.field), (bad, answer)
            assert answer["error"] == f"{bad.field}: {answer['error'].split(': ', 1)[1]}"
            assert bad.says.replace("'", "") in answer["error"].replace("'", "").replace('"', ""), (bad, answer)
            assert _state(wire) == before, f"{bad} wrote something"

    asyncio.run(_with_api(tmp_path, scenario))


@pytest.fixture(scope="module")
def cli_org(tmp_path_factory):
    """An organization through the CLI (steps 1.1-1.3 and a user), shared by the table's rows."""
    from trial import Trial, setup_to_s2s

    tmp = tmp_path_factory.mktemp("cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("SSS_HOME", str(tmp / "home"))
    trial = setup_to_s2s(Trial(f"sqlite:///{tmp / 'sss.db'}", tmp))
    trial.ok("user", "add", "--name", "Alice", "--email", ALICE, "--as", ADMIN)
    yield trial
    mp.undo()


@pytest.mark.parametrize("bad", BAD, ids=IDS)
def test_the_cli_refuses_each_bad_input_naming_the_option_typed(cli_org, bad):
    line = check_refused(cli_org, lambda: cli_org.sss(*bad.cli, "--as", ADMIN), bad.says)
    if bad.option is not None and bad.option in bad.cli:
        assert line.startswith(f"Error: {bad.option}: "), line
    else:  # a refusal about a field the user did not type names no option
        assert not line.startswith("Error: --"), line


# -- the declarations themselves ------------------------------------------------------------------
def _cli_commands() -> set[str]:
    names: set[str] = set()

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            names.add(path)
            walk(cmd, path)

    import typer.main

    walk(typer.main.get_command(app), "")
    return names


# fields the Python API and the JSON take that the CLI fills itself (only one server type, one way of
# authenticating) or leaves to a scenario (an organization made with its tenant id)
NOT_ON_CLI = {("org init", "--tenant-id"), ("profile create", "--server-type"),
              ("profile create", "--incoming-credentials"), ("profile create", "--outgoing-credentials"),
              ("profile update", "--server-type"), ("profile update", "--incoming-credentials"),
              ("profile update", "--outgoing-credentials"), ("settings set", "--tracking-prefix"),
              ("user add-queue", "--track")}


def test_every_operation_is_a_cli_command_and_every_option_it_declares_exists():
    commands = _cli_commands()
    import typer.main

    root = typer.main.get_command(app)
    for op in OPERATIONS.values():
        words = (op.cli or op.name).split(" --")[0].split()
        assert " ".join(words) in commands, op.name
        if op.model is None:
            continue
        cmd = root
        for word in words:
            cmd = cmd.commands[word]
        typed = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        declared = {op.model.flag(f) for f in op.model.model_fields}
        # a field the command fills itself (a profile's server type, credentials) has no option
        extra = {flag for flag in declared - typed if (op.name, flag) not in NOT_ON_CLI and flag != "--mailbox"}
        assert not extra, (op.name, extra)


def test_each_step_waits_only_for_steps_before_it():
    order = [s.key for s in SETUP_STEPS]
    for step in SETUP_STEPS:
        assert step.operations, step.key
        for need in step.needs:
            assert order.index(need) < order.index(step.key), (step.key, need)


def test_the_walkthrough_says_what_a_later_step_waits_for(configured):
    states = {s.key: s for s in procedure_state(configured.url)}
    later = states["mailbox-settings"]
    assert later.status == TODO
    for need in STEP["mailbox-settings"].needs:
        assert STEP[need].title in later.reason, later.reason
