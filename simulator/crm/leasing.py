"""Leasing mailboxes: which are due, taking a batch of them for a host (a lease older than
``LEASE_TIMEOUT`` is forced open), and the release that writes the batch and frees them."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.ports import MailboxUpdate, MailboxWork
from simulator.crm.models import EmailStatus
from simulator.crm.platform_sql import EMAIL_COLUMNS, E, M

LEASE_TIMEOUT = timedelta(minutes=30)  # a lease older than this is forcibly unlocked

# The lease's columns, in the order of MailboxWork's fields (checked below), so that a row makes
# one positionally: a MailboxWork by 34 keywords cost more than the rest of the row's conversion.
_LEASE_COLUMNS = [
    M.c.mailboxid.label("id"), M.c.emailaddress, M.c.ownerid, M.c.regardingobjectid, M.c.regardingobjecttypecode,
    M.c.emailserverprofile.label("profileid"), (M.c.statecode == 0).label("active"),
    M.c.incomingemaildeliverymethod, M.c.outgoingemaildeliverymethod,
    M.c.enabledforincomingemail, M.c.enabledforoutgoingemail, M.c.incomingemailstatus,
    M.c.outgoingemailstatus, M.c.emailrouteraccessapproval, M.c.processemailreceivedafter,
    M.c.receivingpostponeduntil, M.c.postponesendinguntil, M.c.lastincomingstartedon,
    M.c.lastoutgoingstartedon, M.c.noemailcount, M.c.incomingtransientfailurecount,
    M.c.outgoingtransientfailurecount, M.c.undeliverablefolder, M.c.ewsurl,
    M.c.actdeliverymethod, M.c.enabledforact, M.c.actstatus, M.c.receivingpostponeduntilforact,
    M.c.lastactstartedon, M.c.noactcount, M.c.acttransientfailurecount,
    # a Test & Enable put off by a transient error (engine.mailbox_test)
    M.c.testemailconfigurationscheduled, M.c.testemailconfigurationretrycount,
    M.c.orgmarkedasprimaryforexchangesync,
]
assert [c.key for c in _LEASE_COLUMNS] == [f.name for f in dataclasses.fields(MailboxWork)]

# where a pending email row (a tuple in the order of EMAIL_COLUMNS) holds what splitting a batch reads
_ACTIVITY, _DUPKEY, _CORRELATED, _MAILBOX = (EMAIL_COLUMNS.index(name) for name in (
    "activityid", "dupkey", "correlatedactivityid", "receivingmailboxid"))


def _due_select():
    """The due mailboxes: free, or leased longer ago than ``:stale``, with a due time at or before ``:now``."""
    now = bindparam("now", type_=M.c.processinglastattemptedon.type)
    stale = bindparam("stale", type_=M.c.processinglastattemptedon.type)
    return select(M.c.mailboxid).where(
        M.c.postponemailboxprocessinguntil <= now,
        or_(M.c.processingstatecode == 0,
            and_(M.c.processingstatecode == 1, M.c.processinglastattemptedon < stale)),
    )


def _any_due_statement():
    """One due mailbox if there is any: a read before the lease, so that a look finding nothing due
    (the engine looks at every instant something happens) costs no write transaction."""
    return _due_select().limit(1)


def lease_statement(postgres: bool):
    """Take up to ``:limit`` due mailboxes (free, or leased longer ago than ``:stale``) for ``:hostid``."""
    now = bindparam("now", type_=M.c.processinglastattemptedon.type)
    due = (
        _due_select()
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


_NEXT_DUE_COLUMNS = [M.c.postponemailboxprocessinguntil, M.c.processinglastattemptedon]  # their types


def _next_due_statement():
    """One query: the earliest due time of a free mailbox and the oldest lease.

    The state codes are literals, so that SQLite uses the partial index of leased rows."""
    free = select(func.min(M.c.postponemailboxprocessinguntil)).where(
        M.c.processingstatecode == literal_column("0")).scalar_subquery()
    locked = select(func.min(M.c.processinglastattemptedon)).where(
        M.c.processingstatecode == literal_column("1"),
        M.c.postponemailboxprocessinguntil.is_not(None)).scalar_subquery()
    return select(free, locked)


def _pending_senders_statement():
    """The mailboxes with email to send. The codes are literals: an expanding IN would take every
    lease through SQLAlchemy's execution instead of the prepared statement."""
    codes = [literal_column(str(int(code))) for code in (EmailStatus.PENDING_SEND, EmailStatus.SENDING)]
    return select(E.c.sendermailboxid).where(E.c.statuscode.in_(codes)).distinct()


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


def release_statement(shape: tuple[str, ...]):
    """The release of one leased mailbox: the columns of ``shape`` set, the mailbox freed, where
    ``b_hostid`` still holds its lease."""
    return _update_statement(shape, release=True)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class LeasingMixin:
    """Lease, release and mailbox updates.

    Uses ``self.db``, ``self.world``, ``self.oldest_lease``, ``self._postgres``, ``self._pending_senders``,
    ``self._keep_reader``, ``self._reader``, the storage methods (``_begin``, ``_prepared``, ``_flush``,
    ``_reset_pending``, ``_close_reader``) and, after a release, ``_purge_old_item_rows`` and ``_after_errors``
    of the alerts."""

    def next_due(self) -> datetime | None:
        with self.db.connect() as conn:
            free, locked = self._prepared(("next_due",), _next_due_statement).fetchall(
                conn, {}, _NEXT_DUE_COLUMNS)[0]
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
        lease = self._prepared(("lease",), lambda: lease_statement(self._postgres))
        senders = self._prepared(("pending_senders",), _pending_senders_statement)
        with self.db.connect() as conn:
            if not self._prepared(("any_due",), _any_due_statement).fetchall(conn, params):
                return []  # the batch would be empty: nothing of it is read, nothing to catch up on
        world = self.world
        try:
            with self._begin() as conn:
                works = lease.fetchall(conn, params, _LEASE_COLUMNS, MailboxWork)
                self._pending_senders = {r[0] for r in senders.fetchall(conn, {})}
                if world is not None:  # what other processes delivered, before the batch reads it
                    world.sync(conn)
        except BaseException:
            if world is not None:
                world.reload()
            raise
        if works and world is not None:
            world.begin_batch()
        works.sort(key=lambda w: (w.receivingpostponeduntil or now, w.id))
        if works and self._keep_reader and self._reader is None:
            self._reader = self.db.connect()
        return works

    def mailbox_work(self, mailboxids: list[str]) -> list[MailboxWork]:
        """The same view of mailboxes as a lease gives, without leasing them (in the given order)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(*_LEASE_COLUMNS).where(M.c.mailboxid.in_(mailboxids))).all()
        by_id = {r[0]: MailboxWork(*r) for r in rows}
        return [by_id[i] for i in mailboxids if i in by_id]

    def release(self, hostid: str, updates: list[MailboxUpdate]) -> list[str]:
        """Write the batch in one transaction: pending rows, then the mailbox updates; returns the
        mailboxes dropped to be done again (none: the whole batch committed).

        Two hosts can track the two copies of one message at once (each in its own mailbox); the
        second to commit fails on the duplicate key. Only the mailboxes whose mail another host
        tracked first are then dropped (:meth:`_lost_to_other_hosts`), and the rest of the batch is
        written again; where that cannot be told apart (the batch changed Exchange, or sent mail),
        the whole batch is dropped. A dropped mailbox is freed and done again, so nothing is lost
        and nothing is done twice. (A host whose leases were forced open, presumed dead, meets the
        same failure when the other host tracked their mail first.)"""
        self._close_reader()
        world = self.world
        # the pending rows as the batch made them: _flush hands them over and starts new lists
        made = (self._emails, self._parties, self._item_rows, self._send_updates, self._attempt_updates)
        batch = updates
        dropped: list[str] = []
        committed = False
        try:
            try:
                self._write_release(hostid, updates)
            except (IntegrityError, self.db.dialect.dbapi.IntegrityError):
                lost = self._lost_to_other_hosts(updates, made)
                if lost is None:
                    raise  # the whole batch goes (below)
                dropped = sorted(lost)
                updates = [u for u in updates if u.mailboxid not in lost]
                self._write_release(hostid, updates, free=dropped)
            committed = True
        except (IntegrityError, self.db.dialect.dbapi.IntegrityError):
            # not to be split, or written again it failed again (another host won a second race)
            dropped = [u.mailboxid for u in batch]
            with self._begin() as conn:
                self._free(conn, hostid, dropped)
            return dropped
        finally:
            if not committed:
                self._reset_pending()  # the batch's rows went with its transaction
            if world is not None:
                world.end_batch(committed)
        self._purge_old_item_rows()
        self._after_errors(updates)
        return dropped

    def _write_release(self, hostid: str, updates: list[MailboxUpdate], free: list[str] = ()) -> None:
        """The release's transaction: the pending rows, the mailbox updates (grouped by the set of
        columns they change, each group one executemany of one cached statement: a handful of shapes
        cover a whole batch), the mailboxes in ``free`` freed unchanged, the batch's Exchange changes."""
        shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for upd in updates:
            # a shape is the columns in the order the engine set them: the cycles of a batch take the
            # same few paths, and that spares sorting every mailbox's names
            shapes[tuple(upd.values)].append({**upd.values, "b_mailboxid": upd.mailboxid, "b_hostid": hostid})
        world = self.world
        with self._begin() as conn:
            self._flush(conn)
            for shape, rows in shapes.items():
                self._prepared(("release", shape),
                               lambda shape=shape: release_statement(shape)).executemany(conn, rows)
            if free:
                self._free(conn, hostid, free)
            if world is not None:  # the batch's Exchange changes commit with its CRM rows
                world.sync(conn, reading=False)

    @staticmethod
    def _free(conn, hostid: str, mailboxids: list[str]) -> None:
        """Free the mailboxes ``hostid`` leased, unchanged: they are done again."""
        conn.execute(update(M).where(M.c.hostid == hostid, M.c.mailboxid.in_(mailboxids)).values(
            processingstatecode=0, hostid=None))

    def _lost_to_other_hosts(self, updates: list[MailboxUpdate], made: tuple) -> set[str] | None:
        """After a release failed on a duplicate key: the mailboxes of the batch whose tracked mail
        another host has tracked meanwhile, with the pending rows set again without theirs; None
        when the batch cannot be split (it changed Exchange or sent mail, no tracked message is
        in the database now, or every mailbox is concerned).

        An email correlated to a dropped one goes with it, and its mailbox too."""
        emails, parties, item_rows, send_updates, attempt_updates = made
        if send_updates or attempt_updates:
            return None
        if self.world is not None and not self.world.keep_view_after_failure():
            return None
        keys = [e[_DUPKEY] for e in emails if e[_DUPKEY] is not None]
        if not keys:
            return None
        with self.db.connect() as conn:
            taken = set(conn.execute(select(E.c.dupkey).where(E.c.dupkey.in_(keys))).scalars())
        lost = {e[_MAILBOX] for e in emails if e[_DUPKEY] in taken}
        while True:
            gone = {e[_ACTIVITY] for e in emails if e[_MAILBOX] in lost}
            more = {e[_MAILBOX] for e in emails if e[_CORRELATED] in gone} - lost
            if not more:
                break
            lost |= more
        if not lost or len(lost) >= len(updates):
            return None
        self._emails = [e for e in emails if e[_MAILBOX] not in lost]
        self._parties = [p for p in parties if p[0] not in gone]
        self._item_rows = [r for r in item_rows if r["mailboxid"] not in lost]
        return lost

    def abandon_batch(self) -> None:
        """A batch that will never reach its release (the engine failed half-way): forget its rows
        and its Exchange changes, as if it had not run; its leases are forced open later."""
        self._reset_pending()
        self._close_reader()
        if self.world is not None and self.world.deferred:
            self.world.end_batch(committed=False)

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
