"""Downloads of output images from a real local server: verified, atomic, published in batches."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from support import leftovers

import batch.outputs.downloads as downloads_module
import batch.outputs.durable as durable
from batch.errors import ExitCode
from batch.outputs import DiskFullError
from batch.outputs.downloads import DownloadError, describe_url, download_image
from batch.outputs.durable import temp_path
from batch.outputs.naming import OutputRecord, verify_outputs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAMPLE_JPEG = Path("/work/shared/data/sample-images/chelsea.jpg")


def make_image(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    img = Image.new("RGB", size)
    for x in range(size[0]):
        for y in range(size[1]):
            img.putpixel((x, y), (x * 4 % 256, y * 5 % 256, (x * y) % 256))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


PNG = make_image("PNG")
JPEG = make_image("JPEG")


async def _truncated(request: web.Request) -> web.StreamResponse:
    """Promises the whole PNG, sends half, then drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "image/png"})
    resp.content_length = len(PNG)
    await resp.prepare(request)
    await resp.write(PNG[: len(PNG) // 2])
    assert request.transport is not None
    request.transport.close()
    return resp


RELEASE = web.AppKey("release", asyncio.Event)
STARTED = web.AppKey("started", asyncio.Event)


async def _stalled(request: web.Request) -> web.StreamResponse:
    """Sends half the PNG, then waits until the test releases it."""
    resp = web.StreamResponse(headers={"Content-Type": "image/png"})
    resp.content_length = len(PNG)
    await resp.prepare(request)
    await resp.write(PNG[: len(PNG) // 2])
    request.app[STARTED].set()
    await request.app[RELEASE].wait()
    return resp


async def _redirect_to_itself(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(request.path_qs)  # query string and all: aiohttp gives up after 10


def _handler(make: Callable[[], web.Response]) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return make()

    return handler


def _flip_pixel_data(png: bytes) -> bytes:
    """The PNG with one bit of its compressed pixel data (inside IDAT, not its CRC) flipped."""
    at = png.index(b"IDAT") + 4 + 2  # past the chunk type and the zlib header
    return png[:at] + bytes([png[at] ^ 0x01]) + png[at + 1 :]


def _app() -> web.Application:
    def fixed(body: bytes, content_type: str, status: int = 200) -> web.Response:
        return web.Response(body=body, status=status, content_type=content_type)

    routes = {
        "/img.png": lambda: fixed(PNG, "image/png"),
        "/img.jpg": lambda: fixed(JPEG, "image/jpeg"),
        "/corrupt.png": lambda: fixed(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "image/png"),
        "/cut.png": lambda: fixed(PNG[: len(PNG) // 2], "image/png"),
        "/flipped.png": lambda: fixed(_flip_pixel_data(PNG), "image/png"),
        "/error500": lambda: fixed(b"oops", "text/plain", 500),
        "/error404": lambda: fixed(b"gone", "text/plain", 404),
        "/error429": lambda: fixed(b"slow down", "text/plain", 429),
    }
    app = web.Application()
    for path, make in routes.items():
        app.router.add_get(path, _handler(make))
    app.router.add_get("/loop.png", _redirect_to_itself)
    app.router.add_get("/truncated.png", _truncated)
    app.router.add_get("/stalled.png", _stalled)
    app[RELEASE] = asyncio.Event()
    app[STARTED] = asyncio.Event()
    return app


@pytest.fixture
def server_app() -> web.Application:
    return _app()


@pytest.fixture
async def server(server_app: web.Application) -> AsyncIterator[str]:
    app = server_app
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        app[RELEASE].set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# --- downloads -----------------------------------------------------------------------------


async def test_download_writes_the_verified_file_atomically(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "images" / "k-0.png"
    got = await download_image(
        session, f"{server}/img.png?sig=secret", dest,
        expect_width=64, expect_height=48, expect_content_type="image/png", timeout=10,
        max_bytes=10**6,
    )  # fmt: skip
    assert dest.read_bytes() == PNG
    assert got.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (got.bytes, got.width, got.height, got.content_type) == (len(PNG), 64, 48, "image/png")
    assert got.path == dest
    assert leftovers(tmp_path) == []
    rec = got.to_record(0, tmp_path)
    assert rec == OutputRecord(
        0, "images/k-0.png", f"{server}/img.png?sig=secret", len(PNG), got.sha256, 64, 48,
        "image/png",
    )  # fmt: skip
    assert verify_outputs(tmp_path, [rec]) == []


async def test_download_of_a_real_jpeg_checks_its_type(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "a.jpg"
    got = await download_image(
        session, f"{server}/img.jpg", dest, expect_content_type="image/jpg", timeout=10,
        max_bytes=10**6,
    )  # fmt: skip
    assert (got.content_type, got.width, got.height) == ("image/jpeg", 64, 48)
    assert dest.read_bytes() == JPEG


@pytest.mark.parametrize(
    ("path", "transient", "expect"),
    [
        ("/truncated.png", True, "ClientPayloadError"),
        ("/corrupt.png", False, "not a valid image"),
        ("/cut.png", False, "not a valid image"),
        ("/flipped.png", False, "not a valid image"),  # one bit of pixel data: a bad CRC
        ("/error500", True, "HTTP 500"),
        ("/error429", True, "HTTP 429"),
        ("/error404", False, "HTTP 404"),
        ("/loop.png", True, "TooManyRedirects"),
    ],
)
async def test_failed_downloads_leave_no_file_and_say_if_transient(
    server: str,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    path: str,
    transient: bool,
    expect: str,
) -> None:
    dest = tmp_path / "images" / "k-0.png"
    url = f"{server}{path}?token=s3cret"  # a signed URL: its signature is never shown
    with pytest.raises(DownloadError) as info:
        await download_image(session, url, dest, timeout=10, max_bytes=10**6)
    assert info.value.transient is transient
    assert expect in str(info.value)
    assert "s3cret" not in str(info.value)
    if "HTTP" in expect:
        assert str(info.value).startswith(f"{server}{path}: ")
    assert not dest.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["ftp://cdn.example/x.png", "http://[cdn/x.png"])
async def test_invalid_urls_are_permanent_errors_that_do_not_show_their_query(
    session: aiohttp.ClientSession, tmp_path: Path, url: str
) -> None:
    with pytest.raises(DownloadError, match="invalid URL") as info:
        await download_image(session, f"{url}?token=s3cret", tmp_path / "k-0.png", timeout=10)
    assert info.value.transient is False
    assert "s3cret" not in str(info.value)


async def test_status_is_carried_on_http_errors(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError) as info:
        await download_image(session, f"{server}/error404", tmp_path / "x.png", timeout=10)
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expect_width": 65, "expect_height": 48}, "64x48, the result said 65x48"),
        ({"expect_height": 10}, "the result said ?x10"),
        ({"expect_content_type": "image/jpeg"}, "image/png, the result said image/jpeg"),
    ],
)
async def test_mismatching_content_is_a_permanent_error_and_keeps_the_old_file(
    server: str,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    kwargs: dict[str, object],
    message: str,
) -> None:
    dest = tmp_path / "k-0.png"
    dest.write_bytes(b"previous")
    with pytest.raises(DownloadError, match=re.escape(message)) as info:
        await download_image(
            session, f"{server}/img.png", dest, timeout=10, max_bytes=10**6,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
    assert info.value.transient is False
    assert dest.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


async def test_a_stalled_body_times_out_as_transient(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "images" / "k.png"
    with pytest.raises(DownloadError, match="timed out") as info:
        await download_image(session, f"{server}/stalled.png", dest, timeout=0.3)
    assert info.value.transient is True
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_cancelling_a_download_leaves_no_temp_file(
    server_app: web.Application, server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "images" / "k.png"
    task = asyncio.create_task(download_image(session, f"{server}/stalled.png", dest))
    async with asyncio.timeout(10):  # until half the body has been sent
        await server_app[STARTED].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_a_body_over_max_bytes_is_refused(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "k.png"
    with pytest.raises(DownloadError, match="larger than 100 bytes") as info:
        await download_image(session, f"{server}/img.png", dest, timeout=10, max_bytes=100)
    assert info.value.transient is False
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_connection_refused_is_transient(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        await download_image(session, f"http://127.0.0.1:{port}/x.png", tmp_path / "x.png")
    assert info.value.transient is True
    assert leftovers(tmp_path) == []


async def test_data_uri_downloads_are_verified_too(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    jpeg = SAMPLE_JPEG.read_bytes()
    with Image.open(SAMPLE_JPEG) as img:
        size = img.size
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    dest = tmp_path / "images" / "sample-0.jpg"
    got = await download_image(
        session, uri, dest, expect_width=size[0], expect_height=size[1],
        expect_content_type="image/jpeg",
    )  # fmt: skip
    assert dest.read_bytes() == jpeg
    assert got.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert got.url == uri


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,@@@not base64@@@", "data:image/png;base64", "data:,hello"]
)
async def test_bad_data_uris_are_permanent_errors(
    session: aiohttp.ClientSession, tmp_path: Path, uri: str
) -> None:
    with pytest.raises(DownloadError) as info:
        await download_image(session, uri, tmp_path / "x.png")
    assert info.value.transient is False
    assert not (tmp_path / "x.png").exists() and leftovers(tmp_path) == []


def test_urls_in_messages_lose_query_strings_and_data() -> None:
    assert (
        describe_url("https://cdn.example/a/b.png?token=s3cret#f") == "https://cdn.example/a/b.png"
    )
    assert "iVBOR" not in describe_url("data:image/png;base64,iVBORw0KGgo=")
    assert describe_url("http://u:pw@[::1]:8080/x.png?sig=1") == "http://[::1]:8080/x.png"
    assert describe_url("http://u:pw@[cdn/x.png?sig=1") == "<unreadable URL>"


# --- publishing in batches -----------------------------------------------------------------


def _publish_many(folder: Path, n: int) -> list[object]:
    data = make_image("PNG", (16, 16))
    jobs = [
        (data, temp_path(folder / f"f{i}.png"), folder / f"f{i}.png", (16, 16, "image/png"))
        for i in range(n)
    ]
    return downloads_module._store_batch(jobs)


@pytest.mark.parametrize("syncfs", ["works", "fails", "absent"])
def test_a_batch_of_files_is_made_durable_before_any_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: str
) -> None:
    """One syncfs for the whole folder where it works; else an fsync per file. Either way
    no final name appears before its file is durable, and no temporary file is left."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fake_syncfs(fd: int) -> int:
        events.append("syncfs")
        return 0 if syncfs == "works" else -1

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(durable, "_SYNCFS", None if syncfs == "absent" else fake_syncfs)
    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(downloads_module.os, "replace", replace)
    folder = tmp_path / "images"
    folder.mkdir()

    results = _publish_many(folder, 5)

    assert results == [("image/png", 16, 16)] * 5
    assert sorted(p.name for p in folder.iterdir()) == [f"f{i}.png" for i in range(5)]
    renames = events.index("rename")
    syncs = events[:renames]
    expected = ["syncfs"] if syncfs == "works" else ["fsync"] * 5
    if syncfs == "fails":
        expected = ["syncfs", *expected]
    assert syncs == expected
    assert events[renames:] == ["rename"] * 5 + ["fsync"]  # then the folder, once


def test_a_file_that_cannot_be_made_durable_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync error fails that file (no final name, no temp file); the others publish."""
    real_fsync = os.fsync
    calls = iter(range(100))

    def fsync(fd: int) -> None:
        if next(calls) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(durable, "_SYNCFS", None)
    monkeypatch.setattr(durable.os, "fsync", fsync)
    folder = tmp_path / "images"
    folder.mkdir()

    results = _publish_many(folder, 3)

    assert isinstance(results[1], OSError) and results[0] == results[2] == ("image/png", 16, 16)
    assert sorted(p.name for p in folder.iterdir()) == ["f0.png", "f2.png"]


def test_a_full_disk_while_writing_is_disk_full_and_leaves_no_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through a file: `DiskFullError` naming the folder (exit 4, resumable),
    the half-written temporary file removed, nothing under the final name; others publish."""
    calls = iter(range(100))

    def full_at_second_file(name: str) -> None:
        if next(calls) == 1:  # the second file, after its first half is written
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "crashpoint", full_at_second_file)
    folder = tmp_path / "images"
    folder.mkdir()

    results = _publish_many(folder, 3)

    assert isinstance(results[1], DiskFullError) and results[1].exit_code == ExitCode.STOPPED
    assert str(results[1]).startswith(f"{folder}: disk full (no space left on device)")
    assert "free some space, then run the same command again" in str(results[1])
    assert results[0] == results[2] == ("image/png", 16, 16)
    assert sorted(p.name for p in folder.iterdir()) == ["f0.png", "f2.png"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "error"), [(errno.EDQUOT, "DiskFullError"), (errno.EACCES, "NotWritableError")]
)
def test_a_quota_or_a_refused_folder_is_named_not_an_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: str
) -> None:
    def refuse(name: str) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(durable, "crashpoint", refuse)
    folder = tmp_path / "images"
    folder.mkdir()
    results = _publish_many(folder, 1)
    assert type(results[0]).__name__ == error and str(folder) in str(results[0])
    assert list(folder.iterdir()) == []


async def test_download_image_raises_disk_full_not_a_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(name: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "crashpoint", full)
    data = make_image("PNG", (16, 16))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    dest = tmp_path / "images" / "a.png"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DiskFullError):
            await download_image(session, uri, dest)
    assert not dest.exists() and leftovers(tmp_path) == []
