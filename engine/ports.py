"""What the engine needs from the outside world, and the records that cross the boundary.

The engine talks to the CRM only through :class:`CrmPort` and to Exchange only through
:class:`ExchangePort`. The simulator implements both in process ("direct mode");
``engine/ews.py`` implements :class:`ExchangePort` over exchangelib ("wire mode").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Protocol, runtime_checkable


class Workload(IntEnum):
    INCOMING = 1
    OUTGOING = 2
    ACT = 3


class Status(IntEnum):
    """`incomingemailstatus`, `outgoingemailstatus`, `actstatus`, `mailboxstatus`."""

    NOT_RUN = 0
    SUCCESS = 1
    FAILURE = 2


class Approval(IntEnum):
    """`emailrouteraccessapproval`."""

    EMPTY = 0
    APPROVED = 1
    PENDING = 2
    REJECTED = 3


class IncomingMethod(IntEnum):
    NONE = 0
    OUTLOOK = 1
    SSS = 2
    FORWARD_MAILBOX = 3


class OutgoingMethod(IntEnum):
    NONE = 0
    OUTLOOK = 1
    SSS = 2


class ActMethod(IntEnum):
    OUTLOOK = 0
    SSS = 1
    NONE = 2


class AlertLevel(IntEnum):
    INFORMATION = 1
    WARNING = 2
    ERROR = 3



# The mailbox columns (SPEC 2.3) of each workload: next run, last start, switch, status, method, failures.
WORKLOAD_COLUMNS: dict[Workload, dict[str, str]] = {
    Workload.INCOMING: dict(
        next="receivingpostponeduntil",
        started="lastincomingstartedon",
        enabled="enabledforincomingemail",
        status="incomingemailstatus",
        method="incomingemaildeliverymethod",
        transient="incomingtransientfailurecount",
    ),
    Workload.OUTGOING: dict(
        next="postponesendinguntil",
        started="lastoutgoingstartedon",
        enabled="enabledforoutgoingemail",
        status="outgoingemailstatus",
        method="outgoingemaildeliverymethod",
        transient="outgoingtransientfailurecount",
    ),
    Workload.ACT: dict(
        next="receivingpostponeduntilforact",
        started="lastactstartedon",
        enabled="enabledforact",
        status="actstatus",
        method="actdeliverymethod",
        transient="acttransientfailurecount",
    ),
}

@dataclass(slots=True)
class ProfileSettings:
    """The parts of an email server profile that the engine reads."""

    id: str
    name: str
    ownerid: str
    active: bool
    minpollingintervalinminutes: int
    maxconcurrentconnections: int
    moveundeliveredemails: bool
    processemailsreceivedafter: datetime | None
    timeoutmailboxconnection: bool
    timeoutmailboxconnectionafteramount: int
    ewsurl: str | None = None
    useautodiscover: bool = True


@dataclass(slots=True)
class OrgSettings:
    """Organization switches the engine honours."""

    requireapprovalforuseremail: bool = True
    requireapprovalforqueueemail: bool = True
    generatealertsforerrors: bool = True
    generatealertsforwarnings: bool = False
    generatealertsforinformation: bool = True
    notifymailboxownerofemailserverlevelalerts: bool = False
    tracksentitems: bool = False
    organizationid: str = ""  # stamped on Exchange mailboxes whose ACT this organization syncs (1.11)
    # ACT (3.6): a logical delete (the row matches no sync filter any more) only unlinks the Exchange copy
    physicalandlogicaldeletesdiffer: bool = False


@dataclass(slots=True)
class MailboxWork:
    """A leased mailbox: the state the engine works from during one cycle."""

    id: str
    emailaddress: str
    ownerid: str
    regardingobjectid: str
    regardingobjecttypecode: str  # "systemuser" or "queue"
    profileid: str | None
    active: bool
    incomingemaildeliverymethod: int
    outgoingemaildeliverymethod: int
    enabledforincomingemail: bool
    enabledforoutgoingemail: bool
    incomingemailstatus: int
    outgoingemailstatus: int
    emailrouteraccessapproval: int
    processemailreceivedafter: datetime | None  # the incoming watermark
    receivingpostponeduntil: datetime | None
    postponesendinguntil: datetime | None
    lastincomingstartedon: datetime | None
    lastoutgoingstartedon: datetime | None
    noemailcount: int
    incomingtransientfailurecount: int
    outgoingtransientfailurecount: int
    undeliverablefolder: str | None
    ewsurl: str | None = None
    # appointments, contacts and tasks (SPEC 1.11, 3.6); the defaults describe a mailbox without ACT
    actdeliverymethod: int = 2  # ActMethod.NONE
    enabledforact: bool = False
    actstatus: int = 0  # Status.NOT_RUN
    receivingpostponeduntilforact: datetime | None = None  # the ACT next-run time
    lastactstartedon: datetime | None = None
    noactcount: int = 0
    acttransientfailurecount: int = 0
    # Test & Enable (SPEC 1.9): a test that a transient error put off, which the engine runs again
    # (see engine.mailbox_test); the defaults describe a mailbox without one
    testemailconfigurationscheduled: bool = False
    testemailconfigurationretrycount: int = 0  # transient failures of the test in a row
    orgmarkedasprimaryforexchangesync: bool = False  # while an ACT test waits: "this org only" was ticked


@dataclass(slots=True)
class ItemProperties:
    """An Exchange message as the engine sees it (properties, never re-parsed MIME)."""

    item_id: str
    received: datetime
    message_id: str | None
    subject: str
    sender: str | None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    thread_index: str | None = None
    body: str = ""
    size: int = 0
    date: datetime | None = None
    categories: tuple[str, ...] = ()
    parse_error: str | None = None
    folder: str = "inbox"  # "inbox" or "sentitems"


class ItemOutcomeKind(IntEnum):
    TRACKED = 1
    SKIPPED = 2
    FAILED = 3


@dataclass(slots=True)
class ItemOutcome:
    """What the CRM platform made of one Exchange item."""

    item_id: str
    kind: ItemOutcomeKind
    reason: str | None = None  # skip reason or error code
    detail: str = ""
    activityid: str | None = None
    correlationmethod: int = 0


@dataclass(slots=True)
class OutgoingEmail:
    """An email activity in Pending Send, ready to submit, or in Sending: submitted by a cycle that did
    not live to record the outcome (``sending``), whose Message-ID tells whether Exchange has it."""

    activityid: str
    subject: str
    body: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    trackingtoken: str | None
    deliveryattempts: int
    in_reply_to: str | None = None
    messageid: str | None = None
    sending: bool = False


@dataclass(slots=True)
class OutgoingMessage:
    """What the engine submits to Exchange."""

    subject: str
    body: str
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    save_copy: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None  # the Internet Message-ID to send with (the port makes one when None)


@dataclass(slots=True)
class SendResult:
    message_id: str
    sent_item_id: str | None


@dataclass(slots=True)
class SendOutcome:
    activityid: str
    sent: bool
    message_id: str | None = None
    subject: str | None = None
    error_code: str | None = None
    error_detail: str = ""
    failed_for_good: bool = False  # Failed (8) after the last allowed attempt


@dataclass(slots=True)
class Alert:
    """One trace-log entry to write (a repeat updates the existing row)."""

    level: AlertLevel
    regardingobjectid: str
    regardingobjecttypecode: str  # "mailbox" or "emailserverprofile"
    ownerid: str  # whose alert wall
    tracecode: str
    text: str


@dataclass(slots=True)
class ItemError:
    """An item-level row (`exchangesyncidmapping`)."""

    mailboxid: str
    exchangeentryid: str
    state: ItemOutcomeKind  # SKIPPED or FAILED
    errorname: str
    detail: str = ""
    objectid: str | None = None
    objecttypecode: str = "email"  # or an ACT table: appointment, contact, task


# -- appointments, contacts and tasks (SPEC 3.6) --------------------------------------------------
# The three ACT tables, and the Exchange folder each one syncs with.
ACT_FOLDERS = {"appointment": "calendar", "contact": "contacts", "task": "tasks"}
# The fields ACT synchronizes, named as the CRM columns (the Exchange ports translate them):
# appointment: subject, location, scheduledstart, scheduledend (aware UTC datetimes), isalldayevent,
# freebusy and reminderset (see ACT_DIRECTIONS);
# contact: firstname, lastname, jobtitle, telephone1 (the business phone); task: subject, description,
# scheduledend (the due date: a day, as midnight UTC), percentcomplete (0-100; 100 is completed).
ACT_FIELDS = {
    "appointment": ("subject", "location", "scheduledstart", "scheduledend", "isalldayevent", "freebusy",
                    "reminderset", "requiredattendees", "optionalattendees"),
    "contact": ("firstname", "lastname", "jobtitle", "telephone1"),
    "task": ("subject", "description", "scheduledend", "percentcomplete"),
}


class SyncDirection(IntEnum):
    """Which way an ACT field synchronizes (``syncattributemapping.syncdirection``), as the
    administrator chooses it per table and field (SPEC 3.6)."""

    NONE = 0  # not synchronized
    TO_EXCHANGE = 1
    TO_CRM = 2
    BIDIRECTIONAL = 3

    @property
    def to_exchange(self) -> bool:
        return self in (SyncDirection.TO_EXCHANGE, SyncDirection.BIDIRECTIONAL)

    @property
    def to_crm(self) -> bool:
        return self in (SyncDirection.TO_CRM, SyncDirection.BIDIRECTIONAL)


# Fields without a CRM column that are derived from the CRM row and only written to Exchange: an
# appointment's free/busy status ("Free" when Completed or Canceled, else "Busy") and whether Exchange
# reminds of it (not when Completed, Canceled, or started more than 7 days ago). Their direction may only
# be ToExchange or None.
ACT_EXCHANGE_ONLY = frozenset({("appointment", "freebusy"), ("appointment", "reminderset")})
# The attendees of an appointment are its activity parties 5 and 6, as sorted tuples of addresses (None:
# none): a meeting in Exchange shows who the CRM invited.
ACT_ATTENDEES = {"requiredattendees": 5, "optionalattendees": 6}  # field -> participation type
# The direction of each field unless the administrator chose another one: both ways, but for the
# fields worked out from the CRM row. Attendees go both ways: those changed in Exchange become the
# appointment's activity parties (resolved to users or contacts as email addresses are, else kept as
# addresses).
ACT_DIRECTIONS: dict[tuple[str, str], SyncDirection] = {
    (kind, name): SyncDirection.TO_EXCHANGE if (kind, name) in ACT_EXCHANGE_ONLY else SyncDirection.BIDIRECTIONAL
    for kind, names in ACT_FIELDS.items() for name in names}
ACT_DERIVED = frozenset({"freebusy", "reminderset", *ACT_ATTENDEES})  # no column of the CRM row holds them
TRACKED_CATEGORY = "Tracked to Dynamics 365"  # an Exchange item with it becomes a CRM row


@dataclass(slots=True)
class ActItem:
    """An Exchange calendar item, contact or task as ACT reads and writes it."""

    kind: str  # appointment | contact | task
    fields: dict[str, object]  # ACT_FIELDS of the kind (missing or None: empty)
    item_id: str = ""
    change_key: str = ""
    categories: tuple[str, ...] = ()
    crm_id: str | None = None  # the CRM row the item was made from (a copy of the item carries it too)
    modified: datetime | None = None  # Exchange's last modification time


@dataclass(slots=True)
class ActChanges:
    """What changed in one ACT folder since a sync state (SyncFolderItems semantics)."""

    changed: list[ActItem]  # created or updated, as they are now
    deleted: list[str]  # item ids
    sync_state: str


@dataclass(slots=True)
class ActRecord:
    """A CRM appointment, contact or task row as ACT sees it."""

    kind: str
    crm_id: str
    fields: dict[str, object]
    versionnumber: int
    modifiedon: datetime | None
    ownerid: str | None
    organizer: str | None = None  # appointments: the organizer's user id
    statecode: int = 0


@dataclass(slots=True)
class ActLink:
    """An item-level mapping row of ACT: a CRM row linked to an Exchange item."""

    kind: str
    crm_id: str
    item_id: str
    change_key: str
    crmversion: int
    fields: dict[str, object]  # the fields as last synced: the base of the field by field merge
    organizer: str | None = None  # as last synced (a CRM delete is decided on it)
    ownerid: str | None = None
    direction: str | None = None  # ToExchange, ToCrm, Both
    conflict: str | None = None


@dataclass(slots=True)
class ActSnapshot:
    """What the CRM holds for one mailbox's ACT cycle."""

    userid: str
    rows: dict[str, ActRecord]  # the rows matching the user's active sync filters, by CRM id
    links: list[ActLink]
    unmatched: dict[str, ActRecord | None]  # linked rows that match no filter now (None: deleted)
    sync_states: dict[str, str]  # table -> Exchange sync state of its folder
    # (table, field) -> its direction: the administrator's choices over ACT_DIRECTIONS
    directions: dict[tuple[str, str], SyncDirection] = field(default_factory=lambda: dict(ACT_DIRECTIONS))


@dataclass(slots=True)
class ActCreate:
    """A CRM row to create from a tracked Exchange item, and its link (the CRM id is filled in)."""

    kind: str
    fields: dict[str, object]
    link: ActLink


@dataclass(slots=True)
class ActCommit:
    """Everything one ACT cycle writes to the CRM, in one transaction."""

    updates: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)  # (kind, crm id, fields)
    creates: list[ActCreate] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (kind, crm id)
    links: list[ActLink] = field(default_factory=list)  # links new or changed (an updated row's version is
    # taken after its update)
    unlinked: list[str] = field(default_factory=list)  # Exchange item ids whose links are dropped
    sync_states: dict[str, str] = field(default_factory=dict)
    errors: list[ItemError] = field(default_factory=list)


@dataclass(slots=True)
class MailboxUpdate:
    """Columns to write on a mailbox when its lease is released."""

    mailboxid: str
    values: dict[str, object]


@runtime_checkable
class CrmPort(Protocol):
    """The CRM platform as the engine uses it."""

    def org_settings(self) -> OrgSettings: ...

    def profiles(self) -> dict[str, ProfileSettings]: ...

    def next_due(self) -> datetime | None: ...

    def lease_due(self, hostid: str, now: datetime, limit: int) -> list[MailboxWork]: ...

    def release(self, hostid: str, updates: list[MailboxUpdate]) -> list[str]:
        """Write the batch and free its mailboxes; returns those dropped instead, freed to be done
        again (another host tracked a copy of one of their messages first); none: all committed."""
        ...

    def deliver_incoming(self, mailbox: MailboxWork, items: list[ItemProperties]) -> list[ItemOutcome]: ...

    def pending_sends(self, mailbox: MailboxWork, limit: int) -> list[OutgoingEmail]: ...

    def start_send(self, mailbox: MailboxWork, activityid: str) -> str:
        """Set the email to Sending with the Message-ID it will be sent with, committed before the
        submit (so that a cycle cut short never sends it twice); returns that Message-ID."""
        ...

    def record_send_outcomes(self, mailbox: MailboxWork, outcomes: list[SendOutcome]) -> None: ...

    def record_item_errors(self, errors: list[ItemError]) -> None: ...

    def write_alerts(self, alerts: list[Alert]) -> None: ...

    def act_snapshot(self, mailbox: MailboxWork) -> ActSnapshot: ...

    def act_new_id(self) -> str:
        """The id the next row made from an Exchange item will have (stamped on the item first)."""
        ...

    def act_commit(self, mailbox: MailboxWork, commit: ActCommit) -> None: ...


@dataclass(frozen=True, slots=True)
class ActOrgClaim:
    """SPEC 1.11: the organization that syncs a mailbox's appointments, contacts and tasks."""

    org_id: str
    stamped_on: datetime | None  # when the org last stamped (claimed or synced) the mailbox


@runtime_checkable
class ExchangePort(Protocol):
    """Exchange Online as the engine uses it (one mailbox per call)."""

    async def find_new_items(
        self, mailbox: str, folder: str, after: datetime | None, max_items: int
    ) -> list[ItemProperties]: ...

    async def ensure_folder(self, mailbox: str, parent: str, name: str, known_id: str | None) -> str: ...

    async def move_item(self, mailbox: str, item_id: str, folder_id: str) -> str: ...

    async def add_category(self, mailbox: str, item_id: str, category: str) -> None: ...

    async def delete_item(self, mailbox: str, item_id: str) -> None: ...

    async def send(self, mailbox: str, message: OutgoingMessage) -> SendResult: ...

    async def find_sent(self, mailbox: str, message_id: str) -> str | None:
        """The id of the Sent Items copy of the message with this Message-ID (None: not sent)."""
        ...

    async def ews_url_for(self, mailbox: str) -> str | None:
        """The mailbox's EWS URL as found by Autodiscover (None when there is no URL to find)."""
        ...

    async def get_act_org(self, mailbox: str) -> ActOrgClaim | None:
        """The org claim stamped on the Exchange mailbox (None: unclaimed)."""
        ...

    async def set_act_org(self, mailbox: str, org_id: str) -> ActOrgClaim:
        """Stamp ``org_id`` (and the time now) on the Exchange mailbox, replacing any claim."""
        ...

    async def check_folder(self, mailbox: str, folder: str) -> None:
        """Read a distinguished folder of the mailbox (GetFolder), e.g. ``calendar``: an error when the
        mailbox cannot reach it."""
        ...

    async def act_changes(self, mailbox: str, kind: str, sync_state: str | None) -> ActChanges:
        """The items of the kind's default folder created, updated or deleted since ``sync_state``
        (None: from the start, every item as created), and the state to pass next time."""
        ...

    async def create_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        """Save a calendar item, contact or task in its default folder; the item as stored."""
        ...

    async def update_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        """Set the given fields (and CRM id) of the item ``item.item_id``; the item as stored."""
        ...


@runtime_checkable
class TokenSource(Protocol):
    """Access tokens for Exchange (S2S): e.g. :class:`engine.tokens.MsalTokenSource`."""

    async def get_token(self) -> str: ...

    def invalidate(self) -> None: ...
