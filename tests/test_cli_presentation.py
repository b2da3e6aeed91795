"""What a new user reads: option labels in --help, and the `sss demo` summary on an 80-column terminal."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from engine.errors import KNOWN_ERRORS
from simulator.cli import app
from simulator.demo import Demo, print_summary

# Typer's own labels: the Python annotation in angle brackets ("<name>" in a help text is not one)
TYPER_LABEL = re.compile(r"<(bool|str|int|float|path|file|dir|datetime|list\[|[a-z]+ range)[^>]*>")
WIDE = {"COLUMNS": "200"}  # one option a line


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def _option_line(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", line))


def test_flags_take_no_metavar_in_help():
    text = _help("settings", "set")
    for flag in ("--correlation", "--smart-matching", "--help"):
        line = _option_line(text, flag)
        # the flag, its --no- twin, then the help text straight away: no type word between
        assert re.search(rf"{flag}(\s+--no-\S+)?\s+[A-Z][a-z]", line), line
        assert "<bool>" not in line and "BOOLEAN" not in line, line
    assert "<bool>" not in text and "<str>" not in text


def test_options_with_values_show_a_word_or_their_own_metavar():
    demo = _help("demo")
    assert re.search(r"--seed\s+INTEGER\s", _option_line(demo, "--seed"))
    assert re.search(r"--hours\s+FLOAT \[0\.1<=x<=720\]", _option_line(demo, "--hours"))
    assert re.search(r"--db\s+PATH\s", _option_line(demo, "--db"))
    assert re.search(r"--json\s+Print", _option_line(demo, "--json"))
    settings = _help("settings", "set")
    assert re.search(r"--as\s+USER\s", _option_line(settings, "--as"))  # the option's own metavar
    assert re.search(r"--db\s+URL\s", _option_line(settings, "--db"))
    assert re.search(r"--incoming\s+TEXT\s", _option_line(settings, "--incoming"))


def test_no_command_of_the_tree_shows_typer_type_labels():
    """The root and every sub-typer (setup, walkthrough, ...), the --help option of each included."""
    root = typer.main.get_command(app)
    seen = 0

    def walk(command, path: list[str]) -> None:
        nonlocal seen
        text = _help(*path)
        seen += 1
        found = TYPER_LABEL.findall(text)
        assert not found, f"sss {' '.join(path)} --help shows {found}"
        assert re.search(r"--help\s+Show this message", text), text
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(root, [])
    assert seen > 30


# -- sss demo at 80 columns ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    async def go() -> dict:
        d = Demo(seed=1, db_path=tmp_path_factory.mktemp("demo") / "demo.db", hours=4)
        await d.setup()
        await d.run()
        s = d.summary(0.0)
        d.sb.close()
        return s

    return asyncio.run(go())


def _render(s: dict, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    print_summary(console, s)
    return console.file.getvalue()


def _shown_codes(s: dict) -> list[str]:
    codes = [m["lastsyncerrorcode"] for m in s["mailboxes"] if m["lastsyncerrorcode"]]
    return list(dict.fromkeys([*codes, *s["skipped_reasons"], *s["undeliverable_reasons"]]))


def _assert_readable_at_80(text: str, s: dict) -> None:
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), max(lines, key=len)
    # every status and code whole on one line: as many whole words as the summary has values
    statuses = [m[k] for m in s["mailboxes"] for k in ("incoming", "outgoing", "act", "mailbox")]
    for status in set(statuses):
        assert sum(line.count(status) for line in lines) >= statuses.count(status), status
    codes = _shown_codes(s)
    assert "8005E272" in codes and "NoCorrelationMatch" in codes
    for code in codes:
        assert re.search(rf"(?<![\w]){code}(?![\w])", text), code
    for fragment in ("Succe\n", "8005E\n", "Failu\n"):
        assert fragment not in text.replace(" ", "").replace("│", "")
    # each code shown is explained in words, on a line that starts with the code
    meanings = {line.split()[0]: line.split(None, 1)[1] for line in lines
                if line.startswith("  ") and len(line.split()) > 1 and line.split()[0] in s["codes"]}
    for code in codes:
        assert code in meanings, f"{code} is not explained:\n{text}"
        expected = KNOWN_ERRORS[code].summary if code in KNOWN_ERRORS else s["codes"][code]
        assert meanings[code].startswith(" ".join(expected.split()[:4])), (code, meanings[code])
    assert "Exchange answered 401 Unauthorized" in meanings["8005E272"]
    # the mail from before the profile's "process email from" date
    old = s["traffic"]["old"]
    assert old > 0 and s["emails_before_process_from"] == old
    untracked = [line for line in lines if "process email from" in line]
    assert len(untracked) == 1 and f"{old} messages received before" in untracked[0], untracked


def test_the_demo_summary_reads_at_80_columns(summary):
    assert set(summary["codes"]) >= set(_shown_codes(summary)) | {"ErrorServerBusy"}
    _assert_readable_at_80(_render(summary), summary)


def test_the_demo_summary_check_catches_a_split_code(summary):
    """The checks above fail on a summary that does not fit (40 columns splits the statuses)."""
    with pytest.raises(AssertionError):
        _assert_readable_at_80(_render(summary, width=40), summary)


def test_sss_demo_at_80_columns(tmp_path):
    """`COLUMNS=80 sss demo`: needs the demo command of simulator/cli.py to print with
    simulator.demo.print_summary (instead of its own _print_summary)."""
    result = CliRunner().invoke(app, ["demo", "--hours", "4", "--db", str(tmp_path / "demo.db")],
                                env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "Codes:" in result.stdout and "Untracked:" in result.stdout, (
        "sss demo does not print with simulator.demo.print_summary:\n" + result.stdout)
    assert "8005E\n" not in result.stdout.replace(" ", "").replace("│", "")
