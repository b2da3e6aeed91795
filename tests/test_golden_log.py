"""Golden event logs: seeded runs whose every event (poll, item tracked, send, error, test, ...) is
checked in, so that a change meant to make the engine faster, or to store its state differently,
is shown to leave its behaviour exactly as it was.

When a change is *meant* to alter behaviour, rewrite the logs and review their diff:

    SSS_WRITE_GOLDEN=1 pytest tests/test_golden_log.py

The logs are gzipped JSON lines in ``tests/golden/`` (one event per line, so a diff of the
unzipped files reads event by event).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_properties import DETERMINISM_SCENARIO, run_scenario

from simulator import bulk_org

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("SSS_WRITE_GOLDEN") == "1"


def _lines(events: list[Any]) -> list[str]:
    return [json.dumps(e, default=str, separators=(",", ":")) for e in events]


def _check(name: str, events: list[Any]) -> None:
    path = GOLDEN / f"{name}.jsonl.gz"
    got = _lines(events)
    if WRITE:
        GOLDEN.mkdir(exist_ok=True)
        with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same log gives the same bytes
            f.write(("\n".join(got) + "\n").encode())
    assert path.exists(), f"no golden log {path.name}: write it with SSS_WRITE_GOLDEN=1"
    want = gzip.decompress(path.read_bytes()).decode().splitlines()
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert g == w, f"event {i} differs from {path.name}:\n  now:    {g}\n  golden: {w}"
    assert len(got) == len(want), f"{len(got)} events now, {len(want)} in {path.name}"


def _bulk(mailboxes: int, hours: float, wake_every_s: float | None) -> list[Any]:
    """A bulk organization on two profiles (minimum polling intervals 5 and 2 minutes), seeded mail
    in and out, and a busy Exchange now and then."""
    org = bulk_org.build(mailboxes, seed=11, db_url="sqlite://", profiles=2, first_cycle_within_s=300,
                         record_events=True)
    sb = org.sandbox
    sb.admin.update_profile("admin", org.profiles[1], minpollingintervalinminutes=2)
    sb.add_fault(code="ErrorServerBusy", operation="*", probability=0.02)
    bulk_org.schedule_traffic(org, hours, per_mailbox_day=150, seed=11, shape="office")
    bulk_org.schedule_sends(org, hours, per_mailbox_day=40, seed=11)
    asyncio.run(sb.run_until(sb.clock.now() + timedelta(hours=hours), wake_every_s=wake_every_s))
    assert org.delivered_items > 0 and org.sends_queued > 0
    return sb.events


@pytest.mark.parametrize("wake_every_s", [None, 5.0], ids=["every-instant", "wake-every-5s"])
def test_a_seeded_bulk_organization_gives_the_golden_event_log(wake_every_s):
    events = _bulk(30, 3, wake_every_s)
    kinds = {e[1] for e in events}
    assert {"item", "error"} <= kinds  # the log covers tracking and the transient error path
    _check(f"bulk-30x3h-{'instant' if wake_every_s is None else 'wake5'}", events)


def test_the_determinism_scenario_gives_the_golden_event_log():
    events = run_scenario(DETERMINISM_SCENARIO).o.sb.events
    assert any(e[1] == "test" for e in events) and any(e[0] == "send" for e in events)
    _check("determinism-scenario", events)
