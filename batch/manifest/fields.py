"""What the fields of one request may say before pydantic sees them, shared by every format.

- ``image_url`` (one string) and ``images`` (a list) are aliases of ``image_urls``;
- every image entry goes through `resolve_image_ref`, the one place that decides what an
  entry means (URL, data URI, local file, folder or glob → ``local:sha256:<hex>``);
- ``image_size`` is a preset name, ``WIDTHxHEIGHT`` (``1024x768``), or a mapping
  ``{width, height}`` (in a CSV cell: a JSON object);
- an ``id`` follows `validate_id`;
- text is checked before pydantic sees it (`value_problems`): no lone surrogates anywhere (UTF-8
  cannot hold them, so they could be neither hashed nor sent), no control characters in the
  prompts but tab, CR and LF, no booleans for numbers (pydantic would take ``true`` as 1), and
  an `InvalidValue` a reader left in place is reported at its field;
- an image entry is at most `MAX_URL_CHARS` (a URL), `MAX_DATA_URI_CHARS` (a ``data:`` URI) or
  `MAX_PATH_CHARS` (a path) characters long.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from batch.manifest.errors import FieldProblem, InvalidValue, invalid_values, validation_problems
from batch.manifest.localfiles import (
    LocalFileError,
    LocalFiles,
    default_files,
    expand,
    local_sha,
)
from batch.schema import EditInput, ImageSize, ImageSizePreset

FIELDS = frozenset(EditInput.model_fields)
IMAGE_FIELD = "image_urls"
IMAGE_ALIASES = ("image_url", "images")
LOCAL_IMAGE_FIELD = "image"  # where problems with local files are reported
ID_MAX_LENGTH = 128
# Image entries: fal fetches a URL itself, and servers commonly refuse URLs past 8 KiB; a data:
# URI goes in the request body (and the ledger), so one image's worth, at most max_image_bytes'
# default in base64; a path is at most PATH_MAX on Linux.
MAX_URL_CHARS = 8192
MAX_DATA_URI_CHARS = 72 * 1024 * 1024
MAX_PATH_CHARS = 4096
TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})  # free text: tab, CR and LF allowed

_HTTP_RE = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?", re.IGNORECASE)
_SCHEME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Entries that _classify certainly calls a URL (no spaces around, no control characters): the
# common case, in one match. `_HTTP_RE`, spelled for speed: no IGNORECASE, and "a host, then
# maybe [/?#] and more" is "one character that is not [/?#], then more". Control characters
# are left to str.isprintable (false for them and for every space but " ", which \S excludes;
# also for a few characters _classify takes, such entries merely take the long way).
# Object storage (the [cloud] extra): sent to fal as presigned https URLs (pipeline.uploads).
STORE_SCHEMES = ("s3", "gs", "az")
_STORE_URI_RE = re.compile(r"(s3|gs|az)://[a-z0-9][a-z0-9._-]{1,254}/[^\s]+", re.IGNORECASE)
_PLAIN_URL_RE = re.compile(r"[hH][tT][tT][pP][sS]?://[^\s/?#]\S*")
_SIZE_RE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_PRESETS = tuple(p.value for p in ImageSizePreset)
_SIZE_HINT = (
    "Input should be "
    + ", ".join(f"'{p}'" for p in _PRESETS)
    + ", WIDTHxHEIGHT or a mapping {width, height}"
)


class ImageRefError(ValueError):
    """An image entry that cannot be used; str() is the reason."""


def resolve_image_ref(ref: str, base_dir: Path, files: LocalFiles | None = None) -> list[str]:
    """What one image entry of a manifest stands for, as the references to put in the payload.

    A URL (``http://``, ``https://``) or a ``data:`` URI is kept as it is. Anything else is a
    local path, a folder or a glob, relative to ``base_dir`` (the manifest's folder): each file
    it names is read, checked and registered in ``files`` (by default the process-wide
    `default_files`), and stands as ``local:sha256:<hex>`` (see `batch.manifest.localfiles`). A
    ``local:sha256:`` reference already registered is kept.

    Raises `ImageRefError` for an entry that is neither (reported at ``image_urls[i]``) and
    `LocalFileError` for a local file that cannot be used (reported at ``image``).
    """
    text, kind = _classify(ref)
    files = files if files is not None else default_files()
    if kind == "local":
        sha = local_sha(text)
        if sha is None or files.lookup(sha) is None:
            raise ImageRefError("unknown local file reference (give local files by path)")
        return [text]
    if kind != "path":
        return [text]
    paths, many = expand(text, base_dir)
    if many:
        files.prefetch(paths)
    return [files.resolve(path).ref for path in paths]


def image_set_files(ref: str, base_dir: Path) -> list[str] | None:
    """The files of an entry that names a folder or a glob (`LocalFileError` if none), or None
    for any other entry (a URL, a data URI, one file, an invalid entry)."""
    try:
        text, kind = _classify(ref)
    except ImageRefError:
        return None
    if kind != "path":
        return None
    paths, many = expand(text, base_dir)
    return paths if many else None


def _classify(ref: str) -> tuple[str, str]:
    """(stripped entry, kind): kind is ``url``, ``data``, ``local`` (a registered reference) or
    ``path``; `ImageRefError` when it is none of them."""
    text = ref.strip()
    if len(text) > MAX_PATH_CHARS and text[:5].lower() not in ("data:", "http:", "https"):
        raise ImageRefError(f"not a valid file path (longer than {MAX_PATH_CHARS} characters)")
    if not text or CONTROL_RE.search(text):
        raise ImageRefError("not a valid URL or file path")
    if _HTTP_RE.fullmatch(text):
        if len(text) > MAX_URL_CHARS:
            raise ImageRefError(f"URL longer than {MAX_URL_CHARS} characters")
        return text, "url"
    scheme = text.split(":", 1)[0].lower() if _SCHEME_RE.match(text) else ""
    if scheme == "data":
        if "," not in text:
            raise ImageRefError("not a valid data URI")
        if len(text) > MAX_DATA_URI_CHARS:
            why = f"data URI longer than {MAX_DATA_URI_CHARS // (1024 * 1024)} Mi characters"
            raise ImageRefError(why)
        return text, "data"
    if scheme == "local":
        return text, "local"
    if scheme in STORE_SCHEMES:
        if not _STORE_URI_RE.fullmatch(text) or len(text) > MAX_URL_CHARS:
            raise ImageRefError(f"not a valid {scheme}://bucket/key URI")
        return text, "url"  # kept as written (the item's key); presigned when it is sent
    if len(scheme) > 1:  # http: without a host, ftp:, s3:, file: …; "C:" is a Windows drive
        raise ImageRefError("not a valid URL or file path")
    return text, "path"


def validate_id(value: object) -> str:
    """A user's item id as a string, or ValueError with the reason.

    Ids name output files, so: non-empty, at most 128 characters, no ``/``, ``\\`` or NUL,
    not ``.`` or ``..``. Integers (YAML ``id: 42``) are accepted as their decimal string.
    """
    if type(value) is str:
        text = value
    elif isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("Input should be a valid string")
    else:
        text = str(value)
    if not text:
        raise ValueError("must not be empty")
    if len(text) > ID_MAX_LENGTH:
        raise ValueError(f"must be at most {ID_MAX_LENGTH} characters")
    if "/" in text or "\\" in text or "\0" in text:
        raise ValueError("must not contain '/', '\\' or NUL")
    if CONTROL_RE.search(text):
        raise ValueError("must not contain control characters or lone surrogates")
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
        if not match:
            return value, [(("image_size",), _SIZE_HINT)]
        width, height = match[1], match[2]
        if len(width) > 12 or len(height) > 12:  # past what int() may convert: over the limit
            width, height = (t.lstrip("0")[:13] or "0" for t in (width, height))
        value = {"width": int(width), "height": int(height)}
    elif not isinstance(value, Mapping):
        return value, [(("image_size",), _SIZE_HINT)]
    elif bool in map(type, value.values()):  # pydantic would take true as 1
        bools = [k for k, v in value.items() if type(v) is bool]
        return value, [(("image_size", str(k)), _NOT_BOOL) for k in bools]
    try:
        ImageSize.model_validate(value)
    except ValidationError as exc:
        return value, [(("image_size", *loc), why) for loc, why in validation_problems(exc)]
    return dict(value), []


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


def _resolve_images(
    refs: list[Any], base_dir: Path, files: LocalFiles | None, problems: list[FieldProblem]
) -> list[Any]:
    for ref in refs:
        if not (
            isinstance(ref, str)
            and len(ref) <= MAX_URL_CHARS
            and ref.isprintable()
            and _PLAIN_URL_RE.fullmatch(ref)
        ):
            break
    else:
        return refs  # URLs only, the common case: what resolve_image_ref gives for each
    resolved: list[Any] = []
    for index, ref in enumerate(refs):
        if not isinstance(ref, str):
            resolved.append(ref)  # pydantic reports the type
            continue
        try:
            resolved.extend(resolve_image_ref(ref, base_dir, files))
        except ImageRefError as exc:
            problems.append(((IMAGE_FIELD, index), str(exc)))
            resolved.append(ref)
        except LocalFileError as exc:
            problems.append(((LOCAL_IMAGE_FIELD,), str(exc)))
            resolved.append(ref)
    return resolved


def normalize_fields(
    data: Mapping[str, Any], base_dir: Path, files: LocalFiles | None = None
) -> tuple[dict[str, Any], list[FieldProblem]]:
    """Aliases folded, image entries resolved, ``image_size`` parsed; types are left to pydantic.

    Returns the fields and the problems found; a field with a problem keeps its raw value (a
    problem with a local file is at ``image`` and leaves ``image_urls`` out of the request).
    """
    fields = dict(data)
    return fields, normalize_in_place(fields, base_dir, files)


def normalize_in_place(
    fields: dict[str, Any], base_dir: Path, files: LocalFiles | None = None
) -> list[FieldProblem]:
    """`normalize_fields` on a dict of the caller's, changed in place; returns the problems."""
    problems = value_problems(fields)
    if problems:
        for name in faulty_fields(problems):
            fields.pop(name, None)  # type: ignore[arg-type]
    if "image_url" in fields or "images" in fields:
        _apply_aliases(fields, problems)
    images = fields.get(IMAGE_FIELD)
    if isinstance(images, list):
        fields[IMAGE_FIELD] = _resolve_images(images, base_dir, files, problems)
    if "image_size" in fields:
        fields["image_size"], size_problems = normalize_image_size(fields["image_size"])
        problems.extend(size_problems)
    return problems


def _mentions_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    return any(_mentions_number(arg) for arg in get_args(annotation))


NUMBER_FIELDS = frozenset(
    name for name, info in EditInput.model_fields.items() if _mentions_number(info.annotation)
)
_NOT_BOOL = "Input should be a number, not true or false"


_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN = frozenset({str, int})  # in a list or mapping: image URLs, a width and a height


def value_problems(fields: Mapping[str, Any]) -> list[FieldProblem]:
    """What pydantic would let through or misreport in a row's values (see the module
    docstring): a field with a problem here is left out of the request. Run on every row: a
    first pass looks for anything unusual (non-ASCII, control characters, a bool, a mapping,
    a marker), and only a row that has some is looked at closely (`_value_problems`)."""
    for name, value in fields.items():
        if type(name) is not str or not name.isascii():
            break
        kind = type(value)
        if kind is str:
            if not (value.isascii() and value.isprintable()):
                break
        elif kind is list or kind is dict:
            for item in value if kind is list else value.values():
                if type(item) not in _PLAIN:
                    return _value_problems(fields)
        elif not (kind is int or kind is float or value is None):
            break
    else:
        return []
    return _value_problems(fields)


def _value_problems(fields: Mapping[str, Any]) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for name, value in fields.items():
        if isinstance(name, str) and _SURROGATE_RE.search(name):
            problems.append(((name,), "unknown field"))
            continue
        kind = type(value)
        if kind is str:
            pattern = _TEXT_CONTROL_RE if name in TEXT_FIELDS else _SURROGATE_RE
            match = pattern.search(value)
            if match is not None:
                problems.append(((name,), bad_character(match[0], match.start())))
        elif kind is bool:
            if name in NUMBER_FIELDS:
                problems.append(((name,), _NOT_BOOL))
        elif kind is InvalidValue:
            problems.append(((name,), value.reason))
        elif kind is list or kind is dict:
            items = value.values() if kind is dict else value
            if not all(type(v) in _SCALARS for v in items):
                problems.extend(invalid_values(value, (name,)))
    return problems


def bad_character(char: str, position: int) -> str:
    code = ord(char)
    what = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
    return f"{what} (U+{code:04X}) at character {position + 1} is not allowed"


def faulty_fields(problems: list[FieldProblem]) -> set[str | int]:
    """The input fields a list of problems is about (``image`` stands for ``image_urls``)."""
    return {IMAGE_FIELD if loc[0] == LOCAL_IMAGE_FIELD else loc[0] for loc, _ in problems if loc}


def check_fields(
    data: Mapping[str, Any], base_dir: Path, files: LocalFiles | None = None
) -> tuple[dict[str, Any], list[FieldProblem]]:
    """Validate a partial request (defaults, a matrix prompt): each field alone, none required.

    Returns the normalized fields without the faulty ones, and the problems.
    """
    fields, problems = normalize_fields(data, base_dir, files)
    faulty = faulty_fields(problems)
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
