"""`sss capacity`: the report it writes, its determinism, SPEC 3.2's floor seen in the latency, refusals."""

from __future__ import annotations

import base64
import json
import re
import warnings

import pytest
from typer.testing import CliRunner

from simulator import capacity
from simulator.capacity import HTML_NAME, JSON_NAME
from simulator.cli import app

SMALL = ["--mailboxes", "20", "--hours", "3", "--emails-per-mailbox-day", "40"]


def _run(args, out):
    result = CliRunner().invoke(app, ["capacity", *args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / JSON_NAME).read_text())


def _without_cost(doc):
    return {**doc, "runs": [{k: v for k, v in run.items() if k != "cost"} for run in doc["runs"]]}


def test_the_report_is_an_html_page_with_embedded_plots_and_a_json_file(tmp_path):
    out = tmp_path / "report"
    doc = _run([*SMALL, "--sends-per-mailbox-day", "4", "--fault", "ErrorServerBusy=0.05"], out)
    html = (out / HTML_NAME).read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert {alt for alt, _ in images} >= {"Delivery-to-activity latency per simulated hour",
                                         "Backlog of untracked mail (delivered, not yet an activity or skipped)",
                                         "EWS requests per minute per profile", "Outgoing queue (Pending Send)"}
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for _, data in images)
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained

    [run] = doc["runs"]
    s = run["summary"]
    lat = s["latency_seconds"]
    assert lat["count"] == s["emails_tracked"] > 0
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert s["emails_delivered"] == s["emails_tracked"] + s["emails_skipped"] + s["emails_undeliverable"] \
        + s["untracked_at_end"]
    assert s["errors_by_code"]["ErrorServerBusy"] > 0 and s["mailboxes_in_backoff_max"] >= 1
    assert s["sends_queued"] > 0 and s["emails_sent"] > 0
    assert s["connections_max_per_profile"] <= s["connections_cap_per_profile"] == 10
    minutes = run["per_minute"]
    assert len(minutes["backlog"]) == len(minutes["pending_send"]) == 180
    assert len(minutes["ews_requests_by_profile"]["Exchange Online"]) == 180
    assert sum(minutes["ews_requests_by_profile"]["Exchange Online"]) == s["ews_requests"]
    assert max(minutes["backlog"]) == s["backlog_max"] > 0
    hours = run["per_hour"]
    assert len(hours["latency_seconds"]["p95"]) == 3 and sum(hours["latency_seconds"]["count"]) == lat["count"]
    assert sum(hours["polls"]) == s["polls"] and sum(hours["tracked"]) == s["emails_tracked"]
    assert len(run["cost"]["cpu_seconds_per_simulated_hour"]) == 3


def test_the_same_seed_gives_the_same_json_apart_from_the_cost(tmp_path):
    args = [*SMALL, "--ews-latency-spread-ms", "100", "--fault", "ErrorServerBusy=0.02", "--seed", "7"]
    first = _run(args, tmp_path / "a")
    second = _run(args, tmp_path / "b")
    assert _without_cost(first) == _without_cost(second)
    other = _run([*args[:-1], "8"], tmp_path / "c")
    assert _without_cost(other)["runs"] != _without_cost(first)["runs"]


def test_a_higher_minimum_polling_interval_gives_a_higher_p50(tmp_path):
    """SPEC 3.2: the profile's minimum polling interval is a floor between two starts of a workload."""
    doc = _run([*SMALL, "--sweep", "minpollingintervalinminutes=0,30"], tmp_path / "sweep")
    assert doc["sweep"] == {"field": "minpollingintervalinminutes", "values": [0, 30]}
    at_0, at_30 = (run["summary"]["latency_seconds"]["p50"] for run in doc["runs"])
    assert at_30 > at_0
    assert doc["runs"][1]["summary"]["polls_per_hour"] < doc["runs"][0]["summary"]["polls_per_hour"]
    html = (tmp_path / "sweep" / HTML_NAME).read_text()
    assert "p95, minpollingintervalinminutes = 30" not in html  # legends are in the pictures, not the text
    assert html.count("minpollingintervalinminutes = ") >= 4  # summary and cost rows name each value


def _keep_figures(monkeypatch):
    """The report's figures by their y label, kept as they are turned into PNGs."""
    kept = {}
    png = capacity._png

    def keep(fig):
        uri = png(fig)
        kept[fig.axes[0].get_ylabel()] = fig
        return uri
    monkeypatch.setattr(capacity, "_png", keep)
    return kept


@pytest.fixture
def pictures(monkeypatch):
    return _keep_figures(monkeypatch)


@pytest.fixture(scope="module")
def four_intervals(tmp_path_factory):
    """A sweep of four minimum polling intervals over an hour, run once: its HTML and its figures."""
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as monkeypatch:
        figures = _keep_figures(monkeypatch)
        _run(["--mailboxes", "5", "--hours", "1", "--emails-per-mailbox-day", "100",
              "--sweep", "minpollingintervalinminutes=0,5,15,30"], out)
    return (out / HTML_NAME).read_text(), figures


def _legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def test_a_sweep_of_the_hours_plots_each_run_over_its_own_time(tmp_path, pictures):
    doc = _run(["--mailboxes", "5", "--emails-per-mailbox-day", "100", "--sweep", "hours=0.5,1"], tmp_path / "r")
    assert [len(run["per_minute"]["backlog"]) for run in doc["runs"]] == [30, 60]
    html = (tmp_path / "r" / HTML_NAME).read_text()
    assert html.count('src="data:image/png;base64,') >= 7
    [backlog] = pictures["untracked emails"].axes
    assert [max(line.get_xdata()) for line in backlog.get_lines()] == [0.5, 1.0]  # each ends where its run does


def test_the_legends_of_a_sweep_fit_in_their_pictures(four_intervals):
    _, pictures = four_intervals
    assert len(pictures) >= 7
    for ylabel, fig in pictures.items():
        renderer = fig.canvas.get_renderer()
        assert _legends(fig), ylabel
        for legend in _legends(fig):
            box = legend.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (ylabel, box, fig.bbox)
            assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, (ylabel, box, fig.bbox)


def test_a_sweep_report_states_the_swept_values_not_the_default(four_intervals):
    html, _ = four_intervals
    question = re.search(r"</h1>\s*<p>(.*?)</p>", html, re.S).group(1)
    assert "a minimum polling interval of 0, 5, 15 or 30 minutes (swept)" in question
    assert "5-minute" not in question and "of 5 minutes" not in question


def test_a_limit_the_runs_of_a_sweep_share_is_drawn_once(four_intervals):
    _, pictures = four_intervals
    texts = [t.get_text() for legend in _legends(pictures["requests per minute"]) for t in legend.get_texts()]
    assert len([t for t in texts if "connections carry" in t]) == 1, texts
    assert texts[:4] == ["0", "5", "15", "30"]


def test_plots_of_counts_start_at_zero(four_intervals):
    _, pictures = four_intervals
    for ylabel in ("untracked emails", "requests per minute", "connections", "mailboxes"):
        [ax] = pictures[ylabel].axes
        assert ax.get_ylim()[0] == 0, ylabel
    [health] = pictures["mailboxes"].axes  # no errors: all zero, and the axis still from 0 to 1
    assert health.get_ylim() == (0, 1)


def test_per_hour_points_sit_in_the_middle_of_their_hour(four_intervals):
    _, pictures = four_intervals
    for ylabel in ("minutes", "CPU seconds"):
        [ax] = pictures[ylabel].axes
        assert {tuple(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata())} == {(0.5,)}, ylabel
        assert "middle" in ax.get_xlabel()  # and the axis says so


def test_a_run_that_tracks_no_mail_gives_a_report_without_warnings(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = _run(["--mailboxes", "1", "--hours", "0.1", "--emails-per-mailbox-day", "0"], tmp_path / "tiny")
    assert doc["runs"][0]["summary"]["emails_tracked"] == 0
    assert [str(w.message) for w in caught] == []


def test_latency_is_simulated_time_shared_by_the_profile_connections(tmp_path):
    """One connection and 30 s a call: 20 mailboxes wait for each other, so mail waits longer."""
    doc = _run([*SMALL, "--max-connections", "1", "--sweep", "ews_latency_ms=0,30000"], tmp_path / "slow")
    fast, slow = (run["summary"] for run in doc["runs"])
    assert slow["latency_seconds"]["p50"] > fast["latency_seconds"]["p50"] + 60
    assert slow["connections_max_per_profile"] == 1
    assert slow["ews_requests_per_minute_max_per_profile"] <= 3  # 60 s / 30 s, plus one started at the edge


def test_a_config_file_gives_the_keys_and_flags_override_them(tmp_path):
    config = tmp_path / "org.toml"
    config.write_text('mailboxes = 12\nhours = 2\nminpollingintervalinminutes = 10\ndaily_shape = "flat"\n'
                      '[faults]\nErrorServerBusy = 0.01\n')
    doc = _run(["--config", str(config), "--min-polling-interval", "15"], tmp_path / "cfg")
    inputs = doc["inputs"]
    assert (inputs["mailboxes"], inputs["hours"], inputs["daily_shape"]) == (12, 2.0, "flat")
    assert inputs["minpollingintervalinminutes"] == 15
    assert inputs["faults"] == {"ErrorServerBusy": 0.01}


@pytest.mark.parametrize(("args", "expected"), [
    (["--mailboxes", "0"], "--mailboxes: '0' is out of range (from 1 to 100000)"),
    (["--min-polling-interval", "5000"], "--min-polling-interval: '5000' is out of range (from 0 to 1440)"),
    (["--max-connections", "0"], "--max-connections: '0' is out of range (from 1 to 300)"),
    (["--daily-shape", "weekly"], "--daily-shape: 'weekly' is not a daily shape: use office"),
    (["--ews-latency-ms", "100", "--ews-latency-spread-ms", "200"],
     "--ews-latency-spread-ms: 200 is more than the mean latency (100 ms)"),
    (["--fault", "ErrorNope=0.1"], "--fault: ErrorNope: 'ErrorNope' is not a known error code"),
    (["--fault", "ErrorServerBusy=2"], "--fault: ErrorServerBusy: 2.0 is not a number from 0 to 1"),
    (["--fault", "ErrorServerBusy"], "--fault: 'ErrorServerBusy' is not CODE=PROBABILITY"),
    (["--mailboxes", "10", "--profiles", "30"], "--profiles: 30 is more than the mailboxes (10)"),
    (["--hours", "0"], "--hours: '0' is out of range (from 0.1 to 336)"),
    (["--mailboxes", "many"], "--mailboxes: 'many' is not a whole number (from 1 to 100000)"),
    (["--ews-latency-ms", "1.5"], "--ews-latency-ms: '1.5' is not a whole number (from 0 to 60000)"),
    (["--sweep", "colour=1,2"], "--sweep: 'colour' is not a field that can be swept"),
    (["--sweep", "minpollingintervalinminutes=0"], "--sweep: 'minpollingintervalinminutes=0' names fewer than two"),
    (["--sweep", "min-polling-interval=0,abc"],  # the field as the user wrote it
     "--sweep: min-polling-interval: 'abc' is not a whole number (from 0 to 1440)"),
    (["--sweep", "min-polling-interval=5,5"], "--sweep: min-polling-interval: 5 is given twice"),
    (["--sweep", "minpollingintervalinminutes=0,9999"],
     "--sweep: minpollingintervalinminutes: '9999' is out of range (from 0 to 1440)"),
    (["--sweep", "mailboxes=10,5", "--profiles", "8"], "--sweep: mailboxes: with profiles as given, 8 is more"),
    (["--mailboxes", "100000", "--emails-per-mailbox-day", "1000"], "--emails-per-mailbox-day: 100000 mailboxes"),
])
def test_a_wrong_value_is_one_line_exit_2_and_nothing_written(tmp_path, args, expected):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["capacity", *args, "--output", str(out)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("Error: " + expected), err
    assert "\n" not in err and "Traceback" not in result.output
    assert not out.exists()


def test_a_wrong_key_in_the_config_file_names_the_file_and_line(tmp_path):
    config = tmp_path / "org.toml"
    config.write_text("mailboxes = 12\n\nmax_connections = 3\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["capacity", "--config", str(config), "--output", str(out)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith(f"Error: {config}:3: max_connections: is not a key of a capacity file"), err
    assert "\n" not in err and not out.exists()

    config.write_text('mailboxes = "many"\n')
    result = CliRunner().invoke(app, ["capacity", "--config", str(config), "--output", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: {config}:1: mailboxes: 'many' is not a whole number")
    assert not out.exists()


def test_an_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    result = CliRunner().invoke(app, ["capacity", *SMALL, "--output", str(target)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: --output: {target} is a file; give a folder")
    assert target.read_text() == "mine"


def test_an_output_that_cannot_be_written_is_refused_before_the_runs(tmp_path, monkeypatch):
    import simulator.capacity

    def no_runs(*_args, **_kwargs):
        raise AssertionError("the runs started")

    monkeypatch.setattr(simulator.capacity, "run_request", no_runs)
    # a folder whose mode says writable to root but which refuses files: /proc is such a place;
    # an ordinary user is refused by the access check before the real try
    result = CliRunner().invoke(app, ["capacity", *SMALL, "--output", "/proc/sss-capacity-report"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("Error: --output: /proc/sss-capacity-report cannot be written")

    result = CliRunner().invoke(app, ["capacity", *SMALL, "--output", ""])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("Error: --output: '' is not a folder name")


def test_the_write_check_of_the_output_leaves_nothing_behind(tmp_path):
    from simulator.capacity import _cannot_write_into

    folder = tmp_path / "a" / "b"
    assert _cannot_write_into(folder) is None
    assert list(tmp_path.iterdir()) == []  # the folders it made to try are gone
    (tmp_path / "file").write_text("x")
    assert _cannot_write_into(tmp_path / "file" / "inside")  # a file in the way: a reason, not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("args, says", [
    (["--sweep", "hours=1,2", "--sweep", "mailboxes=10,20"], "--sweep: given 2 times;"),
    (["--fault", "ErrorServerBusy=0.1", "--fault", "ErrorServerBusy=0.2"], "--fault: ErrorServerBusy is given twice;"),
])
def test_an_option_given_twice_where_once_is_meant_is_refused(tmp_path, args, says):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["capacity", *SMALL, "--output", str(out), *args])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"Error: {says}"), result.stderr
    assert not out.exists()
