"""A small Server-Sent Events parser: `data:` lines make events, `:` lines are keepalives."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def iter_events(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Yield each event's data (multi-line data joined with newlines); skip comments."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment, e.g. fal's `: ping` keepalive
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        # `event:`, `id:` and `retry:` fields carry nothing fal uses.
    if data:
        yield "\n".join(data)
