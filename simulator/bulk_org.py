"""An organization of many mailboxes built in bulk, and seeded mail for it.

Setting up thousands of mailboxes one by one through the administrator's operations (Test &
Enable included) would take longer than the run that follows, so this writes the rows the
operations would have left behind, in a few inserts: users with mailboxes that are approved, on an
email server profile, on server-side synchronization for incoming and outgoing email, tested and
enabled (statuses Success, due now, the watermark at the profile's "process email from" date), and a
contact per ten users. The organization and its profiles are still made by the administrator's
operations, so their checks apply.

:func:`schedule_traffic` puts seeded inbound mail on the sandbox's agenda (one delivery batch per
simulated minute); :func:`schedule_sends` has the users send email from the CRM. A daily shape
(:data:`DAILY_SHAPES`) spreads a day's mail over its hours.

Used by the engine's throughput benchmark (``benchmarks/simulation.py``) and by ``sss capacity``
(:mod:`simulator.capacity`).
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import insert

from engine.ports import Approval, IncomingMethod, OutgoingMethod, Status
from simulator.crm.models import Contact, Mailbox, SystemUser, TrackSetting
from simulator.exchange.mime import MessageData
from simulator.sandbox import Sandbox

DOMAIN = "contoso.example"
PARTNER_DOMAIN = "fabrikam.example"
CC_SHARE = 0.05  # messages also copied to a second user (that copy is a duplicate)
PROFILE_NAME = "Exchange Online"

# The share of a day's mail that arrives in each hour (0-23, sandbox time, UTC). None: the same in
# every minute.
_OFFICE = tuple(0.85 / 10 if 8 <= h < 18 else 0.15 / 14 for h in range(24))
DAILY_SHAPES: dict[str, tuple[float, ...] | None] = {
    "flat": None,
    "office": _OFFICE,  # 85 % of the day's mail from 08:00 to 18:00, the rest spread over the night
}


@dataclass
class BulkOrg:
    """What :func:`build` made, and the counters of the traffic scheduled on it."""

    sandbox: Sandbox
    addresses: list[str]
    contacts: list[str]
    profiles: list[str] = field(default_factory=list)  # profile ids, the default one first
    profile_names: list[str] = field(default_factory=list)
    profile_of: dict[str, int] = field(default_factory=dict)  # mailbox address -> index in ``profiles``
    userids: list[str] = field(default_factory=list)
    messages: int = 0  # inbound messages scheduled
    delivered_items: int = 0  # Inbox items placed so far (a message copied to two users is two items)
    sends_scheduled: int = 0
    sends_queued: int = 0  # emails the users have sent so far (Pending Send until the engine submits them)


BUILD_CHUNK = 10_000  # mailboxes written per transaction while building


def profile_name(index: int) -> str:
    return PROFILE_NAME if index == 0 else f"{PROFILE_NAME} {index + 1}"


def build(mailboxes: int, seed: int, db_url: str, *, profiles: int = 1,
          profile_fields: dict[str, Any] | None = None, first_cycle_within_s: float = 0.0,
          record_events: bool = False) -> BulkOrg:
    """An organization with ``mailboxes`` tested-and-enabled user mailboxes, in bulk, split evenly
    (in blocks, in address order) over ``profiles`` email server profiles made with
    ``profile_fields`` (e.g. ``minpollingintervalinminutes``); the first is the default.

    Every mailbox is due at once, unless ``first_cycle_within_s`` spreads the first cycles over that
    many seconds (seeded), as if the mailboxes had been enabled a while before."""
    sb = Sandbox(db_url=db_url, seed=seed, record_events=record_events)
    admin = sb.admin
    admin.create_organization("Contoso", tenant_id=f"tenant-{seed}")
    now = sb.clock.now()
    profile_date = now - timedelta(days=1)
    pids = [admin.create_profile("admin", name=profile_name(i), processemailsreceivedafter=profile_date,
                                 **(profile_fields or {}))
            for i in range(profiles)]
    admin.set_default_profile("admin", pids[0])

    ids = sb.ids
    spread = random.Random(f"first-cycle-{seed}")
    addresses, userids, profile_of = [], [], {}
    # In chunks, so that a million mailboxes do not hold a million row dicts (and one journal row
    # of a million Exchange mailboxes) in memory at once; the ids are drawn in the same order.
    for first in range(0, mailboxes, BUILD_CHUNK):
        users, boxes = [], []
        for i in range(first, min(first + BUILD_CHUNK, mailboxes)):
            due = now + timedelta(seconds=spread.uniform(0, first_cycle_within_s)) if first_cycle_within_s else now
            uid = ids.new()
            addr = f"user{i:06d}@{DOMAIN}"
            addresses.append(addr)
            userids.append(uid)
            p = i * profiles // mailboxes
            profile_of[addr] = p
            users.append(dict(systemuserid=uid, fullname=f"User {i}", domainname=f"user{i:06d}",
                              internalemailaddress=addr, isdisabled=False,
                              incomingemailfilteringmethod=int(TrackSetting.ALL)))
            boxes.append(dict(
                mailboxid=ids.new(), name=f"User {i}", emailaddress=addr, ownerid=uid, regardingobjectid=uid,
                regardingobjecttypecode="systemuser", emailserverprofile=pids[p],
                incomingemaildeliverymethod=int(IncomingMethod.SSS), outgoingemaildeliverymethod=int(OutgoingMethod.SSS),
                emailrouteraccessapproval=int(Approval.APPROVED),
                incomingemailstatus=int(Status.SUCCESS), outgoingemailstatus=int(Status.SUCCESS),
                mailboxstatus=int(Status.SUCCESS), enabledforincomingemail=True, enabledforoutgoingemail=True,
                testmailboxaccesscompletedon=now, processemailreceivedafter=profile_date,
                receivingpostponeduntil=due, postponesendinguntil=due, postponemailboxprocessinguntil=due,
            ))
        with sb.db.begin() as conn:
            conn.execute(insert(SystemUser.__table__), users)
            conn.execute(insert(Mailbox.__table__), boxes)
        with sb.store.operation():  # one journal row per chunk
            for addr in addresses[first:]:
                sb.store.add_mailbox(addr)
    contacts = [f"contact{i:06d}@{PARTNER_DOMAIN}" for i in range(max(1, mailboxes // 10))]
    with sb.db.begin() as conn:
        conn.execute(insert(Contact.__table__), [
            dict(contactid=ids.new(), fullname=f"Contact {i}", emailaddress1=addr) for i, addr in enumerate(contacts)
        ])
    sb.crm.invalidate_directory()
    return BulkOrg(sb, addresses, contacts, pids, [profile_name(i) for i in range(profiles)], profile_of, userids)


def _minutes(hours: float, per_day: float, count: int, shape: str, start_hour: float) -> tuple[int, int, Any]:
    """(minutes in the run, messages, a function drawing a message's minute from a generator)."""
    minutes = max(1, int(hours * 60))
    weights = DAILY_SHAPES[shape]
    if weights is None:
        return minutes, round(count * per_day * hours / 24), lambda rng: rng.randrange(minutes)
    per_minute = [weights[int((start_hour * 60 + m) // 60) % 24] / 60 for m in range(minutes)]
    cumulative = list(itertools.accumulate(per_minute))
    total = cumulative[-1]
    return minutes, round(count * per_day * total), \
        lambda rng: min(bisect.bisect_right(cumulative, rng.random() * total), minutes - 1)


def schedule_traffic(org: BulkOrg, hours: float, per_mailbox_day: float, seed: int, shape: str = "flat") -> None:
    """Seeded inbound mail from the contacts, delivered in one batch per simulated minute over the period.

    Each mailbox receives ``per_mailbox_day`` messages a day on average, spread by ``shape``; one
    message in twenty is copied to a second user."""
    sb = org.sandbox
    rng = random.Random(f"traffic-{seed}")
    start = sb.clock.now()
    _, total, pick_minute = _minutes(hours, per_mailbox_day, len(org.addresses), shape,
                                     start.hour + start.minute / 60)
    # The plan keeps what was drawn (a small tuple of shared strings); each message is made when
    # its minute comes, so a long run does not hold every message it will deliver from the start.
    buckets: dict[int, list[tuple[int, str, tuple[str, ...], str]]] = {}
    for n in range(total):
        to = rng.choice(org.addresses)
        cc = (rng.choice(org.addresses),) if rng.random() < CC_SHARE else ()
        sender = rng.choice(org.contacts)
        buckets.setdefault(pick_minute(rng), []).append((n, to, cc, sender))
    org.messages += total

    def batch(minute: int, drawn: list[tuple[int, str, tuple[str, ...], str]]):
        def deliver() -> None:
            placed = 0
            date = start + timedelta(minutes=minute)
            with sb.store.operation():  # the minute's batch is one transaction of the journal
                for n, to, cc, sender in drawn:
                    placed += len(sb.store.deliver(MessageData(
                        subject=f"Order {n}: question about delivery", sender=sender, to=(to,), cc=cc,
                        message_id=f"{n:08d}.{seed}@{PARTNER_DOMAIN}", date=date,
                        body=f"Hello, could you confirm the delivery date of order {n}? Thanks.",
                    )))
            org.delivered_items += placed
        return deliver

    for minute in sorted(buckets):
        sb.at(start + timedelta(minutes=minute, seconds=1), batch(minute, buckets[minute]))


def schedule_sends(org: BulkOrg, hours: float, per_mailbox_day: float, seed: int, shape: str = "flat") -> None:
    """Seeded email the users send from the CRM to the contacts (each becomes Pending Send, for the
    engine's outgoing cycle), created in one batch per simulated minute and spread by ``shape``."""
    sb = org.sandbox
    rng = random.Random(f"sends-{seed}")
    start = sb.clock.now()
    _, total, pick_minute = _minutes(hours, per_mailbox_day, len(org.addresses), shape,
                                     start.hour + start.minute / 60)
    buckets: dict[int, list[tuple[str, str, int]]] = {}
    for n in range(total):
        sender = rng.randrange(len(org.userids))
        buckets.setdefault(pick_minute(rng), []).append((org.userids[sender], rng.choice(org.contacts), n))
    org.sends_scheduled += total

    def batch(sends: list[tuple[str, str, int]]):
        def send() -> None:
            for userid, contact, n in sends:
                aid = sb.crm.create_email(sender_userid=userid, to=[contact], subject=f"Offer {n}",
                                          body=f"Hello, here is the offer {n} we spoke about.")
                sb.crm.send_email(aid)
                org.sends_queued += 1
        return send

    for minute in sorted(buckets):
        sb.at(start + timedelta(minutes=minute, seconds=2), batch(buckets[minute]))
