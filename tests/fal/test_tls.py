"""TLS: a certificate that does not verify is a TlsError (a configuration error, exit code 7),
never a connect error; `ca_bundle` (or SSL_CERT_FILE) makes a private CA trusted, for the queue
client and for the storage and platform clients on its session."""

import ssl

import aiohttp
import pytest

from batch.errors import ExitCode, InvalidInputError
from batch.fal import (
    ConnectError,
    Credentials,
    PlatformClient,
    QueueClient,
    StorageClient,
    TlsError,
    TransientError,
)
from batch.fal.transport import error_for_exception

KEY = "tls-test-key-0123456789"
ENDPOINT = "fal-ai/firered-image-edit"
SUBMITTED = {
    "request_id": "r1",
    "response_url": "unused",
    "status_url": "unused",
    "cancel_url": "unused",
}


def _conn_key(host: str = "queue.example") -> object:
    return aiohttp.client_reqrep.ConnectionKey(host, 443, True, True, None, None, None)


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_message = message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


@pytest.mark.parametrize("submit", [True, False])
def test_certificate_errors_are_tls_errors(submit):
    """aiohttp's certificate error, an SSL error caused by verification, and the bare ssl
    error: all TlsError, naming the host and the reason and saying what to set."""
    cause = _verify_error("self-signed certificate")
    candidates = [
        aiohttp.ClientConnectorCertificateError(_conn_key(), cause),
        aiohttp.ClientConnectorSSLError(_conn_key(), cause),
        cause,
    ]
    for exc in candidates:
        tls = error_for_exception("submit x", exc, submit=submit, url="https://queue.example/x")
        assert type(tls) is TlsError
        assert not isinstance(tls, TransientError)
        assert tls.host == "queue.example"
        assert tls.reason == "self-signed certificate"
        text = str(tls)
        assert "queue.example" in text and "self-signed certificate" in text
        assert "ca_bundle" in text and "SSL_CERT_FILE" in text
        assert tls.exit_code == ExitCode.TLS == 7
        assert tls.kind == "tls"


def test_other_ssl_failures_stay_connect_errors():
    """A handshake that failed for another reason is not a certificate problem."""
    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc = aiohttp.ClientConnectorSSLError(_conn_key(), other)
    assert type(error_for_exception("status", exc, submit=False)) is ConnectError


async def test_self_signed_server_is_refused_by_default_and_trusted_with_ca_bundle(
    serve, kit, cert, monkeypatch
):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server = await serve(
        {("POST", f"/{ENDPOINT}"): kit.Answer(200, SUBMITTED)}, cert.server_context()
    )
    assert server.url.startswith("https://127.0.0.1:")
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        with pytest.raises(TlsError) as caught:
            await client.submit(ENDPOINT, {"prompt": "p"})
    assert caught.value.host == "127.0.0.1"
    assert "certificate" in caught.value.reason.lower()
    assert KEY not in f"{caught.value} {caught.value!r}"
    assert server.seen == []  # nothing reached the server
    async with QueueClient(
        base_url=server.url, credentials=Credentials(KEY), ca_bundle=cert.cert_file
    ) as client:
        assert (await client.submit(ENDPOINT, {"prompt": "p"})).request_id == "r1"
    assert len(server.seen) == 1


async def test_ssl_cert_file_is_honoured_without_ca_bundle(serve, kit, cert, monkeypatch):
    """None: Python's default context, made when the client is, reads SSL_CERT_FILE."""
    server = await serve(
        {("POST", f"/{ENDPOINT}"): kit.Answer(200, SUBMITTED)}, cert.server_context()
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert_file))
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        assert (await client.submit(ENDPOINT, {"prompt": "p"})).request_id == "r1"


async def test_wrong_host_is_a_tls_error(serve, kit, tmp_path):
    """A certificate trusted but issued for another name: the host name does not verify."""
    other = kit.make_cert(tmp_path / "other", ["fal.example"])
    server = await serve(
        {("POST", f"/{ENDPOINT}"): kit.Answer(200, SUBMITTED)}, other.server_context()
    )
    async with QueueClient(
        base_url=server.url, credentials=Credentials(KEY), ca_bundle=str(other.cert_file)
    ) as client:
        with pytest.raises(TlsError) as caught:
            await client.status(client.handle_for(ENDPOINT, "r1"))
    assert "mismatch" in caught.value.reason.lower()
    assert "127.0.0.1" in str(caught.value)


async def test_storage_and_platform_share_the_queue_clients_tls(serve, kit, cert):
    """The session carries the CA: uploads and pricing over it verify with `ca_bundle`."""
    url_holder: dict[str, str] = {}
    A = kit.Answer

    async def token(_request):
        return A(
            200,
            {
                "token": "cdn-token",
                "token_type": "Bearer",
                "base_url": url_holder["url"],
                "expires_at": "2999-01-01T00:00:00+00:00",
            },
        ).response()

    server = await serve(
        {
            ("POST", "/storage/auth/token"): token,
            ("POST", "/files/upload"): A(200, {"access_url": "https://cdn.example/f.png"}),
            ("GET", "/v1/models/pricing"): A(
                200,
                {
                    "prices": [
                        {
                            "endpoint_id": ENDPOINT,
                            "unit_price": 0.03,
                            "unit": "image",
                            "currency": "USD",
                        }
                    ],
                    "next_cursor": None,
                    "has_more": False,
                },
            ),
        },
        cert.server_context(),
    )
    url_holder["url"] = server.url
    async with QueueClient(
        base_url=server.url, credentials=Credentials(KEY), ca_bundle=cert.cert_file
    ) as client:
        storage = StorageClient(client.session, client.credentials, rest_url=server.url)
        assert await storage.upload(b"png", "image/png") == "https://cdn.example/f.png"
        platform = PlatformClient(client.session, client.credentials, base_url=server.url)
        assert (await platform.pricing(ENDPOINT)).unit_price == 0.03
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as plain:
        storage = StorageClient(plain.session, plain.credentials, rest_url=server.url)
        with pytest.raises(TlsError):
            await storage.upload(b"png", "image/png")
        with pytest.raises(TlsError):
            await PlatformClient(plain.session, plain.credentials, server.url).pricing(ENDPOINT)


def test_unusable_ca_bundle_is_refused_before_anything_is_sent(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidInputError, match="ca_bundle"):
        QueueClient(base_url="https://127.0.0.1:9", credentials=Credentials(KEY), ca_bundle=missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InvalidInputError, match=r"junk\.pem"):
        QueueClient(base_url="https://127.0.0.1:9", credentials=Credentials(KEY), ca_bundle=junk)


def test_ca_bundle_and_ssl_context_are_exclusive(cert):
    with pytest.raises(ValueError, match="not both"):
        QueueClient(
            credentials=Credentials(KEY),
            ca_bundle=cert.cert_file,
            ssl_context=ssl.create_default_context(),
        )
