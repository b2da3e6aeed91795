"""ACT from the CLI: changing tasks and contacts, a user's sync filters (``sss act filters``, ``sss act filter add|activate|deactivate|
delete``) and the ACT item-level failures (``sss act failures``), against one database file with the
engine run in process between the commands (SPEC 3.6)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import ALICE, START, build_org
from trial import all_rows, refused, runner

from engine.act import ORGANIZER_MISSING
from simulator.cli import app
from simulator.crm.db import make_engine
from simulator.crm.models import Contact, ExchangeSyncIdMapping, Task
from simulator.sandbox import Sandbox

CYCLE = 960  # every ACT-enabled mailbox runs at least one ACT cycle in this many seconds


class Act:
    """A built organization in a database file, driven by ``sss`` commands."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        o = build_org(db_url=self.url)
        self.users = dict(o.users)
        o.sb.close()

    def sss(self, *args: str):
        return runner.invoke(app, [*args, "--db", str(self.path)], env={"COLUMNS": "300"})  # tables unfolded

    def ok(self, *args: str):
        result = self.sss(*args)
        assert result.exit_code == 0, (args, result.output, result.stderr)
        return result

    def filters(self, user: str) -> list[dict]:
        return json.loads(self.ok("act", "filters", "--user", user, "--json").output)

    def cycle(self) -> None:
        sb = Sandbox(db_url=self.url)  # the engine in process on the same database
        try:
            asyncio.run(sb.run_for(CYCLE))
        finally:
            sb.close()

    def exchange(self, address: str, kind: str) -> list[str]:
        """The CRM ids of a mailbox's ACT items of ``kind`` in Exchange."""
        from engine.ports import ACT_FOLDERS
        from simulator.exchange.direct import act_item

        sb = Sandbox(db_url=self.url)
        try:
            folder = sb.store.mailbox(address).folder(ACT_FOLDERS[kind])
            return sorted(act_item(kind, item).crm_id for item in folder.items.values())
        finally:
            sb.close()

    def add(self, kind: str, user: str, *fields: str) -> str:
        return self.ok("act", "add", "--kind", kind, "--as", user, *fields).output.split()[1]


@pytest.fixture
def act(tmp_path) -> Act:
    return Act(tmp_path / "act.db")


def test_a_task_and_a_contact_are_changed_by_their_own_fields(act):
    task = act.add("task", "alice", "--subject", "Slides", "--due", "2026-01-09")
    contact = act.add("contact", "alice", "--last-name", "Scully")
    assert "version 2" in act.ok("act", "update", "--id", task, "--percent", "60", "--as", "alice").output
    assert "version 2" in act.ok("act", "update", "--id", contact, "--phone", "555-0100", "--as", "alice").output
    with make_engine(act.url).connect() as conn:
        assert conn.execute(Task.__table__.select()).mappings().one()["percentcomplete"] == 60
        assert conn.execute(Contact.__table__.select().where(Contact.contactid == contact)).mappings().one()[
            "telephone1"] == "555-0100"


def test_a_new_users_default_filters_are_listed(act):
    rows = act.filters("alice")
    assert sorted((r["name"], r["returnedtypecode"], r["active"], r["owner"]) for r in rows) == [
        ("My Appointments", "appointment", True, "alice"), ("My Contacts", "contact", True, "alice"),
        ("My Tasks", "task", True, "alice")]
    table = act.ok("act", "filters", "--user", "bob").output
    assert "My Contacts" in table and "bob" in table and "alice" not in table


def test_a_deactivated_filter_makes_the_next_cycle_delete_its_rows_in_exchange_and_activating_brings_them_back(act):
    contact = act.add("contact", "alice", "--first-name", "Dana", "--last-name", "Scully")
    task = act.add("task", "alice", "--subject", "Slides")
    act.cycle()
    assert act.exchange(ALICE, "contact") == [contact] and act.exchange(ALICE, "task") == [task]
    said = act.ok("act", "filter", "deactivate", "--filter", "My Contacts", "--as", "alice").output
    assert "inactive" in said
    assert [r["active"] for r in act.filters("alice") if r["name"] == "My Contacts"] == [False]
    act.cycle()
    assert act.exchange(ALICE, "contact") == []  # a logical delete: the Exchange copy is gone
    assert act.exchange(ALICE, "task") == [task]  # other tables' filters are untouched
    links = json.loads(act.ok("act", "links", "--json").output)
    assert [r["objectid"] for r in links if r["objecttypecode"] == "contact"] == []
    act.ok("act", "filter", "activate", "--filter", "My Contacts", "--as", "alice")
    act.cycle()
    assert act.exchange(ALICE, "contact") == [contact]


def test_filters_of_one_table_are_a_union_and_deleting_the_last_active_one_syncs_nothing_of_it(act):
    contact = act.add("contact", "alice", "--last-name", "Scully")
    added = act.ok("act", "filter", "add", "--name", "Contacts I keep", "--table", "contact", "--as", "alice")
    new_id = added.output.split()[2]
    assert {r["userqueryid"] for r in act.filters("alice") if r["returnedtypecode"] == "contact"} >= {new_id}
    act.ok("act", "filter", "deactivate", "--filter", "My Contacts", "--as", "alice")
    act.cycle()
    assert act.exchange(ALICE, "contact") == [contact]  # the other active contact filter still returns it
    act.ok("act", "filter", "delete", "--filter", new_id, "--as", "alice")
    assert [r["name"] for r in act.filters("alice") if r["returnedtypecode"] == "contact"] == ["My Contacts"]
    act.cycle()
    assert act.exchange(ALICE, "contact") == []


def test_an_inactive_filter_can_be_added(act):
    act.ok("act", "filter", "add", "--name", "Later", "--table", "task", "--inactive", "--as", "bob")
    assert [r["active"] for r in act.filters("bob") if r["name"] == "Later"] == [False]


def test_only_the_owner_or_a_system_administrator_edits_a_users_filters(act):
    [mine] = [r["userqueryid"] for r in act.filters("alice") if r["name"] == "My Tasks"]
    before = all_rows(act.url)
    err = refused(None, act.sss("act", "filter", "deactivate", "--filter", mine, "--as", "bob"), "--as",
                  "only their own", "System Administrator")
    assert "Traceback" not in err
    refused(None, act.sss("act", "filter", "add", "--name", "Bob's view", "--table", "task", "--user", "alice",
                          "--as", "bob"), "--as", "only their own")
    refused(None, act.sss("act", "filter", "delete", "--filter", mine, "--as", "bob"), "--as")
    assert all_rows(act.url) == before
    act.ok("act", "filter", "deactivate", "--filter", mine, "--as", "admin")  # the System Administrator may
    act.ok("act", "filter", "add", "--name", "Set up for Alice", "--table", "task", "--user", "alice", "--as", "admin")
    assert sorted((r["name"], r["active"]) for r in act.filters("alice") if r["returnedtypecode"] == "task") == [
        ("My Tasks", False), ("Set up for Alice", True)]


REFUSALS = [
    (("act", "filter", "add", "--name", "X", "--table", "meeting", "--as", "alice"), ("--table", "appointment")),
    (("act", "filter", "add", "--name", " ", "--table", "task", "--as", "alice"), ("--name", "required")),
    (("act", "filter", "add", "--name", "x" * 201, "--table", "task", "--as", "alice"), ("--name", "200")),
    (("act", "filter", "add", "--name", "My Tasks", "--table", "task", "--as", "alice"), ("--name", "already")),
    (("act", "filter", "add", "--name", "X", "--table", "task", "--user", "nobody", "--as", "admin"),
     ("--user", "nobody")),
    (("act", "filter", "add", "--name", "X", "--table", "task", "--as", "nobody"), ("--as", "nobody")),
    (("act", "filter", "activate", "--filter", "No such filter", "--as", "alice"), ("--filter", "no sync filter")),
    (("act", "filter", "delete", "--filter", "My Tasks", "--as", "nobody"), ("--as",)),
    (("act", "filters", "--user", "nobody"), ("--user", "nobody")),
]


@pytest.mark.parametrize(("args", "needles"), REFUSALS, ids=[" ".join(a[:4])[:40] for a, _ in REFUSALS])
def test_bad_input_is_one_line_naming_the_option_and_writes_nothing(act, args, needles):
    before = all_rows(act.url)
    refused(None, act.sss(*args), *needles)
    assert all_rows(act.url) == before


def test_act_failures_lists_the_act_item_level_rows_with_error_retries_and_item(act):
    bad = act.add("appointment", "alice", "--subject", "Nobody organizes", "--organizer", "none",
                  "--start", (START.replace(tzinfo=None)).isoformat(timespec="minutes"))
    assert act.ok("act", "failures").output.strip() == "No ACT item-level failures."
    act.cycle()
    act.cycle()
    with make_engine(act.url).begin() as conn:  # an email's item-level row is no ACT failure
        conn.execute(ExchangeSyncIdMapping.__table__.insert().values(
            mailboxid="m", exchangeentryid="e", objecttypecode="email", itemstate=3, lastsyncerror="NoRecipientMatch"))
    rows = json.loads(act.ok("act", "failures", "--json").output)
    [row] = rows
    assert (row["objecttypecode"], row["objectid"], row["lastsyncerror"], row["emailaddress"]) == (
        "appointment", bad, ORGANIZER_MISSING, ALICE)
    assert row["retries"] >= 1  # the same failure again counts a retry on the one row
    table = act.ok("act", "failures").output
    assert ORGANIZER_MISSING in table and "appointment" in table and "NoRecipientMatch" not in table



def test_sss_run_counts_the_act_items_it_synced(tmp_path):
    """``sss run`` (the engine over EWS on a set-up sandbox) says how many ACT items moved."""
    db = str(tmp_path / "run.db")

    def ok(*args: str) -> str:
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    ok("walkthrough", "--scenario", "process-email-from-future")  # set up; only its email date is wrong
    ok("act", "add", "--kind", "task", "--as", "alice", "--subject", "Slides", "--due", "2026-01-09")
    ok("act", "add", "--kind", "contact", "--as", "alice", "--last-name", "Scully")
    assert "ACT: 2 item(s) to Exchange, 0 to the CRM, 0 conflict(s), 0 failed." in ok("run", "--minutes", "30")
    assert "ACT:" not in ok("run", "--minutes", "30")  # nothing moved: no ACT line
