"""Endpoint id → queue URLs, as both official clients compute them (fal-protocol §5).

Submit goes to the full endpoint id, sub-path included; status, result and cancel live under the
app root (`owner/alias`, or `ns/owner/alias` for the `workflows` and `comfy` namespaces), with
the sub-path dropped. A client should prefer the URLs the server returns; these are for
re-attaching to a request id recorded earlier.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

NAMESPACES = frozenset({"workflows", "comfy"})
_LEGACY_ID = re.compile(r"^([0-9]+)-([a-zA-Z0-9-]+)$")
_REDOS = re.compile(r"(~redo[0-9]+)+$")  # what `retry --rejected` appends to a key


@dataclass(frozen=True)
class AppId:
    owner: str
    alias: str
    path: str | None = None
    namespace: str | None = None

    @property
    def root(self) -> str:
        """The app root used by status, result and cancel URLs."""
        parts = [self.namespace, self.owner, self.alias]
        return "/".join(p for p in parts if p)

    @property
    def endpoint_id(self) -> str:
        return f"{self.root}/{self.path}" if self.path else self.root


@functools.lru_cache(maxsize=256)  # a run submits to a few endpoints, hundreds of times a second
def parse_endpoint(endpoint_id: str) -> AppId:
    """Split an endpoint id like `fal-ai/flux/dev` or `workflows/acme/wf/run`."""
    cleaned = "/".join(p for p in endpoint_id.strip().strip("/").split("/") if p)
    parts = cleaned.split("/") if cleaned else []
    if len(parts) == 1:
        legacy = _LEGACY_ID.match(parts[0])
        if legacy:
            return AppId(owner=legacy.group(1), alias=legacy.group(2))
    if parts and parts[0] in NAMESPACES:
        if len(parts) < 3:
            raise ValueError(f"invalid endpoint id {endpoint_id!r}: expected ns/owner/alias")
        return AppId(parts[1], parts[2], "/".join(parts[3:]) or None, namespace=parts[0])
    if len(parts) < 2:
        raise ValueError(f"invalid endpoint id {endpoint_id!r}: expected owner/alias[/path]")
    return AppId(parts[0], parts[1], "/".join(parts[2:]) or None)


def submit_url(base_url: str, endpoint_id: str) -> str:
    return f"{base_url.rstrip('/')}/{parse_endpoint(endpoint_id).endpoint_id}"


def request_url(base_url: str, endpoint_id: str, request_id: str) -> str:
    """The result URL of a request; status and cancel append `/status` and `/cancel`."""
    return f"{base_url.rstrip('/')}/{parse_endpoint(endpoint_id).root}/requests/{request_id}"


def endpoint_alias(endpoint_id: str) -> str:
    """``fal-ai/flux-kontext/dev`` → ``flux-kontext-dev``: the endpoint in the key of a compared
    item (``cat@flux-kontext-dev``, `compared_key`)."""
    return endpoint_id.split("/", 1)[-1].replace("/", "-")


def compared_key(key: str, endpoint_id: str) -> str:
    """The key of a manifest item run on `endpoint_id` as part of a comparison."""
    return f"{key}@{endpoint_alias(endpoint_id)}"


def input_key(key: str, endpoint_id: str) -> str:
    """The manifest input an item (or its redo) is for: ``cat@qwen-image-edit~redo1`` → ``cat``
    (only the redo numbers a redo appends are taken off: ``shot~redo-final`` is an input)."""
    return _REDOS.sub("", key).removesuffix("@" + endpoint_alias(endpoint_id))
