"""The storage side of the platform, shared by its parts: table aliases, statements compiled once
(``Prepared``), write transactions, the reading connection of a leased batch, and the rows a batch
keeps in memory until its release writes them in one transaction.

The hot paths use SQLAlchemy Core; the duplicate check and correlation also look at the pending rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, insert, update

from simulator.crm.models import (
    ActivityParty,
    Email,
    EmailServerProfile,
    ExchangeSyncIdMapping,
    Mailbox,
    TraceLog,
)

M = Mailbox.__table__
E = Email.__table__
P = ActivityParty.__table__
T = TraceLog.__table__
X = ExchangeSyncIdMapping.__table__
PRO = EmailServerProfile.__table__

# the columns of the pending rows of received email and of their parties, in the order each row
# tuple keeps its values (every column of the email; the party's id is the table's own counter)
EMAIL_COLUMNS = (
    "activityid", "subject", "description", "sender", "torecipients", "messageid", "dupkey", "messageidkey",
    "inreplyto", "conversationindex", "directioncode", "statecode", "statuscode", "ownerid", "regardingobjectid",
    "regardingobjecttypecode", "correlatedactivityid", "correlationmethod", "acceptingentityid",
    "acceptingentitytypecode", "receivingmailboxid", "sendermailboxid", "exchangeitemid", "deliveryattempts",
    "trackingtoken", "senton", "createdon", "modifiedon",
)
PARTY_COLUMNS = ("activityid", "participationtypemask", "partyid", "partyobjecttypecode", "addressused")

if TYPE_CHECKING:
    from simulator.crm.correlation import Correlated


class Prepared:
    """A Core statement compiled once for one dialect, executed on the DBAPI cursor.

    For the few statements run per mailbox or per item on the polling path, SQLAlchemy's
    per-execution work (cache key, parameter processing, result wrapping) costs several times
    what the database does. The SQL text still comes from Core, and each value still goes
    through its column type's bind processor (UTC datetimes, booleans)."""

    __slots__ = ("sql", "_params", "_positional", "ok", "stmt", "params", "_convert", "_values_direct", "_tuples")

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
        self._convert = None  # (columns, make, converter) of the last fetchall with columns
        # parameters k0, k1, ... in this order, none converted: a tuple of values is what the DBAPI takes
        self._values_direct = self.ok and self._positional and all(
            name == f"k{i}" and proc is None for i, (name, _, proc, _) in enumerate(self._params))
        self._tuples = None  # (columns, converter) of the last executemany_tuples

    def _make_tuple_params(self, columns: tuple[str, ...]):
        """``row tuple (in the order of columns) -> DBAPI parameters``, generated once; None when the
        tuple is already what the DBAPI takes (positional, same order, nothing to convert)."""
        index = {name: i for i, name in enumerate(columns)}
        if self._positional and [key for _, key, _, _ in self._params] == list(columns) and all(
                proc is None for _, _, proc, _ in self._params):
            return None

        def value(i: int, key: str) -> str:
            if key in index:
                return f"r[{index[key]}]"
            return f"c{i}"  # a parameter the columns do not name: its constant

        return self._generate("r", value)

    def _make_params(self):
        """``row dict -> DBAPI parameters``, generated once: one expression per parameter."""
        return self._generate("row", lambda i, key: f"row.get({key!r}, c{i})")

    def _generate(self, arg: str, value) -> object:
        """A function of ``arg`` returning the DBAPI parameters, one expression per parameter:
        ``value(i, key)`` reads parameter ``i`` from ``arg`` (``c{i}`` is its constant),
        passed through its bind processor when it has one."""
        namespace: dict = {}
        parts = []
        for i, (name, key, proc, const) in enumerate(self._params):
            namespace[f"c{i}"] = const
            source = value(i, key)
            if proc is not None:
                namespace[f"p{i}"] = proc
                source = f"p{i}({source})"
            parts.append(source if self._positional else f"{name!r}: {source}")
        body = f"({', '.join(parts)},)" if self._positional else f"{{{', '.join(parts)}}}"
        if self._positional and not parts:
            body = "()"
        exec(f"def params({arg}):\n    return {body}\n", namespace)  # noqa: S102 - names come from Core
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

    def executemany_tuples(self, conn, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """``executemany`` of rows kept as tuples, each value in the place its name has in ``columns``
        (the hot path builds no dict per row). Pass the same ``columns`` tuple each time."""
        if not rows:
            return
        if not self.ok:
            conn.execute(self.stmt, [dict(zip(columns, r, strict=True)) for r in rows])
            return
        made = self._tuples
        if made is None or made[0] is not columns:
            made = self._tuples = (columns, self._make_tuple_params(columns))
        convert = made[1]
        with _cursor(conn) as cursor:
            cursor.executemany(self.sql, rows if convert is None else [convert(r) for r in rows])

    def fetchall_values(self, conn, values: tuple) -> list:
        """``fetchall`` of a statement whose parameters are k0, k1, ..., given in that order."""
        if not self._values_direct:
            return self.fetchall(conn, {f"k{i}": v for i, v in enumerate(values)})
        dbapi = conn.connection.dbapi_connection
        if type(dbapi) is sqlite3.Connection:  # its execute makes and drops the cursor in C
            return dbapi.execute(self.sql, values).fetchall()
        with _cursor(conn) as cursor:
            cursor.execute(self.sql, values)
            return cursor.fetchall()

    def execute(self, conn, row: dict) -> int:
        """Run once; the number of rows the statement changed."""
        if not self.ok:
            return conn.execute(self.stmt, row).rowcount
        with _cursor(conn) as cursor:
            cursor.execute(self.sql, self.params(row))
            return cursor.rowcount

    def fetchall(self, conn, row: dict, columns: list | None = None, make=None) -> list:
        """The rows, each value through the result processor of ``columns[i]``'s type when given;
        with ``make`` (and ``columns``), each row as ``make(*values)``. Pass the same ``columns`` list
        each time: the rows' converter is made again whenever another list comes."""
        if not self.ok:
            rows = conn.execute(self.stmt, row)
            return [make(*r) for r in rows] if make is not None else [tuple(r) for r in rows]
        with _cursor(conn) as cursor:
            cursor.execute(self.sql, self.params(row))
            rows = cursor.fetchall()
        if columns is None or not rows:
            return rows
        convert = self._convert
        if convert is None or convert[0] is not columns or convert[1] is not make:
            convert = self._convert = (columns, make, _make_convert(columns, conn.dialect, make))
        return convert[2](rows)


def _make_convert(columns: list, dialect, make):
    """``DBAPI rows -> rows``, generated once: one expression per value, through its column type's
    result processor where it has one, the row made by ``make`` (a tuple without)."""
    namespace: dict = {"make": make}
    parts = []
    for i, column in enumerate(columns):
        proc = column.type._cached_result_processor(dialect, None)
        if proc is None:
            parts.append(f"r[{i}]")
        else:
            namespace[f"p{i}"] = proc
            parts.append(f"p{i}(r[{i}])")
    if make is None:
        body = f"[({', '.join(parts)},) for r in rows]"
    else:
        body = f"[make({', '.join(parts)}) for r in rows]"
    exec(f"def convert(rows):\n    return {body}\n", namespace)  # noqa: S102 - no outside text
    return namespace["convert"]


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


class StorageMixin:
    """Transactions, prepared statements and the pending rows of a batch.

    Uses ``self.db``, ``self.world``, ``self._statements``, ``self._reader``; owns the pending rows
    (``_emails``, ``_parties``, ``_item_rows``, ``_send_updates``, ``_attempt_updates``, ``_dupkeys``,
    ``_by_msgkey``, ``_by_token``, ``_by_conv``)."""

    def _reset_pending(self) -> None:
        self._emails: list[tuple] = []  # values in the order of EMAIL_COLUMNS
        self._parties: list[tuple] = []  # values in the order of PARTY_COLUMNS
        self._item_rows: list[dict] = []
        self._send_updates: list[dict] = []
        self._attempt_updates: list[dict] = []
        self._dupkeys: set[int] = set()
        self._by_msgkey: dict[int, Correlated] = {}
        self._by_token: dict[str, Correlated] = {}
        self._by_conv: dict[str, Correlated] = {}

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

    def _prepared(self, key: tuple, build, column_keys: list[str] | None = None) -> Prepared:
        prepared = self._statements.get(key)
        if prepared is None:
            prepared = self._statements[key] = Prepared(build(), self.db.dialect, column_keys)
        return prepared

    def _insert_many(self, conn, table, rows: list[dict]) -> None:
        shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for row in rows:
            shapes[tuple(row)].append(row)
        for shape, group in shapes.items():
            self._prepared(("insert", table.name, shape), lambda: insert(table), list(shape)).executemany(conn, group)

    def _insert_tuples(self, conn, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
        self._prepared(("insert tuples", table.name, columns), lambda: insert(table),
                       list(columns)).executemany_tuples(conn, columns, rows)

    def _flush(self, conn) -> None:
        if self._emails:
            self._insert_tuples(conn, E, EMAIL_COLUMNS, self._emails)
        if self._parties:
            self._insert_tuples(conn, P, PARTY_COLUMNS, self._parties)
        if self._item_rows:
            self._insert_many(conn, X, self._item_rows)
        by_id = update(E).where(E.c.activityid == bindparam("b_activityid"))
        if self._send_updates:
            conn.execute(by_id, self._send_updates)
        if self._attempt_updates:
            conn.execute(by_id, self._attempt_updates)
        self._reset_pending()
