"""What every benchmark reports the same way: wall and CPU time, repeats, the machine's state, the
refusal to report figures from a starved process, one-line errors, and the JSON output.

- :func:`timed` measures a block's wall time (``perf_counter``) and CPU time of this process
  (``process_time``: all its threads, user and system).
- ``--repeat N`` (:func:`add_repeat`): a benchmark measures N times and reports, for each time it
  measures, the least and the median (:func:`spread`); rates are given from the median run, and the
  best rate from the least time.
- A process that gets much less than a core while it measures was starved by other work on the
  machine, and its figures say nothing about the code. :func:`check_share` looks at a CPU-bound floor
  (or :func:`probe`, a fixed loop of pure Python) and raises :class:`Starved` when its CPU time is
  below :data:`STARVED_BELOW` of its wall time; :func:`main_guard` turns that into one line on stderr
  and exit status 3, with nothing printed on stdout; :class:`CannotRun` (a server, a tool or a commit
  the benchmark needs is missing) becomes one line and exit status 2.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

STARVED_BELOW = 0.5  # a CPU-bound loop given less than half a core was starved
STARVED_EXIT = 3
MAX_REPEAT = 100


class Starved(Exception):
    """The process got too little CPU while it measured: its figures would be the machine's load."""


class CannotRun(Exception):
    """Something the benchmark needs is not there (a server, a tool, a commit): one line, exit status 2."""


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0

    @property
    def share(self) -> float:
        """CPU seconds per wall second (1.0: a whole core the whole time)."""
        return self.cpu / self.wall if self.wall > 0 else 1.0


@contextmanager
def timed() -> Iterator[Timing]:
    t = Timing()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield t
    finally:
        t.wall, t.cpu = time.perf_counter() - w0, time.process_time() - c0


_limit = {"below": STARVED_BELOW}


def check_share(t: Timing, what: str, below: float | None = None) -> float | None:
    """Raise :class:`Starved` when ``t`` (a CPU-bound, single-threaded measurement) got less than
    ``below`` of a core (default: ``--starved-below``); return its share, None for a measurement
    under 20 ms (too short to judge)."""
    below = _limit["below"] if below is None else below
    if t.wall < 0.02:
        return None
    if t.share < below:
        raise Starved(f"{what} got {t.share:.0%} of a core ({t.cpu:.2f} s CPU in {t.wall:.2f} s wall, "
                      f"less than {below:.0%})")
    return t.share


def probe(work: int = 1_000_000) -> Timing:
    """A fixed CPU-bound loop (heap pushes and pops, ~0.25 s on an idle core)."""
    heap: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    with timed() as t:
        for i in range(work):
            push(heap, (i * 7919) % 10007)
            if len(heap) > 64:
                pop(heap)
    return t


def check_probe(what: str = "a fixed CPU-bound loop") -> float:
    """:func:`probe` and :func:`check_share` it; the share got."""
    return check_share(probe(), what) or 1.0


def least(values) -> float | None:
    """The least of the values that are not None (None when there is none)."""
    known = [v for v in values if v is not None]
    return min(known) if known else None


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """The least and the median of a measurement's repeats."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits)}


def median_index(values: Sequence[float]) -> int:
    """The index of the repeat whose value is the (lower) median: its other figures go with it."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the flag and what to do), exit status 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_repeat(parser: argparse.ArgumentParser, default: int = 1, help_extra: str = "",
               aliases: tuple[str, ...] = ()) -> None:
    """``--repeat N`` (``aliases``: the older name a benchmark had for it) and ``--starved-below F``
    (the share of a core under which a measurement is refused)."""
    parser.add_argument("--repeat", *aliases, dest="repeat", type=int, default=default, metavar="N",
                        help=f"measure N times; report the least and the median (default {default}){help_extra}")
    parser.add_argument("--starved-below", type=float, default=STARVED_BELOW, metavar="F",
                        help=f"refuse to report when a CPU-bound floor or probe got less than this share of a "
                             f"core (default {STARVED_BELOW}; 0: never refuse)")


def check_repeat(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check ``--repeat`` and ``--starved-below`` (one line naming the flag) and apply the latter."""
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat: {args.repeat} is out of range; give a whole number from 1 to {MAX_REPEAT}")
    if not 0 <= args.starved_below <= 1:
        parser.error(f"--starved-below: {args.starved_below} is out of range; give a share of a core from 0 to 1")
    _limit["below"] = args.starved_below


def main_guard(prog: str, body: Callable[[], int]) -> int:
    """Run a benchmark's main; a starved measurement becomes one line and exit status 3, something
    missing (:class:`CannotRun`) one line and exit status 2."""
    try:
        return body()
    except CannotRun as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except Starved as exc:
        print(f"{prog}: the machine is too loaded to measure: {exc}; nothing reported, run it again "
              f"when the machine is quieter (or lower --starved-below)", file=sys.stderr)
        return STARVED_EXIT


def measure_and_print(prog: str, measure: Callable[[], dict], as_json: bool, table: Callable[[dict], None]) -> int:
    """A benchmark's last step: measure, then print the figures as JSON or as a table (under
    :func:`main_guard`: a starved or impossible measurement is one line instead)."""
    def body() -> int:
        result = measure()
        print_json(result) if as_json else table(result)
        return 0

    return main_guard(prog, body)


def environment(started: float) -> dict:
    """How busy the machine was, which Python, the wall time since ``started`` (perf_counter) and
    the CPU time of this process so far."""
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time(), 2),
    }


def print_json(result: dict) -> None:
    json.dump(result, sys.stdout, indent=2)
    print()
