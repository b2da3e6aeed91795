"""The fake Exchange Online store: mailboxes, folders, items and a change journal per folder.

One state serves both ways in: the in-process port (``direct.py``) and, later, the EWS
endpoint. Behaviour follows SPEC section 5: moving an item gives it a new id, folder ids are
stable, folder names are unique per parent, FindItem pages hold at most 1000 items, sending is
limited to 30 messages a minute and 10,000 recipients a day, and each mailbox carries the id of
the organization that syncs its appointments, contacts and tasks.

Every change is an *event* (a small JSON-able dict) applied by :meth:`ExchangeStore.apply`, the
same code whether the change is made now or replayed from the database's journal
(``simulator/world.py``): the in-memory store is a view of that journal. A store with no
``journal`` (a bare store in a unit test) just applies its events.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.clock import Clock, parse_instant
from engine.ports import ActOrgClaim, ItemProperties
from simulator.exchange.mime import MessageData, normalize_address, parse_message
from simulator.exchange.spill import SPILL

DISTINGUISHED = ("inbox", "sentitems", "drafts", "deleteditems", "outbox", "calendar", "contacts", "tasks")


@dataclass(frozen=True, slots=True)
class FolderSpec:
    """A folder every Exchange Online mailbox has: its key (the distinguished folder id, or a name
    of the simulator's for a folder that has none), display name, parent's key and folder class."""

    key: str
    name: str
    parent: str | None
    folder_class: str | None = None
    distinguished: bool = True


# The folders of a new mailbox. The first ten are made with the mailbox (its "mbx" event names them);
# the others hold nothing the engine uses and are made in memory when a client first looks at the
# mailbox's folders (:meth:`ExchangeMailbox.full_tree`), with ids derived from the root's id, so a
# large simulated organization does not pay for folders nobody opens.
MAILBOX_TREE: tuple[FolderSpec, ...] = (
    FolderSpec("root", "root", None),
    FolderSpec("msgfolderroot", "Top of Information Store", "root"),
    FolderSpec("inbox", "Inbox", "msgfolderroot", "IPF.Note"),
    FolderSpec("sentitems", "Sent Items", "msgfolderroot", "IPF.Note"),
    FolderSpec("drafts", "Drafts", "msgfolderroot", "IPF.Note"),
    FolderSpec("deleteditems", "Deleted Items", "msgfolderroot", "IPF.Note"),
    FolderSpec("outbox", "Outbox", "msgfolderroot", "IPF.Note"),
    FolderSpec("calendar", "Calendar", "msgfolderroot", "IPF.Appointment"),
    FolderSpec("contacts", "Contacts", "msgfolderroot", "IPF.Contact"),
    FolderSpec("tasks", "Tasks", "msgfolderroot", "IPF.Task"),
    # -- made on first look --
    FolderSpec("junkemail", "Junk Email", "msgfolderroot", "IPF.Note"),
    FolderSpec("notes", "Notes", "msgfolderroot", "IPF.StickyNote"),
    FolderSpec("journal", "Journal", "msgfolderroot", "IPF.Journal"),
    FolderSpec("conversationhistory", "Conversation History", "msgfolderroot"),
    FolderSpec("syncissues", "Sync Issues", "msgfolderroot", "IPF.Note"),
    FolderSpec("conflicts", "Conflicts", "syncissues"),
    FolderSpec("localfailures", "Local Failures", "syncissues"),
    FolderSpec("serverfailures", "Server Failures", "syncissues"),
    FolderSpec("rssfeeds", "RSS Feeds", "msgfolderroot", "IPF.Note.OutlookHomepage", False),
    FolderSpec("conversationactions", "Conversation Action Settings", "msgfolderroot", "IPF.Configuration", False),
    FolderSpec("quicksteps", "Quick Step Settings", "msgfolderroot", "IPF.Configuration", False),
    FolderSpec("externalcontacts", "ExternalContacts", "msgfolderroot", "IPF.Contact", False),
    FolderSpec("personmetadata", "PersonMetadata", "msgfolderroot", "IPF.Contact", False),
    FolderSpec("galcontacts", "GAL Contacts", "contacts", "IPF.Contact.GalContacts", False),
    FolderSpec("recipientcache", "Recipient Cache", "contacts", "IPF.Contact.RecipientCache"),
    FolderSpec("companycontacts", "Companies", "contacts", "IPF.Contact.Company"),
    FolderSpec("orgcontacts", "Organizational Contacts", "contacts", "IPF.Contact.OrganizationalContacts", False),
    FolderSpec("peoplecentricconversationbuddies", "PeopleCentricConversation Buddies", "contacts",
               "IPF.Contact.PeopleCentricConversationBuddies"),
    FolderSpec("recoverableitemsroot", "Recoverable Items", "root"),
    FolderSpec("recoverableitemsdeletions", "Deletions", "recoverableitemsroot"),
    FolderSpec("recoverableitemspurges", "Purges", "recoverableitemsroot"),
    FolderSpec("recoverableitemsversions", "Versions", "recoverableitemsroot"),
    FolderSpec("calendarlogging", "Calendar Logging", "recoverableitemsroot", None, False),
    FolderSpec("searchfolders", "Finder", "root"),
    FolderSpec("allitems", "AllItems", "root", "IPF"),
    FolderSpec("allcontacts", "AllContacts", "root", "IPF.Note"),
    FolderSpec("allpersonmetadata", "AllPersonMetadata", "root", "IPF.Note"),
    FolderSpec("todosearch", "To-Do Search", "root", "IPF.Task"),
    FolderSpec("commonviews", "Common Views", "root", None, False),
    FolderSpec("deferredaction", "Deferred Action", "root", None, False),
    FolderSpec("exchangesyncdata", "ExchangeSyncData", "root", None, False),
    FolderSpec("freebusydata", "Freebusy Data", "root", None, False),
    FolderSpec("location", "Location", "root", None, False),
    FolderSpec("mailboxassociations", "MailboxAssociations", "root", None, False),
    FolderSpec("reminders", "Reminders", "root", "Outlook.Reminder", False),
    FolderSpec("schedule", "Schedule", "root", None, False),
    FolderSpec("sharing", "Sharing", "root", "IPF.Note", False),
    FolderSpec("shortcuts", "Shortcuts", "root", None, False),
    FolderSpec("spoolerqueue", "Spooler Queue", "root", None, False),
    FolderSpec("system", "System", "root", None, False),
    FolderSpec("views", "Views", "root", None, False),
)
FOLDER_SPECS = {spec.key: spec for spec in MAILBOX_TREE}
CORE_FOLDERS = tuple(spec.key for spec in MAILBOX_TREE[:10])  # made with the mailbox
SYSTEM_ID_PREFIX = "AAMkS"  # ids of the folders made on first look: prefix, index (2 hex digits), root id
# The class Exchange gives an item of each type when the client names none.
ITEM_CLASSES = {"Message": "IPM.Note", "Item": "IPM.Note", "CalendarItem": "IPM.Appointment",
                "Contact": "IPM.Contact", "DistributionList": "IPM.DistList", "Task": "IPM.Task",
                "PostItem": "IPM.Post"}
FIND_PAGE_MAX = 1000
SEND_PER_MINUTE = 30
RECIPIENTS_PER_DAY = 10_000
MAX_MESSAGE_BYTES = 150 * 1024 * 1024
_ONE_US = timedelta(microseconds=1)


SETTING_EVENTS = frozenset({"rules", "oof", "mvfld", "rnfld", "unsub", "subpos", "ucfg", "fprops"})


@dataclass(slots=True, eq=False)
class MailboxSettings:
    """What a mailbox keeps besides folders and items: its Inbox rules and Out of Office settings."""

    rules: list[dict] = field(default_factory=list)  # by priority
    oof: dict | None = None  # None: never set
    ended_subscriptions: set[str] = field(default_factory=set)  # notification subscriptions unsubscribed
    # user configurations (simulator.exchange.ews.user_config): folder id -> lower-case name -> record
    user_configs: dict[str, dict[str, dict]] = field(default_factory=dict)
    # streaming subscriptions: folder id -> how far into its change journal the events were delivered
    delivered: dict[str, dict[str, int]] = field(default_factory=dict)


def _folder_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise StoreError("ErrorInvalidFolderName", "a folder needs a name")
    return name


class StoreError(Exception):
    """An Exchange error, named by its EWS response code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _peek(counter: itertools.count) -> tuple[int, itertools.count]:
    """The next value of ``counter``, and a counter that still gives it next."""
    at = next(counter)
    return at, itertools.count(at)


class IdSource:
    """Deterministic Exchange-looking ids: the same seed, epoch and calls give the same ids.

    ``epoch`` is the number the world hands each process that opens it (``simulator/world.py``),
    so two processes on one database, or a process after a crash, never hand out the same id."""

    def __init__(self, seed: int = 0, epoch: int | Callable[[], int] = 1) -> None:
        self._counter = itertools.count(1)
        self._seed = seed
        self._epoch = epoch  # a number, or a function asked at the first id
        self._tag: str | None = None

    def state(self) -> tuple:
        at, self._counter = _peek(self._counter)
        return (at, self._tag)

    def set_state(self, state: tuple) -> None:
        self._counter = itertools.count(state[0])
        self._tag = state[1]

    def next(self, kind: str = "AAMk") -> str:
        tag = self._tag
        if tag is None:
            epoch = self._epoch if isinstance(self._epoch, int) else self._epoch()
            tag = self._tag = f"{self._seed & 0xFFFFFFFF:08x}{epoch & 0xFFFF:04x}"
        return f"{kind}A{tag}{next(self._counter):08x}"


class Item:
    """A stored item: its ids, times and flags in memory, its message (:attr:`data`) in the
    process's message spill (:mod:`simulator.exchange.spill`) once the store keeps it there."""

    __slots__ = ("item_id", "folder_id", "received", "_message", "seq", "_categories", "is_read", "version", "modified")
    FIELDS = ("item_id", "folder_id", "received", "data", "seq", "categories", "is_read", "version", "modified")

    def __init__(self, item_id: str, folder_id: str, received: datetime, message: MessageData | int, seq: int,
                 categories: list[str] | None = None, is_read: bool = False, version: int = 0,
                 modified: datetime | None = None) -> None:
        self.item_id = item_id
        self.folder_id = folder_id
        self.received = received
        self._message = message  # the message, or its ref in the spill (an int): see ExchangeStore._held
        self.seq = seq
        self.categories = categories if categories is not None else []
        self.is_read = is_read
        self.version = version  # how many times the item was updated: its change key changes with it
        self.modified = modified  # when it was last updated (None: never; LastModifiedTime is then its arrival)

    def __repr__(self) -> str:
        return f"Item({self.item_id!r}, folder {self.folder_id!r}, received {self.received.isoformat()})"

    @property
    def categories(self) -> list[str]:
        """The item's categories (a new list: change them with :meth:`ExchangeStore.update`)."""
        return list(self._categories)

    @categories.setter
    def categories(self, categories) -> None:
        # a tuple, the empty one shared, and each name interned: most items have none, and the
        # others mostly the same one ("Tracked to Dynamics 365"), also when replayed from JSON
        self._categories = tuple(sys.intern(c) if type(c) is str else c for c in categories) if categories else ()

    @property
    def data(self) -> MessageData:
        """The item's message (read back from the spill: treat it as read-only, change it with
        :meth:`ExchangeStore.update`)."""
        message = self._message
        return SPILL.load(message) if type(message) is int else message

    @property
    def ref(self) -> int | None:
        """Where the message is in the spill (None: the item holds it in memory)."""
        message = self._message
        return message if type(message) is int else None

    @property
    def item_class(self) -> str:
        return self.data.item_class or ITEM_CLASSES.get(self.data.item_type, "IPM.Note")

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
            size=d.stored_size,
            date=d.date,
            categories=self._categories,
            parse_error=d.parse_error,
            folder=folder_kind,
        )


@dataclass(slots=True, eq=False)
class Folder:
    folder_id: str
    name: str
    parent_id: str | None
    distinguished: str | None = None
    folder_class: str | None = None  # "IPF.Note", "IPF.Appointment", ...; None: none was given
    system: bool = False  # one of the mailbox's own folders (MAILBOX_TREE): not deleted, moved or renamed
    version: int = 0  # how many times it was renamed, moved or given properties: its change key follows
    kept: dict[str, str] | None = None  # properties kept as the client wrote them (XML text), see ews.fields
    # Made on first use (see the properties below): most folders of a large organization stay empty,
    # and three empty containers per folder were most of a mailbox's memory.
    _items: dict[str, Item] | None = None
    _order: list[Item] | None = None  # sorted by (received, seq, item id): see order
    _journal: ChangeJournal | None = None

    @property
    def items(self) -> dict[str, Item]:
        """The folder's items by id."""
        if self._items is None:
            self._items = {}
        return self._items

    @property
    def in_order(self) -> list[Item]:
        """The items, oldest first (the folder's own list: do not change it)."""
        return self._order or []

    @property
    def order(self) -> Sequence[tuple[datetime, int, str]]:
        """(received, seq, item id) of the items, sorted (made as they are read: the folder keeps
        its items in that order, not a tuple per item)."""
        return _OrderView(self._order or [])

    @property
    def journal(self) -> ChangeJournal:
        """(change, item id), append-only: what SyncFolderItems reads."""
        if self._journal is None:
            self._journal = ChangeJournal()
        return self._journal

    def add(self, item: Item) -> None:
        self.items[item.item_id] = item
        order = self._order
        if order is None:
            order = self._order = []
        if not order or _order_key(item) > _order_key(order[-1]):
            order.append(item)
        else:
            bisect.insort(order, item, key=_order_key)
        self.journal.append(("create", item.item_id))

    def _unorder(self, item: Item) -> None:
        order = self._order or []
        i = bisect.bisect_left(order, _order_key(item), key=_order_key)
        if i < len(order) and order[i] is item:
            order.pop(i)

    def remove(self, item: Item) -> None:
        del self.items[item.item_id]
        self._unorder(item)
        self.journal.append(("delete", item.item_id))

    def retime(self, item: Item, received: datetime) -> None:
        """Give an item another received time, keeping the order (no change is journaled: the item
        is still the one its ``create`` entry names)."""
        self._unorder(item)
        item.received = received
        bisect.insort(self._order, item, key=_order_key)

    def after(self, when: datetime | None, limit: int) -> list[Item]:
        """Items received strictly after ``when``, oldest first, at most ``limit``."""
        order = self._order
        if not order:  # (a look at an empty folder makes nothing)
            return []
        if when is None:
            start = 0
        else:
            if order[-1].received <= when:
                return []
            start = bisect.bisect_right(order, (when, float("inf")), key=_order_key)
        return order[start : start + limit]


_order_key = operator.attrgetter("received", "seq", "item_id")


class _ReadList(Sequence):
    """A list whose entries are read through the class's ``_read`` (a function of one entry): what
    is kept compactly (an item, a message's ref) reads as the tuple the store's callers expect."""

    __slots__ = ("_entries",)
    _read: Callable[[Any], Any]

    def __init__(self, entries: list | None = None) -> None:
        self._entries = entries if entries is not None else []

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._read(e) for e in self._entries[index]]
        return self._read(self._entries[index])

    def __iter__(self) -> Iterator:
        return map(self._read, self._entries)


class _OrderView(_ReadList):
    """A folder's items in their order, read as (received, seq, item id)."""

    __slots__ = ()
    _read = staticmethod(_order_key)


CHANGES = ("create", "delete", "read", "update")  # what a folder's change journal records
_CHANGE_CODES = {change: code for code, change in enumerate(CHANGES)}


class ChangeJournal(Sequence):
    """A folder's change journal: (change, item id) entries, append-only. Kept as a list of ids and
    a byte per entry for the change, not a tuple per entry (a large organization has millions)."""

    __slots__ = ("_ids", "_changes")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._changes = bytearray()

    def append(self, entry: tuple[str, str]) -> None:
        change, item_id = entry
        self._changes.append(_CHANGE_CODES[change])
        self._ids.append(item_id)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(zip(map(CHANGES.__getitem__, self._changes[index]), self._ids[index], strict=True))
        return CHANGES[self._changes[index]], self._ids[index]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return zip(map(CHANGES.__getitem__, self._changes), self._ids, strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChangeJournal):
            return self._ids == other._ids and self._changes == other._changes
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"ChangeJournal({list(self)!r})"


@dataclass(slots=True, eq=False)
class ExchangeMailbox:
    address: str
    display_name: str
    root_id: str
    _folders: dict[str, Folder] = field(default_factory=dict)  # the folders made so far, by id (see folders)
    distinguished: dict[str, str] = field(default_factory=dict)  # name -> folder id
    act_org_id: str | None = None  # SPEC 1.11: the organization that syncs ACT
    act_org_stamped_on: datetime | None = None
    # what the sending quotas count (None until the mailbox first sends: most never do)
    sent_times: deque | None = None  # when the last minute's messages were sent
    recipients_day: list | None = None  # [date, recipients that day]
    last_inbox_received: datetime | None = None
    _settings: MailboxSettings | None = None  # made on first use (see settings)
    # How many of the folders the mailbox's event names are not made yet. They are made one by one
    # when looked up by id or name (a poll opens the Inbox only), and all at once when something
    # lists the folders: a large organization does not hold ten folders per mailbox in memory.
    _unmade: int = 0

    @property
    def settings(self) -> MailboxSettings:
        """Inbox rules, Out of Office and the rest (made when first used)."""
        if self._settings is None:
            self._settings = MailboxSettings()
        return self._settings

    @property
    def folders(self) -> dict[str, Folder]:
        """Every folder of the mailbox by id, in the order they were made (the folders its event
        names first)."""
        if self._unmade:
            self._make_named()
        return self._folders

    def _make_named(self) -> None:
        """Make the folders the mailbox's event names that are not made yet, keeping their order."""
        made, self._folders = self._folders, {}
        for key, folder_id in self.distinguished.items():  # (only those folders while any is unmade)
            folder = made.get(folder_id)
            self._folders[folder_id] = folder if folder is not None else self._named_folder(key, folder_id)
        self._unmade = 0

    def _named_folder(self, key: str, folder_id: str) -> Folder:
        """The folder the mailbox's event names under ``key`` (its parent is named there too)."""
        spec = FOLDER_SPECS[key]
        parent = self.distinguished.get(spec.parent) if spec.parent else None
        return Folder(folder_id, spec.name, parent, key, spec.folder_class, True)

    def _make_one(self, folder_id: str) -> Folder | None:
        """The folder with this id if the mailbox's event names it and it is not made yet."""
        for key, named_id in self.distinguished.items():
            if named_id == folder_id:
                if self._unmade == 1:  # the last one: keep the folders in their order
                    self._make_named()
                    return self._folders[folder_id]
                folder = self._folders[folder_id] = self._named_folder(key, folder_id)
                self._unmade -= 1
                return folder
        return None

    @property
    def has_tree(self) -> bool:
        """Whether the mailbox was made with the whole folder tree (a real ``root`` above the Top of
        Information Store); mailboxes of older journals have the Top of Information Store on top."""
        return "root" in self.distinguished

    def full_tree(self) -> None:
        """Make the mailbox's own folders that are made on first look (in memory: they are a function
        of the root's id, so every process and every replay makes the same ones)."""
        if not self.has_tree or "searchfolders" in self.distinguished:
            return
        suffix = self.root_id[len(SYSTEM_ID_PREFIX):]
        for index, spec in enumerate(MAILBOX_TREE):
            if spec.key in CORE_FOLDERS:
                continue
            folder_id = f"{SYSTEM_ID_PREFIX}{index:02x}{suffix}"
            self.folders[folder_id] = Folder(folder_id, spec.name, self.distinguished[spec.parent],
                                             spec.key if spec.distinguished else None, spec.folder_class, True)
            if spec.distinguished:  # (every parent in MAILBOX_TREE is a distinguished folder)
                self.distinguished[spec.key] = folder_id

    def folder_by_id(self, folder_id: str) -> Folder | None:
        """The folder with this id, making the mailbox's own folders first if the id is one of theirs."""
        folder = self._folders.get(folder_id)
        if folder is None:
            if self._unmade:
                folder = self._make_one(folder_id)
            if folder is None and folder_id.startswith(SYSTEM_ID_PREFIX):
                self.full_tree()
                folder = self._folders.get(folder_id)
        return folder

    def folder(self, folder_ref: str) -> Folder:
        if folder_ref in FOLDER_SPECS and folder_ref not in self.distinguished:
            self.full_tree()  # a distinguished folder made on first look
        folder_id = self.distinguished.get(folder_ref, folder_ref)
        folder = self.folder_by_id(folder_id)
        if folder is None:
            raise StoreError("ErrorFolderNotFound", f"folder {folder_ref!r} does not exist in {self.address}")
        return folder

    def find_item(self, item_id: str) -> Item | None:
        """The item with this id in any of the mailbox's folders (an item's folder is made), or None.
        (A look in each folder rather than an index of item ids: a mailbox has a few folders and
        the index cost a dict entry per item.)"""
        for folder in self._folders.values():
            items = folder._items
            if items:
                item = items.get(item_id)
                if item is not None:
                    return item
        return None

    def item(self, item_id: str) -> Item:
        item = self.find_item(item_id)
        if item is None:
            raise StoreError("ErrorItemNotFound", f"item {item_id!r} does not exist in {self.address}")
        return item

    def item_count(self) -> int:
        """How many items the mailbox holds, in all its folders."""
        return sum(len(folder._items) for folder in self._folders.values() if folder._items)

    @property
    def item_folder(self) -> dict[str, str]:
        """Item id -> folder id of every item of the mailbox (made when asked)."""
        return {item_id: folder.folder_id for folder in self._folders.values() for item_id in (folder._items or ())}

    def take_out(self, item: Item) -> None:
        """Remove an item from its folder (a delete, or the source side of a move)."""
        self._folders[item.folder_id].remove(item)


class Outbound(_ReadList):
    """Mail sent to addresses outside the sandbox, oldest first, as ``(sender, recipients, message)``.

    Each message is kept as its sent copy's item keeps it (its ref in the spill, usually), so a long
    run that sends a lot holds no message in memory for it; reading an entry reads the message back."""

    __slots__ = ()

    def add(self, sender: str, recipients: tuple[str, ...], held: MessageData | int) -> None:
        self._entries.append((sender, recipients, held))

    def clear(self) -> None:
        self._entries.clear()

    @staticmethod
    def _read(entry: tuple[str, tuple[str, ...], MessageData | int]) -> tuple[str, tuple[str, ...], MessageData]:
        sender, recipients, held = entry
        return sender, recipients, SPILL.load(held) if type(held) is int else held

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Outbound, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # (mutable)

    def __repr__(self) -> str:
        return f"Outbound({list(self)!r})"


class ExchangeStore:
    """All Exchange Online mailboxes of the sandbox.

    Public methods check their input, then make their change as events (:meth:`_emit`). With a
    ``journal`` (a callable taking the list of events of one finished operation) each operation's
    events are handed to it once the operation is done; the world writes them to the database."""

    def __init__(self, clock: Clock, ids: IdSource | None = None) -> None:
        self.clock = clock
        self.ids = ids or IdSource()
        self.mailboxes: dict[str, ExchangeMailbox] = {}
        self.outbound = Outbound()  # external mail sent
        self._seq = itertools.count(1)
        self._max_seq = 0
        self._message_ids = itertools.count(1)
        self.journal = None  # callable(list of events): where finished operations go (the world)
        self._events: list[dict] = []
        self._depth = 0
        self.spills = True  # messages of stored items go to the spill (False: they stay in memory)

    def reset(self) -> None:
        """Forget every mailbox (before the world replays its journal again)."""
        self.mailboxes.clear()
        self.outbound.clear()
        self._events.clear()
        self._depth = 0
        self._max_seq = 0

    # -- events ----------------------------------------------------------------------------
    @contextmanager
    def operation(self) -> Iterator[None]:
        """Group the events of one operation: they reach the journal together when it ends (also
        when it fails half-way: what was changed in memory is what the journal must hold)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._events:
                events, self._events = self._events, []
                if self.journal is not None:
                    self.journal(events)

    def _emit(self, event: dict) -> Any:
        result = self.apply(event)
        if self.journal is not None:
            self._events.append(event)
        return result

    def _held(self, data: MessageData) -> MessageData | int:
        """What an item holds of a message placed in the store: its ref in the spill, or the message
        itself (spills off, or a message the spill cannot take)."""
        ref = SPILL.put(data) if self.spills else None
        return data if ref is None else ref

    def _next_seq(self) -> int:
        seq = next(self._seq)
        while seq <= self._max_seq:
            seq = next(self._seq)
        return seq

    def apply(self, ev: dict) -> Any:
        """Make the change ``ev`` describes (live or replayed from the journal)."""
        kind = ev["k"]
        if kind == "put":
            return self._apply_put(ev)
        if kind in SETTING_EVENTS:  # mailbox settings and folder moves: their own section below
            return self._apply_setting(ev)
        mbx = self.mailboxes.get(ev["a"]) if kind != "mbx" else None
        if kind == "rm":
            mbx.take_out(mbx.item(ev["i"]))
        elif kind == "upd":
            item = mbx.item(ev["i"])
            if ev.get("c") is not None:
                item.categories = list(ev["c"])
            if ev.get("r") is not None:
                item.is_read = ev["r"]
            if "s" in ev or "b" in ev or "ks" in ev or "n" in ev:
                # a new MessageData: a copy made by CopyItem shares the old one and keeps it
                kept = {**item.data.kept, **ev.get("ks", {})}
                addresses = {k: v if k == "sender" else tuple(v) for k, v in ev.get("n", {}).items()}
                data = item.data
                data = dataclasses.replace(data, subject=ev.get("s", data.subject), body=ev.get("b", data.body),
                                           kept=kept, **addresses)
                item._message = self._held(data)
            item.version += 1
            if ev.get("t") is not None:
                item.modified = _when(ev["t"])
            # a change of the read flag alone is its own kind of change (SyncFolderItems: ReadFlagChange)
            only_read = ev.get("r") is not None and ev.get("c") is None and not {"s", "b", "ks"} & ev.keys()
            mbx._folders[item.folder_id].journal.append(("read" if only_read else "update", item.item_id))
            return item
        elif kind == "mbx":
            # the folders made with the mailbox, top first: [id, key] (journals older than the whole
            # tree start at the Top of Information Store, whose parent they do not name)
            mbx = ExchangeMailbox(ev["a"], ev["n"], ev["f"][0][0])
            for folder_id, key in ev["f"]:  # (made on first look: ExchangeMailbox.folders)
                mbx.distinguished[key] = folder_id
            mbx._unmade = len(ev["f"])
            self.mailboxes[mbx.address] = mbx
            return mbx
        elif kind == "fld":
            mbx.folder_by_id(ev["p"])  # (the parent may be one of the folders made on first look)
            folder = Folder(ev["id"], ev["n"], ev["p"], folder_class=ev.get("c"))
            mbx.folders[folder.folder_id] = folder
            return folder
        elif kind == "rmfld":
            mbx.folders.pop(ev["id"])  # (with its items)
        elif kind == "act":
            mbx.act_org_id = ev["o"]
            mbx.act_org_stamped_on = _when(ev["t"])
        elif kind == "sent":
            now = _when(ev["t"])
            if mbx.sent_times is None:
                mbx.sent_times, mbx.recipients_day = deque(), [None, 0]
            window = mbx.sent_times
            while window and (now - window[0]).total_seconds() >= 60:
                window.popleft()
            window.append(now)
            day = mbx.recipients_day
            if day[0] != now.date():
                day[0], day[1] = now.date(), 0
            day[1] += ev["n"]
        else:
            raise ValueError(f"unknown Exchange store event {kind!r}")
        return None

    def _apply_put(self, ev: dict) -> list[Item]:
        """Place a message in folders: a delivery, a send, a saved draft, a move or a copy."""
        src = ev.get("src")
        if src is not None:  # a move or copy: the message of an existing item
            mbx = self.mailboxes[src[0]]
            source = mbx.item(src[1])
            held = source._message  # (the copy shares the message, in the spill or not)
            if ev.get("mv"):
                mbx.take_out(source)
        else:
            held = self._held(ev["m"])
        placed = []
        for address, folder_id, item_id, received, seq, categories, is_read, arrival in ev["p"]:
            mbx = self.mailboxes[address]
            received = _when(received)
            item = Item(item_id, folder_id, received, held, seq, categories, is_read)
            mbx.folder_by_id(folder_id).add(item)
            if arrival and (mbx.last_inbox_received is None or received > mbx.last_inbox_received):
                mbx.last_inbox_received = received
            if seq > self._max_seq:
                self._max_seq = seq
            placed.append(item)
        if ev.get("x"):  # (a message sent, never a move or a copy): kept as its sent copy keeps it
            self.outbound.add(ev["m"].sender or "", tuple(ev["x"]), held)
        return placed

    def arrivals_after(self, events: list[dict], latest: dict[str, datetime]) -> None:
        """Make the Inbox arrivals of ``events`` later than ``latest[address]`` (what other processes
        committed to that Inbox meanwhile), in the events and in memory, keeping their order: mail
        committed later is always received later, so an engine past the earlier mail still finds it."""
        for ev in events:
            if ev["k"] != "put":
                continue
            for placement in ev["p"]:
                address, folder_id, item_id, received, *_, arrival = placement
                floor = latest.get(address)
                if not arrival or floor is None or _when(received) > floor:
                    continue
                mbx = self.mailboxes[address]
                new = floor + _ONE_US
                placement[3] = new
                folder = mbx.folder_by_id(folder_id)
                item = folder.items.get(item_id) if folder is not None else None
                if item is not None:
                    folder.retime(item, new)
                latest[address] = new
                if mbx.last_inbox_received is None or new > mbx.last_inbox_received:
                    mbx.last_inbox_received = new

    def _placement(self, mbx: ExchangeMailbox, folder_id: str, received: datetime, categories=(),
                   is_read: bool = False, arrival: bool = False) -> list:
        return [mbx.address, folder_id, self.ids.next(), received, self._next_seq(), list(categories), is_read,
                arrival]

    # -- mailboxes and folders -------------------------------------------------------------
    def add_mailbox(self, address: str, display_name: str | None = None) -> ExchangeMailbox:
        address = address.strip().lower()
        if address in self.mailboxes:
            return self.mailboxes[address]
        folders = [[self.ids.next("AAMkF"), key] for key in CORE_FOLDERS]
        with self.operation():
            return self._emit({"k": "mbx", "a": address, "n": display_name or address, "f": folders})

    def mailbox(self, address: str) -> ExchangeMailbox:
        mbx = self.mailboxes.get(address.strip().lower())
        if mbx is None:
            raise StoreError("ErrorNonExistentMailbox", f"no mailbox has the address {address!r}")
        return mbx

    def create_folder(self, address: str, parent: str, name: str, folder_class: str | None = None) -> Folder:
        """A new folder under ``parent``; names are unique among siblings whatever their case."""
        mbx = self.mailbox(address)
        parent_folder = mbx.folder(parent)
        name = _folder_name(name)
        if self.find_child(address, parent, name) is not None:
            raise StoreError("ErrorFolderExists", f"Could not create folder {name!r}: {parent_folder.name!r} "
                                                  "already has a folder of that name")
        event = {"k": "fld", "a": mbx.address, "id": self.ids.next("AAMkF"), "n": name, "p": parent_folder.folder_id}
        if folder_class is not None:
            event["c"] = folder_class
        with self.operation():
            return self._emit(event)

    def set_folder_properties(self, address: str, folder_ref: str, kept: dict[str, str]) -> Folder:
        """Keep (or, with "", remove) properties of a folder as the client wrote them."""
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        with self.operation():
            return self._emit({"k": "fprops", "a": mbx.address, "id": folder.folder_id, "ks": dict(kept)})

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
        if folder.system:
            raise StoreError("ErrorCannotDeleteObject", f"{folder.name!r} is one of the mailbox's own folders")
        with self.operation():
            for child in list(mbx.folders.values()):
                if child.parent_id == folder.folder_id:
                    self.delete_folder(address, child.folder_id)
            self._emit({"k": "rmfld", "a": mbx.address, "id": folder.folder_id})

    # -- mailbox settings (Inbox rules, Out of Office) and folder moves ------------------------
    # Their events are JSON values only (times as ISO 8601 text), so a replay rebuilds them exactly.
    def _apply_setting(self, ev: dict) -> Any:
        kind = ev["k"]
        mbx = self.mailboxes[ev["a"]]
        if kind == "rules":
            mbx.settings.rules = [dict(rule) for rule in ev["r"]]
        elif kind == "oof":
            mbx.settings.oof = dict(ev["o"])
        elif kind == "unsub":
            mbx.settings.ended_subscriptions.add(ev["s"])
            mbx.settings.delivered.pop(ev["s"], None)
        elif kind == "subpos":
            mbx.settings.delivered[ev["s"]] = dict(ev["w"])
        elif kind == "ucfg":  # a user configuration created or replaced ("c"), or deleted ("c" is None)
            in_folder = mbx.settings.user_configs.setdefault(ev["f"], {})
            if ev["c"] is None:
                in_folder.pop(ev["n"].lower(), None)
            else:
                in_folder[ev["n"].lower()] = dict(ev["c"])
        elif kind == "mvfld":
            mbx.folder_by_id(ev["p"])
            folder = mbx.folders[ev["id"]]
            folder.parent_id = ev["p"]
            folder.version += 1
            return folder
        elif kind == "rnfld":
            folder = mbx.folders[ev["id"]]
            folder.name = ev["n"]
            folder.version += 1
            return folder
        elif kind == "fprops":  # properties kept as written: key -> XML text ("" removes it)
            folder = mbx.folder_by_id(ev["id"])
            kept = dict(folder.kept or {})
            for key, text in ev["ks"].items():
                if text:
                    kept[key] = text
                else:
                    kept.pop(key, None)
            folder.kept = kept or None
            folder.version += 1
            return folder
        return None

    def inbox_rules(self, address: str) -> list[dict]:
        """The mailbox's Inbox rules (records of :mod:`simulator.exchange.ews.settings`), by priority."""
        return [dict(rule) for rule in self.mailbox(address).settings.rules]

    def set_inbox_rules(self, address: str, rules: list[dict]) -> None:
        """Replace the mailbox's Inbox rules (one UpdateInboxRules request: all its operations or none)."""
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "rules", "a": mbx.address, "r": [dict(rule) for rule in rules]})

    def new_rule_id(self) -> str:
        return self.ids.next("AQAAAA")

    def oof_settings(self, address: str) -> dict | None:
        """The mailbox's Out of Office settings as last set (None: never set, Exchange's defaults)."""
        oof = self.mailbox(address).settings.oof
        return dict(oof) if oof is not None else None

    def end_subscription(self, address: str, subscription_id: str) -> None:
        """A notification subscription is over (Unsubscribe): it gives no events any more."""
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "unsub", "a": mbx.address, "s": subscription_id})

    def set_user_configuration(self, address: str, folder_id: str, name: str, record: dict | None) -> None:
        """Store (or, with ``record`` None, delete) the user configuration ``name`` of a folder; the
        record is JSON (see :mod:`simulator.exchange.ews.user_config`)."""
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "ucfg", "a": mbx.address, "f": folder_id, "n": name,
                        "c": dict(record) if record is not None else None})

    def mark_delivered(self, address: str, subscription_id: str, positions: dict[str, int]) -> None:
        """A streaming subscription's events are delivered up to ``positions`` (folder id -> journal
        length); its first call, at Subscribe, names where it starts."""
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "subpos", "a": mbx.address, "s": subscription_id, "w": dict(positions)})

    def set_oof_settings(self, address: str, settings: dict) -> None:
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "oof", "a": mbx.address, "o": dict(settings)})

    def move_folder(self, address: str, folder_ref: str, dest_ref: str) -> Folder:
        """Move a folder (with its subtree) under another folder; its id stays the same."""
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        dest = mbx.folder(dest_ref)
        if folder.distinguished or folder.system:
            raise StoreError("ErrorMoveDistinguishedFolder", f"{folder.name!r} is one of the mailbox's own folders")
        ancestor: Folder | None = dest
        while ancestor is not None:
            if ancestor.folder_id == folder.folder_id:
                raise StoreError("ErrorMoveCopyFailed", f"{folder.name!r} cannot be moved into itself or its subfolders")
            ancestor = mbx.folders.get(ancestor.parent_id) if ancestor.parent_id else None
        if folder.parent_id == dest.folder_id:
            return folder
        if self.find_child(address, dest.folder_id, folder.name) is not None:
            raise StoreError("ErrorFolderExists", f"{dest.name!r} already has a folder named {folder.name!r}")
        with self.operation():
            return self._emit({"k": "mvfld", "a": mbx.address, "id": folder.folder_id, "p": dest.folder_id})

    def rename_folder(self, address: str, folder_ref: str, name: str) -> Folder:
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        name = _folder_name(name)
        if folder.system:
            raise StoreError("ErrorInvalidPropertySet", f"{folder.name!r} is one of the mailbox's own folders: "
                                                        "its name cannot be changed")
        if folder.parent_id is not None:
            other = self.find_child(address, folder.parent_id, name)
            if other is not None and other is not folder:
                raise StoreError("ErrorFolderExists", f"a folder named {name!r} already exists there")
        with self.operation():
            return self._emit({"k": "rnfld", "a": mbx.address, "id": folder.folder_id, "n": name})

    def empty_folder(self, address: str, folder_ref: str, *, sub_folders: bool = False) -> None:
        """Delete every item of a folder and, with ``sub_folders``, its subfolders (one operation)."""
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        with self.operation():
            for item_id in list(folder.items):
                self._emit({"k": "rm", "a": mbx.address, "i": item_id})
            if sub_folders:
                for child in [f for f in mbx.folders.values() if f.parent_id == folder.folder_id and not f.system]:
                    self.delete_folder(address, child.folder_id)

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
        with self.operation():
            self._emit({"k": "act", "a": mbx.address, "o": org_id.strip(),
                        "t": stamped_on if stamped_on is not None else self.clock.now()})
        return ActOrgClaim(mbx.act_org_id, mbx.act_org_stamped_on)

    def clear_act_org(self, address: str) -> None:
        """Remove the claim: no organization syncs the mailbox's ACT any more."""
        mbx = self.mailbox(address)
        with self.operation():
            self._emit({"k": "act", "a": mbx.address, "o": None, "t": None})

    # -- items -----------------------------------------------------------------------------
    def save(self, address: str, folder_ref: str, data: MessageData, *, categories: list[str] | None = None,
             is_read: bool = True, received: datetime | None = None) -> Item:
        """Store a message in a folder without sending it (a draft), received now (or at ``received``:
        an item brought back from an export keeps its time)."""
        mbx = self.mailbox(address)
        folder = mbx.folder(folder_ref)
        with self.operation():
            return self._emit(_put(data, [
                self._placement(mbx, folder.folder_id, received or self.clock.now(), categories or (), is_read)]))[0]

    def _arrival_time(self, mbx: ExchangeMailbox, received: datetime | None) -> datetime:
        """Received time of a new Inbox item: the clock's now, kept unique per mailbox (applying
        the delivery moves ``last_inbox_received`` on)."""
        if received is not None:
            return received
        now = self.clock.now()
        last = mbx.last_inbox_received
        if last is not None and now <= last:
            now = last + _ONE_US
        return now

    def _deliveries(self, data: MessageData, recipients, received: datetime | None) -> tuple[list, list[str]]:
        """Placements in the Inboxes of the local recipients, and the external addresses."""
        placements: list = []
        seen: set[str] = set()
        external: list[str] = []
        for rcpt in recipients:
            addr = normalize_address(rcpt)
            if addr is None or addr in seen:
                continue
            seen.add(addr)
            mbx = self.mailboxes.get(addr)
            if mbx is None:
                external.append(addr)
                continue
            placements.append(self._placement(mbx, mbx.distinguished["inbox"],
                                              self._arrival_time(mbx, received), arrival=received is None))
        return placements, external

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
        placements, external = self._deliveries(data, recipients, received)
        if not placements and not external:
            return {}
        with self.operation():
            placed = self._emit(_put(data, placements, external))
        return {p[0]: item.item_id for p, item in zip(placements, placed, strict=True)}

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
        event = {"k": "put", "src": [mbx.address, item.item_id], "mv": not copy,
                 "p": [self._placement(mbx, dest.folder_id, item.received, item.categories, item.is_read)]}
        with self.operation():
            return self._emit(event)[0].item_id

    def delete(self, address: str, item_id: str) -> None:
        mbx = self.mailbox(address)
        mbx.item(item_id)
        with self.operation():
            self._emit({"k": "rm", "a": mbx.address, "i": item_id})

    def update(self, address: str, item_id: str, *, categories: list[str] | None = None,
               is_read: bool | None = None, subject: str | None = None, body: str | None = None,
               kept: dict[str, str] | None = None, addresses: dict | None = None) -> Item:
        """Change an item: its categories, read flag, subject, body, recipients and sender
        (``addresses``), and kept properties (``kept``, an empty text for a property deleted; see
        :attr:`MessageData.kept`). Each update is a new version."""
        mbx = self.mailbox(address)
        mbx.item(item_id)
        event: dict[str, Any] = {"k": "upd", "a": mbx.address, "i": item_id,
                                 "c": list(dict.fromkeys(categories)) if categories is not None else None,
                                 "r": is_read, "t": self.clock.now()}
        if subject is not None:
            event["s"] = subject
        if body is not None:
            event["b"] = body
        if kept:
            event["ks"] = dict(kept)
        if addresses:  # to, cc, bcc (lists of addresses) and sender (an address or None)
            event["n"] = {k: v if k == "sender" else list(v) for k, v in addresses.items()}
        with self.operation():
            return self._emit(event)

    # -- sending ---------------------------------------------------------------------------
    def counter_state(self) -> tuple[int, int]:
        """Where the message-id and item-sequence counters stand (a sandbox snapshot keeps it)."""
        ids, self._message_ids = _peek(self._message_ids)
        seq, self._seq = _peek(self._seq)
        return ids, seq

    def set_counter_state(self, state: tuple[int, int]) -> None:
        self._message_ids, self._seq = itertools.count(state[0]), itertools.count(state[1])

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
        window = mbx.sent_times or ()
        recent = sum(1 for t in window if (now - t).total_seconds() < 60)
        if recent >= SEND_PER_MINUTE:
            raise StoreError("ErrorSubmissionQuotaExceeded",
                             f"{address} already sent {SEND_PER_MINUTE} messages in the last minute")
        day = mbx.recipients_day or (None, 0)
        today = day[1] if day[0] == now.date() else 0
        if today + len(recipients) > RECIPIENTS_PER_DAY:
            raise StoreError("ErrorSubmissionQuotaExceeded",
                             f"{address} would exceed {RECIPIENTS_PER_DAY} recipients today")
        data.sender = data.sender or address
        if not data.message_id:
            data.message_id = self.new_message_id(address)
        if data.date is None:
            data.date = now
        placements = []
        if save_copy:
            placements.append(self._placement(mbx, mbx.distinguished["sentitems"], now, is_read=True))
        delivered, external = self._deliveries(data, recipients, None)
        with self.operation():
            self._emit({"k": "sent", "a": mbx.address, "t": now, "n": len(recipients)})
            placed = self._emit(_put(data, placements + delivered, external))
        return data.message_id, placed[0].item_id if save_copy else None


def _put(data: MessageData, placements: list, external: list[str] | None = None) -> dict:
    """The event that places a message: where (``p``), and to whom outside the sandbox (``x``)."""
    event: dict = {"k": "put", "m": data, "p": placements}
    if external:
        event["x"] = external
    return event


def _when(value: datetime | str | None) -> datetime | None:
    """A time from an event: a datetime when made live, ISO 8601 text when replayed."""
    if value is None or isinstance(value, datetime):
        return value
    return parse_instant(value)
