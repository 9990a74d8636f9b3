"""Named places where a test can make the process die, to prove crash safety.

A test arms one with `FIRERED_BATCH_CRASH=NAME:N` in the environment of a `firered-batch`
command (the CLI calls `arm_from_env`; the library never reads the environment for it): the Nth
pass through `crashpoint(NAME)` kills the process with SIGKILL, exactly as `kill -9` would at
that instant. Disarmed (always, outside tests) a crashpoint costs one comparison. Names:
`intent` (a submit's intent is recorded, the submit not sent yet), `submit` (fal accepted a
request, the ledger does not know yet), `download` (an output file
half written), `ledger` (inside the transaction that completes an item).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Mapping

ENV = "FIRERED_BATCH_CRASH"

_plan: tuple[str, int] | None = None
_seen: Counter[str] = Counter()


def arm(name: str, count: int = 1) -> None:
    """Kill the process at the `count`th pass through `crashpoint(name)`."""
    global _plan
    _plan = (name, max(1, count))
    _seen.clear()


def disarm() -> None:
    global _plan
    _plan = None


def arm_from_env(environ: Mapping[str, str] = os.environ) -> None:
    """Arm from `FIRERED_BATCH_CRASH=NAME:N`; a value that is not of that form is ignored."""
    name, _, count = environ.get(ENV, "").partition(":")
    if name and count.isdigit():
        arm(name, int(count))


def crashpoint(name: str) -> None:
    if _plan is None or _plan[0] != name:
        return
    _seen[name] += 1
    if _seen[name] == _plan[1]:
        os.kill(os.getpid(), signal.SIGKILL)
