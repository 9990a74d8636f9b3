"""The window of submits on the wire (`SubmitWindow`), with an injected clock: it grows with
what the accepts need, never lets a burst of freed slots onto the wire at once, and gives a
place back on refusal and on cancellation."""

import asyncio

from batch.pipeline.window import MIN_WINDOW, SubmitWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _waiters(window: SubmitWindow, n: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(window.acquire()) for _ in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_a_burst_waits_beyond_the_minimum_window() -> None:
    window = SubmitWindow(ceiling=50, clock=Clock())
    tasks = await _waiters(window, 10)
    assert sum(t.done() for t in tasks) == MIN_WINDOW == window.open
    window.release(None)  # a refused submit: its place goes to the next waiter
    await asyncio.sleep(0)
    assert sum(t.done() for t in tasks) == MIN_WINDOW + 1 and window.open == MIN_WINDOW
    for t in tasks:
        t.cancel()


async def test_the_window_grows_to_twice_the_accept_rate_times_the_round_trip() -> None:
    clock = Clock()
    window = SubmitWindow(ceiling=100, clock=clock)
    # 40 accepts over 0.1 s with a 0.1 s round trip: 400/s × 0.1 s × 2 = 80
    for _ in range(40):
        await window.acquire()
        clock.now += 0.0025
        window.release(0.1)
    assert window.size == 80 and window.rtt == 0.1
    assert window.open == 0


async def test_a_slow_moment_does_not_widen_the_window() -> None:
    """The shortest recent round trip counts, not one stuck behind others."""
    clock = Clock()
    window = SubmitWindow(ceiling=100, clock=clock)
    for rtt in (0.002, 0.5, 0.4, 0.002):
        await window.acquire()
        clock.now += 0.01
        window.release(rtt)
    assert window.rtt == 0.002 and window.size == MIN_WINDOW


async def test_the_ceiling_bounds_the_window() -> None:
    clock = Clock()
    window = SubmitWindow(ceiling=5, clock=clock)
    for _ in range(20):
        await window.acquire()
        clock.now += 0.001
        window.release(1.0)
    assert window.size == 5


async def test_a_cancelled_waiter_leaves_no_place_taken() -> None:
    window = SubmitWindow(ceiling=10, clock=Clock())
    held = await _waiters(window, MIN_WINDOW)
    waiting = await _waiters(window, 2)
    waiting[0].cancel()
    await asyncio.gather(waiting[0], return_exceptions=True)
    window.release(None)
    await asyncio.sleep(0)
    assert waiting[1].done() and window.open == MIN_WINDOW
    assert all(t.done() for t in held)
