"""The hot path of tracking an email: the ids it gets, the pending rows kept as tuples and written
through a prepared statement, and the look-ups worked out once per item."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import postgresql

from engine.ports import ItemProperties
from simulator.crm.correlation import duplicate_key, item_keys, message_key
from simulator.crm.db import make_engine
from simulator.crm.platform import IdFactory
from simulator.crm.platform_sql import EMAIL_COLUMNS, PARTY_COLUMNS, E, P, Prepared

WHEN = datetime(2026, 1, 5, 8, 30, tzinfo=UTC)


def test_ids_are_the_version_4_guids_of_the_seeded_generator():
    ids, rng = IdFactory(5), random.Random("crm-ids-5")
    for _ in range(2000):
        assert ids.new() == str(uuid.UUID(int=rng.getrandbits(128), version=4))
    later = IdFactory(5, epoch=3)
    rng = random.Random("crm-ids-5-epoch-3")
    assert later.new() == str(uuid.UUID(int=rng.getrandbits(128), version=4))


def test_the_email_and_party_columns_are_the_tables_own():
    assert list(EMAIL_COLUMNS) == [c.name for c in E.columns]  # every column, in the table's order
    assert list(PARTY_COLUMNS) == [c.name for c in P.columns if c.name != "activitypartyid"]


def _email_row(activityid: str, dupkey: int) -> tuple:
    values = dict.fromkeys(EMAIL_COLUMNS)
    values.update(activityid=activityid, subject="Hello", dupkey=dupkey, directioncode=False, statecode=1,
                  statuscode=4, correlationmethod=0, deliveryattempts=0, senton=WHEN, createdon=WHEN,
                  modifiedon=WHEN)
    return tuple(values[c] for c in EMAIL_COLUMNS)


def test_tuple_rows_are_written_with_each_value_converted_by_its_column_type():
    engine = make_engine()
    prepared = Prepared(insert(E), engine.dialect, list(EMAIL_COLUMNS))
    with engine.begin() as conn:
        prepared.executemany_tuples(conn, EMAIL_COLUMNS, [_email_row("a1", 11), _email_row("a2", 12)])
    with engine.connect() as conn:
        rows = conn.execute(select(E.c.activityid, E.c.dupkey, E.c.directioncode, E.c.createdon)
                            .order_by(E.c.activityid)).all()
        stored = conn.exec_driver_sql("SELECT createdon FROM email WHERE activityid = 'a1'").scalar()
    assert [tuple(r) for r in rows] == [("a1", 11, False, WHEN), ("a2", 12, False, WHEN)]
    assert stored == "2026-01-05 08:30:00.000000"  # naive UTC text, as the ORM writes it


def test_rows_that_need_no_conversion_go_to_the_driver_as_they_are():
    engine = make_engine()
    parties = Prepared(insert(P), engine.dialect, list(PARTY_COLUMNS))
    assert parties._make_tuple_params(PARTY_COLUMNS) is None
    emails = Prepared(insert(E), engine.dialect, list(EMAIL_COLUMNS))
    assert emails._make_tuple_params(EMAIL_COLUMNS) is not None  # times and booleans are converted


def test_tuple_rows_become_named_parameters_where_the_driver_takes_names():
    prepared = Prepared(insert(P), postgresql.psycopg2.dialect(), list(PARTY_COLUMNS))
    params = prepared._make_tuple_params(PARTY_COLUMNS)
    assert params(("a1", 1, "u1", "systemuser", "x@y")) == {
        "activityid": "a1", "participationtypemask": 1, "partyid": "u1", "partyobjecttypecode": "systemuser",
        "addressused": "x@y"}


def test_in_lists_go_to_the_driver_as_a_tuple_of_values():
    engine = make_engine()
    stmt = select(E.c.dupkey).where(E.c.dupkey.in_([bindparam("k0"), bindparam("k1")]))
    prepared = Prepared(stmt, engine.dialect)
    assert prepared._values_direct
    with engine.begin() as conn:
        Prepared(insert(E), engine.dialect, list(EMAIL_COLUMNS)).executemany_tuples(
            conn, EMAIL_COLUMNS, [_email_row("a1", 11), _email_row("a2", 12)])
    with engine.connect() as conn:
        assert sorted(r[0] for r in prepared.fetchall_values(conn, (12, 13))) == [12]


def test_an_items_keys_are_made_once_and_agree_with_the_single_ones():
    item = ItemProperties("i1", WHEN, "<ABC@example.com>", "Hi", "x@y", date=WHEN)
    assert item_keys(item) == (duplicate_key(item), message_key("<ABC@example.com>"))
    bare = ItemProperties("i2", WHEN, None, "Hi", "x@y", date=WHEN, body="text")
    assert item_keys(bare) == (duplicate_key(bare), None)


def test_an_emails_message_key_is_its_duplicate_key(org):
    """The In-Reply-To look-up finds a tracked or sent email through the duplicate key's index, which
    holds when every email with a message key has it as its duplicate key too."""
    from support import BOB, CARL, msg

    aid = org.sb.crm.create_email(sender_userid=org.users[BOB], to=[CARL], subject="Quote")
    org.sb.crm.send_email(aid)
    org.deliver(msg("with an id"))
    org.deliver(msg("without an id", message_id=None))
    org.run_for(600)
    with org.sb.db.connect() as conn:
        rows = conn.execute(select(E.c.subject, E.c.dupkey, E.c.messageidkey, E.c.statuscode)).all()
    keyed = [r for r in rows if r.messageidkey is not None]
    assert {r.subject for r in keyed} >= {"with an id"} and any(r.statuscode == 3 for r in keyed)  # received, sent
    assert all(r.dupkey == r.messageidkey for r in keyed)
    assert [r.messageidkey for r in rows if r.subject == "without an id"] == [None]


def test_the_correlation_look_ups_search_an_index():
    """Each look-up of an incoming batch is an index search, the tracking token and conversation ones
    on indexes that hold only the emails having one, the message key one on the duplicate key's."""
    from simulator.crm.correlation import _select_correlation

    engine = make_engine()
    expected = {"trackingtoken": "ix_email_trackingtoken", "conversationindex": "ix_email_conversationindex",
                "messageidkey": "ix_email_dupkey"}
    with engine.connect() as conn:
        for column, index in expected.items():
            stmt = _select_correlation(column, [bindparam("k0"), bindparam("k1")])
            sql = str(stmt.compile(dialect=engine.dialect))
            plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (1, 2)).all())
            assert f"INDEX {index} " in plan, (column, plan)
        partial = dict(conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE name IN ('ix_email_trackingtoken', "
            "'ix_email_conversationindex')").all())
    assert all("IS NOT NULL" in sql for sql in partial.values()) and len(partial) == 2


def test_null_and_bool_parameters_reach_sqlite_as_before():
    """The adapters simulator.crm.db registers (None and bool, to skip sqlite3's failed adapter
    look-ups) bind exactly what sqlite3 binds without them: NULL, and the integers 1 and 0."""
    import sqlite3

    import simulator.crm.db  # noqa: F401  (registers the adapters)

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b, c)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, True, False), (None, 1, 0)])
    rows = conn.execute("SELECT typeof(a), a, typeof(b), b, typeof(c), c FROM t").fetchall()
    assert rows == [("null", None, "integer", 1, "integer", 0)] * 2


def test_a_tracked_emails_codes_are_written_as_plain_integers():
    """The status, state and participation codes of a tracked email go to the driver as ints (an
    enum member costs sqlite3 a failed adapter look-up) and read back as the enum values."""
    from simulator.crm import activities
    from simulator.crm.models import EmailStatus, ParticipationType

    assert all(type(code) is int for code in (activities._RECEIVED, activities._RECEIVED_STATE,
                                              activities._SENDER, activities._TO, activities._CC))
    assert activities._RECEIVED == EmailStatus.RECEIVED
    assert (activities._SENDER, activities._TO, activities._CC) == (
        ParticipationType.SENDER, ParticipationType.TO, ParticipationType.CC)
