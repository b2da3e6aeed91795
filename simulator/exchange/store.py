"""The fake Exchange Online store: mailboxes, folders, items and a change journal per folder.

One state serves both ways in: the in-process port (``direct.py``) and, later, the EWS
endpoint. Behaviour follows SPEC section 5: moving an item gives it a new id, folder ids are
stable, folder names are unique per parent, FindItem pages hold at most 1000 items, sending is
limited to 30 messages a minute and 10,000 recipients a day, and each mailbox carries the id of
the organization that syncs its appointments, contacts and tasks.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine.clock import Clock
from engine.ports import ActOrgClaim, ItemProperties
from simulator.exchange.mime import MessageData, normalize_address, parse_message

DISTINGUISHED = ("inbox", "sentitems", "drafts", "deleteditems", "outbox", "calendar", "contacts", "tasks")
DISPLAY_NAMES = {
    "msgfolderroot": "Top of Information Store",
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "outbox": "Outbox",
    "calendar": "Calendar",
    "contacts": "Contacts",
    "tasks": "Tasks",
}
FIND_PAGE_MAX = 1000
SEND_PER_MINUTE = 30
RECIPIENTS_PER_DAY = 10_000
MAX_MESSAGE_BYTES = 150 * 1024 * 1024
_ONE_US = timedelta(microseconds=1)


class StoreError(Exception):
    """An Exchange error, named by its EWS response code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class IdSource:
    """Deterministic Exchange-looking ids: the same seed and calls give the same ids."""

    def __init__(self, seed: int = 0) -> None:
        self._counter = itertools.count(1)
        self._tag = f"{seed & 0xFFFFFFFF:08x}"

    def next(self, kind: str = "AAMk") -> str:
        return f"{kind}A{self._tag}{next(self._counter):012x}"


@dataclass(slots=True, eq=False)
class Item:
    item_id: str
    folder_id: str
    received: datetime
    data: MessageData
    seq: int
    categories: list[str] = field(default_factory=list)
    is_read: bool = False
    item_class: str = "IPM.Note"

    def properties(self, folder_kind: str = "inbox") -> ItemProperties:
        d = self.data
        return ItemProperties(
            item_id=self.item_id,
            received=self.received,
            message_id=d.message_id,
            subject=d.subject,
            sender=d.sender,
            to=d.to,
            cc=d.cc,
            in_reply_to=d.in_reply_to,
            references=d.references,
            thread_index=d.thread_index,
            body=d.body,
            size=d.size,
            date=d.date,
            categories=tuple(self.categories),
            parse_error=d.parse_error,
            folder=folder_kind,
        )


@dataclass(slots=True, eq=False)
class Folder:
    folder_id: str
    name: str
    parent_id: str | None
    distinguished: str | None = None
    items: dict[str, Item] = field(default_factory=dict)
    order: list[tuple[datetime, int]] = field(default_factory=list)  # (received, seq), sorted
    by_order: dict[int, str] = field(default_factory=dict)  # seq -> item id
    journal: list[tuple[str, str]] = field(default_factory=list)  # (change, item id), append-only

    def add(self, item: Item) -> None:
        self.items[item.item_id] = item
        key = (item.received, item.seq)
        if not self.order or key > self.order[-1]:
            self.order.append(key)
        else:
            bisect.insort(self.order, key)
        self.by_order[item.seq] = item.item_id
        self.journal.append(("create", item.item_id))

    def remove(self, item: Item) -> None:
        del self.items[item.item_id]
        key = (item.received, item.seq)
        i = bisect.bisect_left(self.order, key)
        if i < len(self.order) and self.order[i] == key:
            self.order.pop(i)
        self.by_order.pop(item.seq, None)
        self.journal.append(("delete", item.item_id))

    def after(self, when: datetime | None, limit: int) -> list[Item]:
        """Items received strictly after ``when``, oldest first, at most ``limit``."""
        order = self.order
        if when is None:
            start = 0
        else:
            if not order or order[-1][0] <= when:
                return []
            start = bisect.bisect_right(order, (when, float("inf")))
        keys = order[start : start + limit]
        return [self.items[self.by_order[seq]] for _, seq in keys]


@dataclass(slots=True, eq=False)
class ExchangeMailbox:
    address: str
    display_name: str
    root_id: str
    folders: dict[str, Folder] = field(default_factory=dict)
    distinguished: dict[str, str] = field(default_factory=dict)  # name -> folder id
    item_folder: dict[str, str] = field(default_factory=dict)  # item id -> folder id
    act_org_id: str | None = None  # SPEC 1.11: the organization that syncs ACT
    act_org_stamped_on: datetime | None = None
    sent_times: deque = field(default_factory=deque)
    recipients_day: list = field(default_factory=lambda: [None, 0])  # [date, count]
    last_inbox_received: datetime | None = None

    def folder(self, folder_ref: str) -> Folder:
        folder_id = self.distinguished.get(folder_ref, folder_ref)
        folder = self.folders.get(folder_id)
        if folder is None:
            raise StoreError("ErrorFolderNotFound", f"folder {folder_ref!r} does not exist in {self.address}")
        return folder

    def item(self, item_id: str) -> Item:
        folder_id = self.item_folder.get(item_id)
        if folder_id is None:
            raise StoreError("ErrorItemNotFound", f"item {item_id!r} does not exist in {self.address}")
        return self.folders[folder_id].items[item_id]


class ExchangeStore:
    """All Exchange Online mailboxes of the sandbox."""

    def __init__(self, clock: Clock, ids: IdSource | None = None) -> None:
        self.clock = clock
        self.ids = ids or IdSource()
        self.mailboxes: dict[str, ExchangeMailbox] = {}
        self.outbound: list[tuple[str, tuple[str, ...], MessageData]] = []  # external mail sent
        self._seq = itertools.count(1)
        self._message_ids = itertools.count(1)

    # -- mailboxes and folders -------------------------------------------------------------
    def add_mailbox(self, address: str, display_name: str | None = None) -> ExchangeMailbox:
        address = address.strip().lower()
        if address in self.mailboxes:
            return self.mailboxes[address]
        root = Folder(self.ids.next("AAMkF"), DISPLAY_NAMES["msgfolderroot"], None, "msgfolderroot")
        mbx = ExchangeMailbox(address, display_name or address, root.folder_id)
        mbx.folders[root.folder_id] = root
        mbx.distinguished["msgfolderroot"] = root.folder_id
        for name in DISTINGUISHED:
            folder = Folder(self.ids.next("AAMkF"), DISPLAY_NAMES[name], root.folder_id, name)
            mbx.folders[folder.folder_id] = folder
            mbx.distinguished[name] = folder.folder_id
        self.mailboxes[address] = mbx
        return mbx

    def mailbox(self, address: str) -> ExchangeMailbox:
        mbx = self.mailboxes.get(address.strip().lower())
        if mbx is None:
            raise StoreError("ErrorNonExistentMailbox", f"no mailbox has the address {address!r}")
        return mbx

    def create_folder(self, address: str, parent: str, name: str) -> Folder:
        mbx = self.mailbox(address)
        parent_folder = mbx.folder(parent)
        name = name.strip()
        if not name:
            raise StoreError("ErrorInvalidFolderName", "a folder needs a name")
        if self.find_child(address, parent, name) is not None:
            raise StoreError("ErrorFolderExists", f"{parent_folder.name!r} already has a folder named {name!r}")
        folder = Folder(self.ids.next("AAMkF"), name, parent_folder.folder_id)
        mbx.folders[folder.folder_id] = folder
        return folder

    def find_child(self, address: str, parent: str, name: str) -> Folder | None:
        mbx = self.mailbox(address)
        parent_id = mbx.folder(parent).folder_id
        lowered = name.strip().lower()
        for folder in mbx.folders.values():
            if folder.parent_id == parent_id and folder.name.lower() == lowered:
                return folder
        return None

    def child_folders(self, address: str, parent: str) -> list[Folder]:
        mbx = self.mailbox(address)
        parent_id = mbx.folder(parent).folder_id
        return [f for f in mbx.folders.values() if f.parent_id == parent_id]

    def delete_folder(self, address: str, folder_ref: str) -> None:
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        if folder.distinguished:
            raise StoreError("ErrorDeleteDistinguishedFolder", f"{folder.name!r} is a distinguished folder")
        for child in list(mbx.folders.values()):
            if child.parent_id == folder.folder_id:
                self.delete_folder(address, child.folder_id)
        for item_id in list(folder.items):
            mbx.item_folder.pop(item_id, None)
        del mbx.folders[folder.folder_id]

    # -- the ACT organization claim (SPEC 1.11) ---------------------------------------------
    def act_org(self, address: str) -> ActOrgClaim | None:
        """The organization that syncs the mailbox's ACT and when it last stamped it (None: unclaimed)."""
        mbx = self.mailbox(address)
        if mbx.act_org_id is None:
            return None
        return ActOrgClaim(mbx.act_org_id, mbx.act_org_stamped_on)

    def stamp_act_org(self, address: str, org_id: str, stamped_on: datetime | None = None) -> ActOrgClaim:
        """Stamp ``org_id`` on the mailbox, replacing any claim; the time is the clock's now unless given."""
        mbx = self.mailbox(address)
        if not isinstance(org_id, str) or not org_id.strip():
            raise StoreError("ErrorInvalidValueForProperty", "an organization claim needs an organization id")
        mbx.act_org_id = org_id.strip()
        mbx.act_org_stamped_on = stamped_on if stamped_on is not None else self.clock.now()
        return ActOrgClaim(mbx.act_org_id, mbx.act_org_stamped_on)

    def clear_act_org(self, address: str) -> None:
        """Remove the claim: no organization syncs the mailbox's ACT any more."""
        mbx = self.mailbox(address)
        mbx.act_org_id = None
        mbx.act_org_stamped_on = None

    # -- items -----------------------------------------------------------------------------
    def _place(self, mbx: ExchangeMailbox, folder: Folder, data: MessageData, received: datetime,
               categories: list[str] | None = None, is_read: bool = False) -> Item:
        item = Item(self.ids.next(), folder.folder_id, received, data, next(self._seq),
                    list(categories or ()), is_read)
        folder.add(item)
        mbx.item_folder[item.item_id] = folder.folder_id
        return item

    def _arrival_time(self, mbx: ExchangeMailbox, received: datetime | None) -> datetime:
        """Received time of a new Inbox item: the clock's now, kept unique per mailbox."""
        if received is not None:
            return received
        now = self.clock.now()
        last = mbx.last_inbox_received
        if last is not None and now <= last:
            now = last + _ONE_US
        mbx.last_inbox_received = now
        return now

    def deliver(self, message: MessageData | bytes, recipients: list[str] | tuple[str, ...] | None = None,
                received: datetime | None = None) -> dict[str, str]:
        """Deliver a message to the Inbox of each local recipient.

        ``recipients`` defaults to the message's To, Cc and Bcc. ``received`` sets an explicit
        received time (mail that arrived earlier); by default it is the clock's now. Returns
        ``{address: item id}`` for the local recipients; the others are recorded as outbound.
        """
        data = parse_message(message) if isinstance(message, bytes) else message
        if data.size == 0:
            data.size = len(data.body.encode("utf-8", "replace")) + 200
        if recipients is None:
            recipients = data.to + data.cc + data.bcc
        delivered: dict[str, str] = {}
        external: list[str] = []
        for rcpt in recipients:
            addr = normalize_address(rcpt)
            if addr is None or addr in delivered:
                continue
            mbx = self.mailboxes.get(addr)
            if mbx is None:
                external.append(addr)
                continue
            inbox = mbx.folders[mbx.distinguished["inbox"]]
            item = self._place(mbx, inbox, data, self._arrival_time(mbx, received))
            delivered[addr] = item.item_id
        if external:
            self.outbound.append((data.sender or "", tuple(external), data))
        return delivered

    def find(self, address: str, folder: str, after: datetime | None, limit: int = FIND_PAGE_MAX) -> list[Item]:
        mbx = self.mailbox(address)
        return mbx.folder(folder).after(after, min(limit, FIND_PAGE_MAX))

    def get(self, address: str, item_id: str) -> Item:
        return self.mailbox(address).item(item_id)

    def move(self, address: str, item_id: str, dest_folder: str, *, copy: bool = False) -> str:
        """Move (or copy) an item; the item in the destination has a new id."""
        mbx = self.mailbox(address)
        item = mbx.item(item_id)
        dest = mbx.folder(dest_folder)
        if not copy:
            src = mbx.folders[item.folder_id]
            src.remove(item)
            del mbx.item_folder[item.item_id]
        moved = self._place(mbx, dest, item.data, item.received, item.categories, item.is_read)
        return moved.item_id

    def delete(self, address: str, item_id: str) -> None:
        mbx = self.mailbox(address)
        item = mbx.item(item_id)
        mbx.folders[item.folder_id].remove(item)
        del mbx.item_folder[item.item_id]

    def update(self, address: str, item_id: str, *, categories: list[str] | None = None,
               is_read: bool | None = None) -> Item:
        mbx = self.mailbox(address)
        item = mbx.item(item_id)
        if categories is not None:
            item.categories = list(dict.fromkeys(categories))
        if is_read is not None:
            item.is_read = is_read
        mbx.folders[item.folder_id].journal.append(("update", item.item_id))
        return item

    # -- sending ---------------------------------------------------------------------------
    def new_message_id(self, address: str) -> str:
        domain = address.split("@", 1)[-1] if "@" in address else "sandbox.test"
        return f"{next(self._message_ids):010d}.{self.ids.next('M')[-12:]}@{domain}"

    def send(self, address: str, data: MessageData, *, save_copy: bool = True) -> tuple[str, str | None]:
        """Submit a message from ``address``: quota checks, delivery, a copy in Sent Items.

        Returns ``(message id, id of the Sent Items copy or None)``.
        """
        mbx = self.mailbox(address)
        now = self.clock.now()
        recipients = [a for a in (normalize_address(r) for r in data.to + data.cc + data.bcc) if a]
        if not recipients:
            raise StoreError("ErrorInvalidRecipients", "the message has no valid recipient")
        window = mbx.sent_times
        while window and (now - window[0]).total_seconds() >= 60:
            window.popleft()
        if len(window) >= SEND_PER_MINUTE:
            raise StoreError("ErrorSubmissionQuotaExceeded",
                             f"{address} already sent {SEND_PER_MINUTE} messages in the last minute")
        day = mbx.recipients_day
        if day[0] != now.date():
            day[0], day[1] = now.date(), 0
        if day[1] + len(recipients) > RECIPIENTS_PER_DAY:
            raise StoreError("ErrorSubmissionQuotaExceeded",
                             f"{address} would exceed {RECIPIENTS_PER_DAY} recipients today")
        window.append(now)
        day[1] += len(recipients)
        data.sender = data.sender or address
        if not data.message_id:
            data.message_id = self.new_message_id(address)
        if data.date is None:
            data.date = now
        sent_id = None
        if save_copy:
            sent = mbx.folders[mbx.distinguished["sentitems"]]
            sent_id = self._place(mbx, sent, data, now, is_read=True).item_id
        self.deliver(data, recipients)
        return data.message_id, sent_id
