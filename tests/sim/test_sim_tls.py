"""Certificates a client must refuse (§11 row 12): a CA it was not given, and a certificate for
another host name. Both are configuration errors, never transient."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import pytest


async def _health(url: str, context: ssl.SSLContext | bool, **kwargs: Any) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/_sim/health", ssl=context, **kwargs) as resp,
    ):
        return resp.status


async def test_untrusted_ca_fails_verification(start_sim: Any) -> None:
    api = await start_sim(tls=True)
    with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
        await _health(api.url, True)  # the system's CAs: the simulator's is not among them
    assert isinstance(caught.value.certificate_error, ssl.SSLCertVerificationError)
    assert await _health(api.url, api.sim.client_ssl_context()) == 200


async def test_certificate_for_another_name_is_a_hostname_mismatch(start_sim: Any) -> None:
    """`tls_names`: the CA is trusted, but the certificate names only `fal.invalid`."""
    api = await start_sim(tls=True, tls_names=["fal.invalid"])
    context = api.sim.client_ssl_context()
    assert context is not None
    with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
        await _health(api.url, context)
    error = caught.value.certificate_error
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "mismatch" in str(error).lower() or "doesn't match" in str(error).lower()
    # The same certificate verifies for the name it carries.
    assert await _health(api.url, context, server_hostname="fal.invalid") == 200
