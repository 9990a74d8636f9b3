"""The results ledger: the SQLite state of every item, the one source of truth.

    ledger/
      models.py      ItemState, ItemRow, PlanResult, errors, canonical request hash
      migrations.py  named migrations (m001_initial, ...) recorded in `migrations`
      plan.py        Ledger.plan: manifest ⇄ ledger reconciliation in bounded memory
      store.py       Ledger: open, plan, export (bases below)
      transitions.py LedgerTransitions: mark_submitted/completed/failed/retry, reset
      reads.py       LedgerReads: read-only queries of items and outputs
      runs.py        LedgerRuns: the runs table and meta settings
      group.py       group commit of the event loop's frequent transitions
      checkpoint.py  WAL checkpoints in a thread, off the event loop
      export.py      results.csv / results.jsonl, derived and written atomically (cells a
                     spreadsheet would run as formulas neutralised in the CSV)
      faults.py      a missing, damaged or read-only ledger, a full disk: errors that say what
                     to do (SQLite's errors mapped to them)
      doctor.py      `firered-batch doctor`: the ledger and the outputs checked, what to do
      tx.py          the one way to write: a transaction under the ledger's lock
      uploads.py     local input files read and the upload cache

Secrets: the ledger stores only what callers hand it and never reads a key itself. Callers
must not pass secrets (the API key, auth headers) in requests, messages or settings; run
settings with credential-like names are redacted as a second guard (DESIGN invariant 6).
"""

from batch.ledger.export import CSV_NAME, JSONL_NAME, ExportPaths, export_results
from batch.ledger.faults import (
    LedgerDamagedError,
    LedgerMissingError,
    check_ledger_present,
    sqlite_fault,
)
from batch.ledger.migrations import MIGRATIONS, migration
from batch.ledger.models import (
    Conflict,
    FailureGroup,
    InvalidTransitionError,
    ItemLike,
    ItemRow,
    ItemState,
    LedgerError,
    PlanResult,
    UnknownItemError,
    canonical_json,
    redact,
    request_hash,
)
from batch.ledger.runs import ACCOUNT_LOCKED_META
from batch.ledger.store import LEDGER_FILE, REATTACH_KINDS, Ledger

__all__ = [
    "ACCOUNT_LOCKED_META",
    "CSV_NAME",
    "JSONL_NAME",
    "LEDGER_FILE",
    "MIGRATIONS",
    "REATTACH_KINDS",
    "Conflict",
    "ExportPaths",
    "FailureGroup",
    "InvalidTransitionError",
    "ItemLike",
    "ItemRow",
    "ItemState",
    "Ledger",
    "LedgerDamagedError",
    "LedgerError",
    "LedgerMissingError",
    "PlanResult",
    "UnknownItemError",
    "canonical_json",
    "check_ledger_present",
    "export_results",
    "migration",
    "redact",
    "request_hash",
    "sqlite_fault",
]
