"""Output files: safe names, paths inside the output folder, temporary files, integrity checks.

Every output reaches its final name through `batch.outputs.downloads` (verified, written under a
temporary name, made durable, renamed; DESIGN invariant 1). `cleanup_temp_files` removes the
temporary files a killed process left behind; `verify_outputs` checks files against the ledger.
"""

from __future__ import annotations

import hashlib
import os
import string
import unicodedata
import urllib.parse
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from batch.outputs.durable import TEMP_PREFIX

IMAGES_DIR = "images"
# Fields a job's template may use (`validate_template`); `safe_name` takes any it is given.
TEMPLATE_FIELDS = ("key", "index", "ext", "seed")
# Room for the `.tmp-<16 hex>-` prefix within the usual 255-byte file-name limit.
MAX_NAME_BYTES = 200
# Separators, characters Windows forbids, and bidi controls that disguise an extension.
_UNSAFE_CHARS = frozenset('/\\<>:"|?*\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069')
_UNSAFE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # control, surrogate, line/paragraph separator
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


@dataclass(frozen=True)
class OutputRecord:
    """One output file as the ledger records it; `path` is relative to the output folder."""

    index: int
    path: str
    url: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None
    content_type: str | None


@dataclass(frozen=True)
class Problem:
    """A file that does not match its ledger record (`verify_outputs`)."""

    path: str
    kind: str  # "unsafe_path" | "missing" | "size" | "sha256"
    detail: str


# --- names -------------------------------------------------------------------------------------


def template_fields(template: str) -> set[str]:
    """The field names a template uses; ValueError for attribute/index access or bad syntax."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad file-name template {template!r}: {exc}") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"bad file-name template {template!r}: field {field!r} must be a plain name"
            )
        names.add(field)
        if spec:
            names |= template_fields(spec)
    return names


def validate_template(template: str) -> None:
    """Check a job's file-name template: ValueError unless it names files inside the output
    folder. Fields: {key}, {index}, {ext}, {seed}, with format specs (``{index:03d}``); {key}
    and {index} are required, so that names are unique."""
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc})") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {{{unknown[0]}}} (allowed: {', '.join(TEMPLATE_FIELDS)})")
    if not {"key", "index"} <= names:
        raise ValueError("must contain {key} and {index}")
    try:
        template.format(key="k", index=0, ext="png", seed=0)
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc})") from None
    if template.startswith("/") or "\\" in template or ".." in PurePosixPath(template).parts:
        raise ValueError("must be a relative name inside the output folder")


def safe_name(template: str, *, max_bytes: int = MAX_NAME_BYTES, **fields: Any) -> str:
    """Render a file-name template and make the result a safe single file name.

    The result has no path separators, no `..`, no control characters, no leading dot, is NFC
    normalised and at most `max_bytes` UTF-8 bytes (the extension is kept). When sanitising
    changed the rendered name, or it had to be shortened, a short hash of the rendered name is
    appended so that different inputs stay different names. The template must use `{index}`.
    """
    used = template_fields(template)
    unknown = sorted(used - fields.keys())
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(map(repr, unknown))} in file-name template {template!r};"
            f" available: {', '.join(sorted(fields))}"
        )
    if "index" not in used:
        raise ValueError(f"file-name template {template!r} must contain {{index}}")
    rendered = template.format_map(fields)
    name = _sanitise(rendered)
    tag = hashlib.sha256(rendered.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if name != rendered:
        name = _add_suffix(name, f"~{tag}")
    if len(name.encode()) > max_bytes:
        name = _shorten(name, max_bytes, f"~{tag}")
    return name


def _sanitise(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    chars = [
        "_" if ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    ]
    text = "".join(chars)
    while ".." in text:
        text = text.replace("..", ".")
    text = text.lstrip(". ").rstrip(". ")
    return text or "_"


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        return name, ""
    return stem, "." + ext


def _add_suffix(name: str, suffix: str) -> str:
    stem, ext = _split_ext(name)
    return f"{stem}{suffix}{ext}"


def _shorten(name: str, max_bytes: int, suffix: str) -> str:
    stem, ext = _split_ext(name)
    stem = stem.removesuffix(suffix)
    room = max_bytes - len(ext.encode()) - len(suffix.encode())
    if room < 1:
        raise ValueError(f"max_bytes={max_bytes} leaves no room for a name")
    cut = stem.encode()[:room].decode("utf-8", "ignore").rstrip(". ")
    return f"{cut or '_'}{suffix}{ext}"


def norm_content_type(content_type: str) -> str:
    """A content type without parameters, lower case, with the JPEG aliases folded."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}.get(kind, kind)


def ext_for(content_type: str | None, url: str = "") -> str:
    """A file extension (no dot) for a content type, else from the URL's path, else `bin`."""
    if content_type:
        ext = _EXTENSIONS.get(norm_content_type(content_type))
        if ext:
            return ext
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    if suffix in ("png", "jpg", "jpeg", "webp", "gif"):
        return "jpg" if suffix == "jpeg" else suffix
    return "bin"


def output_path(output_dir: Path, rel: str) -> Path:
    """The absolute path of a ledger-relative path; ValueError if it would leave `output_dir`."""
    check_output_path(rel)
    return output_dir / rel


def check_output_path(rel: str) -> None:
    """ValueError unless `rel` is a relative path that stays inside its folder: not empty, not
    absolute, no drive (Windows), no `..` part (either slash separates), no NUL. String checks,
    not `Path` parsing: this runs for every output the ledger records."""
    if (
        not rel
        or os.path.isabs(rel)
        or os.path.splitdrive(rel)[0]
        or "\x00" in rel
        or ".." in rel.replace("\\", "/").split("/")
    ):
        raise ValueError(f"unsafe output path {rel!r}")


# --- temporary files ---------------------------------------------------------------------------


def cleanup_temp_files(output_dir: Path) -> int:
    """Remove temporary files a killed run left in `<output>/images/` (any depth) and in
    `<output>/` itself; return how many were removed."""
    count = 0
    candidates: list[Path] = []
    if output_dir.is_dir():
        candidates += [p for p in output_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
    images = output_dir / IMAGES_DIR
    for root, _dirs, files in os.walk(images):
        candidates += [Path(root, f) for f in files if f.startswith(TEMP_PREFIX)]
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            with suppress(FileNotFoundError):
                path.unlink()
                count += 1
    return count


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_outputs(output_dir: Path, records: Iterable[OutputRecord]) -> list[Problem]:
    """Recompute each file's size and sha256 and compare with its record (synchronous)."""
    problems: list[Problem] = []
    for rec in records:
        try:
            path = output_path(output_dir, rec.path)
        except ValueError as exc:
            problems.append(Problem(rec.path, "unsafe_path", str(exc)))
            continue
        if not path.is_file():
            problems.append(Problem(rec.path, "missing", "no such file"))
            continue
        digest, size = sha256_file(path)
        if size != rec.bytes:
            problems.append(
                Problem(rec.path, "size", f"{size} bytes on disk, {rec.bytes} recorded")
            )
        elif digest != rec.sha256:
            problems.append(Problem(rec.path, "sha256", f"{digest} on disk, {rec.sha256} recorded"))
    return problems
