"""What the fields of one request may say before pydantic sees them, shared by every format.

- ``image_url`` (one string) and ``images`` (a list) are aliases of ``image_urls``;
- every image entry goes through `resolve_image_ref`, the one place that decides what an
  entry means (URL, data URI, local path);
- ``image_size`` is a preset name, ``WIDTHxHEIGHT`` (``1024x768``), or a mapping
  ``{width, height}`` (in a CSV cell: a JSON object);
- an ``id`` follows `validate_id`.
"""

from __future__ import annotations

import base64
import functools
import mimetypes
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from batch.manifest.errors import FieldProblem, validation_problems
from batch.schema import EditInput, ImageSize, ImageSizePreset

FIELDS = frozenset(EditInput.model_fields)
IMAGE_FIELD = "image_urls"
IMAGE_ALIASES = ("image_url", "images")
ID_MAX_LENGTH = 128

_HTTP_RE = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?", re.IGNORECASE)
_SCHEME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SIZE_RE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_PRESETS = tuple(p.value for p in ImageSizePreset)
_SIZE_HINT = (
    "Input should be "
    + ", ".join(f"'{p}'" for p in _PRESETS)
    + ", WIDTHxHEIGHT or a mapping {width, height}"
)


class ImageRefError(ValueError):
    """An image entry that cannot be used; str() is the reason."""


def resolve_image_ref(ref: str, base_dir: Path) -> list[str]:
    """What one image entry of a manifest stands for, as the references to send.

    A URL (``http://``, ``https://``) or a ``data:`` URI is sent as it is. Anything else is a
    local path, relative to ``base_dir`` (the manifest's folder). For now a local file is sent
    inline as a data URI (small files only); uploads through fal's storage and globs come
    later, here and only here.
    """
    text = ref.strip()
    if not text or _CONTROL_RE.search(text):
        raise ImageRefError("not a valid URL or file path")
    if _HTTP_RE.fullmatch(text):
        return [text]
    scheme = text.split(":", 1)[0].lower() if _SCHEME_RE.match(text) else ""
    if scheme == "data":
        if "," not in text:
            raise ImageRefError("not a valid data URI")
        return [text]
    if len(scheme) > 1:  # http: without a host, ftp:, s3:, file: …; "C:" is a Windows drive
        raise ImageRefError("not a valid URL or file path")
    path = (base_dir / Path(text).expanduser()).resolve()
    return [_inline_file(path)]


MAX_INLINE_BYTES = 4 * 1024 * 1024


def _inline_file(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        raise ImageRefError(f"file not found ({path})") from None
    if not path.is_file():
        raise ImageRefError(f"not a file ({path})")
    if stat.st_size > MAX_INLINE_BYTES:
        raise ImageRefError(
            f"file is larger than {MAX_INLINE_BYTES // (1024 * 1024)} MiB, too big to send "
            f"inline ({path})"
        )
    return _data_uri(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _data_uri(path: str, mtime_ns: int, size: int) -> str:
    """The file as a data URI; cached on (path, mtime, size) so a matrix reads it once."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageRefError(f"cannot read ({path}): {exc.strerror}") from None
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def validate_id(value: object) -> str:
    """A user's item id as a string, or ValueError with the reason.

    Ids name output files, so: non-empty, at most 128 characters, no ``/``, ``\\`` or NUL,
    not ``.`` or ``..``. Integers (YAML ``id: 42``) are accepted as their decimal string.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("Input should be a valid string")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    if len(text) > ID_MAX_LENGTH:
        raise ValueError(f"must be at most {ID_MAX_LENGTH} characters")
    if any(c in text for c in "/\\\0"):
        raise ValueError("must not contain '/', '\\' or NUL")
    if text in (".", ".."):
        raise ValueError("must not be '.' or '..'")
    return text


def normalize_image_size(value: Any) -> tuple[Any, list[FieldProblem]]:
    """``image_size`` in the form pydantic takes, or the problems with it."""
    if value is None or isinstance(value, ImageSizePreset):
        return value, []
    if isinstance(value, str):
        text = value.strip()
        if text in _PRESETS:
            return text, []
        match = _SIZE_RE.fullmatch(text)
        if match:
            value = {"width": int(match[1]), "height": int(match[2])}
        else:
            return value, [(("image_size",), _SIZE_HINT)]
    if isinstance(value, Mapping):
        try:
            ImageSize.model_validate(value)
        except ValidationError as exc:
            return value, [(("image_size", *loc), why) for loc, why in validation_problems(exc)]
        return dict(value), []
    return value, [(("image_size",), _SIZE_HINT)]


def _apply_aliases(fields: dict[str, Any], problems: list[FieldProblem]) -> None:
    present = [k for k in (IMAGE_FIELD, *IMAGE_ALIASES) if k in fields]
    for alias in present[1:]:
        problems.append(((alias,), f"conflicts with {present[0]}"))
        del fields[alias]
    if "image_url" in fields:
        value = fields.pop("image_url")
        fields[IMAGE_FIELD] = [value] if isinstance(value, str) else value
    elif "images" in fields:
        fields[IMAGE_FIELD] = fields.pop("images")


def _resolve_images(refs: list[Any], base_dir: Path, problems: list[FieldProblem]) -> list[Any]:
    resolved: list[Any] = []
    for index, ref in enumerate(refs):
        if not isinstance(ref, str):
            resolved.append(ref)  # pydantic reports the type
            continue
        try:
            resolved.extend(resolve_image_ref(ref, base_dir))
        except ImageRefError as exc:
            problems.append(((IMAGE_FIELD, index), str(exc)))
            resolved.append(ref)
    return resolved


def normalize_fields(
    data: Mapping[str, Any], base_dir: Path
) -> tuple[dict[str, Any], list[FieldProblem]]:
    """Aliases folded, image entries resolved, ``image_size`` parsed; types are left to pydantic.

    Returns the fields and the problems found; a field with a problem keeps its raw value.
    """
    fields = dict(data)
    problems: list[FieldProblem] = []
    _apply_aliases(fields, problems)
    if isinstance(fields.get(IMAGE_FIELD), list):
        fields[IMAGE_FIELD] = _resolve_images(fields[IMAGE_FIELD], base_dir, problems)
    if "image_size" in fields:
        fields["image_size"], size_problems = normalize_image_size(fields["image_size"])
        problems.extend(size_problems)
    return fields, problems


def check_fields(
    data: Mapping[str, Any], base_dir: Path
) -> tuple[dict[str, Any], list[FieldProblem]]:
    """Validate a partial request (defaults, a matrix prompt): each field alone, none required.

    Returns the normalized fields without the faulty ones, and the problems.
    """
    fields, problems = normalize_fields(data, base_dir)
    faulty = {loc[0] for loc, _ in problems}
    probe = EditInput.model_construct()
    for name, value in fields.items():
        if name in faulty:
            continue
        if name not in FIELDS:
            problems.append(((name,), "unknown field"))
            faulty.add(name)
            continue
        try:
            EditInput.__pydantic_validator__.validate_assignment(probe, name, value)
        except ValidationError as exc:
            problems.extend(validation_problems(exc))
            faulty.add(name)
    return {k: v for k, v in fields.items() if k not in faulty}, problems
