"""The review server over real sockets: the token, CSRF and Host checks, files, decisions."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from batch.ledger import Ledger
from batch.report.review import (
    RemoteHostError,
    ReviewJob,
    is_loopback,
    review_server,
)

TOKEN = "t0ken-for-tests-0123456789"
WRITE = {"X-Firered-Review": "1"}


class Client:
    """A browser-like client of one review server: it got the token URL, so it has the cookie."""

    def __init__(self, session: aiohttp.ClientSession, base: URL) -> None:
        self.session = session
        self.base = base
        self.origin = f"http://{base.host}:{base.port}"

    async def post(self, payload: Any, **headers: str) -> tuple[int, Any]:
        sent = {"Origin": self.origin, **WRITE, **headers}
        async with self.session.post(self.base / "api/decisions", json=payload, headers=sent) as r:
            return r.status, await r.json()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async with self.session.get(self.base.join(URL(path, encoded=True)), **kwargs) as r:
            return r.status, await r.read()

    async def raw_get(self, path: str) -> tuple[int, bytes]:
        """GET /`path` sent byte for byte (no client normalises its dots), with the token."""
        reader, writer = await asyncio.open_connection(self.base.host, self.base.port)
        try:
            writer.write(
                f"GET /{path} HTTP/1.1\r\nHost: {self.base.host}:{self.base.port}\r\n"
                f"X-Firered-Token: {TOKEN}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@pytest.fixture
async def served(outputs) -> AsyncIterator[tuple[Path, URL]]:
    out = outputs({"a": 1, "b": 2})
    job = ReviewJob("shots")
    async with review_server(out, token=TOKEN, reviewer="alice", job=job) as server:
        yield out, URL(server.url)


@pytest.fixture
async def client(served) -> AsyncIterator[Client]:
    _out, url = served
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(url) as first:  # the token URL: a cookie, then the page
            assert first.status == 200 and first.url.query == {}
        yield Client(session, url.with_query(None))


async def test_the_token_url_sets_a_strict_httponly_cookie_and_drops_the_token(served):
    _out, url = served
    assert url.host == "127.0.0.1" and url.query["token"] == TOKEN
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN in cookie


async def test_without_the_token_nothing_is_served_or_written(served):
    out, url = served
    bare = url.with_query(None)
    async with aiohttp.ClientSession() as session:
        for path in ("", "api/decisions", "images/a_0.png"):
            async with session.get(bare / path) as r:
                assert r.status == 403, path
        async with session.get(bare.with_query(token="wrong-token-0123456789")) as r:
            assert r.status == 403
        payload = {"k": "a", "i": 0, "action": "approve", "v": 0}
        origin = {"Origin": f"http://{url.host}:{url.port}", **WRITE}
        async with session.post(bare / "api/decisions", json=payload, headers=origin) as r:
            assert r.status == 403
    with Ledger.open(out) as ledger:
        assert ledger.reviews.last_event() == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"X-Firered-Review": "0"},
        {"Host": "evil.example"},  # a DNS-rebinding page names its own host
    ],
    ids=["other-origin", "null-origin", "cross-site", "no-review-header", "rebound-host"],
)
async def test_a_write_from_elsewhere_is_refused(served, client, headers):
    out, _url = served
    status, body = await client.post({"k": "a", "i": 0, "action": "approve", "v": 0}, **headers)
    assert status == 403 and body["error"] == "forbidden"
    with Ledger.open(out) as ledger:
        assert ledger.reviews.last_event() == 0


async def test_a_form_post_is_refused(client):
    """A cross-site form can send neither the header nor JSON; even same-origin, no JSON → 403."""
    async with client.session.post(
        client.base / "api/decisions",
        data={"k": "a", "i": "0", "action": "approve", "v": "0"},
        headers={"Origin": client.origin, **WRITE},
    ) as r:
        assert r.status == 403


async def test_only_images_inside_the_output_folder_are_served(served, client, tmp_path):
    out, _url = served
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG secret")
    (out / "images" / "link.png").symlink_to(outside)
    (out / "images" / ".hidden.png").write_bytes(b"\x89PNG hidden")
    status, data = await client.raw_get("images/a_0.png")
    assert status == 200 and data.startswith(b"\x89PNG")
    for path in (
        "ledger.sqlite",
        "report.html",
        ".lock",
        "images/link.png",  # a symlink out of the folder
        "images/.hidden.png",
        "../secret.png",
        "images/../../secret.png",
        "%2e%2e/secret.png",
        "images/%2e%2e/%2e%2e/secret.png",
        "images/..%2f..%2fsecret.png",
        f"{os.fspath(outside).lstrip('/')}",
        "thumbs/../ledger.sqlite",
    ):
        status, data = await client.raw_get(path)
        assert status in (400, 403, 404), path
        assert b"secret" not in data and b"SQLite" not in data, path


async def test_the_page_is_the_report_with_the_review_script(client):
    async with client.session.get(client.base) as r:
        assert r.status == 200
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
        page = await r.text()
    assert 'data-reviews="live"' in page and "connect-src 'self'" in page
    assert "window.fireredReview" in page and '"reviewer": "alice"' in page
    assert "<title>shots" in page and 'id="count-unreviewed">3<' in page


async def test_decisions_round_trip_and_a_stale_write_gets_409(served, client):
    out, _url = served
    status, body = await client.post({"k": "b", "i": 1, "action": "approve", "v": 0})
    assert status == 200
    assert body["decision"] == {
        "k": "b",
        "i": 1,
        "d": "approved",
        "n": "",
        "by": "alice",
        "at": body["decision"]["at"],
        "v": 1,
    }
    assert body["counts"] == {"approved": 1, "rejected": 0, "unreviewed": 2}
    first = body["last"]

    # Another reviewer (another server, another connection) decides the same output.
    with Ledger.open(out) as ledger:
        ledger.reviews.decide("b", 1, "rejected", "too dark", reviewer="bob", expect_version=1)
    status, body = await client.post({"k": "b", "i": 1, "action": "approve", "v": 1})
    assert status == 409 and body["error"] == "conflict"
    assert body["current"]["d"] == "rejected" and body["current"]["by"] == "bob"
    assert body["current"]["v"] == 2 and "bob" in body["message"]

    status, listed = await client.get(f"api/decisions?since={first}")
    assert status == 200
    listed = json.loads(listed)
    assert [(d["k"], d["i"], d["d"], d["n"], d["v"]) for d in listed["decisions"]] == [
        ("b", 1, "rejected", "too dark", 2)
    ]
    assert listed["last"] > first and listed["reviewer"] == "alice"
    status, listed = await client.get(f"api/decisions?since={listed['last']}")
    assert json.loads(listed)["decisions"] == []

    status, body = await client.post({"k": "b", "i": 1, "action": "note", "n": "ok by me", "v": 2})
    assert (
        status == 200
        and body["decision"]["n"] == "ok by me"
        and body["decision"]["d"] == "rejected"
    )
    status, body = await client.post({"k": "b", "i": 1, "action": "undo", "v": 3})
    assert status == 200 and body["decision"]["n"] == "too dark"
    status, body = await client.post({"k": "a", "i": 0, "action": "undo", "v": 0})
    assert status == 409 and body["error"] == "nothing-to-undo"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"k": "a", "i": 0, "action": "approve"}, 400),  # no version: never a blind write
        ({"k": "a", "i": "0", "action": "approve", "v": 0}, 400),
        ({"k": "a", "i": 0, "action": "delete", "v": 0}, 400),
        ({"k": "a", "i": 0, "action": "note", "v": 0}, 400),
        ({"k": "a", "i": 0, "action": "note", "n": "\x00", "v": 0}, 400),
        ([1, 2], 400),
        ({"k": "a", "i": 5, "action": "approve", "v": 0}, 404),
        ({"k": "zz", "i": 0, "action": "reject", "v": 0}, 404),
        ({"k": "a", "i": 10**20, "action": "approve", "v": 0}, 400),  # past SQLite's integers
        ({"k": "a", "i": 0, "action": "approve", "v": 10**20}, 400),
    ],
)
async def test_bad_writes_are_refused(client, payload, status):
    got, body = await client.post(payload)
    assert got == status and body["message"]


async def test_report_html_is_written_again_with_the_decisions(outputs):
    """After decisions, and at the latest when the server stops, the static report shows
    them: badges and notes come from `rv` in its data."""
    out = outputs({"a": 1, "b": 1})
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        review_server(out, token=TOKEN, reviewer="alice") as server,
        aiohttp.ClientSession(cookie_jar=jar) as session,
    ):
        url = server.url
        async with session.get(url) as first:
            assert first.status == 200
        base = URL(url).with_query(None)
        headers = {"Origin": f"http://{base.host}:{base.port}", **WRITE}
        payload = {"k": "a", "i": 0, "action": "reject", "n": "wrong colour", "v": 0}
        async with session.post(base / "api/decisions", json=payload, headers=headers) as r:
            assert r.status == 200
    page = (out / "report.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    records = {record["k"]: record for record in data}
    assert records["a"]["rv"] == [{"d": "rejected", "n": "wrong colour", "by": "alice", "v": 1}]
    assert "rv" not in records["b"]
    assert 'data-reviews="some"' in page and "connect-src" not in page
    assert 'id="count-rejected">1<' in page and 'id="count-unreviewed">1<' in page


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


async def test_a_host_others_can_reach_needs_allow_remote(outputs):
    out = outputs({"a": 1})
    with pytest.raises(RemoteHostError, match="--allow-remote"):
        async with review_server(out, token=TOKEN, reviewer="alice", host="0.0.0.0"):
            pass


async def test_two_reviewers_on_two_servers_never_overwrite_each_other(outputs):
    """Alice and Bob each run `review` on the same folder: the second to decide an output
    they both saw at version 0 gets 409 with the first one's decision."""
    out = outputs({"a": 1})
    jar_a, jar_b = aiohttp.CookieJar(unsafe=True), aiohttp.CookieJar(unsafe=True)
    async with (
        review_server(out, token=TOKEN, reviewer="alice") as server_a,
        review_server(out, token=TOKEN[::-1], reviewer="bob") as server_b,
        aiohttp.ClientSession(cookie_jar=jar_a) as sa,
        aiohttp.ClientSession(cookie_jar=jar_b) as sb,
    ):
        url_a, url_b = server_a.url, server_b.url
        alice, bob = (
            Client(sa, URL(url_a).with_query(None)),
            Client(sb, URL(url_b).with_query(None)),
        )
        for client, url in ((alice, url_a), (bob, url_b)):
            async with client.session.get(url) as r:
                assert r.status == 200
        status, _ = await alice.post({"k": "a", "i": 0, "action": "approve", "v": 0})
        assert status == 200
        status, body = await bob.post({"k": "a", "i": 0, "action": "reject", "v": 0})
        assert status == 409 and body["current"]["by"] == "alice"
        status, body = await bob.post({"k": "a", "i": 0, "action": "reject", "v": 1})
        assert status == 200 and body["decision"]["v"] == 2
    with Ledger.open(out) as ledger:
        assert [e.actor for e in ledger.reviews.history("a", 0)] == ["alice", "bob"]


async def test_a_run_may_finish_while_the_folder_is_reviewed(runner, tmp_path):
    """A run adds items to the folder while it is served: the run ends well, its report.html
    keeps the decision, and decisions go on through the server afterwards."""
    await runner.start()
    spec = runner.spec(runner.manifest(3))
    assert (await runner.run(spec)).exit_code == 0
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        review_server(spec.output, token=TOKEN, reviewer="alice") as server,
        aiohttp.ClientSession(cookie_jar=jar) as session,
    ):
        url = server.url
        client = Client(session, URL(url).with_query(None))
        async with session.get(url) as r:
            assert r.status == 200
        assert (await client.post({"k": "item000", "i": 0, "action": "reject", "v": 0}))[0] == 200
        await server.flush()  # the server's report.html, before the run writes its own
        summary = await runner.run(runner.spec(runner.manifest(5)))  # 2 new items
        assert summary.exit_code == 0 and summary.counts["completed"] == 5
        page = (spec.output / "report.html").read_text(encoding="utf-8")
        assert 'id="count-rejected">1<' in page and 'id="count-unreviewed">4<' in page
        status, body = await client.post({"k": "item004", "i": 0, "action": "approve", "v": 0})
        assert status == 200 and body["counts"] == {"approved": 1, "rejected": 1, "unreviewed": 3}


async def test_a_since_past_sqlites_integers_is_a_bad_request(client):
    status, _ = await client.raw_get("api/decisions?since=99999999999999999999999")
    assert status == 400
