"""The pytest plugin, used the way an outside suite uses it: a test module of its own (no import from
``tests/``), run by pytest in a subprocess that finds the plugin through the installed package's
``pytest11`` entry point; and the snapshot/reset that gives each test the same starting point."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALICE, BOB, CARL, STRANGER, build_org

pytest_plugins = ["pytester"]

OUTSIDE = '''
import pytest


def test_mail_from_a_contact_becomes_an_activity(sss_sandbox):
    sss_sandbox.deliver("Quote request", sender="carl@fabrikam.example", to="alice@contoso.example")
    sss_sandbox.advance(minutes=15)
    [email] = sss_sandbox.assert_tracked("Quote request")
    assert email.sender == "carl@fabrikam.example"


@pytest.mark.sss_org(profile={"minpollingintervalinminutes": 30})
def test_the_profile_can_be_changed_by_a_marker(sss_sandbox):
    [profile] = sss_sandbox.admin.profiles()
    assert profile["minpollingintervalinminutes"] == 30


@pytest.mark.sss_fault("ErrorServerBusy", mailbox="alice@contoso.example", count=2)
def test_a_fault_marker_is_in_place(sss_sandbox):
    assert [r.code for r in sss_sandbox.faults.rules] == ["ErrorServerBusy"]


def test_over_the_wire(sss_server):
    sss_server.deliver("Over SMTP")
    sss_server.assert_tracked("Over SMTP", timeout_minutes=30)
    inbox = sss_server.account("alice@contoso.example").inbox
    assert "Over SMTP" in [m.subject for m in inbox.all()]


@pytest.mark.sss_fault("ErrorServerBusy", count=1)
def test_each_wire_test_starts_from_the_baseline(sss_server):
    assert sss_server.emails("Over SMTP") == []
    assert [r["code"] for r in sss_server.faults.rules] == ["ErrorServerBusy"]


def test_the_crm_over_the_web_api(sss_server):
    sss_server.deliver("Via OData")
    sss_server.advance(minutes=15)
    rows = sss_server.crm.get("emails", filter="subject eq 'Via OData'", select="subject,statuscode")
    assert [r["subject"] for r in rows] == ["Via OData"]
    sss_server.advance(hours=2)  # the first token has expired in sandbox time: a new one is taken
    assert len(sss_server.crm.get("mailboxes", select=["emailaddress"])) == len(sss_server.mailboxes)


@pytest.mark.sss_org(scenario="flow.toml")
def test_the_organization_of_a_scenario_file(sss_sandbox):
    assert sss_sandbox.emails() == []  # the file's mail waits for the clock
    sss_sandbox.advance(minutes=45)
    sss_sandbox.assert_tracked("Quote for the spring order")
    assert sss_sandbox.explain("Not a reply to anything").startswith("email 'Not a reply to anything' not tracked")


def test_a_miss_is_explained(sss_sandbox):
    sss_sandbox.deliver("Cold call", sender="someone@elsewhere.example", to="bob@contoso.example")
    sss_sandbox.assert_tracked("Cold call", timeout_minutes=20)
'''


def test_an_outside_suite_uses_the_plugin_in_both_modes(pytester):
    from simulator.scenario import examples_folder

    pytester.makepyfile(test_outside=OUTSIDE)
    pytester.makefile(".toml", flow=(examples_folder() / "basic-flow.toml").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7, failed=1)
    # the one failure is the miss, explained with the engine's reason
    result.stdout.fnmatch_lines(["*email 'Cold call' not tracked: skipped as NoCorrelationMatch in "
                                 "bob@contoso.example at *"])


def test_scenario_files_are_collected_as_tests(pytester):
    from simulator.scenario import examples_folder

    text = (examples_folder() / "basic-flow.toml").read_text()
    pytester.makefile(".sss.toml", basic=text)
    wrong = text.replace("tracked = 2", "tracked = 999")
    assert wrong != text
    pytester.makefile(".sss.toml", wrong=wrong)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*wrong.sss.toml: expected tracked 999, got 2*"])


def _scenario(org, n: int, faults: int):
    """Mail for alice (tracked) and bob (not), a busy Exchange, an hour of engine time: what it left."""
    sb = org.sb
    if faults:
        sb.add_fault(code="ErrorServerBusy", count=faults)
    for i in range(n):
        sb.deliver_text(CARL, [ALICE], f"Offer {i}")
        sb.deliver_text(STRANGER, [BOB], f"Cold {i}")
    asyncio.run(sb.run_for(3600))
    emails = sorted((e.activityid, e.subject, e.statuscode, e.messageid) for e in org.emails())
    return list(sb.events), emails, sb.clock.now(), [r.count for r in sb.faults.rules]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=0, max_value=4), faults=st.integers(min_value=0, max_value=3),
       first=st.integers(min_value=0, max_value=4))
def test_a_restored_sandbox_does_again_exactly_what_it_did(n, faults, first):
    """After a restore, the same actions give the same event log, rows, ids and clock, whatever ran
    between the snapshot and the restore (here: ``first`` other messages)."""
    org = build_org()
    try:
        snap = org.sb.snapshot()
        before = _scenario(org, n, faults)
        org.sb.restore(snap)
        assert org.emails() == [] and org.sb.faults.rules == [] and org.sb.events == []
        _scenario(org, first, 1)
        org.sb.restore(snap)
        assert _scenario(org, n, faults) == before
    finally:
        org.sb.close()
