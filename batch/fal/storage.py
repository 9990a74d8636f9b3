"""Files for fal: data URIs now; uploads through fal's storage API come with local inputs."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from pathlib import Path
from urllib.parse import unquote_to_bytes


def encode_data_uri(data: bytes, content_type: str) -> str:
    """`data:<content_type>;base64,<b64>`, as fal_client's `encode` makes it."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def encode_file(path: str | Path) -> str:
    """A file as a data URI, its MIME type guessed from the name (octet-stream otherwise)."""
    content_type = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return encode_data_uri(Path(path).read_bytes(), content_type)


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """(bytes, content type) of a data URI; ValueError when it is not one."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError("not a data URI")
    header, payload = uri[5:].split(",", 1)
    params = header.split(";")
    content_type = params[0] or "text/plain"
    if "base64" in params[1:]:
        try:
            return base64.b64decode(payload, validate=False), content_type
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"bad base64 in data URI: {exc}") from None
    return unquote_to_bytes(payload), content_type
