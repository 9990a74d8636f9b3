"""One item's retry and failure paths (`batch.pipeline.item.run_item`), against an in-process
fake of the queue client instead of the simulator: each fal answer is scripted per call.

The ledger is real (SQLite in tmp_path, through a group commit), and so are the admission,
the waiter (polling) and the run's counters; only fal and the image downloads are doubles.
Nothing sleeps for time: the policy's back-offs are zero, the waiter's first look after a
submit is made at once, and the fake answers COMPLETED on the first status request.
The real-socket paths are covered in tests/pipeline/test_run_*.py and tests/resume.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest
from support import ENDPOINT, PlanItem, png_bytes

import batch.pipeline.finish as finish_module
import batch.pipeline.waiting as waiting_module
from batch.fal import (
    AmbiguousSubmitError,
    Completed,
    NotFoundError,
    PermanentError,
    QueueClient,
    RateLimitedError,
    RequestHandle,
    Result,
    Status,
    TransientError,
)
from batch.ledger import ItemRow, Ledger
from batch.ledger.group import GroupCommit
from batch.outputs import DownloadError
from batch.outputs.downloads import DownloadedFile
from batch.pipeline.admission import DECREASE, Admission
from batch.pipeline.events import RunStats
from batch.pipeline.item import ItemContext, Slot, run_item
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.waiting import Waiter

KEY = "item000"
QUEUE = "https://queue.test"
IMAGE_URL = "https://cdn.test/out/0.png"
OUTPUT: dict[str, Any] = {
    "images": [{"url": IMAGE_URL, "width": 16, "height": 12, "content_type": "image/png"}],
    "seed": 42,
    "timings": {"inference": 0.5},
    "has_nsfw_concepts": [False],
}
# Zero back-off everywhere, few attempts: every retry path is reached in a few turns.
POLICY = RetryPolicy(
    attempts=3,
    backoff_min=0.0,
    backoff_max=0.0,
    retry_after_max=0.0,
    download_attempts=3,
    status_attempts=2,
)


class Script:
    """Outcomes of one method, one per call: an exception is raised, anything else returned;
    when the script is used up, `default(n)` (n counts calls from 1) is returned."""

    def __init__(self, default: Callable[[int], Any]) -> None:
        self.default = default
        self.outcomes: deque[Any] = deque()
        self.calls = 0

    def next(self) -> Any:
        self.calls += 1
        outcome = self.outcomes.popleft() if self.outcomes else self.default(self.calls)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _handle(request_id: str) -> RequestHandle:
    base = f"{QUEUE}/{ENDPOINT}/requests/{request_id}"
    return RequestHandle(ENDPOINT, request_id, f"{base}/status", base, f"{base}/cancel")


class FakeQueue:
    """What the pipeline uses of `QueueClient`, in process. Submits answer `req-<n>`, status
    COMPLETED and result `OUTPUT` unless scripted otherwise (`script`)."""

    base_url = QUEUE

    def __init__(self) -> None:
        self.session = object()  # what downloads are handed (the patched download checks it)
        self.scripts = {
            "submit": Script(lambda n: _handle(f"req-{n}")),
            "status": Script(lambda n: Completed()),
            "result": Script(lambda n: dict(OUTPUT)),
            "cancel": Script(lambda n: True),
        }
        self.submitted: list[tuple[str, Mapping[str, Any]]] = []
        self.asked: list[str] = []  # request ids of status, result and cancel calls
        self.headers: list[dict[str, str]] = []  # the platform headers of each submit

    def script(self, method: str, *outcomes: Any) -> None:
        self.scripts[method].outcomes.extend(outcomes)

    def calls(self) -> dict[str, int]:
        return {method: script.calls for method, script in self.scripts.items()}

    async def submit(
        self,
        endpoint: str,
        payload: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        priority: str | None = None,
        start_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        max_queue_length: int | None = None,
    ) -> RequestHandle:
        self.submitted.append((endpoint, payload))
        self.headers.append(dict(headers or {}))
        handle: RequestHandle = self.scripts["submit"].next()
        return handle

    def handle_for(self, endpoint: str, request_id: str) -> RequestHandle:
        return _handle(request_id)

    async def status(self, handle: RequestHandle, *, logs: bool = False) -> Status:
        self.asked.append(handle.request_id)
        status: Status = self.scripts["status"].next()
        return status

    async def stream_status(
        self, handle: RequestHandle, *, logs: bool = False
    ) -> AsyncIterator[Status]:
        yield await self.status(handle)

    async def result(self, handle: RequestHandle) -> Result:
        self.asked.append(handle.request_id)
        body: dict[str, Any] | Result = self.scripts["result"].next()
        return body if isinstance(body, Result) else Result(body)

    async def cancel(self, handle: RequestHandle) -> bool:
        self.asked.append(handle.request_id)
        accepted: bool = self.scripts["cancel"].next()
        return accepted


class FakeDownloads:
    """Stands in for `batch.pipeline.finish.download_image`: scripted DownloadErrors, else
    the file is written to its destination and described as the real download would."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.outcomes: deque[DownloadError | None] = deque()
        self.urls: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.urls)

    async def __call__(self, session: object, url: str, dest: Path, **kw: Any) -> DownloadedFile:
        assert session is self.session
        self.urls.append(url)
        outcome = self.outcomes.popleft() if self.outcomes else None
        if outcome is not None:
            raise outcome
        data = png_bytes()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return DownloadedFile(dest, url, len(data), "ab" * 32, 16, 12, "image/png")


@dataclass
class Rig:
    ctx: ItemContext
    client: FakeQueue
    downloads: FakeDownloads
    ledger: Ledger
    admission: Admission
    stats: RunStats
    draining: list[bool] = field(default_factory=lambda: [False])

    def row(self) -> ItemRow:
        row = self.ledger.get(KEY)
        assert row is not None
        return row

    async def turn(self) -> float | None:
        """One turn of the item, as the dispatcher gives it: a slot, then `run_item`."""
        await self.admission.acquire_slot()
        result = await run_item(self.ctx, self.row(), Slot(self.admission))
        assert self.admission.in_flight == 0  # the slot is given back whatever happened
        assert self.stats.in_flight == 0
        return result

    def rate_tokens(self) -> int:
        """Submit-rate tokens taken so far (the admission's throttle logs one per submit)."""
        return len(self.admission._throttle._task_logs)


MakeRig = Callable[..., Rig]


@pytest.fixture
async def make_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeRig]:
    # The waiter's first look after a submit is made at once (no real sleep stands in for it).
    monkeypatch.setattr(waiting_module, "first_poll", lambda *args: 0.0)
    rigs: list[Rig] = []

    def make(policy: RetryPolicy = POLICY) -> Rig:
        ledger = Ledger.open(tmp_path / "out")
        ledger.plan([PlanItem(KEY, {"prompt": "make it blue", "image_urls": [IMAGE_URL]})])
        client = FakeQueue()
        downloads = FakeDownloads(client.session)
        monkeypatch.setattr(finish_module, "download_image", downloads)
        fal = cast(QueueClient, client)
        admission = Admission(concurrency=2, rate=1000)
        stats = RunStats(total=1)
        draining = [False]
        ctx = ItemContext(
            client=fal,
            ledger=ledger,
            writes=GroupCommit(ledger, window=0.0),
            policy=policy,
            stats=stats,
            output_dir=tmp_path / "out",
            filename_template="{key}-{index}.{ext}",
            downloads=asyncio.Semaphore(4),
            admission=admission,
            waiter=Waiter(fal, policy, mode="poll"),
            draining=lambda: draining[0],
        )
        rig = Rig(ctx, client, downloads, ledger, admission, stats, draining)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.ctx.aclose()
        rig.ledger.close()


def facts(row: ItemRow) -> dict[str, Any]:
    """What each test checks of the item's ledger row."""
    return {
        "state": row.state,
        "attempts": row.attempts,
        "error_kind": row.error_kind,
        "possible_duplicate": row.possible_duplicate,
        "request_id": row.request_id,
        "submit_started_at": row.submit_started_at,
    }


def counters(stats: RunStats) -> dict[str, Any]:
    return {
        "submits": stats.submits,
        "completed": stats.completed,
        "failed": stats.failed,
        "retried": stats.retried,
        "ambiguous": stats.ambiguous,
        "rate_limited": stats.rate_limited,
        "failed_by_kind": dict(stats.failed_by_kind),
    }


def stats_of(**changed: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "submits": 0,
        "completed": 0,
        "failed": 0,
        "retried": 0,
        "ambiguous": 0,
        "rate_limited": 0,
        "failed_by_kind": {},
    }
    return base | changed


def calls(**changed: int) -> dict[str, int]:
    return {"submit": 0, "status": 0, "result": 0, "cancel": 0} | changed


# --- the fake itself ---------------------------------------------------------------------------


async def test_a_clean_item_is_submitted_waited_for_fetched_and_completed(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    assert await rig.turn() is None
    row = rig.row()
    assert facts(row) == {
        "state": "completed",
        "attempts": 1,
        "error_kind": None,
        "possible_duplicate": False,
        "request_id": "req-1",
        "submit_started_at": None,
    }
    assert rig.client.calls() == calls(submit=1, status=1, result=1)
    assert rig.client.submitted == [
        (ENDPOINT, {"prompt": "make it blue", "image_urls": [IMAGE_URL]})
    ]
    assert rig.client.asked == ["req-1", "req-1"]
    assert rig.downloads.urls == [IMAGE_URL]
    [out] = rig.ledger.outputs(KEY)
    assert (out.path, out.url, out.width, out.height) == (f"images/{KEY}-0.png", IMAGE_URL, 16, 12)
    assert (row.seed, row.nsfw) == (42, [False])
    assert counters(rig.stats) == stats_of(submits=1, completed=1)
    assert rig.rate_tokens() == 1


# --- submit ------------------------------------------------------------------------------------


async def test_an_ambiguous_submit_flags_a_possible_duplicate_and_is_sent_again_at_once(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.client.script("submit", AmbiguousSubmitError("submit: answer lost"))
    before, wall = time.monotonic(), time.time()
    when = await rig.turn()
    assert when is not None and before <= when <= time.monotonic()  # delay 0: again at once
    row = rig.row()
    assert facts(row) == {
        "state": "pending",
        "attempts": 1,
        "error_kind": "transient",
        "possible_duplicate": True,
        "request_id": None,
        "submit_started_at": None,
    }
    assert row.not_before is not None and wall <= row.not_before <= time.time()
    assert row.error_message == "submit: answer lost"
    assert counters(rig.stats) == stats_of(submits=1, retried=1, ambiguous=1)
    assert rig.client.calls() == calls(submit=1)

    # The next turn submits again; the flag stays with the item, counted once.
    assert await rig.turn() is None
    assert facts(rig.row()) == {
        "state": "completed",
        "attempts": 2,
        "error_kind": None,
        "possible_duplicate": True,
        "request_id": "req-2",
        "submit_started_at": None,
    }
    assert counters(rig.stats) == stats_of(submits=2, completed=1, retried=1, ambiguous=1)
    assert rig.client.calls() == calls(submit=2, status=1, result=1)


async def test_a_rate_limited_submit_slows_admission_and_keeps_the_attempt(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(replace(POLICY, retry_after_max=120.0))
    rig.client.script("submit", RateLimitedError("429", status=429, retry_after=7.0))
    before = time.monotonic()
    when = await rig.turn()
    assert when is not None and before + 7.0 <= when <= time.monotonic() + 7.0  # Retry-After
    assert facts(rig.row()) == {
        "state": "pending",
        "attempts": 0,  # not queued: no attempt used
        "error_kind": None,
        "possible_duplicate": False,
        "request_id": None,
        "submit_started_at": None,  # the intent is cleared: not a possible duplicate later
    }
    assert rig.row().not_before is None
    assert rig.admission.rate_limited == 1
    assert rig.admission.rate == pytest.approx(1000 * DECREASE)
    assert counters(rig.stats) == stats_of(submits=1, rate_limited=1)
    assert rig.client.calls() == calls(submit=1)

    assert await rig.turn() is None  # the next turn goes through, as the first attempt
    assert facts(rig.row())["attempts"] == 1
    assert rig.row().state == "completed"


async def test_a_transient_submit_failure_is_retried_then_the_item_runs_out_of_attempts(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(replace(POLICY, attempts=2))
    rig.client.script(
        "submit", TransientError("submit: 503 one"), TransientError("submit: 503 two")
    )

    for attempt in (1, 2):
        before = time.monotonic()
        when = await rig.turn()
        assert when is not None and before <= when <= time.monotonic()  # zero back-off
        row = rig.row()
        assert facts(row) == {
            "state": "pending",
            "attempts": attempt,
            "error_kind": "transient",
            "possible_duplicate": False,
            "request_id": None,
            "submit_started_at": None,
        }
        assert row.error_message == ("submit: 503 one", "submit: 503 two")[attempt - 1]
        assert counters(rig.stats) == stats_of(submits=attempt, retried=attempt)
    assert rig.client.calls() == calls(submit=2)

    # Attempts used up: the third turn fails the item without sending anything.
    assert await rig.turn() is None
    row = rig.row()
    assert facts(row) == {
        "state": "failed",
        # The exhausted check sends nothing, yet `mark_failed` counts a pending item's failure
        # as a try: the row says 3 attempts for 2 submits (policy.attempts + 1).
        "attempts": 3,
        "error_kind": "exhausted",
        "possible_duplicate": False,
        "request_id": None,
        "submit_started_at": None,
    }
    assert row.error_message == "submit: 503 two"  # the last real error is kept
    assert rig.client.calls() == calls(submit=2)
    assert counters(rig.stats) == stats_of(
        submits=2, retried=2, failed=1, failed_by_kind={"exhausted": 1}
    )
    assert rig.rate_tokens() == 2


async def test_a_permanent_submit_failure_fails_the_item_without_a_second_submit(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.client.script("submit", PermanentError("submit: 422 prompt: field required", status=422))
    assert await rig.turn() is None
    row = rig.row()
    assert facts(row) == {
        "state": "failed",
        "attempts": 1,  # failed before it was queued: counted as its one try
        "error_kind": "permanent",
        "possible_duplicate": False,
        "request_id": None,
        "submit_started_at": None,
    }
    assert row.error_message == "submit: 422 prompt: field required"
    assert rig.client.calls() == calls(submit=1)
    assert counters(rig.stats) == stats_of(submits=1, failed=1, failed_by_kind={"permanent": 1})


# --- waiting and the result --------------------------------------------------------------------


async def test_a_request_fal_no_longer_knows_while_waiting_is_submitted_again_as_lost(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.client.script("status", NotFoundError("status: 404", status=404, request_id="req-1"))
    before = time.monotonic()
    when = await rig.turn()
    assert when is not None and before <= when <= time.monotonic()
    assert facts(rig.row()) == {
        "state": "pending",
        "attempts": 1,  # the submit's; the retry of a submitted item adds none
        "error_kind": "lost",
        "possible_duplicate": False,
        "request_id": None,  # the next try is a new submit
        "submit_started_at": None,
    }
    assert rig.client.calls() == calls(submit=1, status=1)  # a 404 is not asked again
    assert counters(rig.stats) == stats_of(submits=1, retried=1)

    assert await rig.turn() is None
    assert facts(rig.row())["request_id"] == "req-2"
    assert rig.row().state == "completed"
    assert rig.client.calls() == calls(submit=2, status=2, result=1)


async def test_status_failing_transiently_past_its_retries_keeps_the_request(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.client.script("status", TransientError("status: 502"), TransientError("status: 503"))
    when = await rig.turn()
    assert when is not None
    assert facts(rig.row()) == {
        "state": "submitted",
        "attempts": 1,
        "error_kind": None,
        "possible_duplicate": False,
        "request_id": "req-1",
        "submit_started_at": None,
    }
    assert rig.client.calls() == calls(submit=1, status=POLICY.status_attempts)
    assert counters(rig.stats) == stats_of(submits=1)

    assert await rig.turn() is None  # re-attached: no new submit
    assert facts(rig.row())["request_id"] == "req-1"
    assert rig.row().state == "completed"
    assert rig.client.calls() == calls(submit=1, status=3, result=1)


async def test_an_expired_result_is_submitted_again_as_expired(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.client.script("result", NotFoundError("result: 404", status=404, request_id="req-1"))
    when = await rig.turn()
    assert when is not None
    assert facts(rig.row()) == {
        "state": "pending",
        "attempts": 1,
        "error_kind": "expired",
        "possible_duplicate": False,
        "request_id": None,
        "submit_started_at": None,
    }
    assert rig.client.calls() == calls(submit=1, status=1, result=1)
    assert rig.downloads.calls == 0
    assert counters(rig.stats) == stats_of(submits=1, retried=1)


# --- downloads ---------------------------------------------------------------------------------


async def test_a_permanent_download_failure_fails_the_item_after_one_try(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.downloads.outcomes.append(DownloadError("not a valid image", transient=False))
    assert await rig.turn() is None
    row = rig.row()
    assert facts(row) == {
        "state": "failed",
        "attempts": 1,
        "error_kind": "download",
        "possible_duplicate": False,
        "request_id": "req-1",  # kept: `retry` re-attaches to the paid-for request
        "submit_started_at": None,
    }
    assert row.error_message == "download of image 0 failed: not a valid image"
    assert rig.downloads.calls == 1
    assert rig.client.calls() == calls(submit=1, status=1, result=1)
    assert rig.ledger.outputs(KEY) == []
    assert counters(rig.stats) == stats_of(submits=1, failed=1, failed_by_kind={"download": 1})


async def test_a_transient_download_failure_is_tried_download_attempts_times(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.downloads.outcomes.extend(
        DownloadError(f"HTTP 503 ({n})", transient=True, status=503) for n in range(10)
    )
    assert await rig.turn() is None
    row = rig.row()
    assert facts(row) == {
        "state": "failed",
        "attempts": 1,
        "error_kind": "download",
        "possible_duplicate": False,
        "request_id": "req-1",
        "submit_started_at": None,
    }
    assert rig.downloads.calls == POLICY.download_attempts == 3
    assert row.error_message == "download of image 0 failed: HTTP 503 (2)"  # the last one
    assert rig.client.calls() == calls(submit=1, status=1, result=1)  # never resubmitted
    assert counters(rig.stats) == stats_of(submits=1, failed=1, failed_by_kind={"download": 1})


async def test_a_transient_download_failure_then_success_completes_the_item(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.downloads.outcomes.append(DownloadError("connection reset", transient=True))
    assert await rig.turn() is None
    assert facts(rig.row()) == {
        "state": "completed",
        "attempts": 1,
        "error_kind": None,
        "possible_duplicate": False,
        "request_id": "req-1",
        "submit_started_at": None,
    }
    assert rig.downloads.urls == [IMAGE_URL, IMAGE_URL]
    [out] = rig.ledger.outputs(KEY)
    assert out.path == f"images/{KEY}-0.png"
    assert (rig.ctx.output_dir / out.path).read_bytes() == png_bytes()
    assert counters(rig.stats) == stats_of(submits=1, completed=1)


# --- stopping ----------------------------------------------------------------------------------


async def test_a_stop_before_admission_sends_nothing_and_takes_no_rate_token(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    rig.draining[0] = True
    before = time.monotonic()
    when = await rig.turn()
    assert when is not None and before <= when <= time.monotonic()
    assert facts(rig.row()) == {
        "state": "pending",
        "attempts": 0,
        "error_kind": None,
        "possible_duplicate": False,
        "request_id": None,
        "submit_started_at": None,  # no intent recorded either
    }
    assert rig.client.calls() == calls()
    assert rig.rate_tokens() == 0
    assert counters(rig.stats) == stats_of()
