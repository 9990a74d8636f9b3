"""Where the fal key comes from, and the one object that holds it.

Environment variables are read here and nowhere else. `Credentials` never shows the key in its
repr or str, so a key cannot leak through a log line or an exception message by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class Credentials:
    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        if not key or not key.strip():
            raise ValueError("the fal key is empty")
        self._key = key.strip()

    @property
    def header(self) -> str:
        """The Authorization header value."""
        return f"Key {self._key}"

    def reveal(self) -> str:
        """The raw key, for the few places that must pass it on (the embedded simulator)."""
        return self._key

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    __str__ = __repr__


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """`FAL_KEY`, else `FAL_KEY_ID` + `FAL_KEY_SECRET` joined as `id:secret`, else None."""
    env = os.environ if env is None else env
    key = env.get("FAL_KEY", "").strip()
    if key:
        return Credentials(key)
    key_id, secret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if key_id and secret:
        return Credentials(f"{key_id}:{secret}")
    return None
