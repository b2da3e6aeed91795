"""`sss scenario`: run a scenario file (or a shipped example) and say which expectations were met.

Exit codes of ``sss scenario run``: 0 every expectation met, 1 at least one not met, 2 the file
(or an option) cannot be used - one line naming the file, the line and the key, and nothing run.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.clock import RealClock
from simulator.cli import app

scenario_app = typer.Typer(no_args_is_help=True, help="Scenario files: a whole run in TOML, with its expectations.")
app.add_typer(scenario_app, name="scenario")


def _refuse(line: str) -> None:
    typer.echo("Error: " + " ".join(line.split()), err=True)
    raise typer.Exit(2)


@scenario_app.command("run")
def scenario_run(
    target: str = typer.Argument(..., metavar="FILE|NAME", help="A scenario file, or the name of a shipped example "
                                 "(sss scenario list)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    junit_xml: Path | None = typer.Option(None, "--junit-xml", metavar="FILE",
                                          help="Also write the expectations as JUnit XML (one test case each)."),
    mode: str | None = typer.Option(None, "--mode", metavar="direct|wire",
                                    help="Run in process (direct) or over loopback HTTPS (wire); default the file's."),
    seed: int | None = typer.Option(None, "--seed", metavar="N", help="Replace the file's seed."),
) -> None:
    """Run a scenario and check its expectations; exit 1 when one is not met."""
    from simulator.scenario import MODES, ScenarioError, find_scenario, run_scenario
    from simulator.scenario import junit_xml as to_junit

    if mode is not None and mode not in MODES:
        _refuse(f"--mode: {mode!r} is not a mode: use direct (in process) or wire (exchangelib over loopback HTTPS)")
    if seed is not None and not 0 <= seed < 2**63:
        _refuse(f"--seed: {seed} is out of range (from 0 to {2**63 - 1})")
    try:
        scenario = find_scenario(target)
    except ScenarioError as exc:
        _refuse(str(exc))
    console = Console(stderr=True, highlight=False)
    wall = RealClock()
    t0 = wall.now()
    try:
        if as_json or not console.is_terminal:
            result = run_scenario(scenario, mode=mode, seed=seed)
        else:
            total = scenario.duration.total_seconds()
            with Progress(TextColumn(f"[bold]{scenario.name}"), BarColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                task = bar.add_task("", total=total)
                begin: list[datetime] = []

                def progress(now: datetime) -> None:
                    if not begin:
                        begin.append(now)
                    bar.update(task, completed=(now - begin[0]).total_seconds(),
                               description=now.strftime("%a %H:%M"))

                result = run_scenario(scenario, mode=mode, seed=seed, progress=progress)
    except ScenarioError as exc:
        _refuse(str(exc))
    seconds = (wall.now() - t0).total_seconds()
    if junit_xml is not None:
        try:
            junit_xml.write_bytes(to_junit(result, seconds=seconds))
        except OSError as exc:
            _refuse(f"--junit-xml: {junit_xml} cannot be written ({exc.strerror or exc})")
    if as_json:
        sys.stdout.write(json.dumps({**result.to_dict(), "wall_seconds": round(seconds, 3)}, indent=2) + "\n")
    else:
        _print(result, seconds)
    raise typer.Exit(0 if result.ok else 1)


def _print(result, seconds: float) -> None:
    out = Console(highlight=False, soft_wrap=True)
    s = result.summary
    title = f"Scenario {result.name} ({result.mode} mode, seed {result.seed})"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("expectation", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("actual", overflow="fold")
    table.add_column("result", no_wrap=True)
    for c in result.checks:
        table.add_row(c.name, c.expected, c.actual, "met" if c.met else "[bold red]NOT MET[/bold red]")
    if result.checks:
        out.print(table)
    else:
        out.print(f"[bold]{title}[/bold]: the file has no expectations.")
    skipped = ", ".join(f"{n} {r}" for r, n in s["skipped_reasons"].items())
    failed = ", ".join(f"{n} {r}" for r, n in s["undeliverable_reasons"].items())
    alerts = ", ".join(f"{n} {level}" for level, n in s["alerts"].items())
    out.print(f"Tracked {s['tracked']}, skipped {s['skipped']}{f' ({skipped})' if skipped else ''}, "
              f"undeliverable {s['undeliverable']}{f' ({failed})' if failed else ''}, sent {s['sent']}, "
              f"pending send {s['pending_send']}, failed to send {s['failed_to_send']}; alerts: {alerts}.")
    for refusal in s.get("smtp_refused", []):
        out.print(f"Refused over SMTP: {refusal}", markup=False, highlight=False)
    hours = (result.ended - result.started).total_seconds() / 3600
    out.print(f"{hours:g} simulated hours ({s['polls']} workload polls) in {seconds:.1f} s.")
    for message in result.failures:
        out.print(f"[red]Not met:[/red] {message}")
    met = sum(c.met for c in result.checks)
    verdict = "[green]passed[/green]" if result.ok else "[bold red]failed[/bold red]"
    out.print(f"{met} of {len(result.checks)} expectations met: {verdict}.")


@scenario_app.command("list")
def scenario_list() -> None:
    """The example scenarios shipped with sss-sim (run one with sss scenario run NAME)."""
    from simulator.scenario import ScenarioError, examples, load_scenario

    table = Table(title="Example scenarios", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    table.add_column("duration", no_wrap=True)
    table.add_column("what it shows", overflow="fold")
    for name, path in examples().items():
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:  # a broken example is a bug of the package: show it, do not hide it
            table.add_row(name, "", "", f"[red]{exc}[/red]")
            continue
        hours = sc.duration.total_seconds() / 3600
        table.add_row(name, sc.mode, f"{hours:g} h", sc.description)
    Console(highlight=False).print(table)
    Console(highlight=False).print("Run one: sss scenario run NAME; see its file: sss scenario show NAME")


@scenario_app.command("show")
def scenario_show(name: str = typer.Argument(..., metavar="NAME", help="A shipped example's name.")) -> None:
    """Print a shipped example's file (a starting point for your own)."""
    from simulator.scenario import examples

    shipped = examples()
    if name not in shipped:
        _refuse(f"{name}: no shipped example has this name (see sss scenario list)")
    sys.stdout.write(shipped[name].read_text(encoding="utf-8"))
