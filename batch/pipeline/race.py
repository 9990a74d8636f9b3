"""Waiting for whichever of several things happens first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def first_of(
    *awaitables: Awaitable[Any], timeout: float | None = None
) -> set[asyncio.Future[Any]]:
    """Wait until the first of `awaitables` is done (or `timeout` seconds pass), cancel the
    others and wait for them to end; return the ones that are done (empty on a timeout)."""
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, pending = await asyncio.wait(
            futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return done
