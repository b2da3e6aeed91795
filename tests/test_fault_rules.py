"""Fault rules: one check of their fields for every way in, and any rule that passes can fire
without breaking the engine."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALICE, SUPPORT, build_org, msg
from test_control_admin import _with_api
from typer.testing import CliRunner

from engine.errors import KNOWN_ERRORS
from simulator.cli import app
from simulator.faults import MAX_BACKOFF_MS, MAX_COUNT, OPERATIONS, FaultRule

ABSURD = [
    ({"count": 10**100}, "count"),
    ({"backoff_ms": 10**30}, "backoff_ms"),
    ({"probability": 2}, "probability"),
    ({"count": -1}, "count"),
]

rule_st = st.builds(
    FaultRule,
    code=st.sampled_from(sorted(KNOWN_ERRORS)),
    operation=st.sampled_from(["*", *OPERATIONS]),
    mailbox=st.sampled_from([None, ALICE, SUPPORT]),
    count=st.one_of(st.none(), st.integers(0, MAX_COUNT)),
    probability=st.floats(0, 1),
    backoff_ms=st.one_of(st.none(), st.integers(0, MAX_BACKOFF_MS)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule_st, min_size=1, max_size=3))
def test_any_rule_the_model_accepts_fires_without_breaking_the_engine(rules):
    o = build_org(3)
    o.sb.deliver(msg("Hello", to=(ALICE, SUPPORT)))
    for rule in rules:
        o.sb.add_rule(rule)
    start, polls = o.sb.clock.now(), o.sb.engine.stats.polls
    o.run_for(2 * 24 * 3600)  # past the longest back-off a rule may give (MAX_BACKOFF_MS)
    assert o.sb.clock.now() == start + timedelta(days=2)  # time went on: no OverflowError, no stuck loop
    assert o.sb.engine.stats.polls > polls
    fired = sum(r.fired for r in o.sb.faults.rules)
    assert fired <= sum(MAX_COUNT if r.count is None else r.count for r in o.sb.faults.rules)


@pytest.mark.parametrize(("change", "field"), ABSURD)
def test_the_cli_refuses_an_absurd_rule_naming_its_option(tmp_path, change, field):
    (key, value), = change.items()
    option = "--" + key.replace("_", "-")
    result = CliRunner().invoke(app, ["fault", "add", "--code", "ErrorServerBusy", option, str(value),
                                      "--db", str(tmp_path / "w.db")])
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and field.replace("_", "") in err.replace("_", "").replace(
        "-", ""), err


@pytest.mark.parametrize(("change", "field"), ABSURD)
def test_the_control_plane_refuses_an_absurd_rule_with_400_naming_its_key(tmp_path, change, field):
    async def scenario(wire, api) -> None:
        status, body, _ = await api("POST", "/_sim/faults", {"code": "ErrorServerBusy", **change})
        assert status == 400
        assert body["error"].startswith(f"{field}:"), body
        _, rules, _ = await api("GET", "/_sim/faults")
        assert rules == []  # nothing written

    asyncio.run(_with_api(tmp_path, scenario))


def test_a_body_nested_too_deeply_is_a_400_not_a_crash(tmp_path):
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    obj_deep = ('{"a":' * 100_000 + "1" + "}" * 100_000).encode()

    async def scenario(wire, api) -> None:
        for path, body in (("/_sim/faults", deep), ("/_sim/clock/advance", obj_deep), ("/_sim/profiles", obj_deep)):
            status, answer, _ = await api("POST", path, raw=body)
            assert status == 400, (path, status, answer)
            assert "nested too deeply" in answer["error"], answer
        status, _, _ = await api("GET", "/_sim/clock")  # still serving
        assert status == 200

    asyncio.run(_with_api(tmp_path, scenario))


# -- the control plane's key -------------------------------------------------------------------------------
def test_the_control_plane_needs_its_key_and_a_known_user_behind_it(tmp_path):
    async def scenario(wire, api) -> None:
        info = wire.info()
        assert info.control_key == wire.control_key and len(info.control_key) >= 24
        http = api.http  # the session itself: no key unless a request gives one
        rules_before = list(wire.sb.faults.rules)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": wire.control_key},
                        {"X-SSS-User": "admin"}):
            for method, path, body in (("GET", "/_sim/clock", None), ("GET", "/_sim/mailboxes", None),
                                       ("POST", "/_sim/faults", {"code": "ErrorServerBusy"}),
                                       ("POST", "/_sim/clock/advance", {"seconds": 60}),
                                       ("POST", "/_sim/tenants", {"name": "X"})):
                async with http.request(method, wire.base_url + path, json=body, headers=headers) as r:
                    answer = await r.json()
                    assert r.status == 401, (headers, path, r.status, answer)
                    assert answer["field"] == "Authorization" and "control_key" in answer["error"]
        assert wire.sb.faults.rules == rules_before  # nothing was done
        status, _, _ = await api("GET", "/_sim/clock")
        assert status == 200
        status, answer, _ = await api("POST", "/_sim/profiles", {"name": "EXO"}, user="nobody")
        assert status == 403 and answer["field"] == "X-SSS-User"
        async with http.post(wire.ews_url, data=b"<x/>") as r:  # other services are not behind the key
            assert r.status != 401 or "control_key" not in await r.text()

    asyncio.run(_with_api(tmp_path, scenario))
