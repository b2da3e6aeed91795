"""VirtualClock (advance, sleep_until, busy / participant) and RealClock under freezegun."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from freezegun import freeze_time

from engine.clock import Clock, RealClock, VirtualClock, as_utc

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


# -- as_utc -----------------------------------------------------------------------------------
def test_as_utc_takes_naive_values_as_utc():
    assert as_utc(datetime(2026, 1, 5, 8, 0)) == T0
    assert as_utc(datetime(2026, 1, 5, 8, 0)).tzinfo is UTC


def test_as_utc_converts_other_zones():
    value = datetime(2026, 1, 5, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    converted = as_utc(value)
    assert converted == T0
    assert converted.utcoffset() == timedelta(0)
    assert converted.hour == 8


# -- RealClock with freezegun ----------------------------------------------------------------
def test_real_clock_follows_frozen_time_and_is_aware_utc():
    with freeze_time("2030-02-03 04:05:06"):
        now = RealClock().now()
        assert now == datetime(2030, 2, 3, 4, 5, 6, tzinfo=UTC)
        assert now.tzinfo is not None
        assert now.utcoffset() == timedelta(0)


def test_real_clock_converts_a_frozen_time_given_in_another_zone_to_utc():
    with freeze_time(datetime(2030, 2, 3, 6, 5, 6, tzinfo=timezone(timedelta(hours=2)))):
        now = RealClock().now()
        assert now == datetime(2030, 2, 3, 4, 5, 6, tzinfo=UTC)
        assert now.hour == 4
        assert now.utcoffset() == timedelta(0)


def test_real_clock_moves_with_the_frozen_clock():
    with freeze_time("2030-02-03 04:05:06") as frozen:
        clock = RealClock()
        first = clock.now()
        frozen.tick(timedelta(minutes=7))
        assert clock.now() - first == timedelta(minutes=7)


def test_real_clock_sleep_until_a_past_time_returns():
    with freeze_time("2030-02-03 04:05:06"):
        clock = RealClock()
        asyncio.run(clock.sleep_until(clock.now() - timedelta(hours=1)))
        assert clock.now() == datetime(2030, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_both_clocks_satisfy_the_protocol():
    assert isinstance(RealClock(), Clock)
    assert isinstance(VirtualClock(), Clock)
    assert RealClock().is_virtual is False
    assert VirtualClock().is_virtual is True


# -- VirtualClock -----------------------------------------------------------------------------
def test_virtual_clock_starts_where_told_and_only_moves_when_told():
    clock = VirtualClock(datetime(2026, 3, 1, 12, 0))
    assert clock.now() == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert clock.now() == clock.now()
    clock.advance(90)
    assert clock.now() == datetime(2026, 3, 1, 12, 1, 30, tzinfo=UTC)


def test_virtual_clock_never_goes_backwards():
    clock = VirtualClock(T0)
    clock.advance_to(T0 + timedelta(hours=1))
    clock.advance_to(T0)
    assert clock.now() == T0 + timedelta(hours=1)
    clock.advance(-30)
    assert clock.now() == T0 + timedelta(hours=1)


def test_sleep_until_a_past_or_present_time_returns_at_once():
    clock = VirtualClock(T0)

    async def main():
        await clock.sleep_until(T0)
        await clock.sleep_until(T0 - timedelta(days=1))

    asyncio.run(main())
    assert clock.now() == T0
    assert clock.sleepers == 0


def test_sleep_until_jumps_when_nothing_else_is_in_flight():
    clock = VirtualClock(T0)
    woke: list[datetime] = []

    async def main():
        await clock.sleep_until(T0 + timedelta(hours=3))
        woke.append(clock.now())

    asyncio.run(main())
    assert woke == [T0 + timedelta(hours=3)]


def test_sleepers_wake_in_time_order():
    clock = VirtualClock(T0)
    order: list[tuple[str, datetime]] = []

    async def sleeper(name: str, minutes: int):
        await clock.sleep_until(T0 + timedelta(minutes=minutes))
        order.append((name, clock.now()))

    async def main():
        await asyncio.gather(sleeper("late", 30), sleeper("early", 10), sleeper("middle", 20))

    asyncio.run(main())
    assert order == [("early", T0 + timedelta(minutes=10)), ("middle", T0 + timedelta(minutes=20)),
                     ("late", T0 + timedelta(minutes=30))]


def test_advance_releases_due_sleepers_only():
    clock = VirtualClock(T0)
    woke: list[str] = []

    async def sleeper(name: str, minutes: int):
        await clock.sleep_until(T0 + timedelta(minutes=minutes))
        woke.append(name)

    async def main():
        with clock.busy():  # hold automatic jumps: only explicit advances move time
            tasks = [asyncio.create_task(sleeper("a", 5)), asyncio.create_task(sleeper("b", 15))]
            await asyncio.sleep(0)
            clock.advance(600)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert woke == ["a"]
            assert clock.sleepers == 1
            assert clock.now() == T0 + timedelta(minutes=10)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert woke == ["a", "b"]
    assert clock.now() == T0 + timedelta(minutes=15)


def test_busy_holds_the_clock_until_the_work_ends():
    clock = VirtualClock(T0)
    seen: list[datetime] = []

    async def sleeper():
        await clock.sleep_until(T0 + timedelta(hours=1))
        seen.append(clock.now())

    async def main():
        task = asyncio.create_task(sleeper())
        with clock.busy():
            for _ in range(20):
                await asyncio.sleep(0)
            assert clock.now() == T0  # work in flight: no jump
            assert not seen
        await task

    asyncio.run(main())
    assert seen == [T0 + timedelta(hours=1)]


def test_clock_jumps_only_when_every_participant_sleeps():
    clock = VirtualClock(T0)
    log: list[tuple[str, datetime]] = []
    release = asyncio.Event

    async def main():
        gate = release()

        async def quick():
            with clock.participant():
                await clock.sleep_until(T0 + timedelta(minutes=5))
                log.append(("quick", clock.now()))

        async def slow():
            with clock.participant():
                await gate.wait()  # awake, not sleeping on the clock
                log.append(("slow-ready", clock.now()))
                await clock.sleep_until(T0 + timedelta(minutes=9))
                log.append(("slow", clock.now()))

        tasks = [asyncio.create_task(quick()), asyncio.create_task(slow())]
        for _ in range(20):
            await asyncio.sleep(0)
        assert clock.now() == T0  # one participant is still awake
        assert log == []
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert log == [("slow-ready", T0), ("quick", T0 + timedelta(minutes=5)), ("slow", T0 + timedelta(minutes=9))]


def test_cancelled_sleeper_is_forgotten():
    clock = VirtualClock(T0)

    async def main():
        with clock.busy():
            task = asyncio.create_task(clock.sleep_until(T0 + timedelta(hours=2)))
            await asyncio.sleep(0)
            assert clock.sleepers == 1
            task.cancel()
            await asyncio.sleep(0)
        assert clock.sleepers == 0

    asyncio.run(main())
    assert clock.now() == T0
