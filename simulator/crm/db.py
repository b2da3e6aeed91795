"""Database URL -> SQLAlchemy engine with the CRM tables created.

SQLite is the default: a file (``sqlite:///path.db``) or memory (``sqlite://``). Any other
SQLAlchemy URL (for example ``postgresql+psycopg://...``) selects that database.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, insert, inspect, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from simulator.crm import models  # noqa: F401  (registers the tables)

MEMORY_URL = "sqlite://"
_STATE = models.SimulatorState.__table__
# The layout of the tables. 1: the first release, whose Exchange store was a JSON document saved at
# the end of each command; 2: the durable world (the store as a journal, written as it changes);
# 3: the ACT item sync (appointment, task, userquery, actsyncmapping, actsyncstate; contact's synced fields);
# 4: ACT field directions chosen by the administrator (syncattributemapping).
SCHEMA_VERSION = 4
SCHEMA_KEY = "schema"
BUSY_TIMEOUT_S = 30  # SQLite: how long a writer waits for another process's write to finish


class DatabaseError(ValueError):
    """The database URL or file cannot be used."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


SQLITE_HEADER = b"SQLite format 3\x00"


def file_problem(path: Path) -> str | None:
    """Why the file at ``path`` cannot be a SQLite database (a folder, unreadable, other content),
    or None: it is one, or is empty, or does not exist yet."""
    if path.is_dir():
        return "is a folder"
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if not header or header == SQLITE_HEADER else "is not a SQLite database"


# sqlite3 binds an int, float or str at once, but looks for an adapter (two failed attribute
# look-ups, each raising and clearing an AttributeError) before it binds None as NULL: ~0.5 µs per
# NULL, and a tracked email writes about ten. An adapter registered for None is found first and
# gives None back (dict.get of an empty dict: a C call), so NULL is bound as before, at half the cost;
# a bool (an int subclass, looked up the same way) is given as the int it is.
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bool, int)


class _QuietPipelineAbort(logging.Filter):
    """psycopg warns "error ignored terminating <Pipeline>: pipeline aborted" when a statement of an
    executemany in pipeline mode failed and the pipeline cannot end cleanly; the statement's own
    error is raised all the same. A release that loses a race to another host fails that way and is
    handled (simulator/crm/leasing.py), so the warning only printed a line on stderr for each race."""

    def filter(self, record: logging.LogRecord) -> bool:
        ignored = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        return not (record.msg == "error ignored terminating %r: %s"
                    and type(ignored).__name__ == "PipelineAborted")


def _quiet_pipeline_abort() -> None:
    log = logging.getLogger("psycopg")
    if not any(isinstance(f, _QuietPipelineAbort) for f in log.filters):
        log.addFilter(_QuietPipelineAbort())


# 16 KiB pages instead of SQLite's 4 KiB: a batch's release rewrites mailbox rows spread over the
# whole table, and a commit writes each page it touched to the WAL, one write per page. With four
# times fewer pages, runs made side by side on this 2-core machine took 4-7 % less CPU on average
# (benchmarks.simulation, the mail-heavy and the quiet runs; 64 KiB pages did worse). Only a new
# database takes it: an older one keeps its pages and opens as before.
PAGE_SIZE = 16384
WAL_CHECKPOINT_BYTES = 10000 * 4096  # the WAL is copied into the database past ~40 MB


def _tune_sqlite(dbapi_connection, _record, durable: bool = True) -> None:
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: a database in WAL mode keeps its size
    cur.execute("PRAGMA journal_mode=WAL")
    if durable:
        cur.execute("PRAGMA synchronous=NORMAL")
    else:
        # A simulation artefact: no fsync at commit or checkpoint, fewer (larger) checkpoints.
        # WAL stays, so other processes (several hosts) still read and write the same file, and
        # a crash of the process loses nothing committed; only an OS crash or power loss may.
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // PAGE_SIZE}")
    cur.execute("PRAGMA foreign_keys=OFF")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def tune_new_sqlite(dbapi_connection, record=None) -> None:
    """Give a sqlite3 connection the pragmas of a sandbox's database (``durable=False``); also the
    engine's connect hook for one."""
    _tune_sqlite(dbapi_connection, record, durable=False)


def make_engine(url: str = MEMORY_URL, *, create: bool = True, durable: bool = True) -> Engine:
    """Open (and by default create the tables of) the CRM database at ``url``.

    ``durable=False`` (the sandbox's default) trades durability against an OS crash for cheaper
    SQLite commits: ``synchronous=OFF`` and a ~40 MB WAL autocheckpoint (see BENCHMARKS.md).
    It changes nothing for other databases."""
    if not isinstance(url, str) or "://" not in url:
        raise DatabaseError(f"database URL {url!r} is not a URL (expected e.g. sqlite:///sss.db)")
    kwargs: dict = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            # Hand out the connection returned last. SQLite drops a connection's page cache when
            # another connection has committed since its last read; with the pool's default
            # (first in, first out) the lease, the batch's look-ups and the release took turns on
            # two connections, so each started cold and read the index pages again.
            kwargs["pool_use_lifo"] = True
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # unknown dialect, missing driver
        raise DatabaseError(f"cannot open database {url!r}: {exc}") from exc
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _tune_sqlite if durable else tune_new_sqlite)
    elif engine.dialect.driver == "psycopg":
        _quiet_pipeline_abort()
    if create:
        try:
            stamped = check_schema(engine)
            SQLModel.metadata.create_all(engine)
            if not stamped:
                _stamp_schema(engine)
        except DatabaseError:
            engine.dispose()
            raise
        except SQLAlchemyError as exc:
            engine.dispose()
            reason = (str(getattr(exc, "orig", None) or exc).splitlines() or ["unusable"])[0]
            raise DatabaseError(f"cannot open database {_shown(url)}: {reason}") from None
    return engine


def _shown(url: str) -> str:
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.split("@")[-1]


def check_schema(engine: Engine, where: str | None = None) -> bool:
    """Refuse, before anything is written, a database whose tables another version of sss-sim laid
    out; True when it is this version's, False when it is empty (its tables are made next).
    ``where`` names it in the message."""
    tables = set(inspect(engine).get_table_names())
    if "mailbox" not in tables and "simulatorstate" not in tables:
        return False
    found = None
    if "simulatorstate" in tables:
        with engine.connect() as conn:
            found = conn.execute(select(_STATE.c.value).where(_STATE.c.key == SCHEMA_KEY)).scalar()
    version = int(found) if found is not None and str(found).isdigit() else 1
    if version == SCHEMA_VERSION:
        return True
    where = where or _shown(engine.url.render_as_string(hide_password=True))
    if version < SCHEMA_VERSION:
        raise DatabaseError(f"database {where} was made by an older sss-sim (schema version {version}; this one "
                            f"reads version {SCHEMA_VERSION}): start a new sandbox with another --db")
    raise DatabaseError(f"database {where} was made by a newer sss-sim (schema version {version}; this one "
                        f"reads version {SCHEMA_VERSION}): upgrade sss-sim to open it")


def _stamp_schema(engine: Engine) -> None:
    """Record the schema version and the world's counters in a database just made."""
    try:
        with engine.begin() as conn:
            conn.execute(insert(_STATE), [{"key": SCHEMA_KEY, "value": str(SCHEMA_VERSION)}])
            conn.execute(insert(models.SimulatorCounter.__table__), [
                {"name": name, "value": 0}
                for name in (models.LOCK_COUNTER, models.EPOCH_COUNTER, models.FAULTS_COUNTER)])
    except IntegrityError:  # another process made the same database at the same moment
        pass


def drop_all(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine)
