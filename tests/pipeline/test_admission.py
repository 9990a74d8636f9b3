"""Admission: the slot count under the concurrency limit, and AIMD on 429."""

from __future__ import annotations

import asyncio

from batch.pipeline.admission import DECREASE, Admission


async def test_slots_are_taken_at_once_while_there_is_room_and_waited_for_after() -> None:
    admission = Admission(concurrency=2, rate=100.0)
    assert admission.has_room()
    await admission.acquire_slot()
    await admission.acquire_slot()
    assert (admission.in_flight, admission.has_room()) == (2, False)

    third = asyncio.create_task(admission.acquire_slot())
    await asyncio.sleep(0)
    assert not third.done()  # full: waits for a slot to be given back
    admission.release_slot()
    await third
    assert (admission.in_flight, admission.has_room()) == (2, False)
    admission.release_slot()
    assert (admission.in_flight, admission.has_room()) == (1, True)


def test_429s_that_arrive_together_lower_the_rate_once_and_accepts_raise_it_again() -> None:
    admission = Admission(concurrency=4, rate=10.0)
    admission.on_rate_limited(retry_after=1.0)
    admission.on_rate_limited(retry_after=1.0)  # same cool-down: one signal
    assert admission.rate == 10.0 * DECREASE
    assert admission.rate_limited == 2
    lowered = admission.rate
    admission.on_accepted()
    assert lowered < admission.rate <= 10.0
