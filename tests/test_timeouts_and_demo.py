"""The per-call Exchange timeout on the real clock, and the `sss demo` command."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from engine.errors import ExchangeError
from engine.timeouts import TimedExchange, bounded_port
from simulator.cli import app


class SlowPort:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def find_new_items(self, mailbox, folder, after, max_items):
        await asyncio.sleep(self.delay)
        return []


def test_a_call_slower_than_the_profile_timeout_is_a_transient_timeout_error():
    port = TimedExchange(SlowPort(0.5), seconds=0.02)
    with pytest.raises(ExchangeError) as info:
        asyncio.run(port.find_new_items("a@x.example", "inbox", None, 10))
    assert info.value.code == "ErrorTimeoutExpired"
    assert info.value.transient


def test_a_call_within_the_timeout_returns_its_result():
    port = TimedExchange(SlowPort(0.0), seconds=1.0)
    assert asyncio.run(port.find_new_items("a@x.example", "inbox", None, 10)) == []


def test_timeouts_apply_only_on_the_real_clock_and_when_the_profile_enables_them():
    inner = SlowPort(0)
    assert bounded_port(inner, real_clock=False, enabled=True, amount_ms=1000) is inner
    assert bounded_port(inner, real_clock=True, enabled=False, amount_ms=1000) is inner
    assert isinstance(bounded_port(inner, real_clock=True, enabled=True, amount_ms=1000), TimedExchange)


def _demo_json(tmp_path, seed: int) -> dict:
    result = CliRunner().invoke(app, ["demo", "--json", "--hours", "4", "--seed", str(seed),
                                      "--db", str(tmp_path / "demo.db")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_demo_json_has_the_documented_keys_and_is_repeatable(tmp_path):
    first = _demo_json(tmp_path, 5)
    for key in ("mailboxes", "emails_tracked", "emails_skipped", "emails_undeliverable", "emails_sent",
                "alerts", "simulated_seconds", "wall_seconds", "seed"):
        assert key in first
    assert first["seed"] == 5 and first["simulated_seconds"] == 4 * 3600
    assert set(first["alerts"]) == {"information", "warning", "error"}
    assert first["emails_tracked"] > 0
    # the mailbox with the permanent fault ends disabled with the 401 code
    broken = [a for a, what in first["faults"].items() if "permanent" in what][0]
    row = next(m for m in first["mailboxes"] if m["emailaddress"] == broken)
    assert row["incoming"] == "Failure" and row["lastsyncerrorcode"] == "8005E272"
    second = _demo_json(tmp_path, 5)  # the database is replaced: same seed, same summary
    first.pop("wall_seconds")
    second.pop("wall_seconds")
    assert first == second
    other = _demo_json(tmp_path, 6)
    other.pop("wall_seconds")
    assert other != first
