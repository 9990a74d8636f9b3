"""Fixtures for whole runs: a simulator we can inspect, and a job pointed at it."""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[..., None]
