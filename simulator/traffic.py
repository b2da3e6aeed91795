"""Seeded mail traffic for a sandbox.

A :class:`TrafficPlan` places events on the sandbox's agenda: inbound mail from contacts and
strangers, replies to email the CRM sent (by In-Reply-To or by tracking token), email the CRM
users send, and the awkward cases a real mailbox sees — mail received before the "process email
from" date, a duplicate, a malformed message. Every choice comes from the generator it is given,
so the same seed gives the same traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from engine.ports import ACT_FOLDERS, TRACKED_CATEGORY, ActItem
from simulator.crm import act_sync
from simulator.crm.models import Email, EmailStatus
from simulator.exchange.direct import change_act_item, save_act_item
from simulator.exchange.mime import MessageData

SUBJECTS = (
    "Quote for the spring order", "Meeting next week", "Invoice 4411", "Question about the contract",
    "Delivery schedule", "Support request: login fails", "Renewal terms", "Price list 2026",
    "Follow-up on our call", "Samples arrived", "Change of address", "Project kick-off",
)
BODIES = (
    "Hello,\n\nplease find the details below.\n\nBest regards",
    "Hi,\n\ncould you confirm by Friday?\n\nThanks",
    "Dear team,\n\nthe attached figures are final.\n\nKind regards",
    "Good morning,\n\nas discussed, here is the summary.\n",
)


@dataclass
class TrafficMix:
    inbound_per_mailbox_day: float = 6.0  # mail from contacts and strangers, per mailbox per day
    stranger_share: float = 0.25  # of inbound mail, from addresses the CRM does not know
    outgoing_per_user_day: float = 2.0  # email CRM users send
    reply_share: float = 0.5  # of sent email, answered by the recipient
    old_mail: int = 3  # messages received before the "process email from" date
    duplicates: int = 1  # messages delivered a second time (same Message-ID)
    malformed: int = 1  # messages whose headers are broken


@dataclass
class Party:
    address: str
    userid: str | None = None


class TrafficPlan:
    """Schedules seeded traffic on a sandbox between ``start`` and ``end``."""

    def __init__(self, sandbox, rng: random.Random, *, users: list[Party], queues: list[Party],
                 contacts: list[str], mix: TrafficMix | None = None, domain: str = "fabrikam.example",
                 act_per_user_day: float = 0.0) -> None:
        # act_per_user_day: appointments, contacts and tasks made or changed per user per day, in the CRM or
        # in Exchange (0: none; its choices come from a generator of their own, so mail traffic stays the same)
        self.act_per_user_day = act_per_user_day
        self.sb = sandbox
        self.rng = rng
        self.users = users
        self.queues = queues
        self.contacts = contacts
        self.mix = mix or TrafficMix()
        self.domain = domain
        self._n = 0
        self.counts: dict[str, int] = {}

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _message_id(self, sender: str) -> str:
        self._n += 1
        return f"{self._n:08d}.{self.rng.getrandbits(40):010x}@{sender.split('@')[-1]}"

    def _times(self, start: datetime, end: datetime, per_day: float) -> list[datetime]:
        span = (end - start).total_seconds()
        n = int(per_day * span / 86400.0)
        if self.rng.random() < (per_day * span / 86400.0) - n:
            n += 1
        return sorted(start + timedelta(seconds=self.rng.uniform(0, span)) for _ in range(n))

    def schedule(self, start: datetime, end: datetime, *, process_from: datetime | None = None) -> None:
        mailboxes = self.users + self.queues
        for box in mailboxes:
            for when in self._times(start, end, self.mix.inbound_per_mailbox_day):
                stranger = self.rng.random() < self.mix.stranger_share or not self.contacts
                sender = (f"someone{self.rng.randrange(1000)}@{self.domain}" if stranger
                          else self.rng.choice(self.contacts))
                self.sb.at(when, self._inbound(box.address, sender))
        for user in self.users:
            for when in self._times(start, end, self.mix.outgoing_per_user_day):
                if self.contacts:
                    self.sb.at(when, self._outgoing(user, self.rng.choice(self.contacts)))
                    if self.rng.random() < self.mix.reply_share:
                        later = when + timedelta(minutes=self.rng.uniform(20, 240))
                        if later < end:
                            self.sb.at(later, self._reply(self.rng.random() < 0.5))
        span = (end - start).total_seconds()
        if process_from is not None and mailboxes:
            for _ in range(self.mix.old_mail):
                box = self.rng.choice(mailboxes)
                received = process_from - timedelta(hours=self.rng.uniform(1, 72))
                self.sb.at(start, self._inbound(box.address, self.rng.choice(self.contacts or [f"old@{self.domain}"]),
                                                received=received, kind="old"))
        for _ in range(self.mix.duplicates):
            if mailboxes:  # a queue tracks all mail, so its copy of a duplicate shows as one
                box = self.rng.choice(self.queues or mailboxes)
                when = start + timedelta(seconds=self.rng.uniform(0, span / 2))
                self.sb.at(when, self._duplicate(box.address, when + timedelta(minutes=self.rng.uniform(15, 90))))
        for _ in range(self.mix.malformed):
            if mailboxes:
                box = self.rng.choice(mailboxes)
                self.sb.at(start + timedelta(seconds=self.rng.uniform(0, span)), self._malformed(box.address))
        if self.act_per_user_day > 0 and self.users:
            # seeded from where the plan's generator stands, without drawing from it (mail stays the same)
            self.act_rng = random.Random("act-" + repr(self.rng.getstate()))
            main, self.rng = self.rng, self.act_rng
            try:
                for user in self.users:
                    for when in self._times(start, end, self.act_per_user_day):
                        self.sb.at(when, self._act(user))
            finally:
                self.rng = main

    # -- the events ------------------------------------------------------------------------
    def _data(self, sender: str, to: str, subject: str | None = None) -> MessageData:
        return MessageData(subject=subject or self.rng.choice(SUBJECTS), sender=sender, to=(to,),
                           message_id=self._message_id(sender), body=self.rng.choice(BODIES),
                           date=self.sb.clock.now())

    def _inbound(self, to: str, sender: str, *, received: datetime | None = None, kind: str = "inbound"):
        def run() -> None:
            self._count(kind)
            self.sb.deliver(self._data(sender, to), [to], received=received)
        return run

    def _duplicate(self, to: str, again: datetime):
        def run() -> None:
            data = self._data(self.rng.choice(self.contacts or [f"dup@{self.domain}"]), to)
            self._count("duplicate")
            self.sb.deliver(data, [to])
            self.sb.at(again, lambda: self.sb.deliver(data, [to]))
        return run

    def _malformed(self, to: str):
        def run() -> None:
            self._count("malformed")
            raw = (b"Subject: broken message\r\nTo: " + to.encode() +
                   b"\r\nDate: not a date at all\r\n\r\nThis message has no sender and an unreadable date.\r\n")
            self.sb.deliver(raw, [to])
        return run

    def _outgoing(self, user: Party, contact: str):
        def run() -> None:
            self._count("outgoing")
            aid = self.sb.crm.create_email(sender_userid=user.userid, to=[contact], subject=self.rng.choice(SUBJECTS),
                                           body=self.rng.choice(BODIES))
            self.sb.crm.send_email(aid)
        return run

    def _reply(self, by_token: bool):
        def run() -> None:
            E = Email.__table__
            with self.sb.db.connect() as conn:
                sent = conn.execute(select(E.c.messageid, E.c.subject, E.c.sender, E.c.torecipients)
                                    .where(E.c.statuscode == EmailStatus.SENT, E.c.directioncode.is_(True))
                                    .order_by(E.c.senton, E.c.activityid)).all()
            if not sent:
                return
            message_id, subject, sender, to = self.rng.choice(sent)
            replier = (to or "").split(";")[0]
            if not replier or not sender:
                return
            data = self._data(replier, sender, subject=f"RE: {subject}")
            if not by_token:
                data.in_reply_to = message_id
                data.references = (message_id,)
                data.subject = "RE: " + (subject or "").rsplit(" CRM:", 1)[0]
            self._count("reply")
            self.sb.deliver(data, [sender])
        return run

    # -- appointments, contacts and tasks (ACT) --------------------------------------------------------
    def _act(self, user: Party):
        """One change a user makes: a meeting, contact or task made in the CRM or (tracked) in Outlook, or
        a field of an existing one changed on either side."""
        def run() -> None:
            rng = self.act_rng
            now = self.sb.clock.now()
            kind = rng.choice(("appointment", "contact", "task"))
            start = (now + timedelta(days=rng.randint(1, 14))).replace(minute=0, second=0, microsecond=0)
            fields = {
                "appointment": {"subject": rng.choice(SUBJECTS), "location": rng.choice(ROOMS),
                                "scheduledstart": start, "scheduledend": start + timedelta(hours=1)},
                "contact": {"firstname": rng.choice(FIRST_NAMES), "lastname": rng.choice(LAST_NAMES),
                            "jobtitle": rng.choice(JOB_TITLES)},
                "task": {"subject": rng.choice(SUBJECTS), "scheduledend": start, "percentcomplete": 0},
            }[kind]
            action = rng.choice(("crm", "crm", "outlook", "edit-crm", "edit-outlook"))
            text = {"appointment": "location", "contact": "jobtitle", "task": "subject"}[kind]
            if action == "crm":
                self._count(f"act_{kind}_crm")
                if kind == "appointment":
                    fields["organizer"] = user.userid
                with self.sb.db.begin() as conn:
                    act_sync.create_row(conn, kind, self.sb.crm.ids.new(), user.userid, fields, now)
            elif action == "outlook" and kind != "contact":
                self._count(f"act_{kind}_outlook")
                save_act_item(self.sb.store, user.address, ActItem(kind, fields, categories=(TRACKED_CATEGORY,)))
            elif action == "edit-crm":
                table, key = act_sync.TABLES[kind]
                with self.sb.db.begin() as conn:
                    ids = conn.execute(select(key).where(table.c.ownerid == user.userid).order_by(key)).scalars().all()
                    if ids:
                        self._count("act_edit_crm")
                        value = rng.choice(ROOMS if kind == "appointment" else JOB_TITLES if kind == "contact"
                                           else SUBJECTS)
                        act_sync.update_row(conn, kind, rng.choice(ids), {text: value}, now)
            elif action == "edit-outlook":
                items = sorted(self.sb.store.mailbox(user.address).folder(ACT_FOLDERS[kind]).items)
                if items:
                    self._count("act_edit_outlook")
                    value = rng.choice(ROOMS if kind == "appointment" else JOB_TITLES if kind == "contact"
                                       else SUBJECTS)
                    change_act_item(self.sb.store, user.address, ActItem(kind, {text: value}, rng.choice(items)))
        return run


ROOMS = ("Room 1", "Room 2", "Board room", "Cafe", "Online")
FIRST_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo")
LAST_NAMES = ("Novak", "Okafor", "Price", "Quinn", "Rossi", "Sato", "Tanaka", "Umar")
JOB_TITLES = ("Buyer", "Engineer", "Director", "Accountant", "Consultant")
