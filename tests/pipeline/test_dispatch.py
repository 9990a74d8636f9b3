"""The dispatcher's slot taking: a stop or a cancellation in the turn it yields keeps no slot."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from batch.pipeline.admission import Admission
from batch.pipeline.dispatch import Dispatcher, StopSignal
from batch.pipeline.item import ItemContext


def _dispatcher(admission: Admission, stop: StopSignal) -> Dispatcher:
    # Taking a slot uses only the admission of the run's context.
    return Dispatcher(cast(ItemContext, SimpleNamespace(admission=admission)), stop)


async def _in_the_yielding_turn(admission: Admission, stop: StopSignal) -> asyncio.Task[bool]:
    task = asyncio.create_task(_dispatcher(admission, stop)._take_slot())
    await asyncio.sleep(0)  # the task takes a free slot and yields once
    assert not task.done() and admission.in_flight == 1
    return task


async def test_a_slot_taken_at_once_is_kept_when_nothing_stops() -> None:
    admission, stop = Admission(concurrency=2, rate=100.0), StopSignal()
    task = await _in_the_yielding_turn(admission, stop)
    assert await task is True
    assert admission.in_flight == 1


async def test_a_stop_in_the_yielding_turn_gives_the_slot_back() -> None:
    admission, stop = Admission(concurrency=2, rate=100.0), StopSignal()
    task = await _in_the_yielding_turn(admission, stop)
    stop.request("interrupted")
    assert await task is False
    assert admission.in_flight == 0


async def test_a_cancellation_in_the_yielding_turn_gives_the_slot_back() -> None:
    admission, stop = Admission(concurrency=2, rate=100.0), StopSignal()
    task = await _in_the_yielding_turn(admission, stop)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.in_flight == 0


async def test_a_stop_while_waiting_for_a_slot_takes_none() -> None:
    admission, stop = Admission(concurrency=1, rate=100.0), StopSignal()
    await admission.acquire_slot()  # full
    task = asyncio.create_task(_dispatcher(admission, stop)._take_slot())
    await asyncio.sleep(0)
    assert not task.done()
    stop.request("interrupted")
    assert await task is False
    admission.release_slot()
    assert admission.in_flight == 0
