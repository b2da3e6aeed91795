"""Scenario files: the shipped examples pass, wrong expectations and bad files are reported the way
a user can act on, the same seed gives the same run, JUnit XML, and wire mode."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from simulator.cli import app
from simulator.scenario import (
    ScenarioError,
    TrafficEntry,
    _KeyLines,
    examples,
    junit_xml,
    load_scenario,
    parse_scenario,
    run_scenario,
)
from simulator.traffic import TrafficMix

runner = CliRunner()
SHIPPED = examples()

SMALL = """
name = "small"
seed = 1
duration = "3h"

[organization]
name = "Contoso"
admin_email = "admin@contoso.example"

[[users]]
fullname = "Alice Adams"
internalemailaddress = "alice@contoso.example"
incomingemailfilteringmethod = "all"

[[users]]
fullname = "Bob Brown"
internalemailaddress = "bob@contoso.example"

[[records]]
kind = "contact"
name = "Carl"
emailaddress1 = "carl@fabrikam.example"

[[profiles]]
name = "Exchange Online"
processemailsreceivedafter = "-1d"
minpollingintervalinminutes = 5

[traffic]
inbound_per_mailbox_day = 40
outgoing_per_user_day = 8

[[mail]]
at = "10m"
from = "carl@fabrikam.example"
to = "bob@contoso.example"
subject = "Not a reply"

[expect]
tracked = ">= 1"
skipped = ">= 1"
min_polling_interval_respected = true
"""


def _write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sss(*args: str):
    return runner.invoke(app, ["scenario", *args])


# ------------------------------------------------------------------------------ the shipped examples
def test_the_examples_cover_the_user_stories():
    assert {"basic-flow", "outgoing-mail", "throttling", "unapproved-mailbox", "process-email-from", "capacity",
            "undeliverable", "wire-mode"} <= set(SHIPPED)
    for path in SHIPPED.values():
        scenario = load_scenario(path)
        assert scenario.description and len(scenario.expect) > 0, path.name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_example_passes(name, tmp_path):
    scenario = load_scenario(SHIPPED[name])
    result = run_scenario(scenario, state_dir=tmp_path)  # state_dir: wire mode's CA and certificates
    assert result.mode == scenario.mode
    assert result.ok, result.failures
    assert result.checks and all(c.met for c in result.checks)


def test_the_wire_example_gives_the_same_counts_in_direct_mode(tmp_path):
    scenario = load_scenario(SHIPPED["wire-mode"])
    wire = run_scenario(scenario, state_dir=tmp_path)
    direct = run_scenario(scenario, mode="direct")
    assert (wire.mode, direct.mode) == ("wire", "direct")
    assert direct.ok, direct.failures
    keys = ("tracked", "skipped", "skipped_reasons", "undeliverable", "sent", "pending_send", "failed_to_send")
    assert {k: wire.summary[k] for k in keys} == {k: direct.summary[k] for k in keys}


SMTP_WIRE = """
name = "smtp-wire"
seed = 3
mode = "wire"
duration = "1h"

[organization]
name = "Contoso"
admin_email = "admin@contoso.example"

[[users]]
fullname = "Alice Adams"
internalemailaddress = "alice@contoso.example"
incomingemailfilteringmethod = "all"

[[users]]
fullname = "Bob Brown"
internalemailaddress = "bob@contoso.example"
incomingemailfilteringmethod = "all"

[[records]]
kind = "contact"
name = "Carl"
emailaddress1 = "carl@fabrikam.example"

[[profiles]]
name = "Exchange Online"
processemailsreceivedafter = "-1d"

[[mail]]
at = "5m"
from = "carl@fabrikam.example"
to = "alice@contoso.example"
subject = "Comes in over SMTP"

[[mail]]
at = "6m"
from = "carl@fabrikam.example"
to = "bob@contoso.example"
subject = "Refused at RCPT"

# the SMTP ingress refuses bob for ten minutes of the run: only a message sent over SMTP meets it
[[faults]]
protocol = "smtp"
operation = "rcpt"
code = "550"
mailbox = "bob@contoso.example"
active_from = "0m"
active_until = "10m"

[expect]
tracked = 1
"""


def test_wire_mode_sends_the_mail_of_the_file_over_smtp(tmp_path):
    result = run_scenario(parse_scenario(SMTP_WIRE, file="smtp-wire.toml"), state_dir=tmp_path)
    assert result.ok, result.failures
    refused = result.summary["smtp_refused"]
    assert len(refused) == 1 and "Refused at RCPT" in refused[0] and "550" in refused[0]
    # in direct mode the message goes into the store: the SMTP rule never meets it
    direct = run_scenario(parse_scenario(SMTP_WIRE, file="smtp-wire.toml"), mode="direct")
    assert direct.summary["tracked"] == 2 and direct.summary["smtp_refused"] == []


def test_a_fault_window_of_the_file_is_the_rule_own_window():
    text = SMALL + """
[[faults]]
code = "ErrorServerBusy"
mailbox = "alice@contoso.example"
active_from = "1h"
active_until = "90m"
"""
    scenario = parse_scenario(text, file="w.toml")
    begin = scenario.start
    rule = scenario.faults[0].rule(begin)
    assert rule.start == (begin + timedelta(hours=1)).isoformat() and rule.minutes == 30
    both = text.replace('active_until = "90m"', 'active_until = "90m"\nminutes = 5')
    with pytest.raises(ScenarioError, match="not both"):
        parse_scenario(both, file="w.toml")


def test_a_shipped_example_runs_by_name_from_the_command_line():
    result = _sss("run", "basic-flow")
    assert result.exit_code == 0, result.output + result.stderr
    assert "tracked" in result.output and "met" in result.output and "NOT MET" not in result.output
    assert "expectations met: passed" in result.output


def test_the_example_of_the_readme_passes(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scenario files", 1)[1].split("\n## ", 1)[0]
    text = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    result = run_scenario(parse_scenario(text, file="README.md"))
    assert result.ok and len(result.checks) == 3, result.failures


def test_list_and_show():
    listed = _sss("list")
    assert listed.exit_code == 0
    for name in SHIPPED:
        assert name in listed.output
    shown = _sss("show", "basic-flow")
    assert shown.exit_code == 0
    assert shown.output == SHIPPED["basic-flow"].read_text(encoding="utf-8")
    missing = _sss("show", "no-such-example")
    assert missing.exit_code == 2 and "no shipped example" in missing.stderr


# ------------------------------------------------------------------------------ expectations not met
WRONG = SMALL.replace('tracked = ">= 1"', 'tracked = ">= 500"') + """
[[expect.mailbox]]
mailbox = "alice@contoso.example"
incomingemailstatus = "Failure"

[[expect.alert]]
mailbox = "bob@contoso.example"
level = "error"
code = "8005E272"
"""


def test_a_wrong_expectation_fails_with_a_readable_sentence(tmp_path):
    result = run_scenario(parse_scenario(WRONG, file="wrong.toml"))
    assert not result.ok
    tracked = next(m for m in result.failures if m.startswith("expected tracked"))
    got = result.summary["tracked"]
    skipped = result.summary["skipped_reasons"]["NoCorrelationMatch"]
    assert re.fullmatch(rf"expected tracked >= 500, got {got} \(.*{skipped} skipped as NoCorrelationMatch.*\)",
                        tracked), tracked
    assert "expected alice@contoso.example incomingemailstatus Failure, got Success" in result.failures
    alert = next(m for m in result.failures if "8005E272" in m)
    assert alert.startswith("expected error alert 8005E272 on bob@contoso.example >= 1 times, found 0"), alert
    met = [c for c in result.checks if c.met]
    assert {c.name for c in met} >= {"skipped", "minimum polling interval respected"}


def test_a_wrong_expectation_exits_1_with_the_table(tmp_path):
    path = _write(tmp_path, WRONG)
    result = _sss("run", str(path))
    assert result.exit_code == 1, result.output + result.stderr
    assert "NOT MET" in result.output and "Not met: expected tracked >= 500, got" in result.output
    assert "expectations met: failed" in result.output
    assert "Traceback" not in result.output + result.stderr


def test_json_output_and_overrides(tmp_path):
    path = _write(tmp_path, WRONG)
    result = _sss("run", str(path), "--json", "--seed", "9", "--mode", "direct")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["seed"] == 9 and doc["mode"] == "direct" and doc["ok"] is False
    assert doc["failures"] and all(isinstance(m, str) for m in doc["failures"])
    assert {e["name"] for e in doc["expectations"]} >= {"tracked", "skipped"}
    assert doc["summary"]["tracked"] >= 1 and len(doc["event_digest"]) == 64


def test_junit_xml_is_well_formed_and_names_the_failing_expectation(tmp_path):
    path = _write(tmp_path, WRONG)
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    result = _sss("run", str(path), "--junit-xml", str(report))
    assert result.exit_code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    doc = json.loads(_sss("run", str(path), "--json").stdout)
    assert len(cases) == len(doc["expectations"]) == int(suite.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == int(suite.get("failures")) == len(doc["failures"]) == 3
    tracked = next(c for c in failed if c.get("name").startswith("tracked"))
    assert tracked.get("name") == "tracked: >= 500"
    assert tracked.find("failure").get("message").startswith("expected tracked >= 500, got")
    passed = next(c for c in cases if c.get("name").startswith("minimum polling interval"))
    assert passed.find("failure") is None


def test_junit_xml_of_a_passing_run_has_no_failures():
    result = run_scenario(load_scenario(SHIPPED["basic-flow"]))
    root = ET.fromstring(junit_xml(result, seconds=1.5))
    assert root.get("failures") == "0" and root.get("time") == "1.500"
    assert len(list(root.iter("testcase"))) == len(result.checks) and not list(root.iter("failure"))
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["seed"] == "1" and props["event_digest"] == result.event_digest


# ------------------------------------------------------------------------------ bad files
def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


BAD = [
    # (what, change to SMALL, line containing, key as shown, words of the message)
    ("syntax error", ('duration = "3h"', "duration = 3h"), "duration = 3h", None, "not valid TOML"),
    ("unknown key", ('incomingemailfilteringmethod = "all"', 'incomingemailfiltering = "all"'),
     "incomingemailfiltering", "users[1].incomingemailfiltering", "did you mean 'incomingemailfilteringmethod'"),
    ("unknown section", ("[traffic]", "[trafic]"), "[trafic]", "trafic", "did you mean 'traffic'"),
    ("wrong value type", ("minpollingintervalinminutes = 5", 'minpollingintervalinminutes = "five"'),
     "minpollingintervalinminutes", "profiles[1].minpollingintervalinminutes", "'five' is not a whole number"),
    ("out of range", ("minpollingintervalinminutes = 5", "minpollingintervalinminutes = 2000"),
     "minpollingintervalinminutes", "profiles[1].minpollingintervalinminutes", "2000 is out of range (from 0 to 1440)"),
    ("share out of range", ("outgoing_per_user_day = 8", "reply_share = 1.5"), "reply_share",
     "traffic.reply_share", "out of range"),
    ("bad track", ('incomingemailfilteringmethod = "all"', 'incomingemailfilteringmethod = "most"'),
     "incomingemailfilteringmethod", "users[1].incomingemailfilteringmethod", "is not a track setting"),
    ("bad duration", ('duration = "3h"', "duration = 180"), "duration = 180", "duration", "is not a duration"),
    ("bad count", ('skipped = ">= 1"', 'skipped = "some"'), 'skipped = "some"', "expect.skipped", "is not a count"),
    ("bad email", ('emailaddress1 = "carl@fabrikam.example"', 'emailaddress1 = "carl"'), 'emailaddress1 = "carl"',
     "records[1].emailaddress1", "is not an email address"),
    ("missing key", ('kind = "contact"\n', ""), "[[records]]", "records[1].kind", "is required"),
    ("mail after the end", ('at = "10m"', 'at = "4h"'), 'at = "4h"', "mail[1].at", "after the end of the run"),
    ("unknown mailbox", ('to = "bob@contoso.example"', 'to = "rob@contoso.example"'), 'to = "rob@',
     "mail[1].to", "none of the recipients is a mailbox"),
    ("unknown fault code", ("[expect]", '[[faults]]\ncode = "ErrorTooSlow"\n\n[expect]'), 'code = "ErrorTooSlow"',
     "faults[1].code", "is not a known error code"),
    ("fault key", ("[expect]", '[[faults]]\ncode = "ErrorServerBusy"\nmailbx = "bob@contoso.example"\n\n[expect]'),
     "mailbx", "faults[1].mailbx", "did you mean 'mailbox'"),
    ("refused by the CRM", ("[[profiles]]", '[[queues]]\nname = "Support"\nemailaddress = "support@contoso.example"\n'
                            'owner = "nobody"\n\n[[profiles]]'), 'owner = "nobody"', "queues[1].owner",
     "no user 'nobody'"),
    ("a table instead of entries", ("seed = 1", 'seed = 1\nqueues = "support"'), 'queues = "support"', "queues",
     "write [[queues]] (double brackets)"),
]


@pytest.mark.parametrize("what,change,needle,key,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_line_naming_line_and_key_exit_2(tmp_path, what, change, needle, key, words):
    old, new = change
    assert old in SMALL
    text = SMALL.replace(old, new, 1)
    path = _write(tmp_path, text, "bad.toml")
    result = _sss("run", str(path))
    assert result.exit_code == 2, (what, result.output, result.stderr)
    assert result.stdout == ""  # nothing ran, nothing printed on stdout
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    line = _line_of(text, needle)
    prefix = f"Error: {path}:{line}: " + (f"{key}: " if key else "")
    assert err.startswith(prefix), (err, prefix)
    assert words in err, err
    with pytest.raises(ScenarioError) as refused:  # the same through the Python API
        run_scenario(load_scenario(path))
    assert (refused.value.line, refused.value.key) == (line, key)


def test_files_that_cannot_be_read(tmp_path):
    missing = _sss("run", str(tmp_path / "nowhere.toml"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr and missing.stdout == ""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00name = 1")
    result = _sss("run", str(binary))
    assert result.exit_code == 2 and "not UTF-8" in result.stderr
    unknown = _sss("run", "basic-flo")
    assert unknown.exit_code == 2 and "did you mean 'basic-flow'" in unknown.stderr


@pytest.mark.parametrize("args,words", [
    (["--mode", "fast"], "--mode: 'fast' is not a mode"),
    (["--seed", "-1"], "--seed: -1 is out of range"),
])
def test_bad_options_exit_2(args, words):
    result = _sss("run", "basic-flow", *args)
    assert result.exit_code == 2 and words in result.stderr and result.stdout == ""


def test_an_unwritable_junit_file_is_one_line(tmp_path):
    result = _sss("run", "basic-flow", "--junit-xml", str(tmp_path / "no" / "such" / "dir" / "x.xml"))
    assert result.exit_code == 2 and result.stderr.startswith("Error: --junit-xml:")


def test_a_syntax_error_names_the_line_and_column():
    with pytest.raises(ScenarioError) as refused:
        parse_scenario('name = "x"\nseed = 1\nduration = "2h\n', file="f.toml")
    assert refused.value.line == 3 and str(refused.value).startswith("f.toml:3: not valid TOML at column")


# ------------------------------------------------------------------------------ determinism
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_the_same_seed_gives_the_same_event_log(seed):
    scenario = parse_scenario(SMALL)
    first = run_scenario(scenario, seed=seed)
    second = run_scenario(parse_scenario(SMALL), seed=seed)
    assert first.events and first.events == second.events
    assert first.summary == second.summary
    assert [dataclasses.astuple(c) for c in first.checks] == [dataclasses.astuple(c) for c in second.checks]
    assert first.event_digest == second.event_digest


def test_wire_mode_gives_the_same_events_for_the_same_seed(tmp_path):
    scenario = load_scenario(SHIPPED["wire-mode"])
    first = run_scenario(scenario, state_dir=tmp_path)
    second = run_scenario(scenario, state_dir=tmp_path)
    assert first.summary == second.summary
    assert first.event_digest == second.event_digest  # the same events (concurrent work in any order)
    assert sorted(map(repr, first.events)) == sorted(map(repr, second.events))


def test_the_seed_changes_the_traffic():
    scenario = parse_scenario(SMALL)
    digests = {run_scenario(scenario, seed=s).event_digest for s in (1, 2, 3)}
    assert len(digests) == 3


# ------------------------------------------------------------------------------ the file format's details
def test_traffic_keys_are_those_of_the_traffic_mix():
    fields = {f.name for f in dataclasses.fields(TrafficMix)}
    assert set(TrafficEntry.model_fields) - {"mailboxes"} == fields


def test_times_may_be_dates_offsets_or_text():
    base = SMALL.replace('processemailsreceivedafter = "-1d"', "processemailsreceivedafter = {}")
    for written in ("2026-01-04", "2026-01-04T08:00:00Z", '"2026-01-04T08:00"', '"-1d"', '"-24h"'):
        scenario = parse_scenario(base.format(written))
        when = scenario.profiles[0].processemailsreceivedafter
        assert when.tzinfo is not None and when.isoformat().startswith("2026-01-04"), (written, when)


def test_a_fault_window_adds_and_removes_the_rule():
    text = SMALL.replace("[expect]", """[[faults]]
code = "8005E272"
mailbox = "alice@contoso.example"
active_from = "1h"
active_until = "90m"

[expect]""")
    # a permanent error inside the window disables alice's incoming mail for good
    result = run_scenario(parse_scenario(text))
    alice = next(m for m in result.summary["mailboxes"] if m["emailaddress"] == "alice@contoso.example")
    assert alice["incomingemailstatus"] == "Failure" and alice["lastsyncerrorcode"] == "8005E272"
    starts = [e for e in result.events if e[1] == "start" and e[2] == "alice@contoso.example"
              and e[3] == "INCOMING"]
    errors = [e for e in result.events if e[1] == "error" and e[2] == "alice@contoso.example"]
    assert errors and all("T09:" in e[0] for e in errors)  # the first cycle after 09:00 (the start is 08:00)
    assert starts[-1][0] < "2026-01-05T09:30"  # nothing started after it was disabled


def test_the_key_lines_of_a_toml_text():
    text = 'a = """\nx = 1\n"""\nb = [\n  1,\n  { c = 2, "d.e" = \'x\' },\n]\n[t]\nk.l = 1  # [x]\n' \
           '[[arr]]\np = 1\n[[arr]]\nq = "a # b"\n[arr.sub]\nr = 2\n'
    tomllib.loads(text)
    lines = _KeyLines(text).lines
    assert lines[("a",)] == 1 and ("x",) not in lines
    assert lines[("b", 1, "d.e")] == 6 and lines[("t", "k", "l")] == 9
    assert lines[("arr", 0, "p")] == 11 and lines[("arr", 1, "q")] == 13 and lines[("arr", 1, "sub", "r")] == 15
