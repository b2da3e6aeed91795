"""The `sss` command."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.clock import RealClock

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulated server-side synchronization between a CRM and Exchange Online.",
)


@app.callback()
def _root() -> None:
    """Simulated server-side synchronization between a CRM and Exchange Online."""


def _print_summary(console: Console, s: dict) -> None:
    table = Table(title="Mailboxes", show_lines=False)
    table.add_column("mailbox", no_wrap=True)
    for col in ("owner", "in", "out", "status", "last error"):
        table.add_column(col, overflow="fold")
    for m in s["mailboxes"]:
        style = "red" if m["mailbox"] == "Failure" else None
        owner = "queue" if m["type"] == "queue" else "user"
        table.add_row(m["emailaddress"], owner, m["incoming"], m["outgoing"], m["mailbox"],
                      m["lastsyncerrorcode"] or "", style=style)
    console.print(table)
    totals = Table(title="Email", show_header=False)
    totals.add_column("what")
    totals.add_column("count", justify="right")
    totals.add_row("tracked (activities created)", str(s["emails_tracked"]))
    totals.add_row("skipped", str(s["emails_skipped"]))
    for reason, n in s["skipped_reasons"].items():
        totals.add_row(f"  {reason}", str(n))
    totals.add_row("moved to Undeliverable", str(s["emails_undeliverable"]))
    for reason, n in s["undeliverable_reasons"].items():
        totals.add_row(f"  {reason}", str(n))
    totals.add_row("sent", str(s["emails_sent"]))
    totals.add_row("still pending send", str(s["emails_pending_send"]))
    totals.add_row("failed to send", str(s["emails_failed_to_send"]))
    console.print(totals)
    alerts = ", ".join(f"{n} {level}" for level, n in s["alerts"].items())
    console.print(f"[bold]Alerts:[/bold] {alerts}")
    for address, what in s["faults"].items():
        console.print(f"[bold]Fault injected:[/bold] {address}: {what}")
    console.print(
        f"[bold]Time:[/bold] {s['simulated_seconds'] / 3600:.0f} simulated hours "
        f"({s['mailbox_polls']} workload polls) in {s['wall_seconds']:.1f} s of real time; seed {s['seed']}."
    )
    console.print(f"[bold]Database:[/bold] {s['database']} (open it with any SQLite client)")


@app.command()
def demo(
    seed: int = typer.Option(1, help="Seed of the traffic; the same seed gives the same result."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    db: Path = typer.Option(Path("sss-demo.db"), help="Where to write the demo database (replaced each run)."),
    hours: float = typer.Option(24.0, min=0.1, max=24 * 30, help="Simulated hours to run."),
) -> None:
    """Build a small organization, run a day of seeded mail through the engine, and summarize."""
    from simulator.demo import Demo

    console = Console(stderr=as_json)
    wall = RealClock()
    t0 = wall.now()

    async def go() -> dict:
        d = Demo(seed=seed, db_path=db, hours=hours)
        if not as_json:
            console.print(f"Demo database: {d.db_path}")
        await d.setup()
        total = hours * 3600
        start = d.sb.clock.now()
        if as_json:
            await d.run()
        else:
            with Progress(TextColumn("[bold]simulating"), BarColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, transient=False) as bar:
                task = bar.add_task("", total=total)

                def progress(now: datetime) -> None:
                    bar.update(task, completed=(now - start).total_seconds(), description=now.strftime("%a %H:%M"))

                await d.run(progress)
        s = d.summary((wall.now() - t0).total_seconds())
        d.sb.close()
        return s

    summary = asyncio.run(go())
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_summary(console, summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
