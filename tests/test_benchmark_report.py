"""The benchmarks' shared reporting (benchmarks/report.py) and the ACT switch of the simulation
benchmark. Nothing here is timed: the measurements are given, not taken."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from benchmarks import report, simulation


def test_a_floor_given_under_the_limit_of_a_core_is_refused_and_says_how_much_it_got():
    with pytest.raises(report.Starved, match="the floor got 30% of a core"):
        report.check_share(report.Timing(wall=1.0, cpu=0.3), "the floor", below=0.5)
    assert report.check_share(report.Timing(wall=1.0, cpu=0.9), "the floor", below=0.5) == pytest.approx(0.9)
    assert report.check_share(report.Timing(wall=0.01, cpu=0.0), "the floor", below=0.5) is None  # too short


def test_a_starved_benchmark_prints_one_line_and_exits_3(capsys):
    def body() -> int:
        raise report.Starved("the floor got 10% of a core")

    assert report.main_guard("python -m benchmarks.x", body) == report.STARVED_EXIT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "too loaded to measure" in err and "10% of a core" in err


def test_a_benchmark_missing_what_it_needs_prints_one_line_and_exits_2(capsys):
    def body() -> int:
        raise report.CannotRun("valgrind is not installed; install Valgrind")

    assert report.main_guard("python -m benchmarks.x", body) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "python -m benchmarks.x: valgrind is not installed; install Valgrind\n"


def test_repeats_report_the_least_and_the_median():
    assert report.spread([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5}
    assert report.median_index([5.0, 1.0, 3.0]) == 2
    assert report.least([None, 0.7, 0.4]) == 0.4 and report.least([None]) is None


@pytest.mark.parametrize("argv, flag", [
    (["--repeat", "0"], "--repeat"),
    (["--starved-below", "2"], "--starved-below"),
    (["--act-per-user-day", "-1"], "--act-per-user-day"),
    (["--mailboxes", "many"], "--mailboxes"),
    (["--act", "--db", "x.db"], "--db"),
])
def test_a_wrong_flag_of_the_simulation_benchmark_is_one_line_naming_it(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        simulation.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err


def test_act_switched_on_in_bulk_runs_act_cycles_and_syncs_the_seeded_changes(tmp_path):
    from simulator.bulk_org import build
    from simulator.crm.db import sqlite_url

    org = build(20, 3, sqlite_url(tmp_path / "act.db"))
    plan = simulation.enable_act(org, 6.0, 12.0, 3)
    asyncio.run(org.sandbox.run_for(6 * 3600))
    stats = org.sandbox.engine.stats
    org.sandbox.close()
    made = sum(n for k, n in plan.counts.items() if k.startswith("act_"))
    assert made > 0 and stats.polls_by_workload["ACT"] > 0
    assert stats.act_to_exchange + stats.act_to_crm > 0 and stats.act_failed == 0
    assert not stats.errors


def test_the_mailbox_row_floor_releases_what_a_quiet_cycle_writes_and_leaves_the_run_alone(tmp_path):
    """The row floor's release is the engine's: the columns it writes are those a quiet cycle of the
    engine writes, in the same order; it leases and releases every lease asked for, on a copy."""
    import sqlite3

    from simulator.bulk_org import build
    from simulator.crm.db import sqlite_url

    path = tmp_path / "quiet.db"
    org = build(20, 3, sqlite_url(path))
    sb = org.sandbox
    shapes = []
    release = sb.crm.release

    def watched(hostid, updates):
        shapes.extend(tuple(u.values) for u in updates)
        return release(hostid, updates)

    sb.crm.release = watched
    asyncio.run(sb.run_for(3600))
    cycles = sb.engine.stats.cycles
    sb.close()
    # the first cycle of a mailbox finds its folders new; those after it are quiet
    assert shapes.count(simulation.QUIET_CYCLE) >= cycles - 2 * 20 > 0

    def table():
        with sqlite3.connect(path) as con:
            return con.execute("SELECT * FROM mailbox ORDER BY mailboxid").fetchall()

    before = table()
    leases = 3 * 20 + 7  # more than one round of the table: mailboxes come due again
    # it raises if a release frees fewer mailboxes than its lease took
    t = simulation.db_row_floor_loop(leases, str(path), str(tmp_path), batch=8)
    assert t.cpu > 0
    assert table() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("rowfloor")] == []


def test_the_peak_rss_reported_is_the_runs_read_before_the_floors_run(monkeypatch):
    """The mailbox-row floor copies the mailbox table with a page cache of its own: the memory a
    run reports must not include it."""
    calls = []

    def floor(*args, **kwargs):
        calls.append("floor")
        return report.Timing(wall=1.0, cpu=1.0)

    monkeypatch.setattr(simulation, "db_floor_loop", floor)
    monkeypatch.setattr(simulation, "db_row_floor_loop", floor)
    monkeypatch.setattr(simulation, "peak_rss_mb", lambda: calls.append("rss") or 123.0)
    result = simulation.run(20, 0.1, 1, 10.0, None)
    assert calls == ["rss", "floor", "floor"] and result["peak_rss_mb"] == 123.0


# -- the instruction count comparison (benchmarks/instructions.py) ------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--against", "no-such-commit-here"], "--against"),
    (["--against", "HEAD", "--mailboxes", "0"], "--mailboxes"),
    (["--against", "HEAD", "--hours", "100"], "--hours"),
    (["--mailboxes", "10"], "--against"),
])
def test_a_wrong_flag_of_the_instructions_benchmark_is_one_line_naming_it(argv, flag, capsys):
    from benchmarks import instructions

    try:
        code = instructions.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and flag in err and "Traceback" not in err


def test_the_same_code_counted_twice_gives_the_same_instructions():
    """What makes the comparison worth having: this checkout against its own commit (the same code,
    in another directory, run at the same time) agrees within a fraction of a percent, polls and
    tracked emails included."""
    import os
    import shutil
    import subprocess

    from benchmarks import instructions

    if shutil.which("valgrind") is None and not os.environ.get("SSS_REQUIRE_VALGRIND"):
        pytest.skip("Valgrind is not installed (Debian: apt-get install valgrind); CI installs it")
    dirty = subprocess.run(["git", "-C", str(instructions.ROOT), "status", "--porcelain", "--untracked-files=no",
                            "engine", "simulator", "benchmarks/simulation.py"], capture_output=True, text=True)
    if dirty.stdout.strip():
        pytest.skip("the engine or simulator has uncommitted changes: HEAD is not the code of this checkout")
    result = instructions.compare(argparse.Namespace(against="HEAD", mailboxes=10, hours=0.25,
                                                     emails_per_mailbox_day=100.0))
    assert result["same_work"] and result["this"]["polls"] > 0 and result["this"]["emails_tracked"] > 0
    assert result["ratio"] == pytest.approx(1.0, abs=0.005)
    assert result["this"]["instructions_per_poll"] > 10_000  # (a poll is Python: far more than a few instructions)
