"""Testing with the sandbox: a small organization built the way an administrator builds it, and
questions a test asks about what happened (shared by the pytest plugin and the project's tests).

:func:`build_org` walks the setup flow of SPEC section 1 through the sandbox's admin operations
(organization, users, queue, records, profile, default settings, approval, Test & Enable) and
returns an :class:`Org` with shortcuts to read the CRM tables and the event log, and
:meth:`Org.explain` says what became of a message, for an assertion that fails with a reason.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from engine.clock import as_utc
from engine.ports import ACT_FOLDERS, ActItem
from simulator.crm import act_sync
from simulator.crm.models import (
    ActSyncMapping,
    Email,
    EmailServerProfile,
    ExchangeSyncIdMapping,
    Mailbox,
    Queue,
    TraceLog,
)
from simulator.exchange.direct import act_item, change_act_item, save_act_item
from simulator.exchange.mime import MessageData
from simulator.sandbox import DEFAULT_START, Sandbox

START = DEFAULT_START
ADMIN = "admin"
ALICE = "alice@contoso.example"  # user, tracks all email (0)
BOB = "bob@contoso.example"  # user, tracks replies to CRM email (1, the default)
SUPPORT = "support@contoso.example"  # queue owned by the admin, tracks all email
ADMIN_ADDR = "admin@contoso.example"
CARL = "carl@fabrikam.example"  # contact
FABRIKAM = "info@fabrikam.example"  # account
LENA = "lena@prospect.example"  # lead
STRANGER = "someone@elsewhere.example"  # resolves to nothing

_mid = itertools.count(1)


def run(coro):
    return asyncio.run(coro)


def msg(subject: str = "Hello", sender: str = CARL, to: tuple[str, ...] | str = (ALICE,), *,
        message_id: str | None | bool = True, body: str = "Some text.", **kw: Any) -> MessageData:
    """A message; ``message_id=True`` gives it a fresh unique Message-ID."""
    if isinstance(to, str):
        to = (to,)
    if message_id is True:
        message_id = f"m{next(_mid)}@fabrikam.example"
    return MessageData(subject=subject, sender=sender, to=tuple(to), message_id=message_id or None, body=body,
                       **kw)


@dataclass
class Org:
    sb: Sandbox
    profile_id: str
    users: dict[str, str] = field(default_factory=dict)  # address -> systemuserid
    queues: dict[str, str] = field(default_factory=dict)  # address -> queueid
    records: dict[str, str] = field(default_factory=dict)  # address -> contact/account/lead id
    mailboxes: dict[str, str] = field(default_factory=dict)  # address -> mailboxid
    test_results: list = field(default_factory=list)

    # -- reading state -----------------------------------------------------------------------
    def mailbox(self, address: str) -> Mailbox:
        with Session(self.sb.db) as s:
            return s.exec(select(Mailbox).where(Mailbox.emailaddress == address)).one()

    def profile(self) -> EmailServerProfile:
        with Session(self.sb.db) as s:
            return s.get(EmailServerProfile, self.profile_id)

    def emails(self) -> list[Email]:
        with Session(self.sb.db) as s:
            return list(s.exec(select(Email)).all())

    def received(self) -> list[Email]:
        return [e for e in self.emails() if e.statuscode == 4]

    def email(self, activityid: str) -> Email:
        with Session(self.sb.db) as s:
            return s.get(Email, activityid)

    def alerts(self) -> list[TraceLog]:
        with Session(self.sb.db) as s:
            return list(s.exec(select(TraceLog).order_by(TraceLog.tracelogid)).all())

    def item_rows(self) -> list[ExchangeSyncIdMapping]:
        with Session(self.sb.db) as s:
            return list(s.exec(select(ExchangeSyncIdMapping)).all())

    def starts(self, address: str, workload: str = "INCOMING") -> list[datetime]:
        return [datetime.fromisoformat(e[0]) for e in self.sb.events
                if e[1] == "start" and e[2] == address and e[3] == workload]

    def item_events(self, address: str | None = None) -> list[tuple]:
        return [e for e in self.sb.events if len(e) > 1 and e[1] == "item" and (address is None or e[2] == address)]

    def errors(self, address: str | None = None) -> list[tuple]:
        return [e for e in self.sb.events if len(e) > 1 and e[1] == "error" and (address is None or e[2] == address)]

    def outcomes(self, subject: str) -> list[tuple[str, str, str, str | None]]:
        """What the engine did with each copy of the messages titled ``subject``: (time, mailbox,
        outcome such as TRACKED or SKIPPED, reason or None), in the order it happened."""
        ids = {}
        for address, mbx in self.sb.store.mailboxes.items():
            for folder in mbx.folders.values():
                for item_id, item in folder.items.items():
                    if item.data.subject == subject:
                        ids[item_id] = address
        return [(e[0], e[2], e[4], e[5]) for e in self.item_events() if e[3] in ids]

    def explain(self, subject: str) -> str:
        """One sentence on what became of the message(s) titled ``subject``."""
        tracked = [e for e in self.emails() if e.subject == subject]
        if tracked:
            return f"email {subject!r} is tracked ({len(tracked)} activit{'y' if len(tracked) == 1 else 'ies'})"
        outcomes = self.outcomes(subject)
        if outcomes:
            when, address, outcome, reason = outcomes[-1]
            return (f"email {subject!r} not tracked: {outcome.lower()}{f' as {reason}' if reason else ''} "
                    f"in {address} at {when[11:16]}")
        held = [a for a, mbx in self.sb.store.mailboxes.items()
                if any(i.data.subject == subject for f in mbx.folders.values() for i in f.items.values())]
        if held:
            return (f"email {subject!r} not tracked: it is in {', '.join(sorted(held))} but no mailbox has "
                    f"processed it yet (clock {self.sb.clock.now():%H:%M}); advance the clock")
        return f"email {subject!r} not tracked: no mailbox of the sandbox received it"

    def assert_tracked(self, subject: str, *, count: int | None = None) -> list[Email]:
        """The email activities titled ``subject``; fails with :meth:`explain` when there are none
        (or not ``count`` of them)."""
        tracked = [e for e in self.emails() if e.subject == subject]
        if not tracked or (count is not None and len(tracked) != count):
            raise AssertionError(self.explain(subject) + (f" (expected {count})" if count is not None else ""))
        return tracked

    def inbox_ids(self, address: str) -> list[str]:
        mbx = self.sb.store.mailbox(address)
        return list(mbx.folder("inbox").items)

    # -- changing state the way a form edit would ---------------------------------------------
    def set_mailbox(self, address: str, **values: Any) -> None:
        with self.sb.db.begin() as conn:
            conn.execute(update(Mailbox.__table__).where(Mailbox.__table__.c.emailaddress == address).values(**values))

    def set_profile(self, **values: Any) -> None:
        t = EmailServerProfile.__table__
        with self.sb.db.begin() as conn:
            conn.execute(update(t).where(t.c.emailserverprofileid == self.profile_id).values(**values))

    # -- appointments, contacts and tasks (ACT) ------------------------------------------------
    def act_add(self, kind: str, owner: str, attendees: dict[str, int] | None = None, **fields: Any) -> str:
        """A CRM appointment, contact or task owned by the user ``owner`` (an address), made as a user
        makes it; an appointment's organizer is the owner unless ``organizer`` says otherwise (None:
        none). ``attendees``: address -> participation type (5 required, 6 optional). Its id."""
        crm_id = self.sb.crm.ids.new()
        uid = self.users[owner]
        if kind == "appointment":
            fields.setdefault("organizer", uid)
            fields["organizer"] = self.users.get(fields["organizer"], fields["organizer"])
        with self.sb.db.begin() as conn:
            act_sync.create_row(conn, kind, crm_id, uid, fields, self.sb.clock.now(),
                                {self.users[a]: m for a, m in (attendees or {}).items()})
        return crm_id

    def act_update(self, kind: str, crm_id: str, **fields: Any) -> None:
        with self.sb.db.begin() as conn:
            assert act_sync.update_row(conn, kind, crm_id, fields, self.sb.clock.now()) is not None, crm_id

    def act_delete(self, kind: str, crm_id: str) -> None:
        with self.sb.db.begin() as conn:
            assert act_sync.delete_row(conn, kind, crm_id), crm_id

    def act_row(self, kind: str, crm_id: str) -> dict | None:
        table, key = act_sync.TABLES[kind]
        with self.sb.db.connect() as conn:
            row = conn.execute(select(table).where(key == crm_id)).mappings().first()
        return dict(row) if row is not None else None

    def act_rows(self, kind: str) -> list[dict]:
        table, _ = act_sync.TABLES[kind]
        with self.sb.db.connect() as conn:
            return [dict(r) for r in conn.execute(select(table)).mappings()]

    def act_links(self, address: str | None = None) -> list[ActSyncMapping]:
        with Session(self.sb.db) as s:
            q = select(ActSyncMapping).order_by(ActSyncMapping.actsyncmappingid)
            if address is not None:
                q = q.where(ActSyncMapping.mailboxid == self.mailboxes[address])
            return list(s.exec(q).all())

    def exchange_items(self, address: str, kind: str) -> list[ActItem]:
        """The calendar items, contacts or tasks of a mailbox's default folder, as ACT reads them."""
        folder = self.sb.store.mailbox(address).folder(ACT_FOLDERS[kind])
        return [act_item(kind, item) for item in folder.items.values()]

    def exchange_add(self, address: str, kind: str, categories: tuple[str, ...] = (), **fields: Any) -> str:
        """An item made in Exchange as a user makes it (the store directly); its id."""
        return save_act_item(self.sb.store, address, ActItem(kind, fields, categories=categories)).item_id

    def exchange_edit(self, address: str, kind: str, item_id: str, **fields: Any) -> None:
        change_act_item(self.sb.store, address, ActItem(kind, fields, item_id))

    def exchange_delete(self, address: str, item_id: str) -> None:
        self.sb.store.delete(address, item_id)

    # -- acting --------------------------------------------------------------------------------
    def deliver(self, message: MessageData | bytes, recipients: list[str] | None = None,
                received: datetime | None = None) -> dict[str, str]:
        return self.sb.deliver(message, recipients, received)

    def run_for(self, seconds: float) -> None:
        run(self.sb.run_for(seconds))

    def test_and_enable(self, addresses: list[str], **kw: Any):
        return run(self.sb.admin.test_and_enable(ADMIN, [self.mailboxes[a] for a in addresses], **kw))


def org_from_scenario(path: str | Path, *, seed: int | None = None) -> Org:
    """The organization of a scenario file (:mod:`simulator.scenario`) in a new direct sandbox, its
    mail, sends and fault rules waiting on the sandbox's agenda for the clock to reach them."""
    from simulator.scenario import load_scenario, prepare_scenario

    scenario = load_scenario(Path(path))
    sb = Sandbox(seed=scenario.seed if seed is None else seed, start=scenario.start)
    try:
        run = asyncio.run(prepare_scenario(scenario, sb, seed=seed))
    except BaseException:
        sb.close()
        raise
    with Session(sb.db) as s:
        mailboxes = {m.emailaddress: m.mailboxid for m in s.exec(select(Mailbox)).all()}
        queues = {q.emailaddress: q.queueid for q in s.exec(select(Queue)).all() if q.emailaddress}
    default = scenario.settings.defaultemailserverprofileid or scenario.profiles[0].name
    return Org(sb, run.profile_ids[default], users=dict(run.user_ids), queues=queues, mailboxes=mailboxes)


def build_org(seed: int = 0, *, profile: dict[str, Any] | None = None, org: dict[str, Any] | None = None,
              approve: bool = True, test: bool = True, alice_track: int = 0, bob_track: int = 1,
              db_url: str | None = None, start: datetime = START, jitter: bool = False,
              hostid: str = "sss-host-1", sandbox: Sandbox | None = None,
              s2s: Callable[[Sandbox], None] | None = None) -> Org:
    """A small organization, set up through the admin operations a user calls.

    Users alice (track all) and bob (track replies), a queue support@ owned by the admin, a
    contact, an account and a lead; one Exchange Online profile ("process email from" one day
    before the start, minimum polling interval 5 minutes unless ``profile`` says otherwise),
    the org defaults applied to every mailbox, approved and tested & enabled.

    ``sandbox``: build in this one (e.g. a wire sandbox's, with ``s2s`` doing the S2S steps right
    after the organization exists, and ``test=False`` until its services have started).
    """
    if sandbox is None:
        kwargs: dict[str, Any] = {"seed": seed, "start": start, "jitter": jitter, "hostid": hostid}
        if db_url is not None:
            kwargs["db_url"] = db_url
        sandbox = Sandbox(**kwargs)
    sb = sandbox
    admin = sb.admin
    # The Exchange Online tenant: done for real by ``s2s`` (wire mode), or set as if SPEC 1.3 had run.
    admin.create_organization("Contoso", tenant_id=None if s2s else "11111111-2222-3333-4444-555555555555")
    if s2s is not None:
        s2s(sb)
    o = Org(sb, profile_id="")
    o.users[ALICE] = admin.add_user("Alice", ALICE, track=alice_track)
    o.users[BOB] = admin.add_user("Bob", BOB, track=bob_track)
    o.queues[SUPPORT] = admin.add_queue("Support", SUPPORT, owner=ADMIN)
    o.records[CARL] = admin.add_record("contact", "Carl", CARL)
    o.records[FABRIKAM] = admin.add_record("account", "Fabrikam", FABRIKAM)
    o.records[LENA] = admin.add_record("lead", "Lena", LENA)
    if org:
        admin.update_org(ADMIN, **org)
    fields = {"name": "Exchange Online", "processemailsreceivedafter": as_utc(start) - timedelta(days=1)}
    fields.update(profile or {})
    o.profile_id = admin.create_profile(ADMIN, **fields)
    admin.set_default_profile(ADMIN, o.profile_id)
    o.mailboxes = {m.emailaddress: m.mailboxid for m in admin.mailboxes()}
    ids = list(o.mailboxes.values())
    admin.apply_default_settings(ADMIN, ids)
    if approve:
        admin.approve(ADMIN, ids)
    if test:
        o.test_results = run(admin.test_and_enable(ADMIN, ids))
    return o
