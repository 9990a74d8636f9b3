"""A whole run: validate, plan, start the queue (or the embedded simulator), dispatch, report.

`run_job(spec)` is the library entry point the CLI and notebooks call; it returns a RunSummary
whose `exit_code` follows the README's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from batch.errors import ExitCode
from batch.fal import (
    AuthError,
    Credentials,
    QueueClient,
    TlsError,
    credentials_from_env,
)
from batch.job import DEFAULT_PLATFORM_URL, JobError, JobSpec
from batch.ledger import ACCOUNT_LOCKED_META, Ledger
from batch.ledger.group import GroupCommit
from batch.outputs import DiskFullError, NotWritableError
from batch.outputs.lock import run_lock
from batch.outputs.naming import cleanup_temp_files
from batch.pipeline.admission import Admission
from batch.pipeline.budget import cost_lines, make_budget
from batch.pipeline.dispatch import Dispatcher, StopSignal
from batch.pipeline.events import NullProgress, Progress, RunStats
from batch.pipeline.finish import download_limit
from batch.pipeline.item import Announce, ItemContext
from batch.pipeline.planning import pilot_sample, plan_run, settle
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.prices import known_price, resolve_price
from batch.pipeline.recovery import make_recovery
from batch.pipeline.summary import Halt, RunSummary, log_start
from batch.pipeline.uploads import make_uploader
from batch.pipeline.waiting import Waiter
from batch.pipeline.webhook_wait import (
    check_detach,
    detached_message,
    submit_webhook_url,
    webhook_waits,
)
from batch.report.sheet import REPORT_NAME, write_report_quietly

log = logging.getLogger("batch.run")


async def run_job(
    spec: JobSpec,
    *,
    progress: Progress | None = None,
    stop: StopSignal | None = None,
    handle_signals: bool = False,
    dry_run: bool = False,
    policy: RetryPolicy | None = None,
    credentials: Credentials | None = None,
    max_runtime: float | None = None,
    redo_changed: bool = False,
    detach: bool = False,
    announce: Announce | None = None,
    account: str | None = None,
    sample: tuple[int, int] | None = None,
) -> RunSummary:
    """Run (or resume) a job to the end.

    Raises ManifestError / JobError / ChangedRowsError for invalid input (nothing is sent then)
    and LockHeldError when another run holds the output folder. `detach`: submit everything
    with webhooks to `webhook.public_url` and return (`webhook serve` collects the results).
    """
    started = time.monotonic()
    progress = progress or NullProgress()
    if detach:
        check_detach(spec)
    output_dir = spec.output
    summary = RunSummary(spec.name, output_dir, ExitCode.OK)
    if dry_run and _new_folder(output_dir):
        # Nothing to resume: plan into a ledger that goes away, and create nothing.
        with (
            tempfile.TemporaryDirectory(prefix="firered-dry-run-") as tmp,
            Ledger.open(Path(tmp)) as ledger,
        ):
            return _dry_run(spec, ledger, summary, redo_changed, sample)
    with run_lock(output_dir), Ledger.open(output_dir) as ledger:
        if dry_run:
            return _dry_run(spec, ledger, summary, redo_changed, sample)
        removed = cleanup_temp_files(output_dir)
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        plan = plan_run(spec, ledger, redo_changed=redo_changed)
        summary.plan, summary.warnings = plan.counts, plan.warnings
        settle(ledger, plan, account=account, sample=sample)
        if spec.local:
            _forget_local_requests(ledger)
        log_start(spec, plan.to_do, sum(ledger.counts().values()))
        run_id = ledger.start_run(_settings(spec))
        stop = stop or StopSignal()
        stats = RunStats(total=plan.to_do)
        halt = Halt(stop, ledger)
        try:
            with (
                _signals(stop, handle_signals),
                _deadline(stop, max_runtime),
                ledger.background_checkpoints(),  # WAL checkpoints off the event loop
            ):
                if plan.to_do or ledger.counts()["submitted"]:  # else: no connection at all
                    args = (stats, halt, progress, policy, credentials, detach, announce)
                    await _execute(spec, ledger, *args, pilot=sample is not None)
            left = _work_left(ledger, sample is not None)
            summary.exit_code = _exit_code(ledger.counts(), stop, left)
            summary.message = _message(stop)
            summary.exit_code, summary.message = halt.outcome(
                ledger.counts(), (summary.exit_code, summary.message)
            )
            if detach and not stop.draining.is_set():
                counts = ledger.counts()
                summary.exit_code = ExitCode.FAILED if counts["failed"] else ExitCode.OK
                summary.message = detached_message(counts)
        except AuthError as exc:
            summary.exit_code, summary.message = exc.exit_code, f"refused by fal: {exc}"
        except TlsError as exc:
            summary.exit_code, summary.message = exc.exit_code, str(exc)
        finally:
            progress.close(stats)
            summary.stats = stats.as_dict()
            summary.counts = ledger.counts()
            summary.recovered, summary.possible_duplicates = ledger.recovery_counts()
            summary.wall_time = time.monotonic() - started
            ledger.finish_run(run_id, summary.counts, summary.exit_code)
            if not (plan.reused and stats.done == 0 and _derived_current(ledger, output_dir)):
                _write_derived(spec, ledger, summary)
            price = known_price(spec, ledger)
            summary.cost = cost_lines(ledger, price, _max_usd(spec), endpoint=spec.endpoint)
    return summary


def _new_folder(folder: Path) -> bool:
    """No output folder yet, or an empty one (one with files but no ledger is refused)."""
    try:
        return not any(folder.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _dry_run(
    spec: JobSpec, ledger: Ledger, summary: RunSummary, redo: bool, sample: tuple[int, int] | None
) -> RunSummary:
    """Validate and plan, and the cost (of a pilot's sample, with `sample`); nothing is sent."""
    plan = plan_run(spec, ledger, redo_changed=redo)
    summary.plan, summary.warnings = plan.counts, plan.warnings
    summary.counts = ledger.counts()
    summary.message = "dry run: nothing sent" + (" (a pilot's sample)" if sample else "")
    if sample is not None:
        pilot_sample(ledger, *sample)
    price, most = known_price(spec, ledger), _max_usd(spec)
    pilot = sample is not None
    summary.cost = cost_lines(
        ledger, price, most, endpoint=spec.endpoint, dry_run=True, pilot=pilot
    )
    return summary


def _write_derived(spec: JobSpec, ledger: Ledger, summary: RunSummary) -> None:
    """results.csv, results.jsonl and report.html; derived from the ledger, so a full or
    read-only disk only warns (the next run writes them)."""
    try:
        ledger.export(spec.output)
    except (DiskFullError, NotWritableError) as exc:
        summary.warnings.append(f"results.csv and results.jsonl not written: {exc}")
    write_report_quietly(spec)


def _forget_local_requests(ledger: Ledger) -> None:
    """`queue: local`: every request an earlier run's embedded simulator held died with it, so
    its items are sent again (it costs nothing there); on fal they would be re-attached."""
    keys = [r.key for r in ledger.iter_work() if r.state == "submitted" or r.submit_started_at]
    if not keys:
        return
    why = "its request died with the embedded simulator of an earlier run; sent again"
    with ledger.group():
        for key in keys:
            ledger.mark_retry(key, "lost", why, None)
    log.info("%d requests of an earlier run's embedded simulator are sent again", len(keys))


def _derived_current(ledger: Ledger, output_dir: Path) -> bool:
    """Whether results.csv, results.jsonl and report.html already show every item as it is:
    all three exist and were written after the ledger's last item change. Then a run that
    changed nothing (resuming a finished job) need not write them again."""
    files = [output_dir / "results.csv", output_dir / "results.jsonl", output_dir / REPORT_NAME]
    try:
        written = min(path.stat().st_mtime for path in files)
    except OSError:
        return False
    return ledger.last_item_change() < written


async def _execute(
    spec: JobSpec,
    ledger: Ledger,
    stats: RunStats,
    halt: Halt,
    progress: Progress,
    policy: RetryPolicy | None,
    credentials: Credentials | None,
    detach: bool = False,
    announce: Announce | None = None,
    pilot: bool = False,
) -> None:
    """Dispatch the run's items (`pilot`: only the pilot's sample). A locked account or a full
    disk stops admitting (`halt`) and drains; an AuthError or TlsError ends the run at once."""
    stop = halt.stop
    policy = policy or RetryPolicy.from_spec(spec.retries)
    receive = spec.wait == "webhook" and not detach
    writes = GroupCommit(ledger)
    async with (
        _queue(spec, credentials) as client,
        webhook_waits(spec, client, ledger, writes, enabled=receive, stats=stats.webhooks) as hooks,
    ):
        waiter = Waiter(
            client,
            policy,
            mode=spec.wait,
            slots=spec.concurrency,
            on_status_request=stats.count_status_request,
            hooks=hooks,
            eager=_in_flight_limit(spec) <= spec.concurrency,
        )
        platform_url = _platform_url(spec, client)
        price = await resolve_price(spec, client, ledger, platform_url)
        if spec.budget is not None and price is None:
            raise JobError(
                ["budget: needs a price: fal's pricing API gave none; set price: in the job"]
            )

        uploads = await make_uploader(spec, client, ledger, policy)
        ctx = ItemContext(
            client=client,
            ledger=ledger,
            admission=Admission(_in_flight_limit(spec), spec.rate),
            waiter=waiter,
            policy=policy,
            stats=stats,
            output_dir=spec.output,
            filename_template=spec.filename,
            downloads=asyncio.Semaphore(download_limit(spec.concurrency)),
            writes=writes,
            priority=spec.priority,
            start_timeout=spec.start_timeout,
            deadline=spec.deadline,
            headers=spec.fal.headers(),
            max_queue_length=spec.fal.max_queue_length,
            on_account_locked=halt.account_locked,
            on_disk_full=halt.disk_full,
            on_change=lambda: progress.update(stats),
            draining=stop.draining.is_set,
            uploads=uploads,
            webhook_url=submit_webhook_url(spec, hooks, detach),
            detach=detach,
            budget=make_budget(ledger, price, spec.budget, stop.request, spec.endpoint),
            recovery=make_recovery(
                spec, client, ledger, waiter.service, platform_url, stop.draining.is_set
            ),
            announce=announce,
        )
        dispatcher = Dispatcher(ctx, stop, pilot=pilot)
        try:
            await dispatcher.run()
        finally:
            await ctx.aclose()  # what cancelled items handed over (request ids) is kept
            if ctx.recovery is not None:
                await ctx.recovery.aclose()
            await uploads.aclose()
        if dispatcher.fatal is not None:
            raise dispatcher.fatal
        if halt.locked is None and stats.submits > stats.rate_limited:
            ledger.set_meta(ACCOUNT_LOCKED_META, None)  # fal took work again


@contextlib.asynccontextmanager
async def _queue(spec: JobSpec, credentials: Credentials | None) -> AsyncIterator[QueueClient]:
    """A client for fal, or for the embedded simulator when `queue: local`."""
    if spec.queue != "local":
        creds = credentials or credentials_from_env()
        async with QueueClient(
            base_url=spec.queue,
            credentials=creds,
            max_connections=_connections(spec),
            ca_bundle=spec.fal.ca_bundle,
        ) as client:
            yield client
        return
    from batch.sim import SimConfig, Simulator

    # A fresh key for the local server: a real FAL_KEY is never sent to it.
    key = "local-" + secrets.token_hex(12)
    config = SimConfig.model_validate({**spec.sim.model_dump(), "key": key})  # its 3 fields
    async with (
        Simulator(config) as sim,
        QueueClient(
            base_url=sim.url, credentials=Credentials(key), max_connections=_connections(spec)
        ) as client,
    ):
        yield client


def _platform_url(spec: JobSpec, client: QueueClient) -> str | None:
    """Where fal's Platform API is for this run (see `FalSpec.platform_url`)."""
    if spec.fal.platform_url is not None:
        return spec.fal.platform_url
    if spec.on_fal:
        return DEFAULT_PLATFORM_URL
    # The simulator (embedded, or at a URL) serves the Platform routes beside the queue; a
    # proxy that does not answers 404, and the run goes on without them.
    return client.base_url


def _in_flight_limit(spec: JobSpec) -> int:
    """Requests kept submitted: fal's slots plus a few waiting in its queue. Queued requests
    cost nothing and are never rejected, and they start the moment a slot frees, however
    late this client notices that the previous one finished."""
    ahead = spec.concurrency if spec.queue_ahead is None else spec.queue_ahead
    return spec.concurrency + ahead


def _connections(spec: JobSpec) -> int:
    return max(100, _in_flight_limit(spec) * 2 + download_limit(spec.concurrency))


@contextlib.contextmanager
def _signals(stop: StopSignal, enabled: bool) -> Any:
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.request, "interrupted")
    loop.add_signal_handler(signal.SIGTERM, stop.request, "terminated")
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


@contextlib.contextmanager
def _deadline(stop: StopSignal, seconds: float | None) -> Any:
    """--max-runtime: at the deadline, stop admitting and drain, as a first Ctrl-C does."""
    if seconds is None:
        yield
        return
    timer = asyncio.get_running_loop().call_later(seconds, stop.request, "max runtime reached")
    try:
        yield
    finally:
        timer.cancel()


def _settings(spec: JobSpec) -> dict[str, Any]:
    """The run's settings for the runs table: everything but secrets (there are none in it)."""
    return spec.model_dump(mode="json")


def _work_left(ledger: Ledger, pilot: bool) -> bool:
    """Whether a run would still find work (what `iter_work` yields; not `pending`: items that
    left the manifest stay pending but are never worked on, so would make every run exit 4)."""
    return next(ledger.iter_work(batch_size=1, pilot=pilot), None) is not None


def _exit_code(counts: dict[str, int], stop: StopSignal, work_left: bool) -> ExitCode:
    """4 when anything is left to do (stopped early); else 1 if any item failed; else 0."""
    if stop.draining.is_set():
        return ExitCode.STOPPED
    if work_left:
        return ExitCode.STOPPED
    return ExitCode.FAILED if counts.get("failed", 0) else ExitCode.OK


def _max_usd(spec: JobSpec) -> float | None:
    return spec.budget.max_usd if spec.budget is not None else None


def _message(stop: StopSignal) -> str:
    if stop.draining.is_set() and stop.reason.startswith("budget"):
        return f"stopped by the {stop.reason}"
    if stop.draining.is_set():
        return f"stopped early ({stop.reason}); run the same command again to resume"
    return "finished"
