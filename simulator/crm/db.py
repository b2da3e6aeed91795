"""Database URL -> SQLAlchemy engine with the CRM tables created.

SQLite is the default: a file (``sqlite:///path.db``) or memory (``sqlite://``). Any other
SQLAlchemy URL (for example ``postgresql+psycopg://...``) selects that database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from simulator.crm import models  # noqa: F401  (registers the tables)

MEMORY_URL = "sqlite://"


class DatabaseError(ValueError):
    """The database URL or file cannot be used."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _tune_sqlite(dbapi_connection, _record, durable: bool = True) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    if durable:
        cur.execute("PRAGMA synchronous=NORMAL")
    else:
        # A simulation artefact: no fsync at commit or checkpoint, fewer (larger) checkpoints.
        # WAL stays, so other processes (several hosts) still read and write the same file, and
        # a crash of the process loses nothing committed; only an OS crash or power loss may.
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.execute("PRAGMA foreign_keys=OFF")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _tune_sqlite_fast(dbapi_connection, record) -> None:
    _tune_sqlite(dbapi_connection, record, durable=False)


def make_engine(url: str = MEMORY_URL, *, create: bool = True, durable: bool = True) -> Engine:
    """Open (and by default create the tables of) the CRM database at ``url``.

    ``durable=False`` (the sandbox's default) trades durability against an OS crash for cheaper
    SQLite commits: ``synchronous=OFF`` and a 10,000-page WAL autocheckpoint (see BENCHMARKS.md).
    It changes nothing for other databases."""
    if not isinstance(url, str) or "://" not in url:
        raise DatabaseError(f"database URL {url!r} is not a URL (expected e.g. sqlite:///sss.db)")
    kwargs: dict = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # unknown dialect, missing driver
        raise DatabaseError(f"cannot open database {url!r}: {exc}") from exc
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _tune_sqlite if durable else _tune_sqlite_fast)
    if create:
        SQLModel.metadata.create_all(engine)
    return engine


def drop_all(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine)
