"""Speaks fal's queue protocol; knows nothing about batches, ledgers or manifests."""

from batch.fal.auth import Credentials, credentials_from_env
from batch.fal.client import DEFAULT_QUEUE_URL, QueueClient, Timeouts, parse_status
from batch.fal.errors import (
    AccountLockedError,
    AmbiguousSubmitError,
    AuthError,
    ConnectError,
    FalError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    StartTimeoutError,
    TlsError,
    TransientError,
)
from batch.fal.history import HistoryEntry, HistoryPage
from batch.fal.jwks import DEFAULT_JWKS_URL, JwksCache
from batch.fal.platform import DEFAULT_PLATFORM_URL, EndpointPrice, PlatformClient
from batch.fal.storage import (
    DEFAULT_REST_URL,
    CdnToken,
    ContentChangedError,
    StorageClient,
    encode_data_uri,
)
from batch.fal.types import (
    Completed,
    InProgress,
    LogEntry,
    Queued,
    RequestHandle,
    Result,
    Status,
)
from batch.fal.webhooks import WebhookDelivery, WebhookReceiver, WebhookRejected

__all__ = [
    "DEFAULT_JWKS_URL",
    "DEFAULT_PLATFORM_URL",
    "DEFAULT_QUEUE_URL",
    "DEFAULT_REST_URL",
    "AccountLockedError",
    "AmbiguousSubmitError",
    "AuthError",
    "CdnToken",
    "Completed",
    "ConnectError",
    "ContentChangedError",
    "Credentials",
    "EndpointPrice",
    "FalError",
    "HistoryEntry",
    "HistoryPage",
    "InProgress",
    "JwksCache",
    "LogEntry",
    "NotFoundError",
    "PermanentError",
    "PlatformClient",
    "QueueClient",
    "Queued",
    "RateLimitedError",
    "RequestHandle",
    "Result",
    "StartTimeoutError",
    "Status",
    "StorageClient",
    "Timeouts",
    "TlsError",
    "TransientError",
    "WebhookDelivery",
    "WebhookReceiver",
    "WebhookRejected",
    "credentials_from_env",
    "encode_data_uri",
    "parse_status",
]
