"""The `sss` commands of the setup flow from step 1.5 on, the mailbox lifecycle and the views.

Each command opens the sandbox stored in the database given by ``--db`` (see
:mod:`simulator.workspace`), runs one operation as the user given by ``--as`` and saves the
sandbox again. Commands that talk to Exchange Online (Test Connection, Test & Enable, running
the engine) start the sandbox's network services on loopback for their duration, so that the
token comes from the identity service through msal and Exchange is reached over EWS with
exchangelib. A refused operation prints one line on stderr, exits 1 and writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from simulator.cli import _as_option, _db_option, _in_sandbox, _Refused, _say, _say_next, app
from simulator.crm.errors import AdminError, ValidationError
from simulator.crm.inputs import RunInput, parse
from simulator.crm.operations import OPERATIONS

profile_app = typer.Typer(no_args_is_help=True, help="Email server profiles (setup step 1.5, 1.10).")
settings_app = typer.Typer(no_args_is_help=True, help="Organization email settings (setup step 1.6).")
mailbox_app = typer.Typer(no_args_is_help=True, help="Mailboxes (setup steps 1.7, 1.8, 1.9).")
user_app = typer.Typer(no_args_is_help=True, help="Users, queues, roles and records of the organization.")
mail_app = typer.Typer(no_args_is_help=True, help="Mail arriving in Exchange Online from outside.")
email_app = typer.Typer(no_args_is_help=True, help="Email activities of the CRM.")
fault_app = typer.Typer(no_args_is_help=True, help="Fault rules: make calls of any protocol fail or slow down "
                                                    "(kept in the database).")
app.add_typer(profile_app, name="profile")
app.add_typer(settings_app, name="settings")
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(user_app, name="user")
app.add_typer(mail_app, name="mail")
app.add_typer(email_app, name="email")
app.add_typer(fault_app, name="fault")

STATUS = {0: "Not Run", 1: "Success", 2: "Failure"}
APPROVAL = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
LEVELS = {"information": 1, "warning": 2, "error": 3}
TRACK = {"all": 0, "replies": 1, "leads-contacts-accounts": 2, "email-enabled": 3, "none": 4}
TEST_STATUS = {0: "Failure", 1: "Success", 2: "Warning"}


# ------------------------------------------------------------------------------ parsing helpers
def _given(options: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """The CRM fields of the options that were given (option name -> field name)."""
    return {field: values[opt] for opt, field in options.items() if values.get(opt) is not None}


def _typed(operation: str, values: dict[str, Any]) -> dict[str, Any]:
    """Option text as the operation's input model reads it (numbers, dates, switches); a wrong value
    is refused naming its option."""
    return parse(OPERATIONS[operation].model, values, strict=False).given()


def _mailbox_refs(ws, mailboxes: list[str], all_: bool) -> list[str]:
    if all_ and mailboxes:
        raise ValidationError("give either --mailbox or --all, not both", None)
    if all_:
        return [m.mailboxid for m in ws.admin.mailboxes()]
    if not mailboxes:
        raise ValidationError("select mailboxes with --mailbox ADDRESS (repeatable) or --all", None)
    return mailboxes


def _addresses(ws) -> dict[str, str]:
    return {m.mailboxid: m.emailaddress for m in ws.admin.mailboxes()}


def _trainer_only(db: str, command: str) -> None:
    """Refuse a trainer's command - one that shows or changes the fault a training scenario planted -
    while a training session without hints is open on ``db`` (call it inside ``_Refused``)."""
    from simulator.cli_walkthrough import _use
    from simulator.training import TrainingError, hidden_session

    training = hidden_session(db)
    if training is not None:
        raise TrainingError(f"{command} is for the trainer while a training session without hints "
                            f"({training.scenario}) is open in {db}: check your fix with sss training "
                            f"check{_use(db)} (--give-up shows the answer)")


def _mailbox_option():
    return typer.Option([], "--mailbox", "-m", metavar="ADDRESS", help="A mailbox's email address (repeatable).")


def _all_option():
    return typer.Option(False, "--all", help="Every mailbox of the organization.")


def _print_tests(results, addresses: dict[str, str]) -> bool:
    """The Test & Enable table; False when a workload failed. A workload whose test a transient
    error put off shows "Scheduled" (the engine tests it again later): not a failure, not enabled."""
    table = Table(title="Test & Enable")
    for col in ("mailbox", "incoming", "outgoing", "ACT", "error"):
        table.add_column(col, overflow="fold")
    ok = True
    for r in results:
        scheduled = getattr(r, "scheduled", {})
        by_code: dict[str, tuple[list[str], str]] = {}
        for w, e in (*r.errors.items(), *scheduled.items()):
            by_code.setdefault(e.code, ([], e.detail))[0].append(w.lower())
        errors = "; ".join(f"{code} ({', '.join(ws)}): {detail}" for code, (ws, detail) in by_code.items())
        if scheduled and r.retry_at is not None:
            errors += f"; tested again at {r.retry_at:%Y-%m-%d %H:%M} UTC (sandbox time) when the engine runs"
        ok = ok and not r.errors

        def shown(workload: str, r=r, scheduled=scheduled) -> str:
            if workload.upper() in scheduled:
                return "Scheduled"
            status = getattr(r, workload, None)
            return status.name.replace("_", " ").title() if status is not None else ""
        style = "red" if r.errors else ("yellow" if scheduled else None)
        table.add_row(addresses.get(r.mailboxid, r.mailboxid), shown("incoming"), shown("outgoing"), shown("act"),
                      errors, style=style)
    Console(highlight=False).print(table)
    return ok


# ------------------------------------------------------------------------------ users, queues, roles, records
@user_app.command("add")
def user_add(
    name: str = typer.Option(..., "--name", help="Full name."),
    email: str = typer.Option(..., "--email", help="Primary email address (its mailbox gets this address)."),
    domain: str | None = typer.Option(None, "--domain", help="Logon name; default the part before @."),
    role: list[str] = typer.Option(["Salesperson"], "--role", help="Security role (repeatable)."),
    track: str = typer.Option("replies", "--track", help=f"Which incoming email to track: {', '.join(TRACK)}."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Add a user (with a mailbox created from the organization's defaults)."""
    with _Refused("user add", derived={} if domain else {"domainname": "--email"}):
        if track not in TRACK:
            raise ValidationError(f"{track!r} is not one of {', '.join(TRACK)}", "incomingemailfilteringmethod")

        def action(ws):
            return ws.admin.add_user(name, email, domainname=domain, roles=role, track=TRACK[track],
                                     as_user=as_user)
        uid = _in_sandbox(db, action)
    _say(f"User {name} <{email.strip().lower()}> added (id {uid}); its mailbox is Pending Approval.")


@user_app.command("list")
def user_list(as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: str = _db_option()) -> None:
    """The organization's users: logon name (for --as), name, address, security roles."""
    with _Refused():
        rows = _in_sandbox(db, lambda ws: ws.admin.users())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Users")
    table.add_column("logon name (--as)", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("email", no_wrap=True)
    table.add_column("roles", overflow="fold")
    for u in rows:
        table.add_row(u["domainname"], u["fullname"], u["internalemailaddress"], ", ".join(u["roles"]) or "none",
                      style="dim" if u["isdisabled"] else None)
    Console(highlight=False).print(table)


@user_app.command("add-queue")
def queue_add(
    name: str = typer.Option(..., "--name", help="Queue name, e.g. Support."),
    email: str = typer.Option(..., "--email", help="The queue's email address."),
    owner: str = typer.Option(..., "--owner", help="The user who owns the queue (and its mailbox)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Add a queue (tracks all incoming email) with its mailbox."""
    with _Refused("user add-queue"):
        qid = _in_sandbox(db, lambda ws: ws.admin.add_queue(name, email, owner=owner, as_user=as_user))
    _say(f"Queue {name} <{email.strip().lower()}> added (id {qid}).")


@user_app.command("add-role")
def role_add(
    name: str = typer.Option(..., "--name", help="Role name."),
    privilege: list[str] = typer.Option([], "--privilege", help="A privilege (repeatable): prvReadMailbox, "
                                        "prvWriteMailbox, prvApproveRejectEmailAddress, prvConfigureEmailServerSideSync."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Create a security role from privileges."""
    with _Refused("user add-role"):
        _in_sandbox(db, lambda ws: ws.admin.create_role(as_user, name, privilege))
    _say(f"Role {name} created with {', '.join(privilege) or 'no privileges'}.")


@user_app.command("add-record")
def record_add(
    kind: str = typer.Option(..., "--kind", help="contact, account or lead."),
    name: str = typer.Option(..., "--name"),
    email: str | None = typer.Option(None, "--email"),
    db: str = _db_option(),
) -> None:
    """Add a contact, account or lead (email from it can be tracked)."""
    with _Refused("user add-record"):
        rid = _in_sandbox(db, lambda ws: ws.admin.add_record(kind, name, email))
    _say(f"{kind.capitalize()} {name} added (id {rid}).")


# ------------------------------------------------------------------------------ 1.5 profiles
def _profile_fields(**opts: Any) -> dict[str, Any]:
    """Profile fields from CLI options (None: not given), typed by the profile's input model."""
    mapping = {"name": "name", "description": "description", "use_default_tenant_id": "usedefaulttenantid",
               "tenant_id": "exchangeonlinetenantid", "autodiscover": "useautodiscover",
               "incoming_location": "incomingserverlocation", "outgoing_location": "outgoingserverlocation",
               "move_failed": "moveundeliveredemails", "send_alert_email": "sendemailalert",
               "timeout": "timeoutmailboxconnection", "owner": "ownerid",
               "min_polling_interval": "minpollingintervalinminutes", "max_connections": "maxconcurrentconnections",
               "timeout_ms": "timeoutmailboxconnectionafteramount", "process_email_from": "processemailsreceivedafter"}
    return _typed("profile create", _given(mapping, opts))


_PROFILE_HELP = {
    "description": "Description (up to 2000 characters).",
    "use_default_tenant_id": "Take the tenant id from the organization (needs step 1.3).",
    "tenant_id": "The Exchange Online tenant id, when not the default.",
    "autodiscover": "Find the EWS location with Autodiscover (recommended).",
    "incoming_location": "EWS URL for incoming email (needed without autodiscover).",
    "outgoing_location": "EWS URL for outgoing email (needed without autodiscover).",
    "process_email_from": "Process email received after this date (YYYY-MM-DD[THH:MM], UTC).",
    "min_polling_interval": "Minimum polling interval in minutes (0-1440).",
    "max_connections": "Maximum concurrent connections (1-300).",
    "move_failed": "Move failed emails to the Undeliverable folder.",
    "send_alert_email": "Email the owner when more than half of the profile's mailboxes fail within an hour.",
    "timeout": "Time out mailbox connections.",
    "timeout_ms": "Connection timeout in milliseconds (0-100000).",
    "owner": "The profile's owner (default: the user running the command).",
}


def _show_profile(view: dict[str, Any]) -> None:
    table = Table(title=f"Email server profile {view['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in view.items():
        if key in ("lasttestrequest", "lasttestresponse"):
            continue
        if key == "lasttestexecutionstatus" and value is not None:
            value = f"{value} {TEST_STATUS.get(value, '')}"
        table.add_row(key, "" if value is None else str(value))
    Console(highlight=False).print(table)
    if view.get("lasttestresponse"):
        _say("[bold]Last Test Connection[/bold]")
        for line in view["lasttestresponse"].splitlines():
            _say(f"  {line}")


_PROFILE_SWITCHES = {"use_default_tenant_id", "autodiscover", "move_failed", "send_alert_email", "timeout"}


_NUMBERS = {"min_polling_interval", "max_connections", "timeout_ms"}


def _profile_option(key: str, default: Any = None):
    """The option of a profile field (the same in create and update; update gives no defaults)."""
    flag = "--" + key.replace("_", "-")
    if key in _PROFILE_SWITCHES:
        flag = f"{flag}/--no-{flag[2:]}"
    return typer.Option(default, flag, help=_PROFILE_HELP[key], metavar="N" if key in _NUMBERS else None)


@profile_app.command("create")
def profile_create(
    name: str = typer.Option(..., "--name", help="Profile name (up to 100 characters, unique)."),
    description: str | None = _profile_option("description"),
    use_default_tenant_id: bool | None = _profile_option("use_default_tenant_id"),
    tenant_id: str | None = _profile_option("tenant_id"),
    autodiscover: bool = _profile_option("autodiscover", True),
    incoming_location: str | None = _profile_option("incoming_location"),
    outgoing_location: str | None = _profile_option("outgoing_location"),
    process_email_from: str | None = _profile_option("process_email_from"),
    min_polling_interval: str | None = _profile_option("min_polling_interval"),
    max_connections: str | None = _profile_option("max_connections"),
    move_failed: bool = _profile_option("move_failed", False),
    send_alert_email: bool = _profile_option("send_alert_email", False),
    timeout: bool = _profile_option("timeout", True),
    timeout_ms: str | None = _profile_option("timeout_ms"),
    owner: str | None = _profile_option("owner"),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Create an Exchange Online (Hybrid) email server profile (server-to-server authentication)."""
    # the default tenant id is the default: when the organization has none yet, the user typed no option
    with _Refused("profile create", derived={} if use_default_tenant_id is not None else {"usedefaulttenantid": None}):
        fields = _profile_fields(**{k: v for k, v in locals().items() if k not in ("as_user", "db")})

        def action(ws):
            pid = ws.admin.create_profile(as_user, **fields)
            return ws.admin.profile(pid)
        view = _in_sandbox(db, action)
    _say(f"[green]Profile {view['name']} saved[/green] (id {view['emailserverprofileid']}, tenant id "
          f"{view['exchangeonlinetenantid']}, owner {view['owner']}).")
    _say_next(db)


@profile_app.command("update")
def profile_update(
    profile: str = typer.Option(..., "--profile", help="The profile's name or id."),
    name: str | None = typer.Option(None, "--name", help="A new name."),
    description: str | None = _profile_option("description"),
    use_default_tenant_id: bool | None = _profile_option("use_default_tenant_id"),
    tenant_id: str | None = _profile_option("tenant_id"),
    autodiscover: bool | None = _profile_option("autodiscover"),
    incoming_location: str | None = _profile_option("incoming_location"),
    outgoing_location: str | None = _profile_option("outgoing_location"),
    process_email_from: str | None = _profile_option("process_email_from"),
    min_polling_interval: str | None = _profile_option("min_polling_interval"),
    max_connections: str | None = _profile_option("max_connections"),
    move_failed: bool | None = _profile_option("move_failed"),
    send_alert_email: bool | None = _profile_option("send_alert_email"),
    timeout: bool | None = _profile_option("timeout"),
    timeout_ms: str | None = _profile_option("timeout_ms"),
    owner: str | None = _profile_option("owner"),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Change fields of an email server profile (the whole profile is checked again)."""
    with _Refused("profile update"):
        fields = _profile_fields(**{k: v for k, v in locals().items() if k not in ("as_user", "db", "profile")})
        if not fields:
            raise ValidationError("nothing to change: give at least one field option", None)

        def action(ws):
            pid = ws.admin.profile_id(profile)
            ws.admin.update_profile(as_user, pid, **fields)
            return ws.admin.profile(pid)
        view = _in_sandbox(db, action)
    _say(f"[green]Profile {view['name']} updated[/green]: {', '.join(sorted(fields))}.")


@profile_app.command("show")
def profile_show(
    profile: str | None = typer.Option(None, "--profile", help="The profile's name or id (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    db: str = _db_option(),
) -> None:
    """Every field of a profile, with its last Test Connection."""
    with _Refused("profile update"):
        views = _in_sandbox(db, lambda ws: [ws.admin.profile(profile)] if profile else ws.admin.profiles())
    if as_json:
        typer.echo(json.dumps(views, indent=2, default=str))
        return
    if not views:
        _say("No email server profile yet. Create one: sss profile create --name ... --as <admin>")
    for view in views:
        _show_profile(view)


@profile_app.command("test")
def profile_test(
    profile: str = typer.Option(..., "--profile", help="The profile's name or id."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Test Connection: tenant id, certificate, token and EWS; exits 1 when a check fails."""
    with _Refused("profile test"):
        result = _in_sandbox(db, lambda ws: ws.admin.test_connection(as_user, profile), wire=True)
    table = Table(title=f"Test Connection at {result.started:%Y-%m-%d %H:%M:%S} UTC (sandbox time)")
    for col in ("check", "result", "response"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        mark = "[green]OK[/green]" if c.ok else ("[red]FAILED[/red]" if c.ok is False else "[dim]not run[/dim]")
        table.add_row(c.name, mark, c.response)
    Console(highlight=False).print(table)
    if result.ok:
        _say("[green]Success.[/green]")
        _say_next(db)
        return
    failed = next((c for c in result.checks if c.ok is False), None)
    typer.echo(f"{result.outcome}: {failed.response if failed else 'a check did not run'}", err=True)
    raise typer.Exit(1)


@profile_app.command("test-enable")
def profile_test_enable(
    profile: str = typer.Option(..., "--profile", help="The profile's name or id."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Run the job now and show its progress "
                              "(--no-wait leaves it waiting for `sss jobs --run` or `sss run`)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.10: test and enable every mailbox of a profile, as a background job."""
    with _Refused("profile test-enable"):
        async def action(ws):
            jobid = ws.admin.start_profile_test_and_enable(as_user, profile)
            if not wait:
                return ws.admin.job(jobid)
            with Progress(TextColumn("[bold]testing mailboxes"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"), transient=True) as bar:
                task = bar.add_task("", total=None)
                return await ws.admin.run_job(jobid, lambda done, total: bar.update(
                    task, completed=done, total=total))
        job = _in_sandbox(db, action, wire=wait)
    _print_job(job)


def _print_job(job: dict[str, Any]) -> None:
    result = job.get("result") or {}
    _say(f"Job {job['asyncoperationid']}: {job['name']} - {job['state']}, {job['progress']}% "
         f"({result.get('done', 0)}/{result.get('total', '?')} mailboxes, {result.get('failed', 0)} failed)")
    for m in result.get("mailboxes", []):
        if m["errors"]:
            _say(f"  [red]{m['emailaddress']}[/red]: " + ", ".join(f"{w.lower()} {c}" for w, c in m["errors"].items()))
        elif m.get("retry_scheduled"):
            _say(f"  [yellow]{m['emailaddress']}[/yellow]: tested again at {m['retry_at']} ("
                 + ", ".join(f"{w.lower()} {c}" for w, c in m["scheduled"].items()) + ")")


@app.command("jobs")
def jobs(
    run: bool = typer.Option(False, "--run", help="Run the waiting jobs now."),
    job: str | None = typer.Option(None, "--job", help="Show one job with every mailbox's result."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    db: str = _db_option(),
) -> None:
    """Async jobs (asyncoperation): state, progress and results."""
    with _Refused():
        async def action(ws):
            if run:
                for jobid in ws.admin.waiting_jobs():
                    await ws.admin.run_job(jobid)
            return [ws.admin.job(job)] if job else ws.admin.jobs()
        views = _in_sandbox(db, action, wire=run)
    if as_json:
        typer.echo(json.dumps(views, indent=2, default=str))
        return
    if not views:
        _say("No jobs.")
    for view in views:
        _print_job(view)
        if job:
            for m in (view.get("result") or {}).get("mailboxes", []):
                _say(f"  {m['emailaddress']}: {'ok' if m['ok'] else 'failed'} "
                     + " ".join(f"{k}={m[k]}" for k in ("incoming", "outgoing", "act") if k in m))


# ------------------------------------------------------------------------------ 1.6 settings
@settings_app.command("show")
def settings_show(as_json: bool = typer.Option(False, "--json"), db: str = _db_option()) -> None:
    """The organization's email settings."""
    with _Refused():
        view = _in_sandbox(db, lambda ws: ws.admin.settings())
    if as_json:
        typer.echo(json.dumps(view, indent=2, default=str))
        return
    table = Table(title=f"Email settings of {view['name']}", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in view.items():
        table.add_row(key, "" if value is None else str(value))
    Console(highlight=False).print(table)


METHOD_OPTIONS = {"incoming": "incomingemaildeliverymethod", "outgoing": "outgoingemaildeliverymethod",
                  "act": "actdeliverymethod"}
_METHOD_HELP = {"incoming": "Incoming email: sss, outlook, forward-mailbox, none.",
                "outgoing": "Outgoing email: sss, outlook, none.",
                "act": "Appointments, contacts and tasks: sss, outlook, none."}


def _method_option(which: str):
    return typer.Option(None, f"--{which}", help=_METHOD_HELP[which])


SWITCH_OPTIONS = {
    "require_approval_users": "requireapprovalforuseremail",
    "require_approval_queues": "requireapprovalforqueueemail",
    "correlation": "emailcorrelationenabled",
    "tracking_token": "trackingtokenenabled",
    "smart_matching": "enablesmartmatching",
    "track_sent_items": "tracksentitems",
    "physical_logical_deletes_differ": "physicalandlogicaldeletesdiffer",
    "alerts_errors": "generatealertsforerrors",
    "alerts_warnings": "generatealertsforwarnings",
    "alerts_information": "generatealertsforinformation",
    "notify_mailbox_owner": "notifymailboxownerofemailserverlevelalerts",
}


@settings_app.command("set")
def settings_set(
    default_profile: str | None = typer.Option(None, "--default-profile", help="Server profile (name or id)."),
    incoming: str | None = _method_option("incoming"),
    outgoing: str | None = _method_option("outgoing"),
    act: str | None = _method_option("act"),
    require_approval_users: bool | None = typer.Option(None, "--require-approval-users/--no-require-approval-users",
                                                       help="Process email only for approved users."),
    require_approval_queues: bool | None = typer.Option(None, "--require-approval-queues/--no-require-approval-queues",
                                                        help="Process email only for approved queues."),
    correlation: bool | None = typer.Option(None, "--correlation/--no-correlation", help="Email correlation."),
    tracking_token: bool | None = typer.Option(None, "--tracking-token/--no-tracking-token", help="Tracking tokens."),
    smart_matching: bool | None = typer.Option(None, "--smart-matching/--no-smart-matching", help="Smart matching."),
    track_sent_items: bool | None = typer.Option(None, "--track-sent-items/--no-track-sent-items",
                                                 help="Also track the Sent Items folder."),
    physical_logical_deletes_differ: bool | None = typer.Option(
        None, "--physical-logical-deletes-differ/--no-physical-logical-deletes-differ",
        help="ACT: a row that stops matching the sync filters only unlinks its Exchange copy (else deletes it)."),
    alerts_errors: bool | None = typer.Option(None, "--alerts-errors/--no-alerts-errors", help="Error alerts."),
    alerts_warnings: bool | None = typer.Option(None, "--alerts-warnings/--no-alerts-warnings", help="Warning alerts."),
    alerts_information: bool | None = typer.Option(None, "--alerts-information/--no-alerts-information",
                                                   help="Information alerts."),
    notify_mailbox_owner: bool | None = typer.Option(None, "--notify-mailbox-owner/--no-notify-mailbox-owner",
                                                     help="Show email-server-level alerts to mailbox owners."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.6: default server profile, delivery methods and switches of the organization."""
    with _Refused("settings set"):
        fields: dict[str, Any] = _given({"default_profile": "defaultemailserverprofileid", **METHOD_OPTIONS},
                                        locals())
        fields.update(_given(SWITCH_OPTIONS, locals()))
        if not fields:
            raise ValidationError("nothing to change: give at least one setting option", None)

        _in_sandbox(db, lambda ws: ws.admin.set_settings(as_user, **fields))
    _say(f"[green]Settings saved[/green]: {', '.join(sorted(fields))}.")
    _say_next(db)


# ------------------------------------------------------------------------------ 1.7-1.9 mailboxes
@mailbox_app.command("list")
def mailbox_list(as_json: bool = typer.Option(False, "--json"), db: str = _db_option()) -> None:
    """Every mailbox with its statuses."""
    with _Refused():
        rows = _in_sandbox(db, lambda ws: ws.admin.mailboxes())
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print_mailboxes(rows)


def print_mailboxes(rows) -> None:
    table = Table(title="Mailboxes")
    for col in ("mailbox", "owner", "approval", "incoming", "outgoing", "ACT", "last error"):
        table.add_column(col, overflow="fold")
    for m in rows:
        bad = 2 in (m.incomingemailstatus, m.outgoingemailstatus, m.actstatus)
        table.add_row(m.emailaddress, "queue" if m.owner_type == "queue" else "user",
                      APPROVAL.get(m.emailrouteraccessapproval, "?"),
                      STATUS[m.incomingemailstatus] + ("" if m.enabledforincomingemail else " (off)"),
                      STATUS[m.outgoingemailstatus] + ("" if m.enabledforoutgoingemail else " (off)"),
                      STATUS[m.actstatus] + ("" if m.enabledforact else " (off)"),
                      (m.lastsyncerrorcode or "") if m.lasterrorcurrent or bad else "",
                      style="red" if bad else None)
    Console(highlight=False).print(table)


# the fields of `sss mailbox show` in the order the mailbox form reads; the others follow by name
MAILBOX_FIELD_ORDER = (
    "emailaddress", "name", "mailboxid", "regardingobjecttypecode", "emailserverprofilename", "emailserverprofile",
    "emailrouteraccessapproval", "incomingemaildeliverymethod", "outgoingemaildeliverymethod", "actdeliverymethod",
    "mailboxstatus", "incomingemailstatus", "enabledforincomingemail", "outgoingemailstatus",
    "enabledforoutgoingemail", "actstatus", "enabledforact", "lastsyncerrorcode", "lastsyncerror",
    "lastsyncerroroccurredon", "lastsyncerrorcount", "lastsuccessfulsynccompletedon",
)


@mailbox_app.command("show")
def mailbox_show(
    mailbox: str = typer.Option(..., "--mailbox", "-m", metavar="ADDRESS", help="The mailbox's email address."),
    as_json: bool = typer.Option(False, "--json"),
    db: str = _db_option(),
) -> None:
    """Every field of one mailbox, and its alerts."""
    with _Refused():
        if not mailbox.strip():
            raise ValidationError("is empty: give the mailbox's email address (sss mailbox list shows them)", "mailbox")
        def action(ws):
            view = ws.admin.mailbox(mailbox)
            return view, ws.admin.alerts(regarding=view["mailboxid"], limit=20)
        view, alerts_ = _in_sandbox(db, action)
    if as_json:
        typer.echo(json.dumps({"mailbox": view, "alerts": alerts_}, indent=2, default=str))
        return
    table = Table(title=f"Mailbox {view['emailaddress']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    first = [k for k in MAILBOX_FIELD_ORDER if k in view]
    for key, value in [(k, view[k]) for k in first] + sorted((k, v) for k, v in view.items() if k not in first):
        if key in ("incomingemailstatus", "outgoingemailstatus", "actstatus", "mailboxstatus"):
            value = f"{value} {STATUS.get(value, '')}"
        elif key == "emailrouteraccessapproval":
            value = f"{value} {APPROVAL.get(value, '')}"
        table.add_row(key, "" if value is None else str(value))
    Console(highlight=False).print(table)
    _print_alerts(alerts_)


@mailbox_app.command("apply-defaults")
def mailbox_apply_defaults(
    mailbox: list[str] = _mailbox_option(),
    all_: bool = _all_option(),
    test_enable: bool = typer.Option(True, "--test-enable/--no-test-enable",
                                     help="Test and enable the mailboxes afterwards (the default, as in the product)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.7: apply the organization's default email settings (and, by default, Test & Enable)."""
    with _Refused("mailbox apply-defaults"):
        async def action(ws):
            refs = _mailbox_refs(ws, mailbox, all_)
            results = await ws.admin.apply_default_email_settings(as_user, refs, test_and_enable=test_enable)
            return len(refs), results, _addresses(ws)
        count, results, addresses = _in_sandbox(db, action, wire=test_enable)
    _say(f"[green]Default email settings applied to {count} mailbox(es).[/green]")
    if test_enable and not _print_tests(results, addresses):
        raise typer.Exit(1)


@mailbox_app.command("edit")
def mailbox_edit(
    mailbox: list[str] = _mailbox_option(),
    all_: bool = _all_option(),
    profile: str | None = typer.Option(None, "--profile", help="Email server profile (name or id)."),
    incoming: str | None = _method_option("incoming"),
    outgoing: str | None = _method_option("outgoing"),
    act: str | None = _method_option("act"),
    email_address: str | None = typer.Option(None, "--email-address",
                                             help="A new email address (one mailbox; resets approval and statuses)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.7: edit several mailboxes at once (profile, delivery methods), or one mailbox's address."""
    with _Refused("mailbox change-address" if email_address is not None else "mailbox edit"):
        fields: dict[str, Any] = _given({"profile": "emailserverprofile", **METHOD_OPTIONS}, locals())
        if not fields and email_address is None:
            raise ValidationError("nothing to change: give --profile, --incoming, --outgoing, --act or "
                                  "--email-address", None)

        def action(ws):
            refs = _mailbox_refs(ws, mailbox, all_)
            if email_address is not None:
                if len(refs) != 1:
                    raise ValidationError("an email address belongs to one mailbox: give exactly one "
                                          "--mailbox", "emailaddress")
                if fields:
                    ws.admin.edit_mailboxes(as_user, refs, **fields)
                ws.admin.change_email_address(as_user, refs[0], email_address)
            else:
                ws.admin.edit_mailboxes(as_user, refs, **fields)
            return len(refs)
        count = _in_sandbox(db, action)
    _say(f"[green]{count} mailbox(es) changed.[/green]")
    if email_address is not None:
        _say("[yellow]The new address must be approved and the mailbox tested and enabled again.[/yellow]")


def _approval(mailbox: list[str], all_: bool, as_user: str, db: str, approve: bool) -> None:
    with _Refused("mailbox approve" if approve else "mailbox reject"):
        def action(ws):
            refs = _mailbox_refs(ws, mailbox, all_)
            ws.admin.approve(as_user, refs, approve=approve)
            return len(refs)
        count = _in_sandbox(db, action)
    _say(f"[green]{count} email address(es) {'approved' if approve else 'rejected'}.[/green]")


@mailbox_app.command("approve")
def mailbox_approve(mailbox: list[str] = _mailbox_option(), all_: bool = _all_option(),
                    as_user: str = _as_option(), db: str = _db_option()) -> None:
    """Step 1.8: approve email addresses (needs "Approve Email Addresses for Users or Queues")."""
    _approval(mailbox, all_, as_user, db, True)


@mailbox_app.command("reject")
def mailbox_reject(mailbox: list[str] = _mailbox_option(), all_: bool = _all_option(),
                   as_user: str = _as_option(), db: str = _db_option()) -> None:
    """Reject email addresses: their mailboxes process no mail."""
    _approval(mailbox, all_, as_user, db, False)


@mailbox_app.command("test-enable")
def mailbox_test_enable(
    mailbox: list[str] = _mailbox_option(),
    all_: bool = _all_option(),
    start_date: str | None = typer.Option(None, "--start-date", help="Evaluate Inbox mail received after this "
                                          "date again (YYYY-MM-DD[THH:MM], not before the profile's date)."),
    this_org_only: bool = typer.Option(False, "--this-org-only", help="Sync items with Exchange from this org "
                                       "only (takes the mailbox's ACT over from another organization)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.9: test the mailboxes (incoming, outgoing, ACT) and enable what passes; exits 1 on a failure."""
    with _Refused("mailbox test-enable"):
        async def action(ws):
            refs = _mailbox_refs(ws, mailbox, all_)
            results = await ws.admin.test_and_enable(as_user, refs, start_date=start_date,
                                                     this_org_only=this_org_only)
            return results, _addresses(ws)
        results, addresses = _in_sandbox(db, action, wire=True)
    if not _print_tests(results, addresses):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ views
def _print_alerts(rows: list[dict[str, Any]]) -> None:
    if not rows:
        _say("No alerts.")
        return
    names = {v: k.capitalize() for k, v in LEVELS.items()}
    for a in rows:
        style = {3: "red", 2: "yellow"}.get(a["level"], "green")
        times = f" x{a['errorcount']}" if a["errorcount"] > 1 else ""
        _say(f"[{style}]{names[a['level']]}[/{style}] {a['modifiedon']:%Y-%m-%d %H:%M} [bold]{a['tracecode']}[/bold]"
             f"{times} about {a['regarding']} (on {a['owner']}'s wall)")
        _say(f"    {a['text']}")


@app.command("alerts")
def alerts(
    as_user: str | None = typer.Option(None, "--as", metavar="USER", help="Show this user's alert wall."),
    level: str | None = typer.Option(None, "--level", help="error, warning or information."),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", metavar="ADDRESS", help="Alerts about one mailbox."),
    profile: str | None = typer.Option(None, "--profile", help="Alerts about one email server profile (name or id)."),
    limit: str = typer.Option("50", "--limit", metavar="N", help="At most this many (newest first), 1 to 10000."),
    as_json: bool = typer.Option(False, "--json"),
    db: str = _db_option(),
) -> None:
    """Alerts (trace log), newest first: a user's wall, by level, about a mailbox or a profile."""
    with _Refused("alerts"):
        if level is not None and level.lower() not in LEVELS:
            raise ValidationError(f"{level!r} is not error, warning or information", "level")
        count = _typed("alerts", {"limit": limit})["limit"]

        if mailbox and profile:
            raise ValidationError("give --mailbox or --profile, not both", None)

        def action(ws):
            regarding = (ws.admin.mailbox_id(mailbox) if mailbox else
                         ws.admin.profile_id(profile) if profile else None)
            return ws.admin.alerts(user=as_user, level=LEVELS[level.lower()] if level else None,
                                   regarding=regarding, limit=count)
        rows = _in_sandbox(db, action)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    _print_alerts(rows)


# ------------------------------------------------------------------------------ mail, email, engine
@mail_app.command("deliver")
def mail_deliver(
    sender: str = typer.Option(..., "--from", help="The sender's address."),
    to: list[str] = typer.Option(..., "--to", help="A recipient (repeatable)."),
    subject: str = typer.Option("", "--subject"),
    body: str = typer.Option("", "--body"),
    in_reply_to: str | None = typer.Option(None, "--in-reply-to", help="Message-ID this message answers."),
    file: Path | None = typer.Option(None, "--file", help="An RFC 5322 message file (.eml) instead."),
    db: str = _db_option(),
) -> None:
    """Deliver a message into the Exchange Online mailboxes of its recipients (now, sandbox time)."""
    from simulator.sandbox import mail_addresses

    with _Refused():
        mail_addresses(sender, to)  # checked before the sandbox is opened: a refusal writes nothing

        def action(ws):
            raw = None
            if file is not None:
                try:
                    raw = file.read_bytes()
                except OSError as exc:
                    raise ValidationError(f"cannot read {file}: {exc.strerror}", "file") from None
            return ws.sb.deliver_mail(sender, to, subject=subject, body=body, in_reply_to=in_reply_to, raw=raw)
        delivered = _in_sandbox(db, action)
    for address, item in delivered.items():
        _say(f"Delivered to {address} (item {item}).")


@email_app.command("send")
def email_send(
    to: list[str] = typer.Option(..., "--to", help="A recipient (repeatable)."),
    subject: str = typer.Option(..., "--subject"),
    body: str = typer.Option("", "--body"),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Create an email activity from a user and send it: it waits (Pending Send) for the engine."""
    from simulator.exchange.mime import normalize_address

    with _Refused():
        for value in to:
            if normalize_address(value) is None:
                raise ValidationError(f"{value!r} is not an email address", "to")

        def action(ws):
            uid = ws.admin.user_id(as_user)
            activityid = ws.sb.crm.create_email(sender_userid=uid, to=[normalize_address(t) for t in to],
                                                subject=subject, body=body)
            try:
                token = ws.sb.crm.send_email(activityid)
            except ValueError as exc:
                raise AdminError(str(exc)) from None
            return activityid, token
        activityid, token = _in_sandbox(db, action)
    _say(f"Email {activityid} is Pending Send{f' (tracking token {token})' if token else ''}; "
         "the sender's mailbox sends it at its next outgoing cycle (sss run --minutes 10).")


@email_app.command("list")
def email_list(
    limit: str = typer.Option("50", "--limit", metavar="N",
                              help="At most this many email activities, newest first: a whole number from 1 to 10000."),
    as_json: bool = typer.Option(False, "--json"),
    db: str = _db_option(),
) -> None:
    """Email activities, newest first."""
    from simulator.crm.models import EmailStatus

    with _Refused("email list"):
        count = _typed("email list", {"limit": limit})["limit"]

        rows = _in_sandbox(db, lambda ws: ws.admin.emails(count))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="Email activities")
    for col in ("created", "direction", "status", "from", "to", "subject", "correlation"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(f"{r['createdon']:%Y-%m-%d %H:%M}" if r["createdon"] else "",
                      "out" if r["directioncode"] else "in", EmailStatus(r["statuscode"]).name.replace("_", " ").title(),
                      r["sender"] or "", r["torecipients"] or "", r["subject"] or "", str(r["correlationmethod"]))
    Console(highlight=False).print(table)


@app.command("run")
def run_engine(
    minutes: str = typer.Option("0", "--minutes", metavar="N", help="Simulated minutes to run."),
    hours: str = typer.Option("0", "--hours", metavar="N", help="Simulated hours to run."),
    db: str = _db_option(),
) -> None:
    """Run the sync engine (and waiting jobs) over EWS on the sandbox clock, then summarize."""
    with _Refused("run"):
        total = parse(RunInput, {"minutes": minutes, "hours": hours}, strict=False).span()
        if not total:
            raise ValidationError("give how long to run: --minutes N or --hours N", None)

        async def action(ws):
            from simulator.cli import stop_on_signals

            with stop_on_signals(lambda: setattr(ws.sb, "stopping", True)) as signals:
                before = await ws.sb.run_engine(total)
            return before, ws.clock.now(), ws.sb.engine.stats, bool(signals)
        start, end, stats, stopped = _in_sandbox(db, action, wire=True)
    if stopped:
        _say("Stopped by a signal after the batch under way; everything done so far is kept.")
    _say(f"Ran the engine from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (sandbox time): "
         f"{stats.polls} workload polls, {stats.emails_tracked} email(s) tracked, {stats.emails_sent} sent, "
         f"{sum(stats.emails_skipped.values())} skipped, {sum(stats.errors.values())} error(s).")
    if stats.act_to_exchange or stats.act_to_crm or stats.act_failed:
        _say(f"ACT: {stats.act_to_exchange} item(s) to Exchange, {stats.act_to_crm} to the CRM, "
             f"{stats.act_conflicts} conflict(s), {stats.act_failed} failed.")
    if stats.cycles_dropped:
        _say(f"{stats.cycles_dropped} mailbox cycle(s) were done again: another engine host had tracked a copy "
             f"of their mail first (their {stats.polls_dropped} poll(s) are counted above, their email once).")
    for code, n in sorted(stats.errors.items()):
        _say(f"  [red]{code}[/red]: {n}")


# ------------------------------------------------------------------------------ faults
@fault_app.command("add")
def fault_add(
    code: str | None = typer.Option(None, "--code", help="Error code: an EWS or CRM code (ErrorServerBusy, "
                                    "IsvAborted, ...), an AADSTS code, an SMTP reply code (451), or "
                                    "NetworkError to drop the connection. Optional with --latency-ms."),
    protocol: str | None = typer.Option(None, "--protocol", help="ews, crm, autodiscover, identity or smtp "
                                        "(default: the one of the operation or the code, else ews)."),
    operation: str = typer.Option("*", "--operation", help="An operation of the protocol, or * for any."),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="Only this mailbox."),
    count: str | None = typer.Option(None, "--count", metavar="N", help="Fire for the next N calls (default: always)."),
    probability: str = typer.Option("1", "--probability", metavar="P", help="Chance of firing, 0 to 1 (seeded)."),
    backoff_ms: str | None = typer.Option(None, "--backoff-ms", metavar="MS",
                                          help="BackOffMilliseconds of ErrorServerBusy."),
    latency_ms: str | None = typer.Option(None, "--latency-ms", metavar="MS",
                                          help="The call takes this much sandbox time (then fails, with --code)."),
    start: str | None = typer.Option(None, "--start", metavar="WHEN",
                                     help="Only from this sandbox time on (ISO 8601, UTC unless an offset is given)."),
    minutes: str | None = typer.Option(None, "--minutes", metavar="M", help="... and only for this many minutes."),
    db: str = _db_option(),
) -> None:
    """Make calls of any protocol fail or slow down: the rule is kept with the sandbox until `sss fault clear`."""
    from simulator.crm.inputs import fault_rule
    from simulator.faults import describe

    with _Refused("fault add"):
        _trainer_only(db, "sss fault add")
        # checked before the sandbox is opened: a refused rule writes nothing
        rule = fault_rule({"code": code, "protocol": protocol, "operation": operation, "mailbox": mailbox,
                           "count": count, "probability": probability, "backoff_ms": backoff_ms,
                           "latency_ms": latency_ms, "start": start, "minutes": minutes}, strict=False)
        _in_sandbox(db, lambda ws: ws.sb.add_rule(rule))
    _say(f"Fault rule added: {describe(rule)}.")


@fault_app.command("list")
def fault_list(as_json: bool = typer.Option(False, "--json", help="Print JSON (every field of each rule)."),
               db: str = _db_option()) -> None:
    """The fault rules, with how often each has fired."""
    from simulator.faults import describe

    with _Refused():
        _trainer_only(db, "sss fault list")
        rules = _in_sandbox(db, lambda ws: list(ws.sb.faults.rules))
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rules], indent=2))
        return
    if not rules:
        _say("No fault rules.")
    for r in rules:
        _say(describe(r))


@fault_app.command("clear")
def fault_clear(db: str = _db_option()) -> None:
    """Remove every fault rule."""
    with _Refused():
        _trainer_only(db, "sss fault clear")
        _in_sandbox(db, lambda ws: ws.sb.clear_faults())
    _say("Fault rules removed.")


def _profile_state(profile: str, as_user: str, db: str, active: bool) -> None:
    with _Refused("profile activate" if active else "profile deactivate"):
        _in_sandbox(db, lambda ws: ws.admin.set_profile_state(as_user, profile, active=active))
    _say(f"[green]Profile {profile} is {'active' if active else 'inactive'}.[/green]"
         + ("" if active else " Its mailboxes process nothing until it is activated again."))


@profile_app.command("activate")
def profile_activate(profile: str = typer.Option(..., "--profile", help="The profile's name or id."),
                     as_user: str = _as_option(), db: str = _db_option()) -> None:
    """Activate a profile (statecode Active): its mailboxes process again."""
    _profile_state(profile, as_user, db, True)


@profile_app.command("deactivate")
def profile_deactivate(profile: str = typer.Option(..., "--profile", help="The profile's name or id."),
                       as_user: str = _as_option(), db: str = _db_option()) -> None:
    """Deactivate a profile: none of its mailboxes is processed while it is inactive."""
    _profile_state(profile, as_user, db, False)


# ------------------------------------------------------------------------------ ACT rows (SPEC 3.6)
act_app = typer.Typer(no_args_is_help=True, help="Appointments, contacts and tasks of the CRM (synced by ACT).")
app.add_typer(act_app, name="act")
_ACT_DERIVED: dict[str, str | None] = {option: option for option in (
    "--kind", "--id", "--organizer", "--attendee", "--subject", "--location", "--start", "--end", "--all-day",
    "--first-name", "--last-name", "--job-title", "--phone", "--description", "--due", "--percent", "--type")}


def _act_options(subject, location, start, end, all_day, first_name, last_name, job_title, phone, description,
                 due, percent, task_type) -> dict[str, object]:
    return {"--subject": subject, "--location": location, "--start": start, "--end": end, "--all-day": all_day,
            "--first-name": first_name, "--last-name": last_name, "--job-title": job_title, "--phone": phone,
            "--description": description, "--due": due, "--percent": percent, "--type": task_type}


def _act_row_options():
    """The typer options of a row's fields (shared by add and update)."""
    return dict(
        subject=typer.Option(None, "--subject"), location=typer.Option(None, "--location"),
        start=typer.Option(None, "--start", help="Appointment start, ISO 8601 (UTC unless an offset is given)."),
        end=typer.Option(None, "--end", help="Appointment end."),
        all_day=typer.Option(None, "--all-day/--not-all-day"),
        first_name=typer.Option(None, "--first-name"), last_name=typer.Option(None, "--last-name"),
        job_title=typer.Option(None, "--job-title"), phone=typer.Option(None, "--phone", help="Business phone."),
        description=typer.Option(None, "--description"), due=typer.Option(None, "--due", help="Task due date."),
        percent=typer.Option(None, "--percent", help="Task percent complete, 0-100 (100: completed)."),
        task_type=typer.Option(None, "--type", help="task, fax, letter or phonecall."),
    )


_O = _act_row_options()


@act_app.command("add")
def act_add(
    kind: str = typer.Option(..., "--kind", help="appointment, contact or task."),
    organizer: str | None = typer.Option(None, "--organizer", help="Appointment organizer (a user; default the "
                                         "owner; none: no organizer, which ACT refuses to sync)."),
    attendee: list[str] = typer.Option([], "--attendee", help="A required attendee (a user; repeatable)."),
    subject: str | None = _O["subject"], location: str | None = _O["location"], start: str | None = _O["start"],
    end: str | None = _O["end"], all_day: bool | None = _O["all_day"], first_name: str | None = _O["first_name"],
    last_name: str | None = _O["last_name"], job_title: str | None = _O["job_title"], phone: str | None = _O["phone"],
    description: str | None = _O["description"], due: str | None = _O["due"], percent: str | None = _O["percent"],
    task_type: str | None = _O["task_type"],
    as_user: str = typer.Option(..., "--as", metavar="USER", help="The CRM user who creates (and owns) the row."),
    db: str = _db_option(),
) -> None:
    """Create an appointment, contact or task as a CRM user (its owner)."""
    from simulator.crm import act_sync

    with _Refused(derived=_ACT_DERIVED):
        fields = act_sync.user_fields(kind, _act_options(subject, location, start, end, all_day, first_name,
                                                         last_name, job_title, phone, description, due, percent,
                                                         task_type))
        if kind != "appointment" and (organizer or attendee):
            raise ValidationError(f"a {kind} has no organizer or attendees", "--organizer" if organizer else
                                  "--attendee")
        act_sync.check_times(fields)

        def action(ws):
            owner = ws.admin.user_id(as_user)
            people: dict[str, int] = {}
            if kind == "appointment":
                fields["organizer"] = owner if organizer is None else None if organizer == "none" else \
                    _act_user(ws, organizer, "--organizer")
                people = {_act_user(ws, a, "--attendee"): 5 for a in attendee}
            crm_id = ws.sb.crm.ids.new()
            with ws.sb.db.begin() as conn:
                act_sync.create_row(conn, kind, crm_id, owner, fields, ws.sb.clock.now(), people)
            return crm_id
        crm_id = _in_sandbox(db, action)
    _say(f"{kind.capitalize()} {crm_id} created; the owner's next ACT cycle brings it to Exchange.")


def _act_user(ws, who: str, option: str) -> str:
    try:
        return ws.admin.user_id(who)
    except AdminError as exc:
        raise ValidationError(str(exc), option) from None


@act_app.command("update")
def act_update(
    crm_id: str = typer.Option(..., "--id", help="The appointment, contact or task id."),
    subject: str | None = _O["subject"], location: str | None = _O["location"], start: str | None = _O["start"],
    end: str | None = _O["end"], all_day: bool | None = _O["all_day"], first_name: str | None = _O["first_name"],
    last_name: str | None = _O["last_name"], job_title: str | None = _O["job_title"], phone: str | None = _O["phone"],
    description: str | None = _O["description"], due: str | None = _O["due"], percent: str | None = _O["percent"],
    task_type: str | None = _O["task_type"],
    as_user: str = typer.Option(..., "--as", metavar="USER", help="The CRM user who makes the change."),
    db: str = _db_option(),
) -> None:
    """Change fields of an appointment, contact or task as a CRM user (a new version of the row)."""
    from simulator.crm import act_sync

    options = _act_options(subject, location, start, end, all_day, first_name, last_name, job_title, phone,
                           description, due, percent, task_type)
    with _Refused(derived=_ACT_DERIVED):
        if all(v is None for v in options.values()):
            raise ValidationError("give at least one field to change (e.g. --subject)", "--id")

        def action(ws):
            ws.admin.user_id(as_user)
            with ws.sb.db.begin() as conn:
                found = act_sync.find_row(conn, crm_id)
                if found is None:
                    raise ValidationError(f"{crm_id!r} is no appointment, contact or task", "--id")
                kind, current = found
                fields = act_sync.user_fields(kind, options)
                act_sync.check_times(fields, current)
                return kind, act_sync.update_row(conn, kind, crm_id, fields, ws.sb.clock.now())
        kind, version = _in_sandbox(db, action)
    _say(f"{kind.capitalize()} {crm_id} changed (version {version}).")


@act_app.command("delete")
def act_delete(
    crm_id: str = typer.Option(..., "--id", help="The appointment, contact or task id."),
    as_user: str = typer.Option(..., "--as", metavar="USER", help="The CRM user who deletes it."),
    db: str = _db_option(),
) -> None:
    """Delete an appointment, contact or task as a CRM user (ACT's delete rules decide about Exchange)."""
    from simulator.crm import act_sync

    with _Refused(derived=_ACT_DERIVED):
        def action(ws):
            ws.admin.user_id(as_user)
            with ws.sb.db.begin() as conn:
                found = act_sync.find_row(conn, crm_id)
                if found is None:
                    raise ValidationError(f"{crm_id!r} is no appointment, contact or task", "--id")
                act_sync.delete_row(conn, found[0], crm_id)
                return found[0]
        kind = _in_sandbox(db, action)
    _say(f"{kind.capitalize()} {crm_id} deleted.")


def _act_rows(db: str, read, as_json: bool) -> list[dict] | None:
    """Rows an ACT listing reads (``read(conn)``); printed as JSON, and None, with ``--json``."""
    with _Refused():
        def action(ws):
            with ws.sb.db.connect() as conn:
                return read(conn)
        rows = _in_sandbox(db, action)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return None
    return rows


@act_app.command("links")
def act_links(as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: str = _db_option()) -> None:
    """The ACT item-level mappings: CRM row, Exchange item, last direction and conflict."""
    from simulator.crm import act_sync

    rows = _act_rows(db, act_sync.links, as_json)
    if rows is None:
        return
    table = Table(title="ACT links")
    for col in ("table", "CRM id", "Exchange item", "last change", "conflict"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["objecttypecode"], r["objectid"], r["exchangeentryid"], r["lastchangedirection"] or "",
                      r["conflictnote"] or "")
    Console(highlight=False).print(table)


@act_app.command("failures")
def act_failures(as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: str = _db_option()) -> None:
    """The ACT item-level failures (appointments, contacts and tasks): mailbox, item, error and retries."""
    from simulator.crm import act_sync

    rows = _act_rows(db, act_sync.failures, as_json)
    if rows is None:
        return
    if not rows:
        _say("No ACT item-level failures.")
        return
    table = Table(title="ACT item-level failures")
    for col in ("when", "mailbox", "table", "CRM id", "Exchange item", "error", "retries", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        when = r["lastsyncerroroccurredon"]
        table.add_row(when.strftime("%Y-%m-%d %H:%M") if when else "", r["emailaddress"] or r["mailboxid"],
                      r["objecttypecode"], r["objectid"] or "", r["exchangeentryid"] or "", r["lastsyncerror"],
                      str(r["retries"]), r["lastsyncerrordetail"] or "")
    Console(highlight=False).print(table)


# ------------------------------------------------------------------------------ ACT sync filters (SPEC 3.6)
filter_app = typer.Typer(no_args_is_help=True, help="A user's ACT sync filters: add, activate, deactivate, delete "
                                                     "(list them with sss act filters).")
act_app.add_typer(filter_app, name="filter")
_FILTER_DERIVED: dict[str, str | None] = {"name": "--name", "returnedtypecode": "--table", "ownerid": "--user",
                                          "userqueryid": "--filter"}


def _filter_ref_option():
    return typer.Option(..., "--filter", metavar="ID|NAME", help="The filter's id, or its name among your filters.")


def _filter_as_option():
    return typer.Option(..., "--as", metavar="USER", help="The CRM user who makes the change: the filter's owner, "
                                                          "or a System Administrator.")


@act_app.command("filters")
def act_filters(
    user: str | None = typer.Option(None, "--user", metavar="USER", help="Whose filters (default: every user's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: str = _db_option(),
) -> None:
    """A user's sync filters: which appointments, contacts and tasks ACT brings to their mailbox."""
    with _Refused(derived=_FILTER_DERIVED):
        rows = _in_sandbox(db, lambda ws: ws.admin.sync_filters(user))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        _say("No sync filters.")
        return
    table = Table(title="ACT sync filters")
    for col in ("owner", "table", "name", "state", "id"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["owner"] or r["ownerid"], r["returnedtypecode"], r["name"],
                      "active" if r["active"] else "inactive", r["userqueryid"])
    Console(highlight=False).print(table)


@filter_app.command("add")
def act_filter_add(
    name: str = typer.Option(..., "--name", help="The filter's name (up to 200 characters, unique per user)."),
    table: str = typer.Option(..., "--table", help="appointment, contact or task."),
    user: str | None = typer.Option(None, "--user", metavar="USER", help="Whose filter (default: the --as user)."),
    inactive: bool = typer.Option(False, "--inactive", help="Add it switched off."),
    as_user: str = _filter_as_option(), db: str = _db_option(),
) -> None:
    """Add a sync filter: the rows of the table the user owns (appointments also organized or attended)."""
    with _Refused(derived=_FILTER_DERIVED):
        new_id = _in_sandbox(db, lambda ws: ws.admin.add_sync_filter(as_user, name, table, user, active=not inactive))
    _say(f"Sync filter {new_id} ({table}) added; the owner's next ACT cycle reads it.")


def _filter_state(ref: str, as_user: str, db: str, active: bool) -> None:
    with _Refused(derived=_FILTER_DERIVED):
        view = _in_sandbox(db, lambda ws: ws.admin.set_sync_filter_state(as_user, ref, active=active))
    _say(f"Sync filter {view['name']!r} ({view['returnedtypecode']}) is {'active' if active else 'inactive'}."
         + ("" if active else " Rows no other active filter returns leave the owner's Exchange mailbox at the next "
                              "ACT cycle."))


@filter_app.command("activate")
def act_filter_activate(ref: str = _filter_ref_option(), as_user: str = _filter_as_option(),
                        db: str = _db_option()) -> None:
    """Switch a sync filter on."""
    _filter_state(ref, as_user, db, True)


@filter_app.command("deactivate")
def act_filter_deactivate(ref: str = _filter_ref_option(), as_user: str = _filter_as_option(),
                          db: str = _db_option()) -> None:
    """Switch a sync filter off: its rows are logical deletes for ACT unless another active filter returns them."""
    _filter_state(ref, as_user, db, False)


@filter_app.command("delete")
def act_filter_delete(ref: str = _filter_ref_option(), as_user: str = _filter_as_option(),
                      db: str = _db_option()) -> None:
    """Delete a sync filter."""
    with _Refused(derived=_FILTER_DERIVED):
        view = _in_sandbox(db, lambda ws: ws.admin.delete_sync_filter(as_user, ref))
    _say(f"Sync filter {view['name']!r} ({view['returnedtypecode']}) deleted.")
@act_app.command("direction")
def act_direction(
    table: str = typer.Option(..., "--table", help="appointment, contact or task."),
    field_name: str = typer.Option(..., "--field", help="A synchronized field, named as the CRM column (sss act "
                                   "directions lists them)."),
    direction: str = typer.Option(..., "--direction", help="none, to-exchange, to-crm or bidirectional (or 0-3)."),
    as_user: str = typer.Option(..., "--as", metavar="USER", help="A System Administrator."),
    db: str = _db_option(),
) -> None:
    """Choose which way a field of appointments, contacts or tasks synchronizes (System Administrator)."""
    with _Refused("act direction"):
        view = _in_sandbox(db, lambda ws: ws.admin.set_act_direction(
            as_user, entityname=table, attributename=field_name, syncdirection=direction))
    _say(f"{view.table} {view.field}: {view.direction}{' (the default)' if view.default else ''}; the next ACT "
         "cycle of each mailbox follows it.")


@act_app.command("directions")
def act_directions(as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: str = _db_option()) -> None:
    """The direction of every synchronized field of appointments, contacts and tasks."""
    with _Refused():
        rows = _in_sandbox(db, lambda ws: ws.admin.act_directions())
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table(title="ACT field directions")
    for col in ("table", "field", "direction", "default"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.table, r.field, r.direction, "yes" if r.default else "changed")
    Console(highlight=False).print(table)
