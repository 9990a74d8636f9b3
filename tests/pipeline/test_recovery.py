"""`Recovery`: lost submits looked for in fal's request history, with an in-process history
and an injected clock (the socket-level runs are in test_lost_answers.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from batch.fal import AuthError, HistoryEntry, HistoryPage, TransientError
from batch.ledger.models import canonical_json
from batch.pipeline.history_scan import MAX_PAGES, match_key
from batch.pipeline.recovery import (
    QUEUE_ALLOWANCE_S,
    SETTLE_S,
    Recovery,
    Sent,
    Undecided,
    history_bound,
)

T0 = 1_800_000_000.0
ENDPOINT = "fal-ai/firered-image-edit"


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Row:
    request_id: str
    payload: dict[str, Any] | None
    sent_at: float
    visible_at: float  # when it shows in the history (fal's worst case: once ended)


@dataclass
class FakeHistory:
    """fal's history: newest first, 100 a page, what is visible at the clock's time."""

    clock: FakeClock
    rows: list[Row] = field(default_factory=list)
    calls: int = 0
    fail: list[Exception] = field(default_factory=list)
    limit: int = 100

    limits: list[int] = field(default_factory=list)
    during: Any = None  # called once, while the first page is read

    async def requests(
        self, endpoint_id: str, *, start: float, cursor: str | None = None, limit: int = 100
    ) -> HistoryPage:
        self.calls += 1
        self.limits.append(limit)
        if self.during is not None:
            during, self.during = self.during, None
            await during()
        if self.fail:
            raise self.fail.pop(0)
        limit = min(limit, self.limit)
        shown = [r for r in self.rows if r.visible_at <= self.clock.now and r.sent_at >= start]
        shown.sort(key=lambda r: -r.visible_at)
        page = int(cursor or 0)
        part = shown[page * limit : (page + 1) * limit]
        more = (page + 1) * limit < len(shown)
        entries = [
            HistoryEntry(r.request_id, endpoint_id, r.sent_at, None, r.visible_at, 200, r.payload)
            for r in part
        ]
        return HistoryPage(entries, str(page + 1) if more else None, more)


def make(
    history: FakeHistory,
    *,
    bound: float = 60.0,
    known: set[str] | None = None,
    draining: bool = False,
) -> Recovery:
    return Recovery(
        history,  # type: ignore[arg-type]
        lambda ids: set(ids) & (known or set()),
        lambda: bound,
        clock=history.clock,
        sleep=history.clock.sleep,
        draining=lambda: draining,
    )


def sent(key: str, payload: dict[str, Any], at: float = T0) -> Sent:
    return Sent(key, ENDPOINT, canonical_json(payload), at)


P1 = {"prompt": "make it blue", "image_urls": ["https://x/1.png"]}
P2 = {"prompt": "make it red", "image_urls": ["https://x/2.png"]}


async def test_a_request_that_shows_once_ended_is_found_and_claimed() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("req-1", P1, T0 + 0.2, visible_at=T0 + 9)])
    recovery = make(history)
    assert await recovery.find(sent("a", P1)) == "req-1"
    assert clock.now >= T0 + 9  # it looked until the request ended, not a fixed time
    assert recovery.stats["recovered"] == 1
    assert history.calls == recovery.stats["pages"] <= 6  # growing pauses: few looks


async def test_not_found_within_the_bound_means_send_again() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("other", P2, T0, visible_at=T0)])
    recovery = make(history, bound=100.0)
    assert await recovery.find(sent("a", P1)) is None
    assert clock.now == pytest.approx(T0 + 100.0)  # the last look is made at the bound
    assert recovery.stats["not_found"] == 1
    assert history.calls <= 9


async def test_ids_the_ledger_holds_are_never_claimed() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("mine-already", P1, T0, visible_at=T0)])
    recovery = make(history, bound=10.0, known={"mine-already"})
    assert await recovery.find(sent("a", P1)) is None


async def test_one_look_serves_every_waiting_item() -> None:
    clock = FakeClock()
    payloads = [{"prompt": f"edit {i}"} for i in range(30)]
    rows = [Row(f"req-{i}", p, T0 + i / 10, visible_at=T0) for i, p in enumerate(payloads)]
    history = FakeHistory(clock, rows)
    recovery = make(history)
    found = await asyncio.gather(
        *(recovery.find(sent(f"k{i}", p, T0 + i / 10)) for i, p in enumerate(payloads))
    )
    assert found == [f"req-{i}" for i in range(30)]
    assert history.calls == 1


async def test_paging_finds_an_entry_three_pages_down_and_stops_there() -> None:
    clock = FakeClock()
    rows = [Row(f"n-{i}", {"prompt": f"n{i}"}, T0, visible_at=T0 + 1 + i) for i in range(250)]
    rows.append(Row("target", P1, T0, visible_at=T0))  # ended first: the last page
    history = FakeHistory(clock, rows)
    clock.now = T0 + 300
    recovery = make(history, bound=400.0)
    assert await recovery.find(sent("a", P1)) == "target"
    assert history.calls == 3


async def test_a_history_too_long_to_read_back_decides_nothing() -> None:
    """More requests ended since the send than a look reads: the item is left undecided at
    the bound (the next run looks again), never sent again on a guess."""
    clock = FakeClock()
    rows = [Row(f"n-{i}", {"prompt": f"n{i}"}, T0, visible_at=T0 + 1) for i in range(12_000)]
    history = FakeHistory(clock, rows)
    recovery = make(history, bound=3.0)
    with pytest.raises(Undecided, match="too long"):
        await recovery.find(sent("a", P1))
    assert MAX_PAGES < recovery.stats["pages"] <= MAX_PAGES * recovery.stats["looks"]


async def test_reading_stops_at_requests_that_ended_before_the_send() -> None:
    """Newest-ended first: a page that ended wholly before the send ends the look."""
    clock = FakeClock(T0 + 4000)
    old = [Row(f"o-{i}", {"prompt": f"o{i}"}, T0 - 3000, visible_at=T0 - 1000) for i in range(900)]
    history = FakeHistory(clock, old)
    history.rows += [Row("other", P2, T0, visible_at=T0 + 3)]
    recovery = make(history, bound=1.0)
    # (the fake filters on sent_at >= start, so widen what it returns to the old requests)
    history.rows = [Row(r.request_id, r.payload, T0, r.visible_at) for r in history.rows]
    assert await recovery.find(sent("a", P1, T0)) is None
    assert history.calls == 2  # page 1 holds `other` and 99 old ones; page 2 is all old


async def test_identical_payloads_each_take_the_entry_sent_nearest() -> None:
    clock = FakeClock()
    rows = [
        Row("late", P1, T0 + 30.1, visible_at=T0 + 40),
        Row("early", P1, T0 + 0.1, visible_at=T0 + 5),
    ]
    history = FakeHistory(clock, rows)
    recovery = make(history)
    found = await asyncio.gather(
        recovery.find(sent("first", P1, T0)), recovery.find(sent("second", P1, T0 + 30))
    )
    assert found == ["early", "late"]


async def test_more_matching_entries_than_items_is_said(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rows = [Row("a1", P1, T0 + 1, visible_at=T0), Row("a2", P1, T0 + 2, visible_at=T0)]
    history = FakeHistory(clock, rows)
    recovery = make(history)
    with caplog.at_level(logging.WARNING, logger="batch.run"):
        assert await recovery.find(sent("only", P1, T0)) == "a1"
    assert recovery.stats["shared"] == 1
    assert "someone else sends it too" in caplog.text


async def test_a_decision_waits_for_the_answer_of_a_submit_of_the_same_payload() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("theirs", P1, T0 + 1, visible_at=T0 + 1)])
    recovery = make(history, bound=50.0)
    token = recovery.sending(P1)  # another item's submit of P1 is on the wire
    task = asyncio.create_task(recovery.find(sent("lost", P1, T0)))
    while history.calls == 0:
        await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not task.done()  # "theirs" may be the other submit's request: not taken yet
    recovery.answered(token, "theirs")  # it was: the other item owns it
    assert await task is None  # and nothing else matches: sent again at the bound


async def test_a_submit_answered_while_a_look_reads_is_never_taken() -> None:
    """The race: a same-payload submit leaves and is answered during the history call."""
    clock = FakeClock()
    history = FakeHistory(clock, [Row("theirs", P1, T0 + 1, visible_at=T0 + 1)])
    recovery = make(history, bound=10.0)

    async def other_submit() -> None:
        token = recovery.sending(P1)
        recovery.answered(token, "theirs")

    history.during = other_submit
    assert await recovery.find(sent("lost", P1, T0)) is None


async def test_identical_submits_sent_after_a_look_do_not_hold_it_up() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("mine", P1, T0, visible_at=T0 + 3)])
    recovery = make(history, bound=60.0)
    task = asyncio.create_task(recovery.find(sent("lost", P1, T0)))
    while not task.done():  # a steady stream of the same edit, always one on the wire
        token = recovery.sending(P1)
        await asyncio.sleep(0)
        recovery.answered(token, f"other-{token}")
    assert await task == "mine"


async def test_an_entry_without_payload_from_someone_else_does_not_end_the_search() -> None:
    clock = FakeClock()
    rows = [Row("foreign", None, T0, visible_at=T0), Row("mine", P1, T0, visible_at=T0 + 9)]
    recovery = make(FakeHistory(clock, rows), bound=600.0)
    assert await recovery.find(sent("a", P1)) == "mine"


async def test_numbers_match_by_value() -> None:
    clock = FakeClock()
    stored = {**P1, "guidance_scale": 4.0}
    history = FakeHistory(clock, [Row("req", stored, T0, visible_at=T0)])
    assert await make(history).find(sent("a", {**P1, "guidance_scale": 4})) == "req"
    assert match_key({"a": [1.0, 2.5]}) == match_key({"a": [1, 2.5]})


async def test_a_send_time_ahead_of_the_clock_never_makes_looks_back_to_back() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [])
    recovery = make(history, bound=0.0)
    task = asyncio.create_task(recovery.find(sent("a", P1, T0 + 5)))  # clock stepped back
    while not task.done():
        await asyncio.sleep(0)
    assert await task is None
    assert history.calls <= 5 / 0.1 + 1


async def test_pages_shrink_when_the_history_times_out() -> None:
    clock = FakeClock()
    rows = [Row("req", P1, T0, visible_at=T0)]
    history = FakeHistory(clock, rows, fail=[TransientError("timeout")] * 2)
    assert await make(history).find(sent("a", P1)) == "req"
    assert history.limits == [100, 50, 25]


async def test_fal_keeping_extra_fields_still_matches() -> None:
    clock = FakeClock()
    stored = {**P1, "num_inference_steps": 28, "enable_safety_checker": True}
    history = FakeHistory(clock, [Row("req", stored, T0, visible_at=T0)])
    assert await make(history).find(sent("a", P1)) == "req"


async def test_a_changed_field_does_not_match() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("req", {**P1, "prompt": "other"}, T0, visible_at=T0)])
    assert await make(history, bound=5.0).find(sent("a", P1)) is None


async def test_entries_sent_far_from_ours_are_not_ours() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("old", P1, T0 - 3600, visible_at=T0)])
    assert await make(history, bound=5.0).find(sent("a", P1)) is None
    # (the look starts at our send time less the skew, and sent_at is checked as well)


async def test_a_history_that_cannot_be_read_turns_recovery_off() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [], fail=[AuthError("401: no access")])
    recovery = make(history)
    assert await recovery.find(sent("a", P1)) is None
    assert not recovery.enabled
    assert await recovery.find(sent("b", P2)) is None
    assert history.calls == 1


async def test_a_transient_failure_is_looked_past() -> None:
    clock = FakeClock()
    rows = [Row("req", P1, T0, visible_at=T0)]
    history = FakeHistory(clock, rows, fail=[TransientError("502"), TransientError("503")])
    assert await make(history).find(sent("a", P1)) == "req"
    assert history.calls == 3


async def test_a_history_without_payloads_is_waited_out_then_sent_again() -> None:
    clock = FakeClock()
    history = FakeHistory(clock, [Row("req", None, T0, visible_at=T0)])
    recovery = make(history, bound=60.0)
    assert await recovery.find(sent("a", P1)) is None
    assert clock.now == pytest.approx(T0 + 60.0)


async def test_a_stopping_run_leaves_the_item_undecided() -> None:
    clock = FakeClock()
    recovery = make(FakeHistory(clock), draining=True)
    with pytest.raises(Undecided):
        await recovery.find(sent("a", P1))


async def test_without_a_platform_nothing_is_looked_up() -> None:
    recovery = Recovery(None, lambda e: set(), lambda: 60.0)
    assert not recovery.enabled
    assert await recovery.find(sent("a", P1)) is None


def test_the_bound_comes_from_start_timeout_and_service_times() -> None:
    assert history_bound(None, None, 7.0) == 7.0
    assert history_bound(20.0, 5.0, None) == 20.0 + 10.0 + SETTLE_S
    assert history_bound(None, 5.0, None) == QUEUE_ALLOWANCE_S + 10.0 + SETTLE_S


def test_payload_matching_is_canonical() -> None:
    a = canonical_json({"b": 1, "a": [1, 2]})
    assert a == canonical_json(json.loads('{"a": [1, 2], "b": 1}'))
