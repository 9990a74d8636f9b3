"""URL paths: endpoint ids, app roots, request paths and route kinds (fal-protocol.md §1, §5).

The app root is `owner/alias`, or `ns/owner/alias` when the first part is a namespace
(`workflows`, `comfy`); the rest of an endpoint id is a sub-path, used only at submit. Status,
result and cancel live under `/{root}/requests/{id}`; a sub-path there is answered 405.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACES = frozenset({"workflows", "comfy"})
# First path segments that are never an endpoint owner: the simulator's own routes.
RESERVED = frozenset({"_sim", "storage", "files", ".well-known", "v1"})
ADMIN_PREFIXES = ("/_sim/", "/.well-known/")
QUEUE_ROUTES = frozenset({"submit", "status", "stream", "result", "cancel"})
PRICING_PATH = "/v1/models/pricing"
HISTORY_PATH = "/v1/models/requests/by-endpoint"  # the Platform API's request history

_ACTIONS: dict[tuple[str, ...], tuple[str, str]] = {
    (): ("result", "GET"),
    ("response",): ("result", "GET"),
    ("status",): ("status", "GET"),
    ("status", "stream"): ("stream", "GET"),
    ("cancel",): ("cancel", "PUT"),
}


def segments(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def root_length(parts: list[str]) -> int:
    return 3 if parts and parts[0] in NAMESPACES else 2


def endpoint_root(endpoint_id: str) -> str | None:
    """The app root of an endpoint id, or None when the id is not a valid queue endpoint."""
    parts = segments(endpoint_id)
    n = root_length(parts)
    if len(parts) < n or parts[0] in RESERVED:
        return None
    return "/".join(parts[:n])


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed `/{root}/requests/{id}[/...]` path."""

    root: str
    request_id: str
    action: str  # "status", "stream", "result" or "cancel"
    method: str  # the method the action needs
    subpath: bool  # the URL carries more than the app root: answered 405


def parse_request_path(path: str) -> Target | None:
    """The request path's target, or None when the path is not about a queued request."""
    parts = segments(path)
    n = root_length(parts)
    if len(parts) < n + 2 or parts[0] in RESERVED:
        return None
    try:
        i = parts.index("requests", n)
    except ValueError:
        return None
    if i + 1 >= len(parts):
        return None
    found = _ACTIONS.get(tuple(parts[i + 2 :]))
    if found is None:
        return None
    action, method = found
    return Target("/".join(parts[:i]), parts[i + 1], action, method, subpath=i != n)


def classify(method: str, path: str) -> str | None:
    """The route kind counted and matched by fault rules; None for admin paths (uncounted)."""
    if path.startswith(ADMIN_PREFIXES) or path == "/_sim":
        return None
    if path == "/storage/auth/token":
        return "token"
    if path == "/storage/upload/initiate":
        return "initiate"
    if path.startswith("/storage/upload/signed/"):
        return "upload"
    if path.startswith("/files/"):
        return "files" if method in ("GET", "HEAD") else "upload"
    if path.startswith("/storage/"):
        return "other"
    if path == PRICING_PATH:
        return "pricing"
    if path == HISTORY_PATH:
        return "history"
    if path.startswith("/v1/"):
        return "other"
    if method == "POST":
        return "submit"
    target = parse_request_path(path)
    return target.action if target is not None else "other"
