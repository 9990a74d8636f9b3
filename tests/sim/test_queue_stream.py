"""The status stream (fal-protocol.md §2a): one event per change, pings, closed at COMPLETED."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

WAIT_S = 10.0  # upper bound for anything a test waits on; never reached when things work


class StreamReader:
    """Reads a status stream line by line, so a test can wait for what it has received so far.

    `read()` returns when the server closes the stream; meanwhile `until(condition)` waits
    until `condition()` holds over `events` and `pings`, woken by each line that arrives.
    """

    def __init__(self, api: Any, url: str) -> None:
        self.api = api
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.pings = 0
        self.text = ""
        self.content_type = ""
        self.closed = False
        self._arrived = asyncio.Condition()

    async def read(self) -> StreamReader:
        try:
            async with self.api.session.get(self.url, params={"logs": "1"}) as resp:
                assert resp.headers["x-fal-request-id"] in self.url
                self.content_type = resp.headers["Content-Type"]
                async for raw in resp.content:  # one line per iteration, with its "\n"
                    line = raw.decode()
                    self.text += line
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                    elif line == ": ping\n":
                        self.pings += 1
                    await self._notify()
        finally:
            self.closed = True
            await self._notify()
        assert self.text.endswith("\n\n")
        return self

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds; fails if the stream closes first."""
        async with asyncio.timeout(WAIT_S), self._arrived:
            await self._arrived.wait_for(lambda: condition() or self.closed)
        assert condition(), f"the stream closed first: {self.text!r}"

    def states(self) -> list[str]:
        return [e["status"] for e in self.events]

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()


def open_stream(
    api: Any, submitted: dict[str, Any]
) -> tuple[StreamReader, asyncio.Task[StreamReader]]:
    """Start reading `submitted`'s status stream in a task; returns the reader and the task."""
    reader = StreamReader(api, submitted["status_url"] + "/stream")
    return reader, asyncio.create_task(reader.read())


async def test_stream_reports_each_state_and_closes(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """A queued job streams IN_QUEUE, IN_PROGRESS, COMPLETED (ends the stream), with pings."""
    api = await start_sim(capacity=1, latency="fixed:30", ping_interval_s=0.02, cancel_mode="abort")
    blocker = await api.submit(payload)
    queued = await api.submit(payload)
    stream, reading = open_stream(api, queued)
    # The stream reports IN_QUEUE, then pings while nothing changes; then free the slot.
    await stream.until(lambda: stream.pings >= 2)
    assert stream.states() == ["IN_QUEUE"]
    await api.call("PUT", blocker["cancel_url"])
    await api.wait_for(queued, "IN_PROGRESS")
    await api.call("PUT", queued["cancel_url"])
    await asyncio.wait_for(reading, WAIT_S)
    events = stream.events

    assert stream.content_type.startswith("text/event-stream")
    states = stream.states()
    assert states[0] == "IN_QUEUE" and events[0]["queue_position"] == 0
    assert "IN_PROGRESS" in states
    assert states[-1] == "COMPLETED" and states.count("COMPLETED") == 1
    assert events[-1]["error_type"] == "client_cancelled"
    assert isinstance(events[-1]["logs"], list)
    assert stream.pings >= 2


async def test_stream_of_completed_job_sends_one_event(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    await api.wait_for(sub)
    stream = await StreamReader(api, sub["status_url"] + "/stream").read()
    assert stream.states() == ["COMPLETED"]
    assert stream.events[0]["metrics"]["inference_time"] >= 0


async def test_stream_follows_queue_position(start_sim: Any, payload: dict[str, Any]) -> None:
    """A waiting job's stream sends a new event when a job ahead of it leaves."""
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    blocker = await api.submit(payload)
    ahead = await api.submit(payload)
    mine = await api.submit(payload)
    stream, reading = open_stream(api, mine)
    await stream.until(lambda: len(stream.events) >= 1)  # position 1 reported
    await api.call("PUT", ahead["cancel_url"])
    await stream.until(lambda: len(stream.events) >= 2)  # position 0 reported
    await api.call("PUT", blocker["cancel_url"])
    await api.wait_for(mine, "IN_PROGRESS")
    await api.call("PUT", mine["cancel_url"])
    await asyncio.wait_for(reading, WAIT_S)
    positions = [e["queue_position"] for e in stream.events if e["status"] == "IN_QUEUE"]
    assert positions == [1, 0]


async def test_open_stream_ends_when_the_simulator_stops(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:30")
    sub = await api.submit(payload)
    stream, reading = open_stream(api, sub)
    await stream.until(lambda: len(stream.events) >= 1)
    await api.sim.stop()
    await asyncio.wait_for(reading, WAIT_S)
    assert stream.states() == ["IN_PROGRESS"]
