"""`sss console`: the web console over a sandbox database made with the CLI.

It opens the database like every ``sss`` command (the stored sandbox clock, the loopback services
for Test Connection and Test & Enable) and serves the console on plain HTTP on 127.0.0.1, so a
browser opens it without trusting the sandbox's certificate authority. The address it prints
carries the control key; the console is locked without it.
"""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape

from simulator.cli import _db_option, _Refused, _say, app, stop_on_signals


@app.command("console")
def console(
    db: str = _db_option(),
    port: int = typer.Option(0, min=0, max=65535, help="HTTP port of the console on 127.0.0.1 (0: a free one)."),
    state_dir: str | None = typer.Option(None, help="Where the CA and certificates live (default $SSS_HOME)."),
    scenario: str | None = typer.Option(None, "--scenario", metavar="NAME",
                                        help="First build this training scenario in a new database (--db), as "
                                             "sss walkthrough --scenario does (sss walkthrough --list-scenarios)."),
    no_hints: bool = typer.Option(False, "--no-hints", help="With --scenario: a training session without hints."),
    force: bool = typer.Option(False, "--force", help="With --scenario: replace an existing database file."),
) -> None:
    """Serve the web console (the email configuration pages) for the sandbox in --db."""
    from pathlib import Path

    from simulator.cli_walkthrough import _seed

    if scenario is None and (no_hints or force):
        typer.echo(f"Error: {'--no-hints' if no_hints else '--force'} goes with --scenario NAME "
                   "(a training scenario built before the console starts)", err=True)
        raise typer.Exit(2)
    if scenario is not None:
        _seed(scenario, db, force, False, hints=not no_hints)
        _say("")

    from simulator.console import PREFIX, Console
    from simulator.crm.admin import OutOfOrderError
    from simulator.procedure import status_summary
    from simulator.web import WebServer
    from simulator.workspace import open_workspace

    with _Refused():
        if status_summary(db).organization is None:  # read-only: an empty or missing file stays as it was
            raise OutOfOrderError(f"no organization in {db} yet: create one (sss org init --db {db} ...) or build "
                                  f"a training scenario (sss walkthrough --scenario NAME --db {db})", "db")

    async def go() -> None:
        stop = asyncio.Event()
        async with open_workspace(db, wire=True, state_dir=Path(state_dir) if state_dir else None) as ws:
            wire = ws.wire
            server = WebServer(port=port)
            server.add_routes(Console(ws.sb, wire.lock, wire.control_key, secure=False).routes())
            base = await server.start()
            try:
                _say(f"Web console  {escape(base)}{PREFIX}/?key={wire.control_key}")
                _say(f"Sandbox      {escape(db)}; sandbox time {ws.clock.now():%Y-%m-%d %H:%M} UTC "
                     "(it moves only when you run the engine or advance the clock).")
                _say("Open the address in a browser on this machine. Press Ctrl-C to stop.")
                with stop_on_signals(stop.set):
                    await stop.wait()
            finally:
                await server.stop()
        _say("Stopped; everything was written as it happened.")

    with _Refused():
        asyncio.run(go())
