"""The window of submits on the wire (`SubmitWindow`), with an injected clock: it opens one
place per accept while submits wait, settles at what the accepts need when none wait, never
lets a burst of freed slots onto the wire at once, and gives a place back on refusal and on
cancellation."""

import asyncio

import pytest

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


async def test_the_window_opens_one_place_per_accept_while_submits_wait() -> None:
    clock = Clock()
    window = SubmitWindow(ceiling=100, clock=clock)
    tasks = await _waiters(window, 10)  # 3 on the wire, 7 waiting
    for expected in range(4, 8):
        clock.now += 0.01
        window.release(0.01)
        await asyncio.sleep(0)
        assert window.size == expected
    assert all(t.done() for t in tasks)


async def test_without_waiters_the_window_shrinks_to_what_the_accepts_need() -> None:
    """A window opened wide by a burst closes again once nobody waits: at 100 accepts/s and a
    0.01 s round trip two places are enough, so it is back at the minimum."""
    clock = Clock()
    window = SubmitWindow(ceiling=100, clock=clock)
    window.size = 60
    for _ in range(100):
        await window.acquire()
        clock.now += 0.01
        window.release(0.01)
    assert window.rtt == pytest.approx(0.01) and window.size == MIN_WINDOW
    assert window.open == 0


async def test_the_ceiling_bounds_the_window() -> None:
    clock = Clock()
    window = SubmitWindow(ceiling=5, clock=clock)
    tasks = await _waiters(window, 20)
    for _ in range(10):
        clock.now += 0.001
        window.release(1.0)
        await asyncio.sleep(0)
    assert window.size == 5 and window.open == 5
    for t in tasks:
        t.cancel()


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
