"""Fault rules: one check of their fields for every way in, and any rule that passes can fire
without breaking the engine."""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ADMIN, ALICE, BOB, CARL, START, SUPPORT, build_org, msg
from test_control_admin import _with_api
from typer.testing import CliRunner

from engine.errors import KNOWN_ERRORS
from simulator.cli import app
from simulator.faults import (
    AUTODISCOVER_ERRORS,
    IDENTITY_ERRORS,
    MAX_BACKOFF_MS,
    MAX_COUNT,
    MAX_LATENCY_MS,
    PROTOCOL_OPERATIONS,
    FaultInjector,
    FaultRule,
    FaultRuleError,
    load_rules,
    rules_to_json,
)
from simulator.wire import WireSandbox

ABSURD = [
    ({"count": 10**100}, "count"),
    ({"backoff_ms": 10**30}, "backoff_ms"),
    ({"probability": 2}, "probability"),
    ({"count": -1}, "count"),
]

def _codes(protocol: str) -> list[str]:
    if protocol in ("ews", "crm"):
        return sorted(KNOWN_ERRORS)
    if protocol == "autodiscover":
        return [*AUTODISCOVER_ERRORS, "NetworkError"]
    if protocol == "identity":
        return [*IDENTITY_ERRORS, "NetworkError"]
    return ["421", "450", "451", "452", "499", "550", "552", "554", "599", "NetworkError"]


@st.composite
def rule_st(draw, protocols=tuple(PROTOCOL_OPERATIONS)):
    """Any rule the model accepts, of any protocol, with every field it may carry."""
    protocol = draw(st.sampled_from(protocols))
    operation = draw(st.sampled_from(["*", *PROTOCOL_OPERATIONS[protocol]]))
    code = st.sampled_from(_codes(protocol))
    fields = {
        # a named operation tells its protocol: leave it out now and then
        "protocol": protocol if operation == "*" or draw(st.booleans()) else None,
        "operation": operation,
        "code": draw(code if protocol == "crm" else st.one_of(st.none(), code)),
        "count": draw(st.one_of(st.none(), st.integers(0, MAX_COUNT))),
        "probability": draw(st.floats(0, 1)),
    }
    if protocol != "identity" and not (protocol == "smtp" and operation == "connect"):
        fields["mailbox"] = draw(st.sampled_from([None, ALICE, SUPPORT, CARL]))
    if protocol in ("ews", "crm"):
        fields["backoff_ms"] = draw(st.one_of(st.none(), st.integers(0, MAX_BACKOFF_MS)))
    if protocol != "crm":
        least = 0 if fields["code"] is not None else 1
        fields["latency_ms"] = draw(st.integers(least, MAX_LATENCY_MS) if least else
                                    st.one_of(st.none(), st.integers(0, MAX_LATENCY_MS)))
    if draw(st.booleans()):
        fields["start"] = (START + timedelta(minutes=draw(st.integers(-24 * 60, 3 * 24 * 60)))).isoformat()
        fields["minutes"] = draw(st.one_of(st.none(), st.floats(0.01, 5000)))
    return FaultRule(**fields)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule_st(), min_size=1, max_size=3))
def test_any_rule_the_model_accepts_fires_without_breaking_the_engine(rules):
    o = build_org(3)
    o.sb.deliver(msg("Hello", to=(ALICE, SUPPORT)))
    for rule in rules:
        o.sb.add_rule(rule)
    start, polls = o.sb.clock.now(), o.sb.engine.stats.polls
    o.run_for(2 * 24 * 3600)  # past the longest back-off a rule may give (MAX_BACKOFF_MS)
    # time went on (no OverflowError, no stuck loop); a call slowed by latency may end past the run's end
    assert start + timedelta(days=2) <= o.sb.clock.now() < start + timedelta(days=4)
    assert o.sb.engine.stats.polls > polls
    fired = sum(r.fired for r in o.sb.faults.rules)
    assert fired <= sum(MAX_COUNT if r.count is None else r.count for r in o.sb.faults.rules)
    # in direct mode only the protocols served in process can fire
    assert {h[1] for h in o.sb.faults.history} <= {"ews", "crm"}


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=st.lists(rule_st(("autodiscover", "identity", "smtp", "ews")), min_size=1, max_size=3))
def test_any_rule_on_the_wire_fires_without_breaking_the_engine_or_the_servers(tmp_path_factory, rules):
    """The protocols that exist only on the wire (Autodiscover, the token endpoint, SMTP), with EWS."""
    async def go():
        wire = WireSandbox(seed=2, state_dir=tmp_path_factory.mktemp("wire"))
        o = build_org(2, sandbox=wire.sb, s2s=lambda _sb: wire.configure_s2s(as_user=ADMIN), test=False)
        await wire.start()
        try:
            sb = wire.sb
            for rule in rules:
                sb.add_rule(rule)
            await sb.admin.test_and_enable(ADMIN, list(o.mailboxes.values()))

            def send():
                try:
                    with smtplib.SMTP(wire.smtp.host, wire.smtp.port, timeout=10) as client:
                        client.sendmail(CARL, [ALICE, BOB], b"Subject: Hi\r\nMessage-ID: <h@x.example>\r\n\r\nhi\r\n")
                except (smtplib.SMTPException, OSError) as exc:
                    return type(exc).__name__
                return "sent"

            start = sb.clock.now()
            await asyncio.to_thread(send)
            await sb.run_for(6 * 3600)
            assert sb.clock.now() >= start + timedelta(hours=6)
            sb.clear_faults()
            assert await asyncio.to_thread(send) == "sent"  # the servers still answer
            wire.exchange.invalidate_tokens()
            sb.deliver(msg("After the rules", message_id="after@fabrikam.example"))
            await sb.run_for(3600)
        finally:
            await wire.stop()

    asyncio.run(go())


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


# -- the new fields through every way in ---------------------------------------------------------------------
WHEN = "2026-01-05T09:00:00+00:00"
CLI_RULES = [
    (["--code", "451", "--operation", "data", "--latency-ms", "2000", "--start", "2026-01-05T09:00",
      "--minutes", "30"],
     "451 on smtp data for every mailbox: every matching call, fired 0 time(s), probability 1.0, after 2000 ms of "
     "latency, from 2026-01-05 09:00:00 UTC for 30 minute(s)"),
    (["--code", "AADSTS700027", "--count", "2"],
     "AADSTS700027 on any identity operation for every request: the next 2 call(s), fired 0 time(s), probability 1.0"),
    (["--protocol", "autodiscover", "--code", "HttpServiceUnavailable", "--mailbox", "Alice@Contoso.example"],
     "HttpServiceUnavailable on any autodiscover operation for alice@contoso.example: every matching call"),
    (["--latency-ms", "150", "--operation", "find_new_items", "--probability", "0.5"],
     "150 ms of latency on find_new_items for every mailbox: every matching call, fired 0 time(s), probability 0.5"),
    (["--code", "IsvAborted", "--operation", "create_email"], "IsvAborted on crm create_email for every mailbox"),
]


def test_the_cli_adds_lists_and_clears_rules_of_every_protocol(tmp_path):
    db = str(tmp_path / "w.db")
    runner = CliRunner()
    assert runner.invoke(app, ["org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.example",
                               "--db", db]).exit_code == 0  # rules go into a sandbox: it must exist
    for args, _line in CLI_RULES:
        added = runner.invoke(app, ["fault", "add", *args, "--db", db])
        assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["fault", "list", "--db", db]).output
    for _args, line in CLI_RULES:
        assert line in " ".join(listed.split()), (line, listed)
    rules = json.loads(runner.invoke(app, ["fault", "list", "--json", "--db", db]).output)
    assert [r["protocol"] for r in rules] == ["smtp", "identity", "autodiscover", "ews", "crm"]
    assert rules[0]["start"] == WHEN and rules[0]["minutes"] == 30 and rules[0]["latency_ms"] == 2000
    assert runner.invoke(app, ["fault", "clear", "--db", db]).exit_code == 0
    assert "No fault rules." in runner.invoke(app, ["fault", "list", "--db", db]).output


BAD_FIELDS = [
    ({"latency_ms": -5}, "latency_ms", "--latency-ms"),
    ({"latency_ms": MAX_LATENCY_MS + 1}, "latency_ms", "--latency-ms"),
    ({"start": "soon"}, "start", "--start"),
    ({"start": WHEN, "minutes": 0}, "minutes", "--minutes"),
    ({"minutes": 30}, "minutes", "--minutes"),
    ({"protocol": "pop3"}, "protocol", "--protocol"),
    ({"protocol": "identity", "code": "AADSTS1"}, "code", "--code"),
    ({"protocol": "smtp", "code": "250"}, "code", "--code"),
    ({"protocol": "smtp", "code": "451", "operation": "find_new_items"}, "operation", "--operation"),
    ({"protocol": "smtp", "code": "451", "backoff_ms": 100}, "backoff_ms", "--backoff-ms"),
    ({"protocol": "identity", "code": "NetworkError", "mailbox": ALICE}, "mailbox", "--mailbox"),
    ({"code": "IsvAborted", "operation": "create_email", "latency_ms": 100}, "latency_ms", "--latency-ms"),
    ({"code": None, "operation": "send"}, "code", "--code"),
]


def _cli_args(change: dict) -> list[str]:
    fields = {"code": "ErrorServerBusy", **change}
    args = []
    for key, value in fields.items():
        if value is not None:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.mark.parametrize(("change", "field", "option"), BAD_FIELDS)
def test_a_bad_new_field_is_one_line_naming_it_and_nothing_is_written(tmp_path, change, field, option):
    with pytest.raises(FaultRuleError) as exc:  # Python
        FaultRule(**{"code": "ErrorServerBusy", **change})
    assert str(exc.value).startswith(f"{field}:")
    db = tmp_path / "w.db"
    result = CliRunner().invoke(app, ["fault", "add", *_cli_args(change), "--db", str(db)])
    err = result.stderr.strip()
    assert result.exit_code == 1 and "\n" not in err and "Traceback" not in result.output + err, err
    assert err.startswith(f"Error: {option}:"), err
    assert not db.exists()  # refused before the sandbox was opened


@pytest.mark.parametrize(("change", "field", "option"), BAD_FIELDS)
def test_the_control_plane_refuses_a_bad_new_field_with_400(tmp_path, change, field, option):
    async def scenario(wire, api) -> None:
        body = {k: v for k, v in {"code": "ErrorServerBusy", **change}.items() if v is not None}
        status, answer, _ = await api("POST", "/_sim/faults", body)
        assert status == 400 and answer["error"].startswith(f"{field}:"), answer
        _, rules, _ = await api("GET", "/_sim/faults")
        assert rules == []

    asyncio.run(_with_api(tmp_path, scenario))


def test_the_control_plane_takes_shows_and_clears_the_new_fields(tmp_path):
    async def scenario(wire, api) -> None:
        status, rule, _ = await api("POST", "/_sim/faults", {
            "code": "550", "operation": "rcpt", "mailbox": BOB, "latency_ms": 1500,
            "start": "2026-01-05T10:00:00Z", "minutes": 15.5, "count": 3})
        assert status == 201
        assert rule | {"fired": 0} == {"code": "550", "protocol": "smtp", "operation": "rcpt", "mailbox": BOB,
                                       "count": 3, "probability": 1.0, "backoff_ms": None, "latency_ms": 1500,
                                       "start": "2026-01-05T10:00:00+00:00", "minutes": 15.5, "fired": 0}
        status, rule, _ = await api("POST", "/_sim/faults", {"latency_ms": 900, "protocol": "identity"})
        assert status == 201 and rule["code"] is None
        _, rules, _ = await api("GET", "/_sim/faults")
        assert [r["protocol"] for r in rules] == ["smtp", "identity"]
        status, _, _ = await api("DELETE", "/_sim/faults")
        assert status == 200
        _, rules, _ = await api("GET", "/_sim/faults")
        assert rules == []

    asyncio.run(_with_api(tmp_path, scenario))


def test_python_takes_the_new_fields_and_they_persist_in_the_durable_world(tmp_path):
    from simulator.sandbox import Sandbox

    url = f"sqlite:///{tmp_path / 'w.db'}"
    sb = Sandbox(db_url=url, seed=4)
    rule = sb.add_fault(code="AADSTS90002", start=datetime(2026, 1, 5, 12, 0, tzinfo=UTC), minutes=45,
                        latency_ms=2500)
    assert (rule.protocol, rule.start) == ("identity", "2026-01-05T12:00:00+00:00")
    sb.close()
    again = Sandbox(db_url=url, seed=4)
    assert [r.to_json() for r in again.faults.rules] == [rule.to_json()]
    assert again.faults.clock is again.clock
    again.close()


def test_rules_stored_before_protocols_existed_load_as_they_were_meant():
    old = {"format": "sss-fault-rules", "version": 1, "rng": None, "rules": [
        {"code": "ErrorServerBusy", "operation": "*", "mailbox": None, "count": 2, "probability": 1.0,
         "backoff_ms": 500, "fired": 1},
        {"code": "IsvAborted", "operation": "create_email", "mailbox": ALICE, "count": None, "probability": 0.5,
         "backoff_ms": None, "fired": 0}]}
    source = FaultInjector(random.Random(1))
    old["rng"] = json.loads(rules_to_json(source))["rng"]
    injector = FaultInjector()
    load_rules(injector, json.dumps(old))
    assert [(r.protocol, r.operation, r.fired, r.latency_ms, r.start) for r in injector.rules] == [
        ("ews", "*", 1, None, None), ("crm", "create_email", 0, None, None)]
    assert json.loads(rules_to_json(injector))["rules"][0]["protocol"] == "ews"


def test_a_window_opens_and_closes_on_the_clock_given():
    injector = FaultInjector(random.Random(0))
    injector.add(FaultRule("ErrorServerBusy", "send", start="2026-01-05T09:00:00Z", minutes=10))
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    fired = [injector.decide("ews", "send", ALICE, now=at + timedelta(minutes=m)) is not None
             for m in (-1, 0, 5, 9.99, 10, 60)]
    assert fired == [False, True, True, True, False, False]
    assert injector.decide("ews", "send", ALICE) is None  # no clock, no time: a timed rule does not fire
