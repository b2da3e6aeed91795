"""`sss walkthrough` and `sss status`: where the setup procedure stands, and training scenarios.

``sss walkthrough`` reads the sandbox's database (never writes it), lists the steps of the setup
procedure with a mark each - done, next, blocked (with the concrete problem) - explains the step
to work on and prints the command for it. With ``--scenario NAME`` it builds a training scenario
in a new database instead (see :mod:`simulator.scenarios`).

``sss status`` is the one-screen overview: the procedure in one line, the mailboxes by state,
the mailboxes that are retrying after transient errors, and the recent alerts.

With ``--no-hints`` the scenario opens a training session without hints (:mod:`simulator.training`):
until ``sss training check`` finds the fault fixed (or ``--give-up``), ``sss walkthrough`` refuses
and ``sss status`` shows only the counts the product shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import typer
from rich.markup import escape

from simulator.cli import DEFAULT_DB, _db_option, _Refused, _say, app

# the step states of simulator.procedure (imported when a command runs: it keeps `sss` quick to start)
DONE, NEXT, BLOCKED, TODO = "done", "next", "blocked", "todo"
MARKS = {DONE: "[green]✓[/green]", NEXT: "[bold cyan]→[/bold cyan]", BLOCKED: "[bold red]✗[/bold red]",
         TODO: "[dim]·[/dim]"}


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _db_flag(db: str) -> str | None:
    """``--db`` for the suggested commands, unless they reach this database without it."""
    if db == os.environ.get("SSS_DB") or (db == DEFAULT_DB and "SSS_DB" not in os.environ):
        return None
    return db


def _print_steps(steps) -> None:
    for s in steps:
        label = f"{s.section:<4} {escape(s.title)}"
        if s.status == DONE:
            _say(f"  {MARKS[DONE]} {label}")
        elif s.status in (NEXT, BLOCKED):
            colour = "red" if s.status == BLOCKED else "cyan"
            _say(f"  {MARKS[s.status]} [bold]{label}[/bold]  [{colour}]{escape(s.reason or '')}[/{colour}]")
        else:
            _say(f"  {MARKS[TODO]} [dim]{label}[/dim]")


def say_next(db: str) -> None:
    """After a setup command: the step the procedure now stands at and its command, read from the
    database (so a hint never suggests a step that is already done)."""
    from simulator.procedure import current_step, procedure_state

    step = current_step(procedure_state(db, db_option=_db_flag(db)))
    if step is None:
        _say("Every setup step is done: the engine syncs the enabled mailboxes (sss run --hours 1).")
        return
    word = "Blocked at" if step.status == BLOCKED else "Next"
    hint = f" {escape(step.commands[0])}" if step.commands else ""
    _say(f"{word} (step {step.section}, {escape(step.title)}):{hint}")


def _print_current(step) -> None:
    word = "Blocked at" if step.status == BLOCKED else "Next"
    _say("")
    _say(f"[bold]{word}: {step.section} {escape(step.title)}[/bold]")
    if step.reason:
        _say(f"  {'Problem' if step.status == BLOCKED else 'Missing'}: {escape(step.reason)}")
    _say(f"  What it is for: {escape(step.purpose)}")
    if step.commands:
        _say("  Run:" if len(step.commands) == 1 else "  Run, in this order:")
        for command in step.commands:
            _say(f"    {escape(command)}")
    if any("<pfx password>" in c for c in step.commands):
        _say("  [dim]Replace <pfx password> with the certificate's password.[/dim]")


def _hidden(db: str):
    """The open training session without hints of ``db``, or None (a stored record that cannot be read
    is refused in one line)."""
    from simulator.training import hidden_session

    with _Refused():
        return hidden_session(db)


def _use(db: str) -> str:
    return f" --db {db}" if _db_flag(db) else ""


@app.command("walkthrough")
def walkthrough(
    db: str = _db_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the steps as a JSON list."),
    scenario: str | None = typer.Option(None, "--scenario", metavar="NAME",
                                        help="Build a training scenario in a new database (--db) instead "
                                             "(--list-scenarios names them)."),
    no_hints: bool = typer.Option(False, "--no-hints", help="With --scenario: a training session without hints; "
                                  "status and walkthrough hold back the diagnosis until sss training check."),
    force: bool = typer.Option(False, "--force", help="With --scenario: replace an existing database file."),
    list_scenarios: bool = typer.Option(False, "--list-scenarios", help="List the training scenarios."),
) -> None:
    """The setup procedure step by step: what is done, what to do next or what blocks it, and the command."""
    from simulator.procedure import current_step, procedure_state, status_summary
    from simulator.scenarios import SCENARIOS

    if list_scenarios:
        for s in SCENARIOS.values():
            _say(f"[bold]{s.name}[/bold] - {escape(s.title)}")
            _say(f"    {escape(s.story)}")
        return
    if scenario is not None:
        _seed(scenario, db, force, as_json, hints=not no_hints)
        return
    if no_hints:
        typer.echo("Error: --no-hints goes with --scenario NAME (a new training session without hints)", err=True)
        raise typer.Exit(2)
    training = _hidden(db)
    if training is not None:
        typer.echo(f"Error: a training session without hints ({training.scenario}) is open in {db}, so the "
                   f"walkthrough stays closed: check your fix with sss training check{_use(db)} (--give-up shows "
                   "the answer)", err=True)
        raise typer.Exit(1)
    with _Refused():
        steps = procedure_state(db, db_option=_db_flag(db))
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in steps], indent=2))
        return
    done = sum(1 for s in steps if s.status == DONE)
    _say(f"Setup procedure in {escape(db)}: {done} of {len(steps)} steps done.")
    _print_steps(steps)
    step = current_step(steps)
    if step is None:
        _say("")
        use = escape(_use(db))
        _say(f"[green]Every step holds.[/green] Send some mail through it (sss mail deliver ...{use}), run the "
             f"engine (sss run --minutes 15{use}) and look at sss status{use}.")
        with _Refused():
            retrying = status_summary(db).retrying_mailboxes
        if retrying:
            names = ", ".join(r.emailaddress for r in retrying)
            who = "1 mailbox keeps" if len(retrying) == 1 else f"{len(retrying)} mailboxes keep"
            _say(f"[yellow]The setup is complete, but {who} failing with transient errors and "
                 f"{'is' if len(retrying) == 1 else 'are'} retried later: {escape(names)}.[/yellow] "
                 f"See sss status{use} and sss alerts --level warning{use}.")
        return
    _print_current(step)


def _seed(name: str, db: str, force: bool, as_json: bool, *, hints: bool = True) -> None:
    from simulator.scenarios import SCENARIOS, check_target
    from simulator.training import start

    with _Refused():
        scenario, _path, _certs = check_target(name, db, force)
        say = (lambda _text: None) if as_json or not hints else (lambda text: _say(f"  {escape(text)}"))
        if not as_json:
            _say(f"Building the training scenario [bold]{scenario.name}[/bold] in {escape(db)}"
                 f"{'' if hints else ' (no hints)'} ...")
        seeded = start(name, db, hints=hints, force=force, say=say)
    if as_json:  # what was planted stays out: it is the answer
        out = {k: str(v) if not isinstance(v, list) else v for k, v in asdict(seeded).items() if k != "planted"}
        out["hints"] = hints
        typer.echo(json.dumps(out, indent=2))
        return
    scenario = SCENARIOS[seeded.scenario]
    flag = _db_flag(db)
    use = _use(db)
    _say("")
    _say(f"[bold]{escape(scenario.title)}[/bold]")
    _say(escape(scenario.story))
    if hints:
        _say("")
        _say(f"[bold]Where to start:[/bold] {escape(scenario.hint)}")
    _say("")
    _say(f"System Administrator: [bold]admin[/bold] (--as {seeded.admin}); Office 365 administrator: "
         f"{seeded.tenant_admin}.")
    _say(f"Certificate files: {escape(str(seeded.pfx_path))} and {escape(str(seeded.cer_path))} "
         f"(password {seeded.certificate_password}).")
    if flag:
        _say(f"Give every command --db {escape(db)}, or once: export SSS_DB={escape(db)}")
    if hints:
        _say(f"Then: sss status{escape(use)}   and   sss walkthrough{escape(use)}")
        _say(f"When you think it is fixed: sss training check{escape(use)}")
    else:
        _say(f"No hints: read what the product shows (sss status{escape(use)}, sss alerts, sss mailbox list, "
             f"sss profile show, ...). When you think it is fixed: sss training check{escape(use)}")


@app.command("status")
def status(
    db: str = _db_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Overview: where the setup procedure stands, the mailboxes by state and the recent alerts."""
    from simulator.procedure import status_summary

    training = _hidden(db)
    with _Refused():
        summary = status_summary(db, db_option=_db_flag(db))
    if training is not None:
        _hidden_status(summary, training, db, as_json)
        return
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    if summary.organization is None:
        _say(f"No organization in {escape(db)} yet. Start with: sss walkthrough"
             f"{escape(' --db ' + db) if _db_flag(db) else ''}")
        return
    _say(f"[bold]{escape(summary.organization)}[/bold] in {escape(db)}; sandbox time "
         f"{summary.now:%Y-%m-%d %H:%M} UTC.")
    step = summary.current
    total = len(summary.steps)
    if step is None:
        _say(f"Setup: [green]all {total} steps done[/green].")
    else:
        colour = "red" if step.status == BLOCKED else "cyan"
        word = "blocked at" if step.status == BLOCKED else "next"
        _say(f"Setup: {summary.done} of {total} steps done; [{colour}]{word} {step.section} {escape(step.title)}"
             f"[/{colour}]: {escape(step.reason or '')} (details: sss walkthrough)")
    _say_counts(summary)
    for address, code in summary.failed_mailboxes:
        _say(f"  [red]failed[/red]   {escape(address)}: {escape(code)}")
    for r in summary.retrying_mailboxes:
        when = f", next try {r.next_try:%H:%M} UTC" if r.next_try else ""
        _say(f"  [yellow]retrying[/yellow] {escape(r.emailaddress)}: {escape(r.code)}, {r.count} transient "
             f"failure{'s' if r.count != 1 else ''} in a row{when}")
    use = escape(_use(db))
    _say(_alert_counts(summary)
         + (f" Read them: sss alerts --level error{use}" if summary.errors_recent else
            f" Read them: sss alerts --level warning{use}" if summary.warnings_recent else ""))


def _say_counts(summary) -> None:
    c = summary.mailboxes
    _say(f"Mailboxes: {c.total} ({_n(c.users, 'user')}, {_n(c.queues, 'queue')}): {c.approved} approved, "
         f"{c.pending_approval} pending approval, {c.rejected} rejected; {c.enabled} enabled, "
         f"{c.failed} failed, {c.not_tested} not tested, {c.test_scheduled} waiting for a retest, "
         f"{c.no_profile} without a profile, {c.retrying} retrying.")


def _alert_counts(summary) -> str:
    return (f"Alerts in the last 24 hours (sandbox time): {_n(summary.errors_recent, 'error')}, "
            f"{_n(summary.warnings_recent, 'warning')}.")


def _hidden_status(summary, training, db: str, as_json: bool) -> None:
    """``sss status`` during a training session without hints: the counts the product shows, no
    diagnosis (no setup step, no mailbox named with its error) and no suggested command."""
    if as_json:
        full = summary.to_dict()
        out = {k: full[k] for k in ("database", "organization", "now", "mailboxes", "errors_recent",
                                    "warnings_recent", "recent_since")}
        out["training"] = {"scenario": training.scenario, "hints": False,
                           "started_at": training.started_at.isoformat()}
        typer.echo(json.dumps(out, indent=2))
        return
    when = f"; sandbox time {summary.now:%Y-%m-%d %H:%M} UTC" if summary.now else ""
    _say(f"[bold]{escape(summary.organization or '?')}[/bold] in {escape(db)}{when}.")
    _say(f"Training session without hints ({escape(training.scenario)}) since "
         f"{training.started_at:%Y-%m-%d %H:%M} UTC: the setup diagnosis is hidden; sss training check says "
         "whether the fault is fixed.")
    _say_counts(summary)
    _say(_alert_counts(summary))


# ------------------------------------------------------------------------------ sss training

training_app = typer.Typer(no_args_is_help=True, help="Training sessions: is the scenario's fault fixed?")
app.add_typer(training_app, name="training")


@training_app.command("check")
def training_check(
    db: str = _db_option(),
    give_up: bool = typer.Option(False, "--give-up", help="Show the answer even when it is not fixed, and end "
                                 "the session (the walkthrough shows its hints again)."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as one JSON object."),
) -> None:
    """Whether the training scenario's fault is fixed, judged from what the product shows; exits 0 when fixed.

    When fixed (or with --give-up) it explains what was wrong, where it showed and what fixes it, and
    ends the training session."""
    from simulator.training import check

    with _Refused():
        verdict = check(db, give_up=give_up)
    if as_json:
        typer.echo(json.dumps(verdict.to_dict(), indent=2))
    else:
        if verdict.fixed:
            _say(f"[green]Fixed[/green]: {escape(verdict.scenario)}.")
        else:
            _say(f"[red]Not fixed yet[/red]: {escape(verdict.scenario)}. What does not hold yet:")
            for line in verdict.remaining:
                _say(f"  - {escape(line)}")
        for line in verdict.explanation.splitlines():
            label, sep, text = line.partition(": ")
            _say(f"[bold]{escape(label)}:[/bold] {escape(text)}" if sep else escape(line))
        if verdict.ended:
            _say(f"The training session has ended; sss walkthrough{escape(_use(db))} works again.")
    if not verdict.fixed:
        raise typer.Exit(1)
