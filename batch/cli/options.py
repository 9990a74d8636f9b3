"""Options shared by commands; they reach the library as `JobSpec` field names."""

from __future__ import annotations

import os
from typing import Any

import click

from batch.fal import Credentials
from batch.job.settings import AccountSpec


def fal_settings(options: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the options of fal's platform settings out of `options`; the `fal` override."""
    names = ("ca_bundle", "max_queue_length", "history_wait", "platform_url")
    values = {name: options.pop(name, None) for name in names}
    return {k: v for k, v in values.items() if v is not None} or None


def input_options(fn: Any) -> Any:
    """Options about local input images; they reach the command as `JobSpec` field names."""
    options = [
        click.option("--rest-url", help="fal's REST URL for storage uploads (CDN token)."),
        click.option(
            "--inputs",
            type=click.Choice(["upload", "data-uri"]),
            help="Local images: upload them, or send small ones inline.",
        ),
        click.option(
            "--upload-concurrency", type=click.IntRange(min=1), help="Max uploads in flight."
        ),
        click.option("--upload-max-age", help="Upload a file again after this long (e.g. 24h)."),
        click.option(
            "--max-image-bytes", type=click.IntRange(min=1), help="Largest local image (bytes)."
        ),
        click.option(
            "--ca-bundle",
            type=click.Path(exists=True, dir_okay=False),
            help="CA certificates file for https to fal (default: the system's, SSL_CERT_FILE).",
        ),
        click.option(
            "--max-queue-length",
            type=click.IntRange(min=1),
            help="fal answers 429 beyond this many queued requests (fal_max_queue_length).",
        ),
        click.option(
            "--history-wait",
            help="Look this long (e.g. 10m) for a submit whose answer was lost in fal's request"
            " history before sending it again (default: from start_timeout and service times).",
        ),
        click.option("--platform-url", help="fal's Platform API (request history, prices)."),
        click.option(
            "--max-megapixels",
            type=click.FloatRange(min=0, min_open=True),
            help="Most pixels a local image may have, in megapixels.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def webhook_options(fn: Any) -> Any:
    """Webhook options; `webhook_settings` turns them into the `webhook` setting."""
    options = [
        click.option("--webhook-url", help="Public URL fal posts results to (wait: webhook)."),
        click.option(
            "--webhook-listen",
            metavar="HOST:PORT",
            help="Where the receiver listens (host default 127.0.0.1).",
        ),
        click.option("--jwks-url", help="JWKS URL of fal's webhook signing keys."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def webhook_settings(options: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the webhook options out of `options`; the `webhook` override (None if none set)."""
    names = {"webhook_url": "public_url", "webhook_listen": "listen", "jwks_url": "jwks_url"}
    values = {field: options.pop(name, None) for name, field in names.items()}
    return {k: v for k, v in values.items() if v is not None} or None


def account_credentials(account: AccountSpec | None, *, needed: bool) -> Credentials | None:
    """The key of a job's account (`accounts:`), from the environment variable it names; None
    for the default (FAL_KEY). Missing: a usage error (exit 2) naming the variable."""
    if account is None or not needed:
        return None
    key = os.environ.get(account.key_env, "").strip()
    if not key:
        raise click.UsageError(
            f"account {account.name!r}: ${account.key_env} is not set (it holds the account's"
            " fal key)"
        )
    return Credentials(key)
