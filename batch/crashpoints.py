"""Named places where a test can make the process die, to prove crash safety.

`FIRERED_BATCH_CRASH=NAME:N` makes the Nth pass through `crashpoint(NAME)` kill the process
with SIGKILL, exactly as `kill -9` would at that instant. Unset (always, outside tests) a
crashpoint costs one comparison. Names: `submit` (fal accepted a request, the ledger does not
know yet), `download` (an output file half written), `ledger` (inside the transaction that
completes an item).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_ENV = "FIRERED_BATCH_CRASH"


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value or ":" not in value:
        return None
    name, _, count = value.partition(":")
    return name, max(1, int(count))


_PLAN = _parse(os.environ.get(_ENV))
_seen: Counter[str] = Counter()


def crashpoint(name: str) -> None:
    if _PLAN is None or _PLAN[0] != name:
        return
    _seen[name] += 1
    if _seen[name] == _PLAN[1]:
        os.kill(os.getpid(), signal.SIGKILL)
