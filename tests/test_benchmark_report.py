"""The benchmarks' shared reporting (benchmarks/report.py) and the ACT switch of the simulation
benchmark. Nothing here is timed: the measurements are given, not taken."""

from __future__ import annotations

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
