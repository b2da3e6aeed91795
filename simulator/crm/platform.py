"""The CRM platform messages that server-side sync calls (the engine's CrmPort).

It owns the email platform logic, as the real CRM does: duplicate detection (SPEC 10.2),
recipient and sender resolution, the track filter of the receiving user or queue, correlation
(In-Reply-To, tracking token, conversation index, smart matching) and activity creation; plus
the mailbox lease, pending sends, item-level rows and the alert trace log.

Hot paths use SQLAlchemy Core. Rows created while a batch of mailboxes is processed are kept in
memory and written in one transaction when the batch is released, so the duplicate check and
correlation also look at those pending rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, bindparam, func, insert, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.clock import Clock
from engine.errors import Nature, SyncError, kind_of
from engine.ports import (
    Alert,
    ItemError,
    ItemOutcome,
    ItemOutcomeKind,
    ItemProperties,
    MailboxUpdate,
    MailboxWork,
    OrgSettings,
    OutgoingEmail,
    ProfileSettings,
    SendOutcome,
    Status,
)
from simulator.crm.models import (
    EMAIL_STATE_OF_STATUS,
    Account,
    ActivityParty,
    Contact,
    CorrelationMethod,
    Email,
    EmailServerProfile,
    EmailStatus,
    ExchangeSyncIdMapping,
    Lead,
    Mailbox,
    Organization,
    ParticipationType,
    Queue,
    SystemUser,
    TraceLog,
    TrackSetting,
)
from simulator.exchange.mime import normalize_message_id
from simulator.faults import FaultInjector

LEASE_TIMEOUT = timedelta(minutes=30)  # a lease older than this is forcibly unlocked
ITEM_ROW_RETENTION = timedelta(days=3)
ALERT_EMAIL_WINDOW = timedelta(hours=1)  # sendemailalert: failures counted over the last hour, one email an hour
MAX_MESSAGE_BYTES = 150 * 1024 * 1024
SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv)\s*:\s*)+", re.IGNORECASE)

M = Mailbox.__table__
E = Email.__table__
P = ActivityParty.__table__
T = TraceLog.__table__
X = ExchangeSyncIdMapping.__table__

_LEASE_COLUMNS = [
    M.c.mailboxid, M.c.emailaddress, M.c.ownerid, M.c.regardingobjectid, M.c.regardingobjecttypecode,
    M.c.emailserverprofile, M.c.statecode, M.c.incomingemaildeliverymethod, M.c.outgoingemaildeliverymethod,
    M.c.enabledforincomingemail, M.c.enabledforoutgoingemail, M.c.incomingemailstatus,
    M.c.outgoingemailstatus, M.c.emailrouteraccessapproval, M.c.processemailreceivedafter,
    M.c.receivingpostponeduntil, M.c.postponesendinguntil, M.c.lastincomingstartedon,
    M.c.lastoutgoingstartedon, M.c.noemailcount, M.c.incomingtransientfailurecount,
    M.c.outgoingtransientfailurecount, M.c.undeliverablefolder, M.c.ewsurl, M.c.transientfailurecount,
    M.c.actdeliverymethod, M.c.enabledforact, M.c.actstatus, M.c.receivingpostponeduntilforact,
    M.c.lastactstartedon, M.c.noactcount, M.c.acttransientfailurecount,
    # a Test & Enable put off by a transient error (engine.mailbox_test)
    M.c.testemailconfigurationscheduled, M.c.testemailconfigurationretrycount,
    M.c.orgmarkedasprimaryforexchangesync,
]

_ORG = Organization.__table__
_ORG_COLUMNS = [  # named as the fields of OrgSettings
    _ORG.c.requireapprovalforuseremail, _ORG.c.requireapprovalforqueueemail, _ORG.c.generatealertsforerrors,
    _ORG.c.generatealertsforwarnings, _ORG.c.generatealertsforinformation,
    _ORG.c.notifymailboxownerofemailserverlevelalerts, _ORG.c.tracksentitems, _ORG.c.organizationid,
]
_PRO = EmailServerProfile.__table__
_PROFILE_COLUMNS = [
    _PRO.c.emailserverprofileid, _PRO.c.name, _PRO.c.ownerid, _PRO.c.statecode, _PRO.c.minpollingintervalinminutes,
    _PRO.c.maxconcurrentconnections, _PRO.c.moveundeliveredemails, _PRO.c.processemailsreceivedafter,
    _PRO.c.timeoutmailboxconnection, _PRO.c.timeoutmailboxconnectionafteramount, _PRO.c.incomingserverlocation,
    _PRO.c.useautodiscover,
]


class Prepared:
    """A Core statement compiled once for one dialect, executed on the DBAPI cursor.

    For the few statements run per mailbox or per item on the polling path, SQLAlchemy's
    per-execution work (cache key, parameter processing, result wrapping) costs several times
    what the database does. The SQL text still comes from Core, and each value still goes
    through its column type's bind processor (UTC datetimes, booleans)."""

    __slots__ = ("sql", "_params", "_positional", "ok", "stmt", "params")

    def __init__(self, stmt, dialect, column_keys: list[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.stmt = stmt
        self.sql = compiled.string
        self._positional = dialect.positional
        names = list(compiled.positiontup or ()) if dialect.positional else list(compiled.binds)
        self._params = []
        for name in names:
            bind = compiled.binds[name]
            self._params.append((name, bind.key if bind.key in compiled.binds else name,
                                 bind.type._cached_bind_processor(dialect), bind.value))
        # defaults computed at execution time (insert/update "prefetch") are left to SQLAlchemy
        self.ok = not (getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None)
                       or getattr(compiled, "literal_execute_params", None) or compiled.post_compile_params)
        self.params = self._make_params()

    def _make_params(self):
        """``row dict -> DBAPI parameters``, generated once: one expression per parameter."""
        namespace: dict = {}
        parts = []
        for i, (name, key, proc, const) in enumerate(self._params):
            namespace[f"c{i}"] = const
            value = f"row.get({key!r}, c{i})"
            if proc is not None:
                namespace[f"p{i}"] = proc
                value = f"p{i}({value})"
            parts.append(value if self._positional else f"{name!r}: {value}")
        body = f"({', '.join(parts)},)" if self._positional else f"{{{', '.join(parts)}}}"
        if self._positional and not parts:
            body = "()"
        exec(f"def params(row):\n    return {body}\n", namespace)  # noqa: S102 - names come from Core
        return namespace["params"]

    def executemany(self, conn, rows: list[dict]) -> None:
        """Run on ``conn`` (a SQLAlchemy Connection inside its transaction)."""
        if not rows:
            return
        if not self.ok:
            conn.execute(self.stmt, rows)
            return
        with _cursor(conn) as cursor:
            cursor.executemany(self.sql, [self.params(r) for r in rows])

    def execute(self, conn, row: dict) -> int:
        """Run once; the number of rows the statement changed."""
        if not self.ok:
            return conn.execute(self.stmt, row).rowcount
        with _cursor(conn) as cursor:
            cursor.execute(self.sql, self.params(row))
            return cursor.rowcount

    def fetchall(self, conn, row: dict, columns: list | None = None) -> list[tuple]:
        """The rows, each value through the result processor of ``columns[i]``'s type when given."""
        if not self.ok:
            return [tuple(r) for r in conn.execute(self.stmt, row)]
        with _cursor(conn) as cursor:
            cursor.execute(self.sql, self.params(row))
            rows = cursor.fetchall()
        if columns is None or not rows:
            return rows
        dialect = conn.dialect
        procs = [(i, c.type._cached_result_processor(dialect, None)) for i, c in enumerate(columns)]
        procs = [(i, p) for i, p in procs if p is not None]
        if not procs:
            return rows
        out = []
        for r in rows:
            r = list(r)
            for i, p in procs:
                r[i] = p(r[i])
            out.append(r)
        return out


def _cursor(conn):
    """A DBAPI cursor on the connection ``conn`` wraps, closed after use."""
    return contextlib.closing(conn.connection.dbapi_connection.cursor())


class _Borrowed:
    """``with`` over a connection that someone else closes."""

    __slots__ = ("conn",)

    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc) -> bool:
        return False


def _lease_statement(postgres: bool):
    """Take up to ``:limit`` due mailboxes (free, or leased longer ago than ``:stale``) for ``:hostid``."""
    now = bindparam("now", type_=M.c.processinglastattemptedon.type)
    stale = bindparam("stale", type_=M.c.processinglastattemptedon.type)
    due = (
        select(M.c.mailboxid)
        .where(
            M.c.postponemailboxprocessinguntil <= now,
            or_(M.c.processingstatecode == 0,
                and_(M.c.processingstatecode == 1, M.c.processinglastattemptedon < stale)),
        )
        .order_by(M.c.postponemailboxprocessinguntil, M.c.mailboxid)
        .limit(bindparam("limit", type_=M.c.forcedunlockcount.type))
    )
    if postgres:
        due = due.with_for_update(skip_locked=True)
    return (
        update(M)
        .where(M.c.mailboxid.in_(due.scalar_subquery()))
        .values(
            hostid=bindparam("hostid", type_=M.c.hostid.type),
            processingstatecode=1,
            processinglastattemptedon=now,
            forcedunlockcount=M.c.forcedunlockcount + (M.c.processingstatecode == 1).cast(M.c.forcedunlockcount.type),
        )
        .returning(*_LEASE_COLUMNS)
    )


def _next_due_statement():
    """One query: the earliest due time of a free mailbox and the oldest lease.

    The state codes are literals, so that SQLite uses the partial index of leased rows."""
    free = select(func.min(M.c.postponemailboxprocessinguntil)).where(
        M.c.processingstatecode == literal_column("0")).scalar_subquery()
    locked = select(func.min(M.c.processinglastattemptedon)).where(
        M.c.processingstatecode == literal_column("1"),
        M.c.postponemailboxprocessinguntil.is_not(None)).scalar_subquery()
    return select(free, locked)


def _select_dupkeys(column: str, binds: list):
    return select(E.c.dupkey).where(E.c[column].in_(binds))


def _select_correlation(column: str, binds: list):
    stmt = select(E.c[column], E.c.activityid, E.c.regardingobjectid, E.c.regardingobjecttypecode).where(
        E.c[column].in_(binds))
    return stmt.order_by(E.c.createdon) if column == "conversationindex" else stmt


def _update_statement(shape: tuple[str, ...], *, release: bool = False):
    """UPDATE of one mailbox (by id) setting the columns of ``shape``; with ``release``, of a mailbox
    leased by the host ``b_hostid``, which it frees."""
    values = {name: bindparam(name, type_=M.c[name].type) for name in shape}
    where = [M.c.mailboxid == bindparam("b_mailboxid")]
    if release:
        values["hostid"] = None
        values["processingstatecode"] = 0
        where.append(M.c.hostid == bindparam("b_hostid"))
    return update(M).where(*where).values(values)


def _mailbox_work(r) -> MailboxWork:
    """A row of ``_LEASE_COLUMNS`` as the engine's MailboxWork."""
    return MailboxWork(
        id=r[0], emailaddress=r[1], ownerid=r[2], regardingobjectid=r[3], regardingobjecttypecode=r[4],
        profileid=r[5], active=r[6] == 0, incomingemaildeliverymethod=r[7],
        outgoingemaildeliverymethod=r[8], enabledforincomingemail=r[9], enabledforoutgoingemail=r[10],
        incomingemailstatus=r[11], outgoingemailstatus=r[12], emailrouteraccessapproval=r[13],
        processemailreceivedafter=r[14], receivingpostponeduntil=r[15], postponesendinguntil=r[16],
        lastincomingstartedon=r[17], lastoutgoingstartedon=r[18], noemailcount=r[19],
        incomingtransientfailurecount=r[20], outgoingtransientfailurecount=r[21],
        undeliverablefolder=r[22], ewsurl=r[23], actdeliverymethod=r[25], enabledforact=r[26], actstatus=r[27],
        receivingpostponeduntilforact=r[28], lastactstartedon=r[29], noactcount=r[30],
        acttransientfailurecount=r[31], testemailconfigurationscheduled=r[32],
        testemailconfigurationretrycount=r[33], orgmarkedasprimaryforexchangesync=r[34],
    )


def key64(text: str) -> int:
    """A signed 64-bit key of a text (indexed instead of the long text itself)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(),
                          "big", signed=True)


def duplicate_key(item: ItemProperties) -> int:
    """SPEC 10.2: the normalized Message-ID, or a hash of sender, date, subject and body."""
    message_id = normalize_message_id(item.message_id)
    if message_id:
        return key64("mid:" + message_id)
    basis = "\x1f".join([item.sender or "", item.date.isoformat() if item.date else "", item.subject, item.body])
    return key64("sha1:" + hashlib.sha1(basis.encode("utf-8", "replace")).hexdigest())


def message_key(message_id: str | None) -> int | None:
    message_id = normalize_message_id(message_id)
    return key64("mid:" + message_id) if message_id else None


def conversation_base(thread_index: str | None) -> str | None:
    """The conversation part of a Thread-Index: its first 22 bytes (30 base64 characters)."""
    if not thread_index or len(thread_index) < 30:
        return None
    return thread_index[:30]


def normalized_subject(subject: str) -> str:
    return SUBJECT_PREFIX.sub("", subject or "").strip().lower()


@dataclass(slots=True)
class Party:
    typecode: str
    id: str


@dataclass(slots=True)
class Correlated:
    activityid: str
    regardingobjectid: str | None
    regardingobjecttypecode: str | None


class IdFactory:
    """GUIDs from a seeded generator: the same seed and epoch give the same ids.

    Each process that opens a world has its own epoch (``simulator/world.py``), so ids never
    repeat between processes or after a crash; epoch 1 (a new database) keeps the plain seed."""

    def __init__(self, seed: int, epoch: int | Callable[[], int] = 1) -> None:
        self._seed = seed
        self._epoch = epoch  # a number, or a function asked at the first id
        self._rng: random.Random | None = None

    def new(self) -> str:
        rng = self._rng
        if rng is None:
            epoch = self._epoch if isinstance(self._epoch, int) else self._epoch()
            rng = self._rng = random.Random(f"crm-ids-{self._seed}" if epoch == 1
                                            else f"crm-ids-{self._seed}-epoch-{epoch}")
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Platform:
    """CrmPort over the SQL database of the fake organization."""

    def __init__(self, db: Engine, clock: Clock, ids: IdFactory | None = None,
                 faults: FaultInjector | None = None) -> None:
        self.db = db
        self.clock = clock
        self.ids = ids or IdFactory(0)
        self.faults = faults
        self._directory: dict[str, list[Party]] | None = None
        self._track: dict[str, int] = {}
        self._entity_owner: dict[str, str] = {}
        self._reset_pending()
        self._pending_senders: set[str] | None = None
        self._last_purge: datetime | None = None
        self._postgres = db.dialect.name == "postgresql"
        self._statements: dict[tuple, Prepared] = {}
        self._keep_reader = db.dialect.name == "sqlite"
        self._reader = None  # see _reading
        # callback(to address, subject, body): mail to a person outside the engine (the profile alert email)
        self.on_notification = None
        # the durable world (simulator/world.py): written in the lease and release transactions
        self.world = None
        self.oldest_lease: datetime | None = None  # as the last next_due() found it

    def _reset_pending(self) -> None:
        self._emails: list[dict] = []
        self._parties: list[dict] = []
        self._item_rows: list[dict] = []
        self._send_updates: list[dict] = []
        self._attempt_updates: list[dict] = []
        self._dupkeys: set[int] = set()
        self._by_msgkey: dict[int, Correlated] = {}
        self._by_token: dict[str, Correlated] = {}

    # -- settings --------------------------------------------------------------------------
    def org_settings(self) -> OrgSettings:
        # read at every scheduling step: a prepared statement of the columns needed (the first row)
        with self.db.connect() as conn:
            rows = self._prepared(("org_settings",), lambda: select(*_ORG_COLUMNS).limit(1)).fetchall(
                conn, {}, _ORG_COLUMNS)
        if not rows:
            return OrgSettings()
        return OrgSettings(**{c.name: v for c, v in zip(_ORG_COLUMNS, rows[0], strict=True)})

    def _org_row(self, conn):
        return conn.execute(select(Organization.__table__)).mappings().first()

    def profiles(self) -> dict[str, ProfileSettings]:
        with self.db.connect() as conn:
            rows = self._prepared(("profiles",), lambda: select(*_PROFILE_COLUMNS)).fetchall(
                conn, {}, _PROFILE_COLUMNS)
        return {
            r[0]: ProfileSettings(
                id=r[0],
                name=r[1],
                ownerid=r[2],
                active=r[3] == 0,
                minpollingintervalinminutes=r[4],
                maxconcurrentconnections=r[5],
                moveundeliveredemails=r[6],
                processemailsreceivedafter=r[7],
                timeoutmailboxconnection=r[8],
                timeoutmailboxconnectionafteramount=r[9],
                ewsurl=r[10],
                useautodiscover=r[11],
            )
            for r in rows
        }

    # -- directory: addresses -> records ---------------------------------------------------
    def invalidate_directory(self) -> None:
        """Forget the cached address book (call after users, queues or contacts change)."""
        self._directory = None

    def _load_directory(self) -> dict[str, list[Party]]:
        if self._directory is not None:
            return self._directory
        directory: dict[str, list[Party]] = defaultdict(list)
        track: dict[str, int] = {}
        owner: dict[str, str] = {}
        with self.db.connect() as conn:
            for uid, addr, setting, disabled in conn.execute(select(
                    SystemUser.systemuserid, SystemUser.internalemailaddress,
                    SystemUser.incomingemailfilteringmethod, SystemUser.isdisabled)):
                track[uid] = setting
                owner[uid] = uid
                if addr and not disabled:
                    directory[addr.lower()].append(Party("systemuser", uid))
            for qid, addr, setting, qowner in conn.execute(select(
                    Queue.queueid, Queue.emailaddress, Queue.incomingemailfilteringmethod, Queue.ownerid)):
                track[qid] = setting
                owner[qid] = qowner
                if addr:
                    directory[addr.lower()].append(Party("queue", qid))
            for model, key, code in ((Contact, "contactid", "contact"), (Account, "accountid", "account"),
                                     (Lead, "leadid", "lead")):
                table = model.__table__
                for rid, addr in conn.execute(select(table.c[key], table.c.emailaddress1)):
                    if addr:
                        directory[addr.lower()].append(Party(code, rid))
        self._directory = dict(directory)
        self._track = track
        self._entity_owner = owner
        return self._directory

    def resolve(self, address: str | None) -> Party | None:
        """The record an address resolves to: users first, then queues, contacts, accounts, leads."""
        if not address:
            return None
        parties = self._load_directory().get(address.lower())
        return parties[0] if parties else None

    # -- leasing ---------------------------------------------------------------------------
    def next_due(self) -> datetime | None:
        with self.db.connect() as conn:
            free, locked = self._prepared(("next_due",), _next_due_statement).fetchall(
                conn, {}, [M.c.postponemailboxprocessinguntil, M.c.processinglastattemptedon])[0]
        free = _aware(free)
        self.oldest_lease = _aware(locked)
        if locked is not None:
            expiry = _aware(locked) + LEASE_TIMEOUT
            return expiry if free is None or expiry < free else free
        return free

    def leased_by_others(self, hostid: str) -> datetime | None:
        """When the oldest lease held by a host other than ``hostid`` was taken (None: none is)."""
        with self.db.connect() as conn:
            return _aware(conn.execute(select(func.min(M.c.processinglastattemptedon)).where(
                M.c.processingstatecode == 1, M.c.hostid != hostid)).scalar())

    def lease_due(self, hostid: str, now: datetime, limit: int) -> list[MailboxWork]:
        params = dict(now=now, stale=now - LEASE_TIMEOUT, limit=limit, hostid=hostid)
        lease = self._prepared(("lease",), lambda: _lease_statement(self._postgres))
        senders = self._prepared(("pending_senders",), lambda: select(E.c.sendermailboxid).where(
            E.c.statuscode.in_((EmailStatus.PENDING_SEND, EmailStatus.SENDING))).distinct())
        world = self.world
        try:
            with self._begin() as conn:
                rows = lease.fetchall(conn, params, _LEASE_COLUMNS)
                self._pending_senders = {r[0] for r in senders.fetchall(conn, {})}
                if world is not None:  # what other processes delivered, before the batch reads it
                    world.sync(conn)
        except BaseException:
            if world is not None:
                world.reload()
            raise
        if rows and world is not None:
            world.begin_batch()
        works = [_mailbox_work(r) for r in rows]
        works.sort(key=lambda w: (w.receivingpostponeduntil or now, w.id))
        if works and self._keep_reader and self._reader is None:
            self._reader = self.db.connect()
        return works

    def mailbox_work(self, mailboxids: list[str]) -> list[MailboxWork]:
        """The same view of mailboxes as a lease gives, without leasing them (in the given order)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(*_LEASE_COLUMNS).where(M.c.mailboxid.in_(mailboxids))).all()
        by_id = {r[0]: _mailbox_work(r) for r in rows}
        return [by_id[i] for i in mailboxids if i in by_id]

    def release(self, hostid: str, updates: list[MailboxUpdate]) -> None:
        """Write the batch in one transaction: pending rows, then the mailbox updates.

        The updates are grouped by the set of columns they change; each group is one
        executemany of one cached statement (a handful of shapes cover a whole batch)."""
        shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for upd in updates:
            row = dict(upd.values)
            shape = tuple(sorted(row))
            row["b_mailboxid"] = upd.mailboxid
            row["b_hostid"] = hostid
            shapes[shape].append(row)
        self._close_reader()
        world = self.world
        committed = False
        try:
            with self._begin() as conn:
                self._flush(conn)
                for shape, rows in shapes.items():
                    self._prepared(("release", shape),
                                   lambda shape=shape: _update_statement(shape, release=True)).executemany(conn, rows)
                if world is not None:  # the batch's Exchange changes commit with its CRM rows
                    world.sync(conn, reading=False)
            committed = True
        except (IntegrityError, self.db.dialect.dbapi.IntegrityError):
            # Another host forced some of these leases open (this one was presumed dead) and tracked
            # their mail first. The whole batch is dropped (its Exchange changes with it) and its
            # mailboxes freed: they are done again, so nothing is lost and nothing is done twice.
            with self._begin() as conn:
                conn.execute(update(M).where(M.c.hostid == hostid, M.c.mailboxid.in_(
                    [u.mailboxid for u in updates])).values(processingstatecode=0, hostid=None))
            return
        finally:
            if not committed:
                self._reset_pending()  # the batch's rows went with its transaction
            if world is not None:
                world.end_batch(committed)
        self._purge_old_item_rows()
        self._after_errors(updates)

    def abandon_batch(self) -> None:
        """A batch that will never reach its release (the engine failed half-way): forget its rows
        and its Exchange changes, as if it had not run; its leases are forced open later."""
        self._reset_pending()
        self._close_reader()
        if self.world is not None and self.world.deferred:
            self.world.end_batch(committed=False)

    def _begin(self):
        """A write transaction. The world's epoch is taken first, outside it: the raw statements of
        the hot path do not pass SQLAlchemy's hooks, which take it elsewhere (simulator/world.py)."""
        if self.world is not None:
            self.world.epoch()
        return self.db.begin()

    def _reading(self):
        """A connection for the duplicate and correlation lookups of the leased batch.

        On SQLite one connection is kept from the lease to the release (a pool checkout per
        mailbox with mail cost more than the lookup); its SELECTs run outside any transaction on
        the DBAPI cursor, so each sees what is committed. Elsewhere a connection per call."""
        if self._reader is not None:
            return _Borrowed(self._reader)
        return self.db.connect()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _prepared(self, key: tuple, build) -> Prepared:
        prepared = self._statements.get(key)
        if prepared is None:
            prepared = self._statements[key] = Prepared(build(), self.db.dialect)
        return prepared

    def _insert_many(self, conn, table, rows: list[dict]) -> None:
        shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for row in rows:
            shapes[tuple(row)].append(row)
        for shape, group in shapes.items():
            key = ("insert", table.name, shape)
            prepared = self._statements.get(key)
            if prepared is None:
                prepared = self._statements[key] = Prepared(insert(table), self.db.dialect, list(shape))
            prepared.executemany(conn, group)

    def update_mailboxes(self, updates: list[MailboxUpdate]) -> None:
        """Write mailbox columns outside a lease (administration, Test & Enable)."""
        shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for upd in updates:
            if upd.values:
                shapes[tuple(sorted(upd.values))].append({**upd.values, "b_mailboxid": upd.mailboxid})
        with self._begin() as conn:
            self._flush(conn)
            for shape, rows in shapes.items():
                self._prepared(("update", shape), lambda shape=shape: _update_statement(shape)).executemany(conn, rows)
        self._after_errors(updates)

    def _after_errors(self, updates: list[MailboxUpdate]) -> None:
        failed = [u.mailboxid for u in updates if u.values.get("lastsyncerroroccurredon") is not None]
        if failed:
            self.check_profile_failures(failed)

    def check_profile_failures(self, mailboxids: list[str]) -> list[str]:
        """The profile alert email (``sendemailalert``, SPEC 4): when more than half of a profile's
        mailboxes failed within the last hour, one email to the profile owner (at most one an hour).

        A mailbox counts as failed when a workload's status is Failure and its last error is
        less than an hour old. The email is an activity regarding the profile, handed to
        ``on_notification`` for delivery. Returns the ids of the profiles that were mailed."""
        now = self.clock.now()
        since = now - ALERT_EMAIL_WINDOW
        mailed: list[str] = []
        with self._begin() as conn:
            profileids = conn.execute(select(M.c.emailserverprofile).distinct().where(
                M.c.mailboxid.in_(mailboxids), M.c.emailserverprofile.is_not(None))).scalars().all()
            for pid in sorted(profileids):
                profile = conn.execute(select(_PRO.c.name, _PRO.c.ownerid, _PRO.c.sendemailalert).where(
                    _PRO.c.emailserverprofileid == pid)).first()
                if profile is None or not profile.sendemailalert:
                    continue
                total = conn.execute(select(func.count()).where(M.c.emailserverprofile == pid)).scalar()
                failed = conn.execute(select(func.count()).where(
                    M.c.emailserverprofile == pid, M.c.lastsyncerroroccurredon >= since,
                    or_(M.c.incomingemailstatus == Status.FAILURE, M.c.outgoingemailstatus == Status.FAILURE,
                        M.c.actstatus == Status.FAILURE))).scalar()
                if not total or failed * 2 <= total:
                    continue
                already = conn.execute(select(E.c.activityid).where(
                    E.c.regardingobjectid == pid, E.c.regardingobjecttypecode == "emailserverprofile",
                    E.c.createdon >= since).limit(1)).first()
                if already is not None:
                    continue
                owner = conn.execute(select(SystemUser.internalemailaddress).where(
                    SystemUser.systemuserid == profile.ownerid)).scalar()
                if owner is None:
                    continue
                subject = f"Email server profile {profile.name}: {failed} of {total} mailboxes failed"
                body = (f"In the last hour {failed} of the {total} mailboxes that use the email server profile "
                        f"{profile.name} failed to synchronize. Open the alerts of the profile and of its "
                        "mailboxes to see why, fix the cause, then test and enable the mailboxes again.")
                conn.execute(insert(E).values(
                    activityid=self.ids.new(), subject=subject, description=body, sender=None, torecipients=owner,
                    directioncode=True, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENT],
                    statuscode=EmailStatus.SENT, ownerid=profile.ownerid, regardingobjectid=pid,
                    regardingobjecttypecode="emailserverprofile", senton=now, createdon=now, modifiedon=now))
                mailed.append((pid, owner, subject, body))
        for _pid, owner, subject, body in mailed:
            if self.on_notification is not None:
                self.on_notification(owner, subject, body)
        return [m[0] for m in mailed]

    def _flush(self, conn) -> None:
        if self._emails:
            self._insert_many(conn, E, self._emails)
        if self._parties:
            self._insert_many(conn, P, self._parties)
        if self._item_rows:
            self._insert_many(conn, X, self._item_rows)
        by_id = update(E).where(E.c.activityid == bindparam("b_activityid"))
        if self._send_updates:
            conn.execute(by_id, self._send_updates)
        if self._attempt_updates:
            conn.execute(by_id, self._attempt_updates)
        self._reset_pending()

    def _purge_old_item_rows(self) -> None:
        now = self.clock.now()
        if self._last_purge is not None and now - self._last_purge < timedelta(hours=1):
            return
        self._last_purge = now
        with self._begin() as conn:
            conn.execute(X.delete().where(X.c.lastsyncerroroccurredon < now - ITEM_ROW_RETENTION))

    # -- incoming --------------------------------------------------------------------------
    def _lookup_correlations(self, items: list[ItemProperties]) -> tuple[set[int], dict[int, Correlated],
                                                                      dict[str, Correlated], dict[str, Correlated]]:
        dupkeys = {duplicate_key(i) for i in items}
        msgkeys = {k for i in items for k in (message_key(r) for r in (i.in_reply_to, *i.references)) if k}
        tokens = {t for i in items for t in self._tokens_in(i.subject)}
        convs = {c for i in items if (c := conversation_base(i.thread_index))}
        known_dups: set[int] = set(k for k in dupkeys if k in self._dupkeys)
        # the pending maps grow through a batch: look the (few) keys up rather than scan the maps
        pending_msg, pending_tok = self._by_msgkey, self._by_token
        by_msgkey = {k: pending_msg[k] for k in msgkeys if k in pending_msg}
        by_token = {k: pending_tok[k] for k in tokens if k in pending_tok}
        by_conv: dict[str, Correlated] = {}
        with self._reading() as conn:
            if dupkeys:
                known_dups.update(r[0] for r in self._select_in(conn, "dupkey", _select_dupkeys, dupkeys))
            if msgkeys:
                for k, aid, reg, regtype in self._select_in(conn, "messageidkey", _select_correlation, msgkeys):
                    by_msgkey.setdefault(k, Correlated(aid, reg, regtype))
            if tokens:
                for tok, aid, reg, regtype in self._select_in(conn, "trackingtoken", _select_correlation, tokens):
                    by_token.setdefault(tok, Correlated(aid, reg, regtype))
            if convs:
                for conv, aid, reg, regtype in self._select_in(conn, "conversationindex", _select_correlation,
                                                               convs):
                    by_conv.setdefault(conv, Correlated(aid, reg, regtype))
        return known_dups, by_msgkey, by_token, by_conv

    def _select_in(self, conn, column: str, build, values) -> list[tuple]:
        """Rows of ``build(column, binds)`` for the values, with one prepared statement per list length."""
        values = list(values)
        n = len(values)
        prepared = self._prepared(("in", column, build.__name__, n),
                                  lambda: build(column, [bindparam(f"k{i}") for i in range(n)]))
        return prepared.fetchall(conn, {f"k{i}": v for i, v in enumerate(values)})

    def _tokens_in(self, subject: str) -> list[str]:
        prefix = self._tracking_prefix()
        if not prefix or not subject:
            return []
        return re.findall(re.escape(prefix) + r":\d{7,}", subject)

    def _tracking_prefix(self) -> str | None:
        if not hasattr(self, "_prefix_cache"):
            with self.db.connect() as conn:
                row = self._org_row(conn)
            self._prefix_cache = (row["trackingprefix"] if row and row["trackingtokenenabled"] else None,
                                  bool(row and row["emailcorrelationenabled"]),
                                  bool(row and row["enablesmartmatching"]))
        return self._prefix_cache[0]

    def invalidate_settings(self) -> None:
        if hasattr(self, "_prefix_cache"):
            del self._prefix_cache

    def _smart_match(self, item: ItemProperties) -> Correlated | None:
        subject = normalized_subject(item.subject)
        if not subject or not item.sender:
            return None
        with self.db.connect() as conn:
            rows = conn.execute(select(E.c.activityid, E.c.regardingobjectid, E.c.regardingobjecttypecode,
                                       E.c.subject, E.c.sender, E.c.torecipients)
                                .where(or_(E.c.torecipients.contains(item.sender), E.c.sender == item.sender))
                                .order_by(E.c.createdon.desc()).limit(50)).all()
        for aid, reg, regtype, subj, _sender, _to in rows:
            if normalized_subject(subj or "") == subject:
                return Correlated(aid, reg, regtype)
        return None

    def deliver_incoming(self, mailbox: MailboxWork, items: list[ItemProperties]) -> list[ItemOutcome]:
        if not items:
            return []
        self._load_directory()
        self._tracking_prefix()
        _, correlation_on, smart_on = self._prefix_cache
        known_dups, by_msgkey, by_token, by_conv = self._lookup_correlations(items)
        setting = self._track.get(mailbox.regardingobjectid, TrackSetting.ALL)
        now = self.clock.now()
        outcomes: list[ItemOutcome] = []
        for item in items:
            outcomes.append(self._deliver_one(mailbox, item, setting, now, known_dups, by_msgkey, by_token,
                                              by_conv, correlation_on, smart_on))
        return outcomes

    def _deliver_one(self, mailbox, item, setting, now, known_dups, by_msgkey, by_token, by_conv,
                     correlation_on, smart_on) -> ItemOutcome:
        fail, skip = ItemOutcomeKind.FAILED, ItemOutcomeKind.SKIPPED
        if item.parse_error:
            return ItemOutcome(item.item_id, fail, "MalformedMessage", f"The message cannot be read: {item.parse_error}.")
        if item.size > MAX_MESSAGE_BYTES:
            return ItemOutcome(item.item_id, fail, "MessageTooLarge",
                               f"The message has {item.size} bytes; at most {MAX_MESSAGE_BYTES} become an activity.")
        dupkey = duplicate_key(item)
        if dupkey in known_dups or dupkey in self._dupkeys:
            return ItemOutcome(item.item_id, skip, "Duplicate", "The organization already tracks this message.")
        outgoing = item.folder == "sentitems"
        recipients = [(addr, self.resolve(addr)) for addr in (*item.to, *item.cc)]
        sender = self.resolve(item.sender)
        if outgoing:
            matched = sender is not None and sender.id == mailbox.regardingobjectid
        else:
            matched = any(p is not None and p.typecode in ("systemuser", "queue") for _, p in recipients)
        if not matched:
            return ItemOutcome(item.item_id, skip, "NoRecipientMatch",
                               "No recipient resolves to a user or queue of the organization.")
        correlated, method = None, CorrelationMethod.NONE
        if correlation_on:
            for ref in (item.in_reply_to, *item.references):
                k = message_key(ref)
                if k is not None and k in by_msgkey:
                    correlated, method = by_msgkey[k], CorrelationMethod.IN_REPLY_TO
                    break
            if correlated is None:
                for tok in self._tokens_in(item.subject):
                    if tok in by_token:
                        correlated, method = by_token[tok], CorrelationMethod.TRACKING_TOKEN
                        break
            if correlated is None:
                conv = conversation_base(item.thread_index)
                if conv and conv in by_conv:
                    correlated, method = by_conv[conv], CorrelationMethod.CONVERSATION_INDEX
            if correlated is None and smart_on:
                correlated = self._smart_match(item)
                if correlated is not None:
                    method = CorrelationMethod.SMART_MATCHING
        if setting == TrackSetting.NONE:
            return ItemOutcome(item.item_id, skip, "TrackingDisabled",
                               "The receiving user or queue tracks no incoming email.")
        if setting == TrackSetting.REPLIES_TO_CRM_EMAIL and correlated is None:
            return ItemOutcome(item.item_id, skip, "NoCorrelationMatch",
                               "The email does not answer an email tracked in the organization.")
        if setting == TrackSetting.FROM_LEADS_CONTACTS_ACCOUNTS and (
                sender is None or sender.typecode not in ("contact", "account", "lead")):
            return ItemOutcome(item.item_id, skip, "NoSenderMatch",
                               "The sender is not a lead, contact or account.")
        if setting == TrackSetting.FROM_EMAIL_ENABLED_RECORDS and sender is None:
            return ItemOutcome(item.item_id, skip, "NoSenderMatch",
                               "The sender is not an email-enabled record of the organization.")
        if self.faults is not None:
            try:
                self.faults.check("create_email", mailbox.emailaddress)
            except SyncError as exc:
                return ItemOutcome(item.item_id, fail, exc.code, "A plug-in refused to create the activity.")
        activityid = self.ids.new()
        mkey = message_key(item.message_id)
        row = dict(
            activityid=activityid, subject=item.subject[:400], description=item.body[:100_000],
            sender=item.sender, torecipients=";".join(item.to + item.cc), messageid=item.message_id,
            dupkey=dupkey, messageidkey=mkey, inreplyto=item.in_reply_to,
            conversationindex=conversation_base(item.thread_index), directioncode=outgoing,
            statecode=EMAIL_STATE_OF_STATUS[EmailStatus.RECEIVED], statuscode=EmailStatus.RECEIVED,
            ownerid=self._entity_owner.get(mailbox.regardingobjectid, mailbox.ownerid),
            regardingobjectid=correlated.regardingobjectid if correlated else None,
            regardingobjecttypecode=correlated.regardingobjecttypecode if correlated else None,
            correlatedactivityid=correlated.activityid if correlated else None, correlationmethod=int(method),
            acceptingentityid=mailbox.regardingobjectid, acceptingentitytypecode=mailbox.regardingobjecttypecode,
            receivingmailboxid=mailbox.id, sendermailboxid=None, exchangeitemid=item.item_id,
            deliveryattempts=0, trackingtoken=None, senton=item.date or item.received, createdon=now,
            modifiedon=now,
        )
        self._emails.append(row)
        self._dupkeys.add(dupkey)
        corr = Correlated(activityid, row["regardingobjectid"], row["regardingobjecttypecode"])
        if mkey is not None:
            self._by_msgkey.setdefault(mkey, corr)
        self._parties.append(dict(activityid=activityid, participationtypemask=ParticipationType.SENDER,
                                  partyid=sender.id if sender else None,
                                  partyobjecttypecode=sender.typecode if sender else None, addressused=item.sender))
        for mask, addrs in ((ParticipationType.TO, item.to), (ParticipationType.CC, item.cc)):
            for addr in addrs:
                p = self.resolve(addr)
                self._parties.append(dict(activityid=activityid, participationtypemask=mask,
                                          partyid=p.id if p else None, partyobjecttypecode=p.typecode if p else None,
                                          addressused=addr))
        return ItemOutcome(item.item_id, ItemOutcomeKind.TRACKED, None, "", activityid, int(method))

    def record_item_errors(self, errors: list[ItemError]) -> None:
        now = self.clock.now()
        for e in errors:
            self._item_rows.append(dict(
                mailboxid=e.mailboxid, exchangeentryid=e.exchangeentryid, objectid=e.objectid, objecttypecode="email",
                itemstate=int(e.state), lastsyncerror=e.errorname, lastsyncerrordetail=e.detail[:2000], retries=0,
                lastsyncerroroccurredon=now))

    # -- outgoing --------------------------------------------------------------------------
    def pending_sends(self, mailbox: MailboxWork, limit: int) -> list[OutgoingEmail]:
        if self._pending_senders is not None and mailbox.id not in self._pending_senders:
            return []
        with self.db.connect() as conn:
            rows = conn.execute(
                select(E.c.activityid, E.c.subject, E.c.description, E.c.trackingtoken, E.c.deliveryattempts,
                       E.c.inreplyto, E.c.messageid, E.c.statuscode)
                .where(E.c.statuscode.in_((EmailStatus.PENDING_SEND, EmailStatus.SENDING)),
                       E.c.sendermailboxid == mailbox.id)
                .order_by(E.c.modifiedon, E.c.activityid).limit(limit)
            ).all()
            ids = [r[0] for r in rows]
            parties: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
            if ids:
                for aid, mask, addr in conn.execute(
                        select(P.c.activityid, P.c.participationtypemask, P.c.addressused)
                        .where(P.c.activityid.in_(ids), P.c.participationtypemask.in_((2, 3, 4)))
                        .order_by(P.c.activitypartyid)):
                    if addr:
                        parties[aid][mask].append(addr)
        return [
            OutgoingEmail(
                activityid=aid, subject=subject or "", body=body or "", sender=mailbox.emailaddress,
                to=tuple(parties[aid][2]), cc=tuple(parties[aid][3]), bcc=tuple(parties[aid][4]),
                trackingtoken=token, deliveryattempts=attempts, in_reply_to=inreplyto, messageid=messageid,
                sending=status == EmailStatus.SENDING,
            )
            for aid, subject, body, token, attempts, inreplyto, messageid, status in rows
        ]

    def start_send(self, mailbox: MailboxWork, activityid: str) -> str:
        """Sending (7), with the Message-ID the email is sent with, committed before the submit."""
        domain = mailbox.emailaddress.rsplit("@", 1)[-1] if "@" in mailbox.emailaddress else "sandbox.invalid"
        message_id = f"{activityid}@{domain.lower()}"
        with self._begin() as conn:
            conn.execute(update(E).where(E.c.activityid == activityid).values(
                statuscode=EmailStatus.SENDING, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENDING],
                messageid=message_id, modifiedon=self.clock.now()))
        return message_id

    def record_send_outcomes(self, mailbox: MailboxWork, outcomes: list[SendOutcome]) -> None:
        now = self.clock.now()
        with self.db.connect() as conn:
            attempts = dict(conn.execute(select(E.c.activityid, E.c.deliveryattempts).where(
                E.c.activityid.in_([o.activityid for o in outcomes]))).all())
        for o in outcomes:
            base = dict(b_activityid=o.activityid, modifiedon=now)
            if o.sent:
                mkey = message_key(normalize_message_id(o.message_id))
                values = dict(base, statuscode=EmailStatus.SENT, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENT],
                              messageid=normalize_message_id(o.message_id), messageidkey=mkey, dupkey=mkey,
                              subject=o.subject, senton=now, deliveryattempts=attempts.get(o.activityid, 0) + 1)
                if mkey is not None:
                    self._dupkeys.add(mkey)
            else:
                count = attempts.get(o.activityid, 0) + (1 if o.error_code and kind_of(o.error_code).nature
                                                         is Nature.TRANSIENT else 0)
                status = EmailStatus.FAILED if o.failed_for_good else EmailStatus.PENDING_SEND
                self._attempt_updates.append(dict(base, statuscode=status, statecode=EMAIL_STATE_OF_STATUS[status],
                                                  deliveryattempts=count))
                if o.failed_for_good:
                    self._item_rows.append(dict(
                        mailboxid=mailbox.id, exchangeentryid="", objectid=o.activityid, objecttypecode="email",
                        itemstate=int(ItemOutcomeKind.FAILED), lastsyncerror="SendFailed",
                        lastsyncerrordetail=f"Sending failed {count} times; the last error was {o.error_code}: "
                                            f"{o.error_detail}"[:2000],
                        retries=count, lastsyncerroroccurredon=now))
                continue
            self._send_updates.append(values)

    # -- platform messages used by people and scenarios -------------------------------------
    def create_email(self, *, sender_userid: str, to: list[str], subject: str, body: str = "",
                     cc: list[str] | None = None, regarding: tuple[str, str] | None = None,
                     in_reply_to: str | None = None) -> str:
        """Create a draft outgoing email from a user to addresses; returns its activity id."""
        self._load_directory()
        now = self.clock.now()
        with self._begin() as conn:
            user = conn.execute(select(SystemUser.systemuserid, SystemUser.internalemailaddress).where(
                SystemUser.systemuserid == sender_userid)).first()
            if user is None:
                raise ValueError(f"sender_userid: no user has the id {sender_userid!r}")
            activityid = self.ids.new()
            conn.execute(insert(E).values(
                activityid=activityid, subject=subject, description=body, sender=user[1],
                torecipients=";".join(to + (cc or [])), directioncode=True,
                statecode=EMAIL_STATE_OF_STATUS[EmailStatus.DRAFT], statuscode=EmailStatus.DRAFT,
                ownerid=sender_userid, regardingobjectid=regarding[1] if regarding else None,
                regardingobjecttypecode=regarding[0] if regarding else None, inreplyto=in_reply_to,
                createdon=now, modifiedon=now))
            rows = [dict(activityid=activityid, participationtypemask=ParticipationType.SENDER,
                         partyid=sender_userid, partyobjecttypecode="systemuser", addressused=user[1])]
            for mask, addrs in ((ParticipationType.TO, to), (ParticipationType.CC, cc or [])):
                for addr in addrs:
                    party = self.resolve(addr)
                    rows.append(dict(activityid=activityid, participationtypemask=mask,
                                     partyid=party.id if party else None,
                                     partyobjecttypecode=party.typecode if party else None, addressused=addr))
            conn.execute(insert(P), rows)
        return activityid

    def send_email(self, activityid: str) -> str | None:
        """The Send message: the email becomes Pending Send, with a tracking token when enabled.

        Returns the tracking token (or None when tracking tokens are off)."""
        now = self.clock.now()
        with self._begin() as conn:
            row = conn.execute(select(E.c.statuscode, E.c.ownerid).where(E.c.activityid == activityid)).first()
            if row is None:
                raise ValueError(f"activityid: no email has the id {activityid!r}")
            if row[0] not in (EmailStatus.DRAFT, EmailStatus.FAILED):
                raise ValueError(f"statuscode: email {activityid} is {EmailStatus(row[0]).name}, "
                                 "only a draft or failed email can be sent")
            mailboxid = conn.execute(select(M.c.mailboxid).where(
                M.c.regardingobjectid == row[1])).scalar()
            if mailboxid is None:
                raise ValueError(f"ownerid: the sender {row[1]} has no mailbox")
            org = self._org_row(conn)
            token = None
            if org is not None and org["trackingtokenenabled"]:
                number = org["trackingtokennext"]
                token = f"{org['trackingprefix']}:{number:07d}"
                conn.execute(update(Organization.__table__).values(trackingtokennext=number + 1))
            conn.execute(update(E).where(E.c.activityid == activityid).values(
                statuscode=EmailStatus.PENDING_SEND, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.PENDING_SEND],
                trackingtoken=token, sendermailboxid=mailboxid, deliveryattempts=0, modifiedon=now))
        if self._pending_senders is not None:
            self._pending_senders.add(mailboxid)
        return token

    # -- alerts ----------------------------------------------------------------------------
    def write_alerts(self, alerts: list[Alert]) -> None:
        """Write alerts; a repeat for the same record, wall, code and level updates the row."""
        if not alerts:
            return
        now = self.clock.now()
        with self._begin() as conn:
            for a in alerts:
                existing = conn.execute(select(T.c.tracelogid).where(
                    T.c.regardingobjectid == a.regardingobjectid, T.c.ownerid == a.ownerid,
                    T.c.tracecode == a.tracecode, T.c.level == int(a.level))).scalar()
                if existing is not None:
                    conn.execute(update(T).where(T.c.tracelogid == existing).values(
                        text=a.text, modifiedon=now, errorcount=T.c.errorcount + 1))
                else:
                    conn.execute(insert(T).values(
                        level=int(a.level), regardingobjectid=a.regardingobjectid,
                        regardingobjecttypecode=a.regardingobjecttypecode, ownerid=a.ownerid, tracecode=a.tracecode,
                        text=a.text, errorcount=1, createdon=now, modifiedon=now))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
