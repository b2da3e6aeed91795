"""The `sss demo` scenario: a small organization, a day of seeded mail, and a summary.

The organization is set up through the same administrator operations a person would use
(profile, default settings, approval, Test & Enable). Two mailboxes are given Exchange faults:
one fails permanently (401 for the connecting account) and one is busy for a few calls.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from engine.clock import parse_instant
from engine.errors import KNOWN_ERRORS
from simulator.crm.db import DatabaseError, file_problem, sqlite_url
from simulator.crm.models import ActSyncMapping, ExchangeSyncIdMapping, Mailbox
from simulator.crm.outcomes import mail_outcomes
from simulator.crm.s2s import read_state, write_state
from simulator.procedure import _open_read_only
from simulator.sandbox import DEFAULT_START, Sandbox
from simulator.traffic import Party, TrafficMix, TrafficPlan

DEMO_DB = "sss-demo.db"
DEMO_KEY = "demo"  # simulatorstate: marks a database the demo made
FIRST_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivo", "Jia", "Kai", "Lena",
               "Milo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Vik", "Wen", "Xavi",
               "Yara", "Zed")
LAST_NAMES = ("Berg", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Khan")


def fresh_database(path: str | Path) -> Path:
    """Remove a previous demo database (and its WAL files); return the absolute path.

    Only a SQLite database is replaced: a folder, another kind of file or a folder that cannot be
    written is refused (:class:`DatabaseError`) before anything is removed or written."""
    given = str(path)
    path = Path(path).resolve()
    problem = file_problem(path)
    if problem == "is a folder":
        raise DatabaseError(f"--db: {given} is a folder; give a file in it, e.g. {Path(given) / DEMO_DB}")
    if problem:
        raise DatabaseError(f"--db: {given} {problem}, and the demo replaces its database each run; "
                            "give another file")
    if path.name != DEMO_DB and _holds_another_sandbox(path):  # its default file: always its own (README)
        raise DatabaseError(f"--db: {given} holds a sandbox the demo did not make, and the demo replaces its "
                            "database each run; give another file (or delete this one yourself)")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseError(f"--db: {given} cannot be written ({folder} is not a writable folder); "
                            "give a file in a folder that exists")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def _holds_another_sandbox(path: Path) -> bool:
    """Whether the SQLite file holds an organization that no demo marked as its own (read only)."""
    engine = _open_read_only(str(path))
    if engine is None:
        return False
    try:
        tables = set(inspect(engine).get_table_names())
        with Session(engine) as session:
            if "organization" not in tables or session.execute(text("SELECT 1 FROM organization")).first() is None:
                return False
            return "simulatorstate" not in tables or read_state(session, DEMO_KEY) is None
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def build_organization(admin, rng: random.Random, *, users: int, queues: int, contacts: int,
                       tenant_id: str | None = None, domain: str = "contoso.example",
                       ) -> tuple[list[Party], list[Party], list[str]]:
    """Contoso: an administrator (dana), seeded users and queues, and contacts/accounts/leads.

    Returns (users, queues, contact addresses). ``tenant_id`` pre-sets the organization's Exchange
    Online tenant (as if ConfigureCrmServerSideSync had run); leave it None to do that step for real.
    """
    admin.create_organization("Contoso", admin_name="Dana Admin", admin_domain="dana",
                              admin_email=f"dana@{domain}", tenant_id=tenant_id)
    people: list[Party] = []
    names = set()
    while len(people) < users:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if name in names:
            continue
        names.add(name)
        address = name.lower().replace(" ", ".") + "@" + domain
        track = 0 if rng.random() < 0.3 else 1  # SPEC 10.7: users default to replies only
        people.append(Party(address, admin.add_user(name, address, track=track)))
    boxes = []
    for qname in ("Support", "Sales", "Billing", "Partners", "Careers")[:queues]:
        address = f"{qname.lower()}@{domain}"
        admin.add_queue(qname, address, owner="dana")
        boxes.append(Party(address))
    records = []
    for i in range(contacts):
        kind = "contact" if i % 5 else rng.choice(("account", "lead"))
        address = f"{rng.choice(FIRST_NAMES).lower()}{i}@fabrikam.example"
        admin.add_record(kind, address.split("@")[0].title(), address)
        records.append(address)
    return people, boxes, records


class Demo:
    def __init__(self, *, seed: int = 1, db_path: str | Path = DEMO_DB, users: int = 30, queues: int = 3,
                 contacts: int = 40, hours: float = 24.0, start: datetime = DEFAULT_START) -> None:
        self.seed = seed
        self.hours = hours
        self.db_path = fresh_database(db_path)
        self.sb = Sandbox(db_url=sqlite_url(self.db_path), seed=seed, start=start)
        with Session(self.sb.db) as session:  # this database is the demo's: the next run may replace it
            write_state(session, DEMO_KEY, str(seed))
            session.commit()
        self.rng = random.Random(f"demo-{seed}")
        self.n_users, self.n_queues, self.n_contacts = users, queues, contacts
        self.failing: dict[str, str] = {}
        self.fault_codes: list[str] = []
        self.process_from: datetime | None = None

    async def setup(self) -> None:
        sb, rng, admin = self.sb, self.rng, self.sb.admin
        tenant = "72f988bf-0000-4000-8000-" + f"{rng.getrandbits(48):012x}"
        users, queues, contacts = build_organization(admin, rng, users=self.n_users, queues=self.n_queues,
                                                     contacts=self.n_contacts, tenant_id=tenant)
        admin.update_org("dana", generatealertsforwarnings=True)
        process_from = self.process_from = sb.clock.now() - timedelta(hours=12)
        profile = admin.create_profile(
            "dana", name="Exchange Online", description="Contoso's Exchange Online tenant",
            processemailsreceivedafter=process_from, moveundeliveredemails=True, minpollingintervalinminutes=5)
        admin.set_default_profile("dana", profile)
        ids = [m.mailboxid for m in admin.mailboxes()]
        admin.apply_default_settings("dana", ids)
        admin.approve("dana", ids)
        await admin.test_and_enable("dana", ids)
        # Mail that is already in the mailboxes, some of it from before the "process email from" date.
        self.plan = TrafficPlan(sb, random.Random(f"traffic-{self.seed}"), users=users, queues=queues,
                                contacts=contacts, mix=TrafficMix(), act_per_user_day=4.0)
        start = sb.clock.now()
        self.plan.schedule(start, start + timedelta(hours=self.hours), process_from=process_from)
        # One mailbox loses Exchange access for good; one is busy for a few calls.
        broken, busy = rng.sample(users[1:], 2)
        sb.add_fault(code="8005E272", mailbox=broken.address)
        sb.add_fault(code="ErrorServerBusy", mailbox=busy.address, count=3, backoff_ms=600_000)
        self.failing = {broken.address: "8005E272 (permanent)", busy.address: "ErrorServerBusy x3 (transient)"}
        self.fault_codes = ["8005E272", "ErrorServerBusy"]

    async def run(self, progress: Callable[[datetime], None] | None = None) -> None:
        await self.sb.run_for(self.hours * 3600, progress)

    def summary(self, wall_seconds: float) -> dict:
        X, M = ExchangeSyncIdMapping.__table__, Mailbox.__table__
        with self.sb.db.connect() as conn:
            outcomes = mail_outcomes(conn)
            act_links = conn.execute(select(func.count()).select_from(ActSyncMapping.__table__)).scalar()
            item_details = dict(conn.execute(select(X.c.lastsyncerror, func.min(X.c.lastsyncerrordetail))
                                             .group_by(X.c.lastsyncerror)).all())
            mailboxes = conn.execute(select(
                M.c.emailaddress, M.c.regardingobjecttypecode, M.c.incomingemailstatus, M.c.outgoingemailstatus,
                M.c.mailboxstatus, M.c.enabledforincomingemail, M.c.enabledforoutgoingemail,
                M.c.lastsyncerrorcode, M.c.actstatus, M.c.lastsyncerror).order_by(M.c.emailaddress)).all()
        status_names = {0: "Not Run", 1: "Success", 2: "Failure"}
        stats = self.sb.engine.stats
        # What each code shown means: the engine's table of known codes; for a code it does not
        # list, the text the CRM recorded with the item or mailbox.
        recorded = {**{m[7]: m[9] for m in mailboxes if m[7]}, **item_details}
        skipped, failed = outcomes["skipped_reasons"], outcomes["undeliverable_reasons"]
        shown = [*(m[7] for m in mailboxes if m[7]), *skipped, *failed, *self.fault_codes]
        codes = {code: KNOWN_ERRORS[code].summary if code in KNOWN_ERRORS else
                 (recorded.get(code) or "no description recorded").rstrip(".")
                 for code in dict.fromkeys(shown)}
        return {
            "seed": self.seed,
            "database": str(self.db_path),
            "mailboxes": [
                {"emailaddress": m[0], "type": m[1], "incoming": status_names[m[2]], "outgoing": status_names[m[3]],
                 "mailbox": status_names[m[4]], "enabledforincomingemail": bool(m[5]),
                 "enabledforoutgoingemail": bool(m[6]), "lastsyncerrorcode": m[7], "act": status_names[m[8]]}
                for m in mailboxes
            ],
            "mailbox_polls": stats.polls,
            "emails_tracked": outcomes["tracked"],
            "emails_skipped": outcomes["skipped"],
            "skipped_reasons": skipped,
            "emails_undeliverable": outcomes["undeliverable"],
            "undeliverable_reasons": failed,
            "emails_sent": outcomes["sent"],
            "emails_pending_send": outcomes["pending_send"],
            "emails_failed_to_send": outcomes["failed_to_send"],
            "alerts": outcomes["alerts"],
            "faults": self.failing,
            "codes": codes,
            "process_email_from": self.process_from.isoformat() if self.process_from else None,
            "emails_before_process_from": self.plan.counts.get("old", 0),
            "traffic": dict(sorted(self.plan.counts.items())),
            "act": {"to_exchange": stats.act_to_exchange, "to_crm": stats.act_to_crm,
                    "conflicts": stats.act_conflicts, "failed": stats.act_failed, "links": act_links},
            "simulated_seconds": int(self.hours * 3600),
            "wall_seconds": round(wall_seconds, 3),
        }


def print_summary(console: Console, s: dict) -> None:
    """The summary of :meth:`Demo.summary` as text, readable on an 80-column terminal."""
    boxes = s["mailboxes"]
    domains = {m["emailaddress"].rpartition("@")[2] for m in boxes}
    domain = domains.pop() if len(domains) == 1 else None  # one domain: said once, in the title
    table = Table(title=f"Mailboxes (@{domain})" if domain else "Mailboxes", box=box.SIMPLE_HEAD)
    table.add_column("mailbox", no_wrap=True)
    for col in ("owner", "in", "out", "ACT", "status"):
        table.add_column(col, no_wrap=True)
    for m in boxes:
        style = "red" if m["mailbox"] == "Failure" else None
        owner = "queue" if m["type"] == "queue" else "user"
        name = m["emailaddress"].rpartition("@")[0] if domain else m["emailaddress"]
        table.add_row(name, owner, m["incoming"], m["outgoing"], m["act"], m["mailbox"], style=style)
    console.print(table)
    console.print("[dim]in/out: incoming/outgoing email; ACT: appointments, contacts and tasks.[/dim]")
    for m in boxes:
        if m["lastsyncerrorcode"]:
            console.print(f"[bold]Last sync error:[/bold] {m['emailaddress']}: {m['lastsyncerrorcode']}")
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
    act = s.get("act")
    if act:
        made = sum(n for k, n in s["traffic"].items() if k.startswith("act_"))
        console.print(f"[bold]Appointments, contacts and tasks:[/bold] {made} made or changed by users; "
                      f"{act['to_exchange']} synced to Exchange, {act['to_crm']} to the CRM, "
                      f"{act['conflicts']} conflict(s), {act['failed']} failed; {act['links']} linked items.")
    if s.get("process_email_from"):
        when = parse_instant(s["process_email_from"]).strftime("%Y-%m-%d %H:%M")
        n = s["emails_before_process_from"]
        console.print(f"[bold]Untracked:[/bold] {n} message{'' if n == 1 else 's'} received before "
                      f"\"process email from\" ({when}).")
    alerts = ", ".join(f"{n} {level}" for level, n in s["alerts"].items())
    console.print(f"[bold]Alerts:[/bold] {alerts}")
    for address, what in s["faults"].items():
        console.print(f"[bold]Fault injected:[/bold] {address}: {what}")
    if s["codes"]:
        console.print("[bold]Codes:[/bold]")
        codes = Table.grid(padding=(0, 2))
        codes.add_column(no_wrap=True)
        codes.add_column(ratio=1)
        for code, meaning in s["codes"].items():
            codes.add_row(f"  {code}", meaning + ".")
        console.print(codes)
    console.print(
        f"[bold]Time:[/bold] {s['simulated_seconds'] / 3600:.0f} simulated hours "
        f"({s['mailbox_polls']} workload polls) in {s['wall_seconds']:.1f} s of real time; seed {s['seed']}."
    )
    console.print(f"[bold]Database:[/bold] {s['database']} (open it with any SQLite client)")
