"""The sandbox kept in one database, opened by each ``sss`` command.

A learner does the setup flow one command at a time, and several commands may run at once (``sss
run`` while ``sss mail deliver`` drops mail in, or a second ``sss serve``). Everything lives in
the database and is written as it changes (``simulator/world.py``): the CRM tables, the Exchange
store's journal, the sandbox clock, the fault rules, the identity service. :func:`open_workspace`
opens it as a :class:`~simulator.sandbox.Sandbox` (or, with ``wire=True``, a started
:class:`~simulator.wire.WireSandbox`: loopback HTTPS with EWS, Autodiscover and the identity
service, so that Test Connection and Test & Enable use msal and exchangelib as the engine does).
There is nothing to save at the end: a command stopped at any point has lost nothing it
acknowledged.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlmodel import Session

from engine.clock import Clock
from simulator.crm import s2s
from simulator.crm.db import make_engine, sqlite_url
from simulator.sandbox import Sandbox

SEED_KEY = "seed"


def database_url(db: str) -> str:
    """A SQLAlchemy URL, or a SQLite file path made into one."""
    return db if "://" in db else sqlite_url(db)


def remember_seed(db: str, seed: int) -> None:
    """The seed a new sandbox's ids and generators start from (before its first command)."""
    engine = make_engine(database_url(db))
    try:
        with Session(engine) as session:
            s2s.write_state(session, SEED_KEY, str(seed))
            session.commit()
    finally:
        engine.dispose()


class Workspace:
    """The sandbox stored in a database, opened for one command."""

    def __init__(self, db: str, *, wire: bool = False, state_dir: Path | None = None, clock: Clock | None = None,
                 http_port: int = 0, smtp_port: int = 0) -> None:
        """``clock`` replaces the stored sandbox clock (which is then left as it is).

        Each process is an engine host of its own (``sss-<pid>``): two ``sss run`` or ``sss serve``
        on one database lease different mailboxes and never release each other's."""
        hostid = f"sss-{os.getpid()}"
        self.url = database_url(db)
        reader = make_engine(self.url)
        try:
            with Session(reader) as session:
                stored_clock = s2s.load_clock(session)
                seed = int(s2s.read_state(session, SEED_KEY) or 0)
        finally:
            reader.dispose()
        self.clock: Clock = stored_clock if clock is None else clock
        self.wire = None
        if wire:
            from simulator.wire import WireSandbox

            self.wire = WireSandbox(db_url=self.url, seed=seed, clock=self.clock, state_dir=state_dir,
                                    record_events=False, http_port=http_port, smtp_port=smtp_port, hostid=hostid)
            self.sb: Sandbox = self.wire.sb
        else:
            self.sb = Sandbox(db_url=self.url, seed=seed, clock=self.clock, record_events=False, hostid=hostid)
        self.seed = seed

    @property
    def admin(self):
        return self.sb.admin

    async def close(self) -> None:
        """Stop the network services, write the clock where it stopped, let go of the database."""
        if self.wire is not None:
            await self.wire.stop()
        else:
            self.sb.close()


@asynccontextmanager
async def open_workspace(db: str, *, wire: bool = False, state_dir: Path | None = None) -> AsyncIterator[Workspace]:
    """The stored sandbox for one command."""
    ws = Workspace(db, wire=wire, state_dir=state_dir)
    try:
        if ws.wire is not None:
            await ws.wire.start()
        yield ws
    finally:
        await ws.close()
