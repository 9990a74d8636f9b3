"""The ledger's value types: item states, rows, plan results, and the canonical request."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

from batch.errors import BatchError


class ItemState(StrEnum):
    pending = "pending"
    submitted = "submitted"
    completed = "completed"
    failed = "failed"


class LedgerError(BatchError):
    """Base of the ledger's own errors."""


class UnknownItemError(LedgerError, KeyError):
    """No item has this key."""

    def __str__(self) -> str:
        return f"no item with key {self.args[0]!r}"


class InvalidTransitionError(LedgerError):
    """The item is not in a state this change may start from."""

    def __init__(self, key: str, state: str, action: str) -> None:
        super().__init__(f"item {key!r} is {state}; cannot {action}")
        self.key = key
        self.state = state
        self.action = action


class ItemLike(Protocol):
    """What `Ledger.plan` reads from a manifest item (e.g. `batch.manifest.EditItem`)."""

    @property
    def key(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...

    @property
    def source(self) -> str: ...


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, unicode kept: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(endpoint: str, payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical `{"endpoint": …, "payload": …}`."""
    return hash_canonical(endpoint, canonical_json(payload))


def hash_canonical(endpoint: str, payload_json: str) -> str:
    """`request_hash` from the payload's canonical JSON, without encoding it again (the
    canonical object's keys sort as "endpoint" < "payload")."""
    text = f'{{"endpoint":{canonical_json(endpoint)},"payload":{payload_json}}}'
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SECRET_NAME = re.compile(
    r"(^|_)(key|token|secret|password|passwd|authorization|credentials?|cookie)$", re.I
)


def redact(value: Any) -> Any:
    """A copy of `value` with credential-like mapping entries replaced by "<redacted>"."""
    if isinstance(value, Mapping):
        return {
            k: "<redacted>" if SECRET_NAME.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class ItemRow:
    """One row of `items`. `request` is the canonical payload JSON; `payload` decodes it."""

    key: str
    source: str
    endpoint: str
    request: str
    request_hash: str
    state: ItemState
    attempts: int
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    possible_duplicate: bool
    not_before: float | None
    error_kind: str | None
    error_message: str | None
    seed: int | None
    timings: dict[str, Any] | None
    nsfw: list[bool] | None
    created_at: float
    updated_at: float
    submitted_at: float | None
    completed_at: float | None
    run_id: int | None
    in_manifest: bool
    submit_started_at: float | None = None
    error_type: str | None = None  # fal's `X-Fal-Error-Type` / `error_type` (m006)
    billable_units: float | None = None  # fal's `X-Fal-Billable-Units` of the result (m006)
    sent_payload: str | None = None  # canonical JSON of the submit on its way (m007)
    recovered: bool = False  # re-attached from fal's request history after a lost answer (m007)

    @cached_property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.request)
        return value

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ItemRow:
        data = dict(row)
        data["state"] = ItemState(data["state"])
        data["possible_duplicate"] = bool(data["possible_duplicate"])
        data["in_manifest"] = bool(data["in_manifest"])
        data["recovered"] = bool(data.get("recovered", 0))
        data["timings"] = _loads(data["timings"])
        data["nsfw"] = _loads(data["nsfw"])
        return cls(**data)


ITEM_COLUMNS = tuple(ItemRow.__dataclass_fields__)


@dataclass(frozen=True)
class Conflict:
    """An item whose key is known with a different request (the manifest row changed)."""

    key: str
    source: str
    previous_source: str


@dataclass(frozen=True)
class PlanResult:
    """What `Ledger.plan` found. Counts are of distinct keys in the manifest, except `missing`
    (ledger items the manifest no longer lists) and `duplicates` (repeated keys, skipped)."""

    total: int = 0
    new: int = 0
    completed: int = 0
    pending: int = 0
    submitted: int = 0
    failed: int = 0
    changed: int = 0
    duplicates: int = 0
    missing: int = 0
    redo_changed: bool = False
    conflicts: tuple[Conflict, ...] = field(default=())

    @property
    def resume(self) -> int:
        """Known items the run will pick up again (pending or submitted)."""
        return self.pending + self.submitted

    @property
    def to_do(self) -> int:
        """Items `iter_work` will yield for this manifest: new + resumed + redone changed."""
        return self.new + self.resume + (self.changed if self.redo_changed else 0)


@dataclass(frozen=True)
class FailureGroup:
    """Failed items with one error kind: how many, and one example."""

    kind: str
    count: int
    example_key: str
    example_message: str
