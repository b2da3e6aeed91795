"""Shared helpers of the test suite: build a small organization the way an administrator does.

``build_org`` walks the setup flow of SPEC section 1 through the sandbox's admin operations
(organization, users, queue, records, profile, default settings, approval, Test & Enable) and
returns an :class:`Org` with shortcuts to read the CRM tables and the event log.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from engine.clock import as_utc
from simulator.crm.models import Email, EmailServerProfile, ExchangeSyncIdMapping, Mailbox, TraceLog
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

    # -- acting --------------------------------------------------------------------------------
    def deliver(self, message: MessageData | bytes, recipients: list[str] | None = None,
                received: datetime | None = None) -> dict[str, str]:
        return self.sb.deliver(message, recipients, received)

    def run_for(self, seconds: float) -> None:
        run(self.sb.run_for(seconds))

    def test_and_enable(self, addresses: list[str], **kw: Any):
        return run(self.sb.admin.test_and_enable(ADMIN, [self.mailboxes[a] for a in addresses], **kw))


def build_org(seed: int = 0, *, profile: dict[str, Any] | None = None, org: dict[str, Any] | None = None,
              approve: bool = True, test: bool = True, alice_track: int = 0, bob_track: int = 1,
              db_url: str | None = None, start: datetime = START, jitter: bool = False,
              hostid: str = "sss-host-1") -> Org:
    """A small organization, set up through the admin operations a user calls.

    Users alice (track all) and bob (track replies), a queue support@ owned by the admin, a
    contact, an account and a lead; one Exchange Online profile ("process email from" one day
    before the start, minimum polling interval 5 minutes unless ``profile`` says otherwise),
    the org defaults applied to every mailbox, approved and tested & enabled.
    """
    kwargs: dict[str, Any] = {"seed": seed, "start": start, "jitter": jitter, "hostid": hostid}
    if db_url is not None:
        kwargs["db_url"] = db_url
    sb = Sandbox(**kwargs)
    admin = sb.admin
    admin.create_organization("Contoso", tenant_id="11111111-2222-3333-4444-555555555555")
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
