"""Profile-wide Test & Enable (SPEC 1.10) as an async job, against the same tests without the job.

    python -m benchmarks.jobs --json
    python -m benchmarks.jobs --mailboxes 2000 --repeat 3

What is measured: an organization of ``--mailboxes`` users on one Exchange Online profile (direct
mode: the fake Exchange in process), a few of them failing (``ErrorNonExistentMailbox``), the
others approved. ``job_mailboxes_per_s`` is the rate of the job: queue it, then run it, which
tests each mailbox in turn and writes the job's progress and per-mailbox results after each one
(``asyncoperation``). ``floor_mailboxes_per_s`` is the same tests of the same mailboxes in one call
of :meth:`Admin.test_and_enable` (no job row, no progress): the least the job can cost. ``ratio`` is
job / floor (1.0: the job's bookkeeping costs nothing). Runs alternate (ABBA per round) and the
median over ``--repeat`` (formerly ``--rounds``) is reported with the least; CPU time per mailbox is
reported too (steadier on a busy machine; ``cpu_ratio`` is floor / job). The floor is CPU-bound
(in-memory database, fake Exchange in process): when it gets under half a core
(``--starved-below``) the benchmark refuses to report (one line, exit status 3).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from benchmarks.report import (
    Parser,
    Timing,
    add_repeat,
    check_probe,
    check_repeat,
    check_share,
    environment,
    main_guard,
    print_json,
    spread,
)
from simulator.sandbox import Sandbox

ADMIN = "admin"
PROFILE = "Exchange Online"


def build(mailboxes: int, failing_every: int) -> tuple[Sandbox, list[str]]:
    sb = Sandbox(seed=7, record_events=False)
    admin = sb.admin
    admin.create_organization("Contoso", tenant_id="11111111-2222-3333-4444-555555555555")
    for i in range(mailboxes - 1):  # the administrator has a mailbox too
        address = f"user{i:05d}@contoso.example"
        admin.add_user(f"User {i}", address)
        if failing_every and i % failing_every == 0:
            sb.add_fault(code="ErrorNonExistentMailbox", mailbox=address)
    pid = admin.create_profile(ADMIN, name=PROFILE)
    admin.set_default_profile(ADMIN, pid)
    ids = [m.mailboxid for m in admin.mailboxes()]
    admin.apply_default_settings(ADMIN, ids)
    admin.approve(ADMIN, ids)
    return sb, ids


def _timed(coro_factory) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(coro_factory())
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    add_repeat(parser, default=3, aliases=("--rounds",), help_extra="; job and floor alternate")
    parser.add_argument("--failing-every", type=int, default=50, help="every Nth mailbox fails (0: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    if not 2 <= args.mailboxes <= 100_000:
        parser.error("--mailboxes: give a whole number from 2 to 100000")
    if not 0 <= args.failing_every <= 100_000:
        parser.error("--failing-every: give a whole number from 0 (none) to 100000")
    return main_guard(parser.prog, lambda: _main(args))


def _main(args) -> int:
    started = time.perf_counter()
    sb, ids = build(args.mailboxes, args.failing_every)
    admin = sb.admin

    async def job() -> None:
        jobid = admin.start_profile_test_and_enable(ADMIN, PROFILE)
        result = await admin.run_job(jobid)
        assert result["state"] == "succeeded" and result["result"]["done"] == len(ids)

    async def floor() -> None:
        results = await admin.test_and_enable(ADMIN, ids)
        assert len(results) == len(ids)

    jobs, floors = [], []
    for r in range(args.repeat):
        order = (job, floor) if r % 2 == 0 else (floor, job)
        for run in order:
            check_probe("the probe before a run")
            wall, cpu = _timed(run)
            if run is floor:
                check_share(Timing(wall, cpu), "the floor (Test & Enable without the job)")
            (jobs if run is job else floors).append((wall, cpu))
    sb.close()
    n = len(ids)
    job_wall = statistics.median(w for w, _ in jobs)
    floor_wall = statistics.median(w for w, _ in floors)
    job_cpu = statistics.median(c for _, c in jobs)
    floor_cpu = statistics.median(c for _, c in floors)
    result = {
        "benchmark": "jobs",
        "mailboxes": n,
        "failing": sum(1 for i in range(args.mailboxes - 1) if args.failing_every and i % args.failing_every == 0),
        "repeat": args.repeat,
        "job_mailboxes_per_s": round(n / job_wall, 1),
        "floor_mailboxes_per_s": round(n / floor_wall, 1),
        "ratio": round(floor_wall / job_wall, 3),
        "job_cpu_us_per_mailbox": round(job_cpu / n * 1e6, 1),
        "floor_cpu_us_per_mailbox": round(floor_cpu / n * 1e6, 1),
        "cpu_ratio": round(floor_cpu / job_cpu, 3),
        "job_wall_seconds": spread([w for w, _ in jobs]), "floor_wall_seconds": spread([w for w, _ in floors]),
        "job_cpu_seconds": spread([c for _, c in jobs]), "floor_cpu_seconds": spread([c for _, c in floors]),
        **environment(started),
    }
    if args.json:
        print_json(result)
        return 0
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
