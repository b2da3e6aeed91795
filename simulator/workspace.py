"""The sandbox kept in one CRM database, opened by one ``sss`` command at a time.

A learner does the setup flow one command at a time, so everything the next command needs is
saved in the CRM database: the CRM tables themselves, and in the ``simulatorstate`` table the
sandbox clock, the identity service, the Exchange Online store (mailboxes, folders, items, org
claims), the fault rules and the id generator. :func:`open_workspace` loads all of it into a
:class:`~simulator.sandbox.Sandbox` (or, with ``wire=True``, a started
:class:`~simulator.wire.WireSandbox`: loopback HTTPS with EWS, Autodiscover and the identity
service, so that Test Connection and Test & Enable use msal and exchangelib as the engine does),
and saves it back when the command ends.

Two commands must not work on one database at the same time (the last one to finish would win).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlmodel import Session, select

from engine.clock import Clock
from simulator.crm import s2s
from simulator.crm.admin import AdminError
from simulator.crm.db import make_engine, sqlite_url
from simulator.crm.models import Mailbox
from simulator.exchange.persist import store_from_json, store_to_json
from simulator.faults import load_rules, rules_to_json
from simulator.sandbox import Sandbox

STORE_KEY = "exchange"
FAULTS_KEY = "faults"
IDS_KEY = "crm-ids"
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
    """A sandbox loaded from the database; :meth:`save` writes its state back."""

    def __init__(self, db: str, *, wire: bool = False, state_dir: Path | None = None, clock: Clock | None = None,
                 http_port: int = 0, smtp_port: int = 0) -> None:
        """``clock`` replaces the stored sandbox clock (which is then left as it is)."""
        self.url = database_url(db)
        reader = make_engine(self.url)
        try:
            with Session(reader) as session:
                stored_clock = s2s.load_clock(session)
                self._saved = {key: s2s.read_state(session, key)
                               for key in (STORE_KEY, FAULTS_KEY, IDS_KEY, s2s.CLOCK_KEY)}
                store_text = s2s.read_state(session, STORE_KEY)
                faults_text = s2s.read_state(session, FAULTS_KEY)
                ids_text = s2s.read_state(session, IDS_KEY)
                seed = int(s2s.read_state(session, SEED_KEY) or 0)
                mailboxes = session.exec(select(Mailbox.emailaddress, Mailbox.name)).all()
        finally:
            reader.dispose()
        self.keeps_clock = clock is None
        self.clock: Clock = stored_clock if clock is None else clock
        store = store_from_json(store_text, self.clock) if store_text else None
        self.wire = None
        if wire:
            from simulator.wire import WireSandbox

            self.wire = WireSandbox(db_url=self.url, seed=seed, clock=self.clock, state_dir=state_dir,
                                    record_events=False, store=store, http_port=http_port, smtp_port=smtp_port)
            self.sb: Sandbox = self.wire.sb
        else:
            self.sb = Sandbox(db_url=self.url, seed=seed, clock=self.clock, record_events=False, store=store)
        if store is None:  # a database made before the store was kept: its mailboxes, empty
            for address, name in mailboxes:
                self.sb.store.add_mailbox(address, name)
        if faults_text:
            load_rules(self.sb.faults, faults_text)
        if ids_text:
            self.sb.ids.restore(json.loads(ids_text))
        self.seed = seed

    @property
    def admin(self):
        return self.sb.admin

    def save(self) -> None:
        """Write what changed (a command that only looked writes nothing)."""
        values = {STORE_KEY: store_to_json(self.sb.store), FAULTS_KEY: rules_to_json(self.sb.faults),
                  IDS_KEY: json.dumps(self.sb.ids.state())}
        if self.keeps_clock:
            values[s2s.CLOCK_KEY] = s2s.clock_text(self.clock)
        changed = {k: v for k, v in values.items() if v != self._saved.get(k)}
        if not changed:
            return
        with Session(self.sb.db) as session:
            for key, value in changed.items():
                s2s.write_state(session, key, value, self.clock)
            session.commit()
        self._saved.update(changed)


@asynccontextmanager
async def open_workspace(db: str, *, wire: bool = False, state_dir: Path | None = None,
                         save: bool = True) -> AsyncIterator[Workspace]:
    """The stored sandbox for one command, saved when the command ends.

    An operation that refused (:class:`~simulator.crm.admin.AdminError`) wrote nothing, so
    nothing is saved then; after any other ending (also an interruption half-way through a run,
    when the database already holds part of it) the sandbox is saved so that both agree."""
    ws = Workspace(db, wire=wire, state_dir=state_dir)
    refused = False
    try:
        if ws.wire is not None:
            await ws.wire.start()
        yield ws
    except AdminError:
        refused = True
        raise
    finally:
        try:
            if save and not refused:
                ws.save()
        finally:
            if ws.wire is not None:
                await ws.wire.stop()
            else:
                ws.sb.close()
