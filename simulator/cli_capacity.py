"""`sss capacity`: how long mail takes to become activities for an organization you describe.

The organization and its conditions come from flags or a ``--config`` TOML file with the same keys
(flags win); ``--sweep FIELD=V1,V2,...`` runs once per value and compares. The report is
``capacity.html`` (plots embedded) and ``capacity.json`` in ``--output``. A wrong value is one line
naming the flag or key, exit 2, and nothing written (see :mod:`simulator.capacity`).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulator.cli import app

_SWEEP_HELP = ("Run once per value of one field and compare, e.g. minpollingintervalinminutes=0,5,15,30 "
               "(a key of --config, or a flag without its dashes).")


def _option(flag: str, metavar: str, text: str):
    return typer.Option(None, flag, metavar=metavar, help=text)


@app.command("capacity")
def capacity(
    config: Path | None = typer.Option(None, "--config", metavar="FILE.toml",
                                       help="A TOML file with the keys below (field names); flags override it."),
    mailboxes: str | None = _option("--mailboxes", "N", "Mailboxes of the organization (default 1000)."),
    profiles: str | None = _option("--profiles", "N", "Email server profiles; the mailboxes are split evenly "
                                   "(default 1)."),
    min_polling_interval: str | None = _option("--min-polling-interval", "MINUTES",
                                               "The profiles' minimum polling interval (default 5)."),
    max_connections: str | None = _option("--max-connections", "N",
                                          "Maximum concurrent connections per profile (default 10)."),
    emails_per_mailbox_day: str | None = _option("--emails-per-mailbox-day", "N",
                                                 "Inbound emails per mailbox and day (default 10)."),
    daily_shape: str | None = _option("--daily-shape", "office|flat", "When the day's mail arrives: office (85% "
                                      "from 08:00 to 18:00) or flat (default office)."),
    sends_per_mailbox_day: str | None = _option("--sends-per-mailbox-day", "N",
                                                "Emails each user sends from the CRM per day (default 0)."),
    ews_latency_ms: str | None = _option("--ews-latency-ms", "MS",
                                         "Mean time of one EWS call, in simulated ms (default 150)."),
    ews_latency_spread_ms: str | None = _option("--ews-latency-spread-ms", "MS",
                                                "Calls take between the mean minus and plus this (default 0)."),
    fault: list[str] | None = typer.Option(None, "--fault", metavar="CODE=PROBABILITY",
                                           help="An EWS error on that share of calls, e.g. ErrorServerBusy=0.01 "
                                           "(repeat for several)."),
    hours: str | None = _option("--hours", "H", "Simulated hours to run (default 24)."),
    seed: str | None = _option("--seed", "N", "Seed of the mail; the same seed gives the same report (default 1)."),
    output: str | None = typer.Option(None, "--output", "-o", metavar="FOLDER",
                                       help="Where to write capacity.html and capacity.json "
                                       "(default capacity-report)."),
    sweep: list[str] | None = typer.Option(None, "--sweep", metavar="FIELD=V1,V2,...", help=_SWEEP_HELP),
) -> None:
    """Simulate an organization's mail and report how long email takes to become activities (p50/p95/p99),
    the backlog, EWS requests and connections against Exchange Online's limits, and the engine's cost."""
    from simulator.capacity import CapacityError, parse_fault_flags, read_inputs, run_request, write_report

    try:
        if sweep and len(sweep) > 1:
            raise CapacityError(f"--sweep: given {len(sweep)} times; one report sweeps one field, "
                                "with all its values in one --sweep FIELD=V1,V2,...")
        flags = {"mailboxes": mailboxes, "profiles": profiles, "minpollingintervalinminutes": min_polling_interval,
                 "maxconcurrentconnections": max_connections, "emails_per_mailbox_day": emails_per_mailbox_day,
                 "daily_shape": daily_shape, "sends_per_mailbox_day": sends_per_mailbox_day,
                 "ews_latency_ms": ews_latency_ms, "ews_latency_spread_ms": ews_latency_spread_ms,
                 "faults": parse_fault_flags(fault), "hours": hours, "seed": seed,
                 "output": output, "sweep": sweep[0] if sweep else None}
        request = read_inputs(flags, config)
    except CapacityError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None

    runs = request.runs()
    err = Console(stderr=True, highlight=False)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    live = err.is_terminal  # a bar on a terminal; elsewhere (a log) a line per simulated hour
    with Progress(TextColumn("[bold]{task.fields[name]}"), BarColumn(),
                  TextColumn("{task.completed:.1f} of {task.total:g} simulated h"), TimeElapsedColumn(),
                  console=err, disable=not live) as bar:
        tasks, names = [], []
        for i, run in enumerate(runs):
            name = "capacity" if request.sweep_field is None else \
                f"{request.sweep_field} = {getattr(run, request.sweep_field)}"
            names.append(f"{i + 1}/{len(runs)} {name}")
            tasks.append(bar.add_task("", total=run.hours, name=names[-1]))

        def progress(i: int, done: float) -> None:
            if live:
                bar.update(tasks[i], completed=done)
            elif done == int(done) or done >= runs[i].hours:
                err.print(f"{escape(names[i])}: {done:g} of {runs[i].hours:g} simulated hours, "
                          f"{time.perf_counter() - wall0:.0f} s")

        results = run_request(request, progress)
    try:
        html_path, json_path = write_report(request, results)
    except OSError as exc:
        typer.echo(f"Error: --output: {request.output} cannot be written ({exc.strerror or exc})", err=True)
        raise typer.Exit(1) from None
    _print(request, results, html_path, json_path, time.perf_counter() - wall0, time.process_time() - cpu0)


def _print(request, results, html_path: Path, json_path: Path, wall: float, cpu: float) -> None:
    out = Console(highlight=False)
    swept = request.sweep_field
    title = "Delivery to activity, in simulated minutes" + (f", by {swept}" if swept else "")
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", padding=(0, 0, 0, 1), pad_edge=False,
                  show_edge=False)
    for name in ("value" if swept else "run", "p50", "p95", "p99", "max", "backlog", "polls/h", "EWS/h",
                 "tracked/h", "CPU s/h"):
        table.add_column(name, justify="left" if name in ("value", "run") else "right", no_wrap=True)

    def minutes(v):
        return "-" if v is None else f"{v / 60:.1f}"

    for r in results:
        s = r["summary"]
        lat = s["latency_seconds"]
        per_hour = r["cost"]["cpu_seconds_per_simulated_hour"]
        table.add_row(str(r["inputs"][swept]) if swept else "this run", minutes(lat["p50"]), minutes(lat["p95"]),
                      minutes(lat["p99"]), minutes(lat["max"]), f"{s['backlog_max']:,}",
                      f"{s['polls_per_hour']:,.0f}", f"{s['ews_requests_per_hour']:,.0f}",
                      f"{s['tracked_per_hour']:,.0f}", f"{sum(per_hour) / len(per_hour):.2f}" if per_hour else "-")
    out.print(table)
    out.print("backlog: the most mail delivered and not yet decided; polls/h: workload turns (incoming, outgoing "
              "and ACT each count; an outgoing turn with nothing to send makes no EWS request); CPU s/h: CPU seconds "
              "per simulated hour of the runs alone (the only figure that depends on the machine).")
    out.print(f"Report: {escape(str(html_path))} and {escape(str(json_path))}")
    out.print(f"Took {wall:.1f} s of wall time and {cpu:.1f} s of CPU on this machine in all: building the "
              "organization and its mail, the runs, and the report.")
