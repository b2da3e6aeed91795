"""When a test runs past a limit, write what every thread and every running event loop is doing.

A hang in the suite otherwise shows nothing until CI's own time limit kills the run. The dump
names each thread's stack (faulthandler) and, for each event loop running at that moment, its
tasks with their stacks and its pending timers (when each fires, in the loop's time, and its
callback), which is what tells a lost wake-up from a slow test. The test is not stopped: a slow
test ends as it would have, a hung one is then killed by CI with the dump already written."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
import weakref

_LOOPS: weakref.WeakSet = weakref.WeakSet()
_original_run_forever = asyncio.BaseEventLoop.run_forever


def _run_forever(self):
    _LOOPS.add(self)
    return _original_run_forever(self)


def install() -> None:
    """Note every event loop that runs (asyncio.run, a server's own loop thread, ...)."""
    asyncio.BaseEventLoop.run_forever = _run_forever


def limit_seconds() -> float:
    """``SSS_TEST_HANG_DUMP_S`` (seconds; 0 turns the dump off), 600 by default."""
    text = os.environ.get("SSS_TEST_HANG_DUMP_S", "600")
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"SSS_TEST_HANG_DUMP_S={text!r}: give a number of seconds (0: no dump)") from None
    return max(value, 0.0)


def dump(nodeid: str, seconds: float, out=None) -> None:
    out = out if out is not None else sys.stderr
    print(f"\n=== {nodeid} still running after {seconds:g} s: threads, then event loops ===", file=out)
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    for loop in list(_LOOPS):
        if not loop.is_running():
            continue
        print(f"--- event loop {loop!r}: time {loop.time():.3f}", file=out)
        for handle in sorted(getattr(loop, "_scheduled", []), key=lambda h: h.when())[:20]:
            print(f"  timer at {handle.when():.3f}: {handle}", file=out)
        for task in asyncio.all_tasks(loop):
            print(f"  task {task!r}", file=out)
            task.print_stack(limit=8, file=out)
    out.flush()


class Watchdog:
    """A timer started with each test, cancelled when it ends. ``capture``: pytest's capture
    manager, whose capture is suspended while the dump is written (a hung test's captured output
    is never shown)."""

    def __init__(self, nodeid: str, seconds: float, capture=None) -> None:
        self._timer = threading.Timer(seconds, self._dump, (nodeid, seconds, capture))
        self._timer.daemon = True

    @staticmethod
    def _dump(nodeid: str, seconds: float, capture) -> None:
        if capture is None:
            dump(nodeid, seconds)
            return
        with capture.global_and_fixture_disabled():
            dump(nodeid, seconds)

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._timer.cancel()
        return False
