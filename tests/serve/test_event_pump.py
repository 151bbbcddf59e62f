"""`_EventPump`: a streamed turn is generated on its own thread, ahead of a slow consumer; errors reach the
consumer; closing stops the producer and closes its iterator."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from emova.serve.api import _EventPump


def test_the_producer_runs_ahead_of_a_slow_consumer():
    made: list[float] = []

    def events():
        for i in range(5):
            made.append(time.perf_counter())
            yield i

    async def consume():
        pump = _EventPump(events, asyncio.get_running_loop())
        got, seen_at = [], []
        while (ev := await pump.next()) is not None:
            got.append(ev)
            seen_at.append(time.perf_counter())
            await asyncio.sleep(0.05)  # a client that reads slowly
        await pump.close()
        return got, seen_at

    got, seen_at = asyncio.run(consume())
    assert got == [0, 1, 2, 3, 4]
    assert made[-1] < seen_at[1]  # every event existed before the consumer took the second one


def test_errors_reach_the_consumer_after_the_events_before_them():
    def events():
        yield "a"
        raise ValueError("bad audio")

    async def consume():
        pump = _EventPump(events, asyncio.get_running_loop())
        first = await pump.next()
        with pytest.raises(ValueError, match="bad audio"):
            await pump.next()
        await pump.close()
        return first

    assert asyncio.run(consume()) == "a"


def test_an_error_before_the_first_event_is_raised_by_the_first_next():
    def make():
        raise ValueError("no messages")

    async def consume():
        pump = _EventPump(make, asyncio.get_running_loop())
        with pytest.raises(ValueError, match="no messages"):
            await pump.next()
        await pump.close()

    asyncio.run(consume())


def test_close_stops_the_producer_and_closes_the_iterator():
    state = {"made": 0, "closed": False}
    release = threading.Event()

    def events():
        try:
            while True:
                state["made"] += 1
                yield state["made"]
                release.wait(0.01)
        finally:
            state["closed"] = True

    async def consume():
        pump = _EventPump(events, asyncio.get_running_loop())
        assert await pump.next() == 1
        await pump.close()  # the client hung up
        return pump

    pump = asyncio.run(consume())
    assert not pump.thread.is_alive() and state["closed"]
    made = state["made"]
    time.sleep(0.05)
    assert state["made"] == made  # nothing generated after close
