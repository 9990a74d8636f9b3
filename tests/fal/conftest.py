"""Scripted fal servers for the client's tests: tiny aiohttp apps on 127.0.0.1 that answer
exactly what fal's docs say (status, headers, body) and record every request they get; and a
throw-away self-signed certificate for https."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Answer:
    """One scripted answer: a JSON body (or text, when `text` is given) with headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None

    def response(self) -> web.Response:
        if self.text is not None:
            return web.Response(status=self.status, text=self.text, headers=self.headers)
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        return web.Response(status=self.status, body=payload, headers=headers)


@dataclass(frozen=True)
class Seen:
    """A request the server got."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with "\n"
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        return values[0] if values else None


Handler = Answer | Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Scripted:
    """A running scripted server: `url`, the `routes` it answers, and what it was sent."""

    url: str
    routes: dict[tuple[str, str], Handler]
    seen: list[Seen]

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]


StartServer = Callable[..., Awaitable[Scripted]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """serve(routes, ssl=None) -> Scripted: (METHOD, path) -> Answer or handler; unknown
    routes answer 404. Servers close after the test."""
    async with AsyncExitStack() as stack:

        async def start(
            routes: dict[tuple[str, str], Handler], ssl_context: ssl.SSLContext | None = None
        ) -> Scripted:
            seen: list[Seen] = []

            async def dispatch(request: web.Request) -> web.StreamResponse:
                headers: dict[str, str] = {}
                for name, value in request.headers.items():
                    key = name.lower()
                    headers[key] = f"{headers[key]}\n{value}" if key in headers else value
                seen.append(
                    Seen(
                        request.method,
                        request.path,
                        list(request.query.items()),
                        headers,
                        await request.read(),
                    )
                )
                handler = routes.get((request.method, request.path))
                if handler is None:
                    return web.json_response({"detail": "Not Found"}, status=404)
                if isinstance(handler, Answer):
                    return handler.response()
                return await handler(request)

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", dispatch)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server(ssl=ssl_context)
            stack.push_async_callback(server.close)
            return Scripted(str(server.make_url("")).rstrip("/"), routes, seen)

        yield start


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Cert:
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_cert(directory: Path, hosts: list[str]) -> Cert:
    """A self-signed certificate for `hosts` (its own CA), written as PEM files."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "firered-batch test server")])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Cert(cert_file, key_file)


@pytest.fixture
def cert(tmp_path: Path) -> Cert:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    return make_cert(tmp_path / "tls", ["127.0.0.1", "localhost"])


class Kit:
    """The helpers above, for tests (conftest modules cannot be imported by name)."""

    Answer = Answer
    closed_port = staticmethod(closed_port)
    make_cert = staticmethod(make_cert)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
