"""Planning a run: validate the manifest and bring the ledger in line with it.

A manifest that has not changed since the last plan (same bytes, endpoint, defaults and
program version) needs neither: the ledger already holds exactly its items. That check — one
hash of the file — is what makes resuming a finished 100,000-item job take a moment rather than
a full validation. Manifests with local images are always planned again, because a file can
change while the manifest text does not (or a folder gain files); the ledger's records of the
files keep that cheap: an unchanged file (same size, mtime and ctime) is not read again.

Otherwise the manifest is read once: each row is checked and its item goes straight into the
ledger, all in one transaction (`ManifestCheck` into `Ledger.plan`). An invalid manifest raises
`ManifestError` listing every bad row at the end of the file, and the transaction is rolled
back: nothing is planned, and nothing is sent (DESIGN invariant 5).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from batch.errors import InvalidInputError
from batch.fal.adapters import RENAMED, AdapterError, adaptation
from batch.fal.endpoints import compared_key, endpoint_alias
from batch.job import JobError, JobSpec
from batch.job.shards import KEY_FUNCTION, parse_shard
from batch.ledger import Ledger, PlanResult
from batch.ledger.redo import drop_unwanted
from batch.manifest import EditItem, ManifestCheck, ManifestError
from batch.manifest.localfiles import LocalFiles

log = logging.getLogger("batch.run")

FINGERPRINT = "plan_fingerprint"
PLAN_COUNTS = "plan_counts"


class ChangedRowsError(InvalidInputError):
    """Rows whose id is known with a different request; nothing was sent."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.errors = lines


@dataclass
class Planned:
    counts: dict[str, int]  # new, completed, resume, changed, missing
    to_do: int
    warnings: list[str] = field(default_factory=list)
    reused: bool = False  # the manifest was unchanged: nothing was read again


def manifest_fingerprint(spec: JobSpec) -> str:
    digest = hashlib.sha256()
    header = {"version": _version(), "endpoint": spec.endpoint, "defaults": spec.defaults}
    if spec.shard is not None:  # another shard, or another division, plans other items
        header["shard"] = [spec.shard, KEY_FUNCTION]
    if spec.endpoints:
        header["endpoints"] = list(spec.endpoints)
    digest.update(json.dumps(header, sort_keys=True, ensure_ascii=False).encode())
    with open(spec.manifest, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def plan_run(spec: JobSpec, ledger: Ledger, *, redo_changed: bool = False) -> Planned:
    """Validate (raising ManifestError / ChangedRowsError) and plan, or reuse the last plan."""
    fingerprint = manifest_fingerprint(spec)
    if not redo_changed and ledger.get_meta(FINGERPRINT) == fingerprint:
        state = ledger.counts()
        previous = json.loads(ledger.get_meta(PLAN_COUNTS) or "{}")
        to_do = state["pending"] + state["submitted"]
        counts = {
            "new": 0,
            "completed": state["completed"],
            "resume": to_do,
            "changed": 0,
            "missing": int(previous.get("missing", 0)),
        }
        return Planned(counts, to_do, reused=True)
    files = LocalFiles(spec.image_limits, known=ledger.uploads.known_files())
    check = ManifestCheck(
        spec.manifest, endpoint=spec.endpoint, defaults=spec.defaults, files=files
    )
    items: Iterable[EditItem] = check.items()
    compared = None
    if spec.endpoints or spec.endpoint in RENAMED:  # each item checked against each model
        compared = Comparison(spec.endpoints or [spec.endpoint], keyed=bool(spec.endpoints))
        items = compared.items(items)
    if spec.shard is not None:  # every row is still checked; this shard plans its own items
        owns = parse_shard(spec.shard, {}).owns
        items = (item for item in items if owns(item.key))
    plan = ledger.plan(items, redo_changed=redo_changed)  # ManifestError: rolled back
    scanned = check.summary
    warnings = list(scanned.warnings) + (compared.warnings() if compared is not None else [])
    ledger.uploads.record_files(files.files())  # where the pipeline finds each file's bytes
    if plan.changed and not redo_changed:
        ledger.set_meta(FINGERPRINT, None)
        raise ChangedRowsError(_changed_lines(plan))
    counts = {
        "new": plan.new,
        "completed": plan.completed,
        "resume": plan.resume,
        "changed": plan.changed,
        "missing": plan.missing,
    }
    ledger.set_meta(PLAN_COUNTS, json.dumps(counts))
    ledger.set_meta(FINGERPRINT, fingerprint if scanned.local_images == 0 else None)
    return Planned(counts, plan.to_do + ledger.redos_to_do(), warnings=warnings)


def _changed_lines(plan: PlanResult) -> list[str]:
    lines = [
        f"{c.source}: id: '{c.key}' names a different request than when it was first run "
        f"(at {c.previous_source}); use --redo-changed to submit it again"
        for c in plan.conflicts
    ]
    if plan.changed > len(lines):
        lines.append(f"... and {plan.changed - len(lines)} more changed rows")
    return lines


def _version() -> str:
    try:
        return version("firered-batch")
    except PackageNotFoundError:
        return "unknown"


ACCOUNT = "account"


def use_account(ledger: Ledger, name: str) -> None:
    """Record the fal account (its name, never its key) this ledger's requests are sent with.
    A request can be asked about, fetched or cancelled only with the account that sent it, so
    while any is in flight the ledger stays with its account (`JobError`, exit 2, otherwise)."""
    before = ledger.get_meta(ACCOUNT)
    if before is not None and before != name and ledger.in_flight_count():
        raise JobError(
            [
                f"accounts: this shard has requests in flight on account {before!r}, and the"
                f" job now gives it {name!r}: run it with {before!r} until they are done"
            ]
        )
    ledger.set_meta(ACCOUNT, name)


class Comparison:
    """`endpoints:` — every manifest item once per endpoint, as one more matrix dimension: the
    key is the item's key and the endpoint's alias (``cat@flux-kontext-dev``), the payload the
    item's own (adapted to the endpoint's fields when it is sent: `batch.fal.adapters`). Each
    pair is checked here, so an item an endpoint cannot take (more images than it takes, a value
    out of its range) stops the plan with its line, before anything is sent."""

    def __init__(self, endpoints: Sequence[str], *, keyed: bool = True) -> None:
        """`keyed`: a comparison (keys get the endpoint's alias); else one endpoint, checked."""
        self.endpoints = list(endpoints)
        self.keyed = keyed
        self.problems: list[str] = []
        self.notes: dict[str, set[str]] = {e: set() for e in endpoints}
        seen: dict[str, str] = {}
        for endpoint in self.endpoints:
            alias = endpoint_alias(endpoint)
            if alias in seen:
                raise JobError(
                    [
                        f"endpoints: {seen[alias]} and {endpoint} would both key their items"
                        f" '…@{alias}': compare them in two jobs"
                    ]
                )
            seen[alias] = endpoint

    def items(self, items: Iterable[EditItem]) -> Iterator[EditItem]:
        for item in items:
            for endpoint in self.endpoints:
                try:
                    made = adaptation(endpoint, item.payload)
                except AdapterError as exc:
                    self.problems.append(f"{item.source}: {exc}")
                    continue
                self.notes[endpoint].update(f"{f} is not sent" for f in made.dropped)
                self.notes[endpoint].update(made.converted)
                if not self.keyed:
                    yield item
                    continue
                key = compared_key(item.key, endpoint)
                yield EditItem(key, endpoint, item.payload, item.source, item.user_id)
        if self.problems:
            raise ManifestError(self.problems)

    def warnings(self) -> list[str]:
        return [
            f"{endpoint}: {note}"
            for endpoint, notes in self.notes.items()
            for note in sorted(notes)
        ]


def pilot_sample(ledger: Ledger, n: int, seed: int) -> int:
    """Mark a pilot's sample: `n` of the manifest's inputs, chosen by a hash of the seed and
    each key (the same every time, whatever the manifest's order; a comparison's item counts
    once, with all its endpoints). Returns the sample's items still to do."""
    groups: dict[str, list[str]] = {}
    for key, endpoint in ledger.manifest_items():
        base = key.removesuffix("@" + endpoint_alias(endpoint))
        groups.setdefault(base, []).append(key)
    chosen = sorted(groups, key=lambda base: hashlib.sha256(f"{seed}:{base}".encode()).digest())
    ledger.set_pilot(key for base in chosen[:n] for key in groups[base])
    counts = ledger.pilot_counts()
    return counts.get("pending", 0) + counts.get("submitted", 0)


def settle(
    ledger: Ledger, plan: Planned, *, account: str | None, sample: tuple[int, int] | None
) -> None:
    """After the plan: the account the ledger's requests go to (`accounts:`), and a pilot's
    sample (`run --sample N`: then the run does only the sample)."""
    if account is not None:
        use_account(ledger, account)
    with ledger.group() as conn:  # a redo whose item was approved since is not paid for
        dropped = drop_unwanted(conn, set(ledger.reviews.rejected_items()))
    if dropped:
        plan.to_do -= len(dropped)
        log.info("%d redos not sent: their items are no longer rejected", len(dropped))
    if sample is not None:
        plan.to_do = pilot_sample(ledger, *sample)
