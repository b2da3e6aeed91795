"""Tables of the fake CRM organization, with the Dataverse names and option values of SPEC section 2.

Ids are GUID strings derived from the sandbox's seed. Times are stored as UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import IntEnum

from sqlalchemy import BigInteger, Column, DateTime, Index, Text, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator):
    """Stores UTC; always gives back aware UTC datetimes (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value

    # SQLite hot path: one function each way instead of this type's hook chained with SQLite's
    # DATETIME processors; the stored text is the same ("YYYY-MM-DD HH:MM:SS.ffffff").
    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        slow = super().bind_processor(dialect)
        cache: dict[datetime, str] = {}  # a batch writes the same few instants many times

        def process(value, _utc=UTC, _datetime=datetime):
            if value is None:
                return None
            text = cache.get(value) if type(value) is _datetime else None
            if text is not None:
                return text
            text = slow(value)
            if value.tzinfo is _utc:
                if len(cache) >= 4096:
                    cache.clear()
                cache[value] = text
            return text

        return process

    def result_processor(self, dialect, coltype):
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        slow = super().result_processor(dialect, coltype)
        parse = datetime.fromisoformat
        cache: dict[str, datetime] = {}  # a lease reads the same few instants many times

        def process(value):
            if value is None:
                return None
            parsed = cache.get(value)
            if parsed is not None:
                return parsed
            try:
                parsed = parse(value + "+00:00")  # stored naive UTC; gives tzinfo UTC itself
            except (TypeError, ValueError):
                return slow(value)
            if parsed.tzinfo is None:
                return slow(value)
            if len(cache) >= 4096:
                cache.clear()
            cache[value] = parsed
            return parsed

        return process


def _dt(**kw) -> Field:  # a UTC datetime column
    return Field(default=None, sa_column=Column(UTCDateTime(), **kw))


class ServerType(IntEnum):
    EXCHANGE_SERVER = 0
    OTHER_POP3_SMTP = 1
    EXCHANGE_SERVER_HYBRID = 2
    EXCHANGE_ONLINE_HYBRID = 3
    IMAP_SMTP = 4


class CredentialRetrieval(IntEnum):
    BY_USER_OR_QUEUE = 0
    IN_PROFILE = 1
    SERVER_TO_SERVER = 2
    WINDOWS_INTEGRATED = 3
    ANONYMOUS = 4
    GMAIL_OAUTH = 5
    HYBRID_MODERN_AUTH = 6
    AZURE_AD_OAUTH = 7


class TestExecutionStatus(IntEnum):
    FAILURE = 0
    SUCCESS = 1
    WARNING = 2


class EmailStatus(IntEnum):
    """`email.statuscode`."""

    DRAFT = 1
    COMPLETED = 2
    SENT = 3
    RECEIVED = 4
    CANCELED = 5
    PENDING_SEND = 6
    SENDING = 7
    FAILED = 8


class EmailState(IntEnum):
    """`email.statecode`."""

    OPEN = 0
    COMPLETED = 1
    CANCELED = 2


EMAIL_STATE_OF_STATUS = {
    EmailStatus.DRAFT: EmailState.OPEN,
    EmailStatus.FAILED: EmailState.OPEN,
    EmailStatus.COMPLETED: EmailState.COMPLETED,
    EmailStatus.SENT: EmailState.COMPLETED,
    EmailStatus.RECEIVED: EmailState.COMPLETED,
    EmailStatus.PENDING_SEND: EmailState.COMPLETED,
    EmailStatus.SENDING: EmailState.COMPLETED,
    EmailStatus.CANCELED: EmailState.CANCELED,
}


class CorrelationMethod(IntEnum):
    NONE = 0
    SKIPPED = 1
    XHEADER = 2
    IN_REPLY_TO = 3
    TRACKING_TOKEN = 4
    CONVERSATION_INDEX = 5
    SMART_MATCHING = 6
    CUSTOM = 7


class TrackSetting(IntEnum):
    """`incomingemailfilteringmethod`: which incoming email a user or queue tracks."""

    ALL = 0
    REPLIES_TO_CRM_EMAIL = 1
    FROM_LEADS_CONTACTS_ACCOUNTS = 2
    FROM_EMAIL_ENABLED_RECORDS = 3
    NONE = 4


class ParticipationType(IntEnum):
    SENDER = 1
    TO = 2
    CC = 3
    BCC = 4
    REQUIRED = 5  # an appointment's required attendee
    OPTIONAL = 6  # an appointment's optional attendee
    ORGANIZER = 7  # an appointment's organizer


class AppointmentState(IntEnum):
    """`appointment.statecode`."""

    OPEN = 0
    COMPLETED = 1
    CANCELED = 2
    SCHEDULED = 3


class TaskState(IntEnum):
    """`task.statecode` (and of the fax, letter and phone call activities kept in the task table)."""

    OPEN = 0
    COMPLETED = 1
    CANCELED = 2


TASK_ACTIVITY_TYPES = ("task", "fax", "letter", "phonecall")  # synced as Exchange tasks (SPEC 3.6)
ACT_TABLES = ("appointment", "contact", "task")  # the tables a sync filter returns (returnedtypecode)
DEFAULT_SYNC_FILTERS = (("My Appointments", "appointment"), ("My Contacts", "contact"), ("My Tasks", "task"))


class AsyncState(IntEnum):
    WAITING = 0
    IN_PROGRESS = 1
    SUCCEEDED = 2
    FAILED = 3


class Organization(SQLModel, table=True):
    __tablename__ = "organization"

    organizationid: str = Field(primary_key=True)
    name: str
    emailconnectionchannel: int = 0  # 0 SSS, 1 Email Router
    defaultemailserverprofileid: str | None = None
    incomingemaildeliverymethod: int = 2  # mailbox option values (2.3)
    outgoingemaildeliverymethod: int = 2
    actdeliverymethod: int = 1
    requireapprovalforuseremail: bool = True
    requireapprovalforqueueemail: bool = True
    emailcorrelationenabled: bool = True
    trackingtokenenabled: bool = True
    trackingprefix: str = "CRM"
    trackingtokennext: int = 1
    enablesmartmatching: bool = False
    tracksentitems: bool = False
    # ACT (SPEC 3.6): a row that stops matching the sync filters only unlinks its Exchange copy
    physicalandlogicaldeletesdiffer: bool = False
    generatealertsforerrors: bool = True
    generatealertsforwarnings: bool = False
    generatealertsforinformation: bool = True
    notifymailboxownerofemailserverlevelalerts: bool = False
    s2stenantid: str | None = None
    maxuploadfilesize: int = 5 * 1024 * 1024
    ifdconfigured: bool = False
    hybridconnectorinstalled: bool = False


class SecurityRole(SQLModel, table=True):
    __tablename__ = "role"

    roleid: str = Field(primary_key=True)
    name: str = Field(index=True, unique=True)
    privileges: str = ""  # comma-separated privilege names


class SystemUser(SQLModel, table=True):
    __tablename__ = "systemuser"

    systemuserid: str = Field(primary_key=True)
    fullname: str
    domainname: str = Field(index=True, unique=True)
    internalemailaddress: str = Field(index=True)
    isdisabled: bool = False
    incomingemailfilteringmethod: int = TrackSetting.REPLIES_TO_CRM_EMAIL


class SystemUserRoles(SQLModel, table=True):
    __tablename__ = "systemuserroles"

    systemuserid: str = Field(primary_key=True, foreign_key="systemuser.systemuserid")
    roleid: str = Field(primary_key=True, foreign_key="role.roleid")


class Queue(SQLModel, table=True):
    __tablename__ = "queue"

    queueid: str = Field(primary_key=True)
    name: str
    emailaddress: str = Field(index=True)
    ownerid: str
    incomingemailfilteringmethod: int = TrackSetting.ALL


class Contact(SQLModel, table=True):
    __tablename__ = "contact"

    contactid: str = Field(primary_key=True)
    fullname: str
    emailaddress1: str | None = Field(default=None, index=True)
    # the fields ACT synchronizes with an Exchange contact (SPEC 3.6)
    firstname: str | None = None
    lastname: str | None = None
    jobtitle: str | None = None
    telephone1: str | None = None
    ownerid: str | None = Field(default=None, index=True)
    modifiedon: datetime | None = _dt()
    versionnumber: int = 1  # one more at each change: ACT tells a changed row by it


class Account(SQLModel, table=True):
    __tablename__ = "account"

    accountid: str = Field(primary_key=True)
    name: str
    emailaddress1: str | None = Field(default=None, index=True)


class Lead(SQLModel, table=True):
    __tablename__ = "lead"

    leadid: str = Field(primary_key=True)
    fullname: str
    emailaddress1: str | None = Field(default=None, index=True)


class EmailServerProfile(SQLModel, table=True):
    __tablename__ = "emailserverprofile"

    emailserverprofileid: str = Field(primary_key=True)
    name: str = Field(index=True, unique=True)
    description: str | None = None
    ownerid: str
    servertype: int = ServerType.EXCHANGE_ONLINE_HYBRID
    usedefaulttenantid: bool = True
    exchangeonlinetenantid: str | None = None
    useautodiscover: bool = True
    incomingserverlocation: str | None = None
    outgoingserverlocation: str | None = None
    processemailsreceivedafter: datetime | None = _dt()
    minpollingintervalinminutes: int = 5
    maxconcurrentconnections: int = 10
    moveundeliveredemails: bool = False
    sendemailalert: bool = False
    timeoutmailboxconnection: bool = True
    timeoutmailboxconnectionafteramount: int = 60000
    incomingcredentialretrieval: int = CredentialRetrieval.SERVER_TO_SERVER
    outgoingcredentialretrieval: int = CredentialRetrieval.SERVER_TO_SERVER
    lastteststarttime: datetime | None = _dt()
    lasttestexecutionstatus: int | None = None
    lasttestrequest: str | None = Field(default=None, sa_column=Column(Text))
    lasttestresponse: str | None = Field(default=None, sa_column=Column(Text))
    statecode: int = 0
    statuscode: int = 1


class Mailbox(SQLModel, table=True):
    __tablename__ = "mailbox"
    __table_args__ = (
        Index("ix_mailbox_due", "postponemailboxprocessinguntil"),
        # next_due asks for the oldest lease; only leased rows are in this index (usually none)
        Index("ix_mailbox_leased", "processinglastattemptedon",
              sqlite_where=text("processingstatecode = 1"), postgresql_where=text("processingstatecode = 1")),
    )

    mailboxid: str = Field(primary_key=True)
    name: str
    emailaddress: str = Field(index=True)
    ownerid: str
    regardingobjectid: str
    regardingobjecttypecode: str  # "systemuser" or "queue"
    emailserverprofile: str | None = None
    statecode: int = 0
    statuscode: int = 1
    incomingemaildeliverymethod: int = 0
    outgoingemaildeliverymethod: int = 0
    actdeliverymethod: int = 2
    incomingemailstatus: int = 0
    outgoingemailstatus: int = 0
    actstatus: int = 0
    mailboxstatus: int = 0
    enabledforincomingemail: bool = False
    enabledforoutgoingemail: bool = False
    enabledforact: bool = False
    emailrouteraccessapproval: int = 2
    processemailreceivedafter: datetime | None = _dt()
    postponemailboxprocessinguntil: datetime | None = _dt()
    receivingpostponeduntil: datetime | None = _dt()
    postponesendinguntil: datetime | None = _dt()
    receivingpostponeduntilforact: datetime | None = _dt()
    lastincomingstartedon: datetime | None = _dt()
    lastoutgoingstartedon: datetime | None = _dt()
    lastactstartedon: datetime | None = _dt()  # the ACT workload's last start (minimum polling interval)
    hostid: str | None = None
    processingstatecode: int = 0
    processinglastattemptedon: datetime | None = _dt()
    forcedunlockcount: int = 0
    noemailcount: int = 0
    noactcount: int = 0
    transientfailurecount: int = 0
    incomingtransientfailurecount: int = 0
    outgoingtransientfailurecount: int = 0
    acttransientfailurecount: int = 0
    lastsyncerror: str | None = None
    lastsyncerrorcode: str | None = None
    lastsyncerrorcount: int = 0
    lastsyncerroroccurredon: datetime | None = _dt()
    lastsuccessfulsynccompletedon: datetime | None = _dt()
    itemsprocessedforlastsync: int = 0
    itemsfailedforlastsync: int = 0
    testemailconfigurationscheduled: bool = False
    testemailconfigurationretrycount: int = 0
    testmailboxaccesscompletedon: datetime | None = _dt()
    ewsurl: str | None = None
    lastautodiscoveredon: datetime | None = _dt()
    undeliverablefolder: str | None = None
    isactsyncorgflagset: bool = False
    orgmarkedasprimaryforexchangesync: bool = False


class Email(SQLModel, table=True):
    __tablename__ = "email"
    # pending sends per sender mailbox, asked for at every lease; the tracking token and conversation
    # indexes hold only the emails that have one (most received email has no token, mail without a
    # Thread-Index no conversation): an index entry for NULL was written with every email for nothing
    __table_args__ = (
        Index("ix_email_pending", "statuscode", "sendermailboxid"),
        Index("ix_email_trackingtoken", "trackingtoken", sqlite_where=text("trackingtoken IS NOT NULL"),
              postgresql_where=text("trackingtoken IS NOT NULL")),
        Index("ix_email_conversationindex", "conversationindex", sqlite_where=text("conversationindex IS NOT NULL"),
              postgresql_where=text("conversationindex IS NOT NULL")),
    )

    activityid: str = Field(primary_key=True)
    subject: str | None = None
    description: str | None = Field(default=None, sa_column=Column(Text))
    sender: str | None = None
    torecipients: str | None = None
    messageid: str | None = None
    dupkey: int | None = Field(default=None, sa_column=Column(BigInteger, index=True, unique=True))
    # no index: set only with the Message-ID, and then equal to dupkey, whose index serves its look-ups
    messageidkey: int | None = Field(default=None, sa_column=Column(BigInteger))
    inreplyto: str | None = None
    conversationindex: str | None = None
    directioncode: bool = False
    statecode: int = 0
    statuscode: int = 1
    ownerid: str | None = None
    regardingobjectid: str | None = None
    regardingobjecttypecode: str | None = None
    correlatedactivityid: str | None = None
    correlationmethod: int = 0
    acceptingentityid: str | None = None
    acceptingentitytypecode: str | None = None
    receivingmailboxid: str | None = None
    sendermailboxid: str | None = None
    exchangeitemid: str | None = None
    deliveryattempts: int = 0
    trackingtoken: str | None = None
    senton: datetime | None = _dt()
    createdon: datetime | None = _dt()
    modifiedon: datetime | None = _dt()


class ActivityParty(SQLModel, table=True):
    __tablename__ = "activityparty"

    activitypartyid: int | None = Field(default=None, primary_key=True)
    activityid: str = Field(index=True)
    participationtypemask: int
    partyid: str | None = None
    partyobjecttypecode: str | None = None
    addressused: str | None = None


class TraceLog(SQLModel, table=True):
    __tablename__ = "tracelog"
    __table_args__ = (Index("ix_tracelog_repeat", "regardingobjectid", "ownerid", "tracecode", "level"),)

    tracelogid: int | None = Field(default=None, primary_key=True)
    level: int  # 1 Information, 2 Warning, 3 Error
    regardingobjectid: str
    regardingobjecttypecode: str
    ownerid: str
    tracecode: str
    text: str = Field(sa_column=Column(Text))
    errorcount: int = 1
    createdon: datetime | None = _dt()
    modifiedon: datetime | None = _dt()


class ExchangeSyncIdMapping(SQLModel, table=True):
    """Item-level monitoring: an email that was skipped or failed (kept 3 days)."""

    __tablename__ = "exchangesyncidmapping"

    exchangesyncidmappingid: int | None = Field(default=None, primary_key=True)
    mailboxid: str = Field(index=True)
    exchangeentryid: str
    objectid: str | None = None
    objecttypecode: str = "email"
    itemstate: int  # 2 skipped, 3 failed (engine.ports.ItemOutcomeKind)
    lastsyncerror: str
    lastsyncerrordetail: str | None = None
    retries: int = 0
    lastsyncerroroccurredon: datetime | None = _dt()


class Appointment(SQLModel, table=True):
    """An appointment activity (ACT: a calendar item in Exchange). Its organizer and attendees are
    activity parties (participation types 7, 5 and 6); ``organizer`` repeats the organizer's user id."""

    __tablename__ = "appointment"

    activityid: str = Field(primary_key=True)
    subject: str = ""
    location: str | None = None
    scheduledstart: datetime | None = _dt()
    scheduledend: datetime | None = _dt()
    isalldayevent: bool = False
    organizer: str | None = None  # a systemuser id; None: no organizer (not synchronized)
    ownerid: str = Field(index=True)
    statecode: int = AppointmentState.SCHEDULED
    createdon: datetime | None = _dt()
    modifiedon: datetime | None = _dt()
    versionnumber: int = 1


class Task(SQLModel, table=True):
    """A task activity, or a fax, letter or phone call (``activitytypecode``): an Exchange task in ACT."""

    __tablename__ = "task"

    activityid: str = Field(primary_key=True)
    activitytypecode: str = "task"
    subject: str = ""
    description: str | None = Field(default=None, sa_column=Column(Text))
    scheduledend: datetime | None = _dt()  # the due date
    actualend: datetime | None = _dt()  # completion
    percentcomplete: int = 0
    ownerid: str = Field(index=True)
    statecode: int = TaskState.OPEN
    createdon: datetime | None = _dt()
    modifiedon: datetime | None = _dt()
    versionnumber: int = 1


class UserQuery(SQLModel, table=True):
    """A sync filter of a user (SPEC 3.6): the rows of ``returnedtypecode`` owned by the user
    (appointments: organized by or attended by the user). Several active filters of one table are a
    union; none active: nothing of that table. ``statecode`` 0 active, 1 inactive."""

    __tablename__ = "userquery"

    userqueryid: str = Field(primary_key=True)
    name: str
    ownerid: str = Field(index=True)
    returnedtypecode: str  # appointment | contact | task
    querytype: int = 256  # an offline/sync filter
    statecode: int = 0


def default_filter(userid: str, name: str, table: str) -> UserQuery:
    """One of a new user's default sync filters; its id is derived from the user's (so that adding the
    filters takes nothing from the seeded id sequence every other id comes from)."""
    return UserQuery(userqueryid=str(uuid.uuid5(uuid.UUID(userid), table)), name=name, ownerid=userid,
                     returnedtypecode=table)


class ActSyncMapping(SQLModel, table=True):
    """One linked ACT item of a mailbox: the CRM row and the Exchange item, with the CRM version and
    the Exchange change key last synced, the fields as last synced (JSON: the base of the field by
    field merge), the side the last change came from and the last conflict's outcome (SPEC 10.3)."""

    __tablename__ = "actsyncmapping"
    __table_args__ = (Index("ix_actsyncmapping_mailbox_object", "mailboxid", "objectid"),)

    actsyncmappingid: int | None = Field(default=None, primary_key=True)
    mailboxid: str = Field(index=True)
    objectid: str  # the CRM row
    objecttypecode: str  # appointment | contact | task
    exchangeentryid: str
    exchangechangekey: str | None = None
    crmversionnumber: int = 0
    syncedfields: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    lastchangedirection: str | None = None  # "ToExchange", "ToCrm" or "Both"
    conflictnote: str | None = Field(default=None, sa_column=Column(Text))
    lastsyncedon: datetime | None = _dt()


class ActSyncState(SQLModel, table=True):
    """The Exchange sync state of one ACT folder of a mailbox (where SyncFolderItems left off)."""

    __tablename__ = "actsyncstate"

    mailboxid: str = Field(primary_key=True)
    objecttypecode: str = Field(primary_key=True)  # appointment | contact | task
    syncstate: str = Field(sa_column=Column(Text, nullable=False))


class SyncAttributeMapping(SQLModel, table=True):
    """The direction an administrator chose for one ACT field (SPEC 3.6): ``entityname`` the table
    (appointment, contact, task), ``attributename`` the field as the CRM names it, ``syncdirection`` 0 None,
    1 ToExchange, 2 ToCRM, 3 Bidirectional. A field without a row syncs in its default direction
    (:data:`engine.ports.ACT_DIRECTIONS`)."""

    __tablename__ = "syncattributemapping"
    __table_args__ = (Index("ux_syncattributemapping_field", "entityname", "attributename", unique=True),)

    syncattributemappingid: str = Field(primary_key=True)
    entityname: str
    attributename: str
    syncdirection: int
    modifiedon: datetime | None = _dt()
    modifiedby: str | None = None


class AsyncOperation(SQLModel, table=True):
    __tablename__ = "asyncoperation"

    asyncoperationid: str = Field(primary_key=True)
    name: str
    operationtype: str
    ownerid: str | None = None
    regardingobjectid: str | None = None
    statecode: int = AsyncState.WAITING
    progress: int = 0
    result: str | None = Field(default=None, sa_column=Column(Text))
    startedon: datetime | None = _dt()
    completedon: datetime | None = _dt()
    createdon: datetime | None = _dt()


# -- S2S setup state (SPEC 1.2-1.4), kept in the CRM database so that the setup flow can be done
# one CLI command at a time.

class SimulatorState(SQLModel, table=True):
    """Sandbox state beside the CRM tables: the identity service (JSON), the persisted virtual clock."""

    __tablename__ = "simulatorstate"

    key: str = Field(primary_key=True)
    value: str = Field(sa_column=Column(Text, nullable=False))
    modifiedon: datetime | None = _dt()


class ExchangeJournal(SQLModel, table=True):
    """The fake Exchange store as an append-only journal: one row per finished store operation,
    its events as JSON (``simulator/world.py``). ``seq`` is given by the writer, in commit order."""

    __tablename__ = "exchangejournal"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    events: str = Field(sa_column=Column(Text, nullable=False))


# The counters of the durable world (simulator/world.py), made with the database.
LOCK_COUNTER, EPOCH_COUNTER, FAULTS_COUNTER = "world-lock", "epoch", "faults"


class SimulatorCounter(SQLModel, table=True):
    """Named counters of the sandbox: the world lock row, process epochs, the fault rules' version."""

    __tablename__ = "simulatorcounter"

    name: str = Field(primary_key=True)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class S2SCertificate(SQLModel, table=True):
    """A certificate installed on the CRM deployment (SPEC 1.2, CertificateReconfiguration.ps1).

    One row per certificate type; only ``S2STokenIssuer`` is simulated. The private key is kept
    unencrypted (PKCS#8 PEM): this is a sandbox.
    """

    __tablename__ = "s2scertificate"

    certificatetype: str = Field(primary_key=True)
    thumbprint: str
    subject: str
    serialnumber: str
    notbefore: datetime | None = _dt()
    notafter: datetime | None = _dt()
    certificatepem: str = Field(sa_column=Column(Text, nullable=False))
    privatekeypem: str = Field(sa_column=Column(Text, nullable=False))
    serviceaccount: str
    storefindtype: str
    sourcefile: str | None = None
    installedon: datetime | None = _dt()
    installedby: str | None = None


class S2SConfiguration(SQLModel, table=True):
    """Server-based authentication with Exchange Online (SPEC 1.3, ConfigureCrmServerSideSync)."""

    __tablename__ = "s2sconfiguration"

    organizationid: str = Field(primary_key=True)
    authorizationserverprincipalid: str  # 00000001-0000-0000-c000-000000000000
    authorizationservermetadataurl: str | None = None
    tenantid: str
    rootdomainname: str
    serviceprincipalname: str
    certificatethumbprint: str  # the certificate registered as a verify key of the CRM principal
    o365adminemail: str
    configuredon: datetime | None = _dt()
    configuredby: str | None = None
