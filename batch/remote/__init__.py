"""Object storage for sharded runs: a store opened from a URL, a lease, snapshots, a journal.

Needs the `[cloud]` extra (obstore), imported only when a store is opened. Of the package it
imports only `batch.errors`.
"""

from batch.remote.errors import (
    LeaseError,
    LeaseHeld,
    LeaseLost,
    MissingObjectError,
    StoreConfigError,
    StoreError,
)
from batch.remote.lease import Lease, LeaseInfo, default_owner
from batch.remote.snapshot import Announced, Journal, restore_sqlite, snapshot_sqlite
from batch.remote.store import Head, Store, open_store

__all__ = [
    "Announced",
    "Head",
    "Journal",
    "Lease",
    "LeaseError",
    "LeaseHeld",
    "LeaseInfo",
    "LeaseLost",
    "MissingObjectError",
    "Store",
    "StoreConfigError",
    "StoreError",
    "default_owner",
    "open_store",
    "restore_sqlite",
    "snapshot_sqlite",
]
