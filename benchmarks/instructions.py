"""Instructions the simulation's run phase executes, for this checkout and for another commit, on the
same seeded organization: a comparison of two versions of the code that the machine's load does not move.

    python -m benchmarks.instructions --against main --mailboxes 2000 --hours 1 --emails-per-mailbox-day 100

On a shared machine, wall and CPU time move by tens of percent from one minute to the next, so a
change worth 3 % cannot be seen in them. The number of instructions a seeded run executes hardly
moves at all (the same code counted twice agrees within a few tenths of a percent), so two versions
run side by side under Valgrind's callgrind tell which does less work, whatever else the machine does.

Each side builds the organization of :mod:`benchmarks.simulation` (``--mailboxes`` users, seeded
inbound mail, ``--emails-per-mailbox-day``) on a new SQLite file, then runs ``Sandbox.run_for(--hours)``.
Only the run is counted: counting is switched on (``callgrind_control -i on``) right before it and off
right after. ``--against`` is a commit of this repository, taken with ``git archive`` into a temporary
directory; the two sides run at once, one per core, with the same ``PYTHONHASHSEED``.

Reported: instructions in the run, per poll and per tracked email, on each side, and the ratio of this
checkout to the other (below 1: this checkout does less). What instruction counts do not show: time in
the kernel (SQLite's writes to its WAL file), cache misses and waiting. A change to those is measured
with :mod:`benchmarks.simulation` (CPU time, ``--repeat``) when the machine is quiet.

Needs Valgrind (Debian's ``valgrind`` package, which has ``callgrind_control``) and git. Under Valgrind a
run is about 50 times slower: 2,000 mailboxes x 1 h take a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import CannotRun, Parser, measure_and_print

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


# What runs inside Valgrind, given as -c code so that the other commit needs no file of this benchmark:
# it builds the organization with that commit's benchmarks.simulation, counts only the run (callgrind
# counts nothing until switched on), and prints what the run did.
CHILD = """
import asyncio, gc, json, os, subprocess, sys, tempfile
from benchmarks.simulation import _run, build, schedule_traffic, sqlite_url
mailboxes, hours, per_day = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
with tempfile.TemporaryDirectory(prefix="sss-instr-") as folder:
    setup = build(mailboxes, 1, sqlite_url(os.path.join(folder, "run.db")))
    schedule_traffic(setup, hours, per_day, 1)
    sb = setup.sandbox
    gc.collect()
    gc.freeze()
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
    asyncio.run(_run(sb, hours))
    subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True, capture_output=True)
    print(json.dumps({"polls": sb.engine.stats.polls, "emails_tracked": sb.engine.stats.emails_tracked}))
"""


def _commit(rev: str) -> str:
    """The full hash of commit ``rev`` of this repository."""
    if shutil.which("git") is None:
        raise CannotRun("git is not installed; install it (Debian: apt-get install git)")
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise CannotRun(f"--against: {rev!r} is not a commit of this repository; give a branch, tag or hash")
    return found.stdout.strip()


def _checkout(commit: str, into: Path) -> None:
    """Extract ``commit`` of this repository into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def _start(tree: Path, log: Path, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--log-file={log}",
               "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
               str(args.mailboxes), str(args.hours), str(args.emails_per_mailbox_day)]
    return subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(name: str, proc: subprocess.Popen, log: Path) -> dict:
    out, err = proc.communicate()
    text = log.read_text(errors="replace") if log.exists() else ""
    counted = _COLLECTED.findall(text)
    if proc.returncode != 0 or not counted or not out.strip():
        last = (err.strip().splitlines() or text.strip().splitlines() or ["no output"])[-1]
        raise CannotRun(f"the run of {name} failed (exit {proc.returncode}): {last}")
    did = json.loads(out.strip().splitlines()[-1])
    instructions = int(counted[-1])
    return {
        "instructions": instructions,
        "polls": did["polls"],
        "emails_tracked": did["emails_tracked"],
        "instructions_per_poll": round(instructions / did["polls"]) if did["polls"] else None,
        "instructions_per_email": round(instructions / did["emails_tracked"]) if did["emails_tracked"] else None,
    }


def compare(args: argparse.Namespace) -> dict:
    commit = _commit(args.against)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise CannotRun(f"{tool} is not installed; install Valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="sss-instr-") as folder:
        other_tree = Path(folder) / "against"
        other_tree.mkdir()
        _checkout(commit, other_tree)
        for tree in (ROOT, other_tree):  # modules a run imports late are not compiled on the count
            subprocess.run([sys.executable, "-m", "compileall", "-q", "engine", "simulator", "benchmarks"],
                           cwd=tree, capture_output=True)
        logs = {"this": Path(folder) / "this.log", "against": Path(folder) / "against.log"}
        procs = {"this": _start(ROOT, logs["this"], args), "against": _start(other_tree, logs["against"], args)}
        try:
            sides = {name: _finish(name if name == "this" else args.against, procs[name], logs[name])
                     for name in ("this", "against")}
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
    this, other = sides["this"], sides["against"]
    return {
        "mailboxes": args.mailboxes, "hours": args.hours, "emails_per_mailbox_day": args.emails_per_mailbox_day,
        "against": args.against, "against_commit": commit,
        "this": this, "other": other,
        "ratio": round(this["instructions"] / other["instructions"], 4),
        "same_work": (this["polls"], this["emails_tracked"]) == (other["polls"], other["emails_tracked"]),
    }


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def number(value) -> str:
        return "-" if value is None else f"{value:,}"

    table = Table(title=f"Instructions of the run ({result['mailboxes']:,} mailboxes, {result['hours']:g} h, "
                        f"{result['emails_per_mailbox_day']:g} emails a mailbox and day)")
    table.add_column("measure")
    table.add_column("this checkout", justify="right")
    table.add_column(f"{result['against']} ({result['against_commit'][:10]})", justify="right")
    for key, label in (("instructions", "instructions"), ("polls", "polls"),
                       ("emails_tracked", "emails tracked"), ("instructions_per_poll", "per poll"),
                       ("instructions_per_email", "per tracked email")):
        table.add_row(label, number(result["this"][key]), number(result["other"][key]))
    Console().print(table)
    print(f"this / {result['against']}: {result['ratio']:.4f}"
          + ("" if result["same_work"] else " (the two did different work: compare per poll and per email)"))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit to compare with (branch, tag or hash)")
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--emails-per-mailbox-day", type=float, default=100.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.mailboxes <= 100_000:
        parser.error(f"--mailboxes: {args.mailboxes} is out of range; give 1 to 100,000 (Valgrind is slow)")
    if not 0 < args.hours <= 24:
        parser.error(f"--hours: {args.hours:g} is out of range; give more than 0 and at most 24")
    if not 0 <= args.emails_per_mailbox_day <= 10_000:
        parser.error(f"--emails-per-mailbox-day: {args.emails_per_mailbox_day:g} is out of range; give 0 to 10,000")
    return measure_and_print(parser.prog, lambda: compare(args), args.json, _table)


if __name__ == "__main__":
    sys.exit(main())
