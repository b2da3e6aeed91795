"""The dump written when a test runs past the hang limit (tests/hang_dump.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import hang_dump
import pytest


def test_the_dump_names_the_waiting_task_and_the_loops_timers():
    written: list[str] = []

    async def waits_forever(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(3600, lambda: None)  # a far timer, as a keep-alive would set
        event = asyncio.Event()
        task = asyncio.ensure_future(waits_forever(event))
        await asyncio.sleep(0)

        def from_another_thread() -> None:
            with tempfile.TemporaryFile("w+") as out:  # faulthandler needs a real file
                hang_dump.dump("tests/x.py::test_y", 1.5, out)
                out.seek(0)
                written.append(out.read())

        thread = threading.Thread(target=from_another_thread)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        event.set()
        await task

    asyncio.run(main())
    text = written[0]
    assert "tests/x.py::test_y still running after 1.5 s" in text
    assert "from_another_thread" in text  # the threads' stacks
    assert "waits_forever" in text  # the task that waits, with its stack
    assert "timer at" in text and "<lambda>" in text


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist-workers"])
def test_a_test_past_the_limit_gets_the_dump_and_still_passes(tmp_path: Path, workers: list[str]):
    """Also when the suite runs in pytest-xdist's workers, as ``pytest`` does by default here: the
    dump is written past the capture, to the terminal the suite was started from."""
    tests = Path(__file__).parent
    (tmp_path / "conftest.py").write_text((tests / "conftest.py").read_text())
    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import asyncio

        def test_slow():
            asyncio.run(asyncio.sleep(1.0))
    """))
    env = {"SSS_TEST_HANG_DUMP_S": "0.3", "PYTHONPATH": str(tests), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_slow.py::test_slow still running after 0.3 s" in done.stdout + done.stderr
    assert "event loop" in done.stdout + done.stderr


def test_a_bad_limit_is_one_line_naming_the_variable(tmp_path: Path):
    tests = Path(__file__).parent
    (tmp_path / "conftest.py").write_text((tests / "conftest.py").read_text())
    (tmp_path / "test_any.py").write_text("def test_any():\n    pass\n")
    env = {"SSS_TEST_HANG_DUMP_S": "ten", "PYTHONPATH": str(tests), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode != 0
    assert "SSS_TEST_HANG_DUMP_S='ten': give a number of seconds" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
