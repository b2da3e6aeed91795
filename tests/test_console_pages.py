"""The console's Exchange Online and Sandbox pages, over HTTPS against the session's served sandbox.

Each test starts from the sandbox's baseline (the ``sss_server`` fixture resets it): alice, bob,
the support queue and the admin (a System Administrator), approved, tested and enabled.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
import requests
from sqlalchemy import func, select

from simulator.crm.models import ExchangeJournal
from simulator.testing import ADMIN, ALICE, BOB, CARL
from simulator.world import stored_time

SUBJECT = "Order 1234 from the console"


def session_for(sss_server) -> requests.Session:
    """A browser of the console: the sandbox CA trusted, the key's cookie set, nobody signed in."""
    http = requests.Session()
    http.verify, http.trust_env = sss_server.info.ca_file, False
    opened = http.get(sss_server.info.console_url, allow_redirects=False, timeout=30)
    assert opened.status_code == 303, opened.text
    return http


def sign_in(http: requests.Session, base: str, user: str) -> None:
    answer = http.post(f"{base}/console/signin", data={"user": user}, allow_redirects=False, timeout=30)
    assert answer.status_code == 303, answer.text


@pytest.fixture
def base(sss_server) -> str:
    return sss_server.info.console_url.split("/console/")[0]


@pytest.fixture
def console(sss_server, base) -> requests.Session:
    """The console, signed in as the administrator."""
    http = session_for(sss_server)
    sign_in(http, base, ADMIN)
    return http


def problem_of(html: str) -> str:
    found = re.search(r'id="problem">(.*?)</div>', html, re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", "", found.group(1))).split()) if found else ""


def journal_rows(sss_server) -> int:
    with sss_server.wire.sb.db.connect() as conn:
        return conn.execute(select(func.count()).select_from(ExchangeJournal)).scalar_one()


def inbox(sss_server, address: str):
    mbx = sss_server.wire.sb.store.mailboxes[address]
    return mbx, mbx.folders[mbx.distinguished["inbox"]]


def deliver(console, base: str, **fields: str) -> requests.Response:
    data = {"from": CARL, "to": ALICE, "cc": "", "subject": SUBJECT, "body": "Please ship <b>soon</b>.", **fields}
    return console.post(f"{base}/console/exchange/new", data=data, allow_redirects=False, timeout=30)


# -- access ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/console/exchange", "/console/exchange/new", "/console/sandbox/clock",
                                  "/console/sandbox/faults"])
def test_the_pages_need_the_key_then_a_signed_in_user(sss_server, base, path):
    stranger = requests.Session()
    stranger.verify, stranger.trust_env = sss_server.info.ca_file, False
    assert stranger.get(base + path, allow_redirects=False, timeout=30).status_code == 401

    http = session_for(sss_server)  # the key, nobody signed in
    answer = http.get(base + path, allow_redirects=False, timeout=30)
    assert answer.status_code in (302, 303)
    assert answer.headers["Location"].startswith("/console/signin")


# -- Exchange Online ---------------------------------------------------------------------------------
def test_the_exchange_view_lists_the_mailboxes_and_shows_a_message_delivered_by_the_form(sss_server, base,
                                                                                          console):
    listing = console.get(f"{base}/console/exchange", timeout=30)
    assert listing.status_code == 200
    shown = set(re.findall(r'<tr data-address="([^"]+)"', listing.text))
    assert shown == set(sss_server.wire.sb.store.mailboxes)

    answer = deliver(console, base, cc=BOB)
    assert answer.status_code == 303, problem_of(answer.text)
    alice, alice_inbox = inbox(sss_server, ALICE)
    assert answer.headers["Location"] == f"/console/exchange/mailboxes/{ALICE}/folders/{alice_inbox.folder_id}"
    assert [i.data.subject for i in inbox(sss_server, BOB)[1].items.values()] == [SUBJECT]  # the Cc too

    page = console.get(base + answer.headers["Location"], timeout=30)
    assert f"Delivered to {ALICE}, {BOB}." in page.text
    assert re.findall(r'<tr data-subject="([^"]+)"', page.text) == [SUBJECT]
    item_id = re.search(r'/items/([^"]+)"', page.text).group(1)
    assert alice.item_folder[item_id] == alice_inbox.folder_id

    folders = console.get(f"{base}/console/exchange/mailboxes/{ALICE}", timeout=30).text
    assert re.findall(r'<tr data-folder="([^"]+)"', folders)[:4] == ["Inbox", "Sent Items", "Drafts",
                                                                      "Deleted Items"]
    counts = dict(re.findall(r'<tr data-folder="([^"]+)">\s*<td[^>]*><a[^>]*>[^<]*</a></td>\s*<td class="items">(\d+)',
                             folders))
    assert counts["Inbox"] == "1" and counts["Sent Items"] == "0"

    item = console.get(f"{base}/console/exchange/mailboxes/{ALICE}/items/{item_id}", timeout=30)
    assert item.status_code == 200
    assert "Please ship &lt;b&gt;soon&lt;/b&gt;." in item.text and "<b>soon</b>" not in item.text
    assert CARL in item.text and BOB in item.text


def test_reading_the_exchange_view_changes_nothing(sss_server, base, console):
    assert deliver(console, base).status_code == 303
    store = sss_server.wire.sb.store
    before = {a: (sorted(m.folders), {i: f.items[i].is_read for f in m.folders.values() for i in f.items})
              for a, m in store.mailboxes.items()}
    rows = journal_rows(sss_server)
    _alice, alice_inbox = inbox(sss_server, ALICE)
    (item_id,) = alice_inbox.items

    for address in store.mailboxes:
        assert console.get(f"{base}/console/exchange/mailboxes/{address}", timeout=30).status_code == 200
    for path in ("/console/exchange?q=alice", f"/console/exchange/mailboxes/{ALICE}/folders/{alice_inbox.folder_id}",
                 f"/console/exchange/mailboxes/{ALICE}/items/{item_id}"):
        assert console.get(base + path, timeout=30).status_code == 200

    after = {a: (sorted(m.folders), {i: f.items[i].is_read for f in m.folders.values() for i in f.items})
             for a, m in store.mailboxes.items()}
    assert after == before  # no folder made, no item read
    assert before[ALICE][1][item_id] is False
    assert journal_rows(sss_server) == rows


@pytest.mark.parametrize(("fields", "named", "says"), [
    ({"from": "not an address"}, "From (from)", "'not an address' is not an email address"),
    ({"to": f"{ALICE}, bob-at-contoso"}, "To (to)", "'bob-at-contoso' is not an email address"),
    ({"to": "someone@elsewhere.example"}, "To (to)", "no recipient has a mailbox in this Exchange Online"),
])
def test_a_malformed_or_useless_address_is_refused_naming_the_field_and_nothing_is_delivered(
        sss_server, base, console, fields, named, says):
    rows = journal_rows(sss_server)
    answer = deliver(console, base, **fields)
    assert answer.status_code == 400
    assert problem_of(answer.text) == f"{named}: {says}"
    assert 'aria-invalid="true"' in answer.text
    assert journal_rows(sss_server) == rows
    assert not inbox(sss_server, ALICE)[1].items


# -- the sandbox clock and the engine ----------------------------------------------------------------------
def test_advancing_the_clock_moves_it_by_exactly_the_amount(sss_server, base, console):
    sb = sss_server.wire.sb
    start = sb.clock.now()
    answer = console.post(f"{base}/console/sandbox/clock", data={"days": "1", "hours": "2", "minutes": "30"},
                          allow_redirects=False, timeout=30)
    assert answer.status_code == 303
    moved = start + timedelta(days=1, hours=2, minutes=30)
    assert sb.clock.now() == moved
    assert stored_time(sb.db) == moved  # written at once
    polls = sb.engine.stats.polls
    refused = console.post(f"{base}/console/sandbox/clock", data={"hours": "-1"}, timeout=30)
    assert refused.status_code == 400
    assert problem_of(refused.text) == "Hours (hours): '-1' is out of range (from 0 to 878400)"
    assert sb.clock.now() == moved and sb.engine.stats.polls == polls  # nothing ran meanwhile


def test_running_the_engine_tracks_a_message_delivered_by_the_form(sss_server, base, console):
    assert deliver(console, base).status_code == 303
    sb = sss_server.wire.sb
    start = sb.clock.now()
    refused = console.post(f"{base}/console/sandbox/run", data={"run_minutes": "0"}, timeout=30)
    assert refused.status_code == 400 and refused.text.count("Run the engine for minutes (run_minutes)") == 1
    assert sb.clock.now() == start

    answer = console.post(f"{base}/console/sandbox/run", data={"run_minutes": "30"}, timeout=120)
    assert answer.status_code == 200
    assert sb.clock.now() == start + timedelta(minutes=30)
    tracked = re.search(r'data-counter="tracked"><td>[^<]*</td><td class="run">(\d+)</td>', answer.text)
    assert tracked and int(tracked.group(1)) == 1
    (email,) = sss_server.emails(SUBJECT)
    assert email.sender == CARL and email.directioncode is False


def test_running_the_engine_first_runs_the_test_and_enable_job_left_waiting(sss_server, base, console):
    sb = sss_server.wire.sb
    jobid = sb.admin.start_profile_test_and_enable(ADMIN, sss_server.org.profile_id)  # as sss ... --no-wait
    assert sb.admin.waiting_jobs() == [jobid]
    answer = console.post(f"{base}/console/sandbox/run", data={"run_minutes": "5"}, timeout=120)
    assert answer.status_code == 200
    assert sb.admin.waiting_jobs() == []
    assert sb.admin.job(jobid)["state"] == "succeeded"


def test_the_cli_moves_a_stored_clock_by_minutes_through_the_same_input_model(tmp_path):
    from typer.testing import CliRunner

    from simulator.cli import app
    from simulator.crm.db import make_engine, sqlite_url
    from simulator.crm.s2s import current_time

    db = tmp_path / "sss.db"
    engine = make_engine(sqlite_url(db))
    try:
        start = current_time(engine)
        result = CliRunner().invoke(app, ["clock", "advance", "--hours", "1", "--minutes", "45", "--db", str(db)])
        assert result.exit_code == 0, result.output
        assert current_time(engine) == start + timedelta(hours=1, minutes=45)
        refused = CliRunner().invoke(app, ["clock", "advance", "--minutes", "-5", "--db", str(db)])
        assert refused.exit_code == 1 and refused.stderr.startswith("Error: --minutes: '-5' is out of range")
        assert current_time(engine) == start + timedelta(hours=1, minutes=45)
    finally:
        engine.dispose()


# -- fault rules ---------------------------------------------------------------------------------------
def test_a_fault_rule_with_a_wrong_value_is_refused_and_a_good_one_is_listed(sss_server, base, console):
    faults = sss_server.wire.sb.faults
    for data, says in [
        ({"code": "ErrorServerBusy", "probability": "7"}, "Probability (probability): 7.0 is not a number from 0 to 1"),
        ({"code": "ErrorServerBusy", "count": "-1"}, "Count (count): -1 is not a whole number from 0 to 1000000000"),
        ({"code": "ErrorNoSuchThing"}, "Error code (code): 'ErrorNoSuchThing' is not a known error code "
                                       "(e.g. ErrorServerBusy)"),
    ]:
        answer = console.post(f"{base}/console/sandbox/faults", data=data, timeout=30)
        assert answer.status_code == 400
        assert problem_of(answer.text) == says
        assert faults.rules == []

    good = {"code": "ErrorServerBusy", "operation": "find_new_items", "mailbox": ALICE, "count": "2",
            "probability": "0.5", "backoff_ms": "1500"}
    answer = console.post(f"{base}/console/sandbox/faults", data=good, allow_redirects=False, timeout=30)
    assert answer.status_code == 303
    (rule,) = faults.rules
    assert (rule.code, rule.protocol, rule.operation, rule.mailbox, rule.count, rule.probability,
            rule.backoff_ms) == ("ErrorServerBusy", "ews", "find_new_items", ALICE, 2, 0.5, 1500)
    listing = console.get(f"{base}/console/sandbox/faults", timeout=30).text
    cells = dict(re.findall(r'<td class="(\w+)">([^<]*)</td>', listing))
    assert cells == {"code": "ErrorServerBusy", "protocol": "ews", "operation": "find_new_items", "mailbox": ALICE,
                     "count": "2", "probability": "0.5", "backoff_ms": "1500", "latency_ms": "", "start": "",
                     "minutes": "", "fired": "0"}

    cleared = console.post(f"{base}/console/sandbox/faults/clear", allow_redirects=False, timeout=30)
    assert cleared.status_code == 303 and faults.rules == []


# -- only the trainer --------------------------------------------------------------------------------------
def test_a_user_without_the_system_administrator_role_gets_403_on_the_sandbox_pages(sss_server, base):
    sb = sss_server.wire.sb
    sb.admin.add_user("Pat Learner", "pat@contoso.example")  # a Salesperson
    http = session_for(sss_server)
    sign_in(http, base, "pat")
    start = sb.clock.now()
    assert http.get(f"{base}/console/sandbox/clock", timeout=30).status_code == 403
    assert http.get(f"{base}/console/sandbox/faults", timeout=30).status_code == 403
    assert http.post(f"{base}/console/sandbox/clock", data={"hours": "1"}, timeout=30).status_code == 403
    assert http.post(f"{base}/console/sandbox/faults", data={"code": "ErrorServerBusy"}, timeout=30).status_code == 403
    assert sb.clock.now() == start and sb.faults.rules == []
    assert http.get(f"{base}/console/exchange", timeout=30).status_code == 200  # the Exchange view is everyone's
