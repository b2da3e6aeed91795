"""The database records its schema version; databases of another layout are refused untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.crm.db import PAGE_SIZE, SCHEMA_VERSION, DatabaseError, make_engine, sqlite_url


def _schema(path: Path) -> str | None:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM simulatorstate WHERE key = 'schema'").fetchone()
    return row[0] if row else None


def _dump(path: Path) -> str:
    """Every table and row (the file's bytes move when SQLite checkpoints its WAL on close)."""
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def _first_layout(path: Path) -> None:
    """A database as the first release made it: CRM tables, the store saved as JSON, no schema row."""
    engine = make_engine(sqlite_url(path))
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM simulatorstate WHERE key = 'schema'")
        conn.execute("DROP TABLE exchangejournal")
        conn.execute("DROP TABLE simulatorcounter")
        conn.execute("INSERT INTO simulatorstate (key, value) VALUES ('exchange', '{\"format\": \"sss-exchange-store\"}')")


def test_a_new_database_records_the_schema_version(tmp_path):
    path = tmp_path / "new.db"
    make_engine(sqlite_url(path)).dispose()
    assert _schema(path) == str(SCHEMA_VERSION)
    make_engine(sqlite_url(path)).dispose()  # and opens again
    assert _schema(path) == str(SCHEMA_VERSION)


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA page_size").fetchone()[0]


@pytest.mark.parametrize("durable", [True, False])
def test_a_new_database_takes_the_sandbox_page_size(tmp_path, durable):
    path = tmp_path / "new.db"
    make_engine(sqlite_url(path), durable=durable).dispose()
    assert _page_size(path) == PAGE_SIZE != 4096


def test_a_database_made_with_4_kib_pages_keeps_them_and_its_rows(tmp_path):
    """Databases made before the page size changed open as they are, and stay writable."""
    path = tmp_path / "old.db"
    make_engine(sqlite_url(path)).dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO simulatorstate (key, value) VALUES ('kept', 'yes')")
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=4096")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert _page_size(path) == 4096
    engine = make_engine(sqlite_url(path), durable=False)
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO simulatorstate (key, value) VALUES ('written', 'after')")
        assert c.exec_driver_sql("SELECT value FROM simulatorstate WHERE key = 'kept'").scalar() == "yes"
    engine.dispose()
    assert _page_size(path) == 4096
    assert _schema(path) == str(SCHEMA_VERSION)


def test_a_database_of_the_first_layout_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "old.db"
    _first_layout(path)
    before = _dump(path)
    with pytest.raises(DatabaseError, match=rf"older sss-sim \(schema version 1; this one reads version {SCHEMA_VERSION}\)"):
        make_engine(sqlite_url(path))
    assert _dump(path) == before
    with sqlite3.connect(path) as conn:  # no table of the new layout was added
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "exchangejournal" not in tables


def test_a_database_of_schema_version_3_without_act_field_directions_is_refused(tmp_path):
    path = tmp_path / "v3.db"
    make_engine(sqlite_url(path)).dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE simulatorstate SET value = '3' WHERE key = 'schema'")
        conn.execute("DROP TABLE syncattributemapping")
    before = _dump(path)
    with pytest.raises(DatabaseError, match=rf"older sss-sim \(schema version 3; this one reads version {SCHEMA_VERSION}\)"):
        make_engine(sqlite_url(path))
    assert _dump(path) == before


def test_a_newer_schema_is_refused_with_its_version(tmp_path):
    path = tmp_path / "newer.db"
    make_engine(sqlite_url(path)).dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE simulatorstate SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(DatabaseError, match=rf"newer sss-sim \(schema version {SCHEMA_VERSION + 1};"):
        make_engine(sqlite_url(path))


@pytest.mark.parametrize("args", [["mailbox", "list"], ["run", "--minutes", "5"], ["status"]])
def test_the_cli_says_so_in_one_line(tmp_path, args):
    path = tmp_path / "old.db"
    _first_layout(path)
    before = _dump(path)
    result = CliRunner().invoke(app, [*args, "--db", str(path)])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    assert "schema version 1" in err and "another --db" in err, err
    assert "Traceback" not in result.output
    assert _dump(path) == before


def test_a_file_database_hands_out_the_connection_returned_last(tmp_path):
    """One connection does a batch's reads and writes in turn, so its page cache stays warm
    (SQLite empties it when another connection committed in between)."""
    engine = make_engine(sqlite_url(tmp_path / "pool.db"))
    first, second = engine.connect(), engine.connect()
    first_dbapi = first.connection.dbapi_connection
    second.close()
    first.close()  # returned last
    with engine.connect() as again:
        assert again.connection.dbapi_connection is first_dbapi
    engine.dispose()
