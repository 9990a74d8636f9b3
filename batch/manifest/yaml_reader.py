"""YAML manifests: ``defaults:``, ``items:`` and ``matrix:`` → raw rows with their lines.

```yaml
defaults: {num_images: 2, image_size: 1024x768}   # any input field
items:                                             # one item each
  - {id: cat, prompt: make it blue, image_url: https://…/cat.png}
  - {prompt: sepia, images: [https://…/a.png, https://…/b.png], seed: 7}
matrix:                                            # every prompt × every image set
  prompts:
    - make it blue                                 # id p0
    - {id: night, prompt: make it night, seed: 3}  # id night
  images:
    - https://…/a.png                              # id i0: one image
    - [https://…/b.png, https://…/c.png]           # id i1: two images in one request
    - {id: shoe, urls: [https://…/d.png]}          # id shoe
    - photos/                                      # one image set per image file in it
    - shots/**/*.jpg                               # one image set per file matched
```

Matrix ids: ``<prompt id>__<image-set id>``, where a prompt's id is its ``id`` or ``p<index>``
and an image set's is its ``id`` or ``i<index>`` (0-based position in its list). So ``p0__i1``
above is "make it blue" on [b, c]. Appending prompts or image sets keeps every existing id;
inserting or reordering entries without ``id`` renumbers the ones after them. A matrix item's
line is its prompt's line. A prompt may set any input field but the images.

A folder or glob given as a whole entry of ``images:`` is one image set per file, whose id is
the first 16 hex digits of the file's sha256: renaming or moving a file keeps its items, new
pixels make new ones, and two files with the same content are one image set. Inside a list or
an ``urls:`` a folder or glob is expanded in place: all its files go in that one request.

A key given twice in any mapping of an item, of ``defaults:`` or of a matrix entry is an error
at its line, as is an empty file (``items: []`` says "nothing" on purpose: a warning).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from batch.manifest.errors import FieldProblem, Problem
from batch.manifest.fields import (
    IMAGE_ALIASES,
    IMAGE_FIELD,
    LOCAL_IMAGE_FIELD,
    ImageRefError,
    check_fields,
    image_set_files,
    resolve_image_ref,
    validate_id,
)
from batch.manifest.localfiles import LocalFileError, default_files
from batch.manifest.readers import Defaults, Event, ReadContext, Row
from batch.manifest.yamlfile import (
    YamlFileError,
    compose_file,
    construct,
    duplicate_keys,
    find_line,
    line_of,
    mapping_entries,
)

SECTIONS = ("defaults", "items", "matrix")
FILE_SET_ID_LENGTH = 16
_SET_KEYS = ("id", "urls", IMAGE_FIELD)


@dataclass(frozen=True, slots=True)
class _Part:
    """A valid matrix prompt or image set: its id, line and fields."""

    id: str
    line: int
    fields: dict[str, Any]


def _dup_problems(node: yaml.Node, *, deep: bool = True) -> Iterator[Problem]:
    for loc, line in duplicate_keys(node, deep=deep):
        yield Problem(line, loc, "duplicate key")


def read_yaml(path: Path, ctx: ReadContext) -> Iterator[Event]:
    try:
        root = compose_file(path)
    except YamlFileError as exc:
        yield Problem(exc.line, (), exc.reason, "fatal")
        return
    if root is None:
        yield Problem(1, (), "file is empty (expected items: and/or matrix:)", "fatal")
        return
    if not isinstance(root, yaml.MappingNode):
        why = "expected a mapping with items: and/or matrix:"
        yield Problem(line_of(root), (), why, "fatal")
        return
    try:
        yield from _sections(root, ctx)
    except YamlFileError as exc:  # a tag that cannot be constructed
        yield Problem(exc.line, (), exc.reason, "fatal")


def _sections(root: yaml.MappingNode, ctx: ReadContext) -> Iterator[Event]:
    yield from _dup_problems(root, deep=False)
    sections: dict[str, yaml.Node] = {}
    for key, key_node, value_node in mapping_entries(root):
        if key in SECTIONS:
            sections.setdefault(key, value_node)
        else:
            why = "unknown key (expected defaults, items or matrix)"
            yield Problem(line_of(key_node), (str(key),), why)
    if "defaults" in sections:
        yield from _defaults(sections["defaults"], ctx)
    if "items" in sections:
        yield from _items(sections["items"])
    if "matrix" in sections:
        yield from _matrix(sections["matrix"], ctx)


def _defaults(node: yaml.Node, ctx: ReadContext) -> Iterator[Event]:
    if not isinstance(node, yaml.MappingNode):
        yield Problem(line_of(node), ("defaults",), "must be a mapping of input fields")
        return
    yield from _dup_problems(node)
    values, problems = check_fields(construct(node), ctx.base_dir, ctx.files)
    for loc, why in problems:
        yield Problem(find_line(node, loc), loc, why)
    yield Defaults(values)


def _items(node: yaml.Node) -> Iterator[Event]:
    if not isinstance(node, yaml.SequenceNode):
        yield Problem(line_of(node), ("items",), "must be a list")
        return
    for item in node.value:
        if not isinstance(item, yaml.MappingNode):
            yield Problem(line_of(item), (), "an item must be a mapping")
            continue
        yield from _dup_problems(item)
        yield Row(line_of(item), construct(item))


_PARSERS = (("prompts", "p"), ("images", "i"))


def _matrix(node: yaml.Node, ctx: ReadContext) -> Iterator[Event]:
    lists: dict[str, list[yaml.Node]] = {}
    yield from _matrix_lists(node, lists)
    if len(lists) < 2:
        return
    parts: dict[str, list[_Part]] = {"prompts": [], "images": []}
    for key, prefix in _PARSERS:
        parse = _prompt_fields if key == "prompts" else _image_set_fields
        for index, entry in enumerate(lists[key]):
            duplicates = list(_dup_problems(entry))
            if duplicates:
                yield from duplicates
                continue
            value = construct(entry)
            if key == "images" and isinstance(value, str):
                try:
                    many = image_set_files(value, ctx.base_dir)
                except LocalFileError as exc:
                    yield Problem(line_of(entry), (LOCAL_IMAGE_FIELD,), str(exc))
                    continue
                if many is not None:
                    yield from _file_sets(many, line_of(entry), parts["images"], ctx)
                    continue
            part = _part(entry, f"{prefix}{index}", parse(value, ctx))
            if isinstance(part, _Part):
                parts[key].append(part)
            else:
                yield from part
    for prompt in parts["prompts"]:
        for image_set in parts["images"]:
            combined = f"{prompt.id}__{image_set.id}"
            yield Row(prompt.line, {**prompt.fields, **image_set.fields, "id": combined})


def _file_sets(
    paths: list[str], line: int, sets: list[_Part], ctx: ReadContext
) -> Iterator[Problem]:
    """A folder or glob in ``matrix.images``: one image set per file, its id the first
    `FILE_SET_ID_LENGTH` hex digits of the file's sha256 (a rename keeps it, new pixels don't)."""
    files = ctx.files if ctx.files is not None else default_files()
    files.prefetch(paths)
    seen: set[str] = set()
    for path in paths:
        try:
            file = files.resolve(path)
        except LocalFileError as exc:
            yield Problem(line, (LOCAL_IMAGE_FIELD,), str(exc))
            continue
        if file.sha256 not in seen:  # identical files: one image set
            seen.add(file.sha256)
            set_id = file.sha256[:FILE_SET_ID_LENGTH]
            sets.append(_Part(set_id, line, {IMAGE_FIELD: [file.ref]}))


def _matrix_lists(node: yaml.Node, lists: dict[str, list[yaml.Node]]) -> Iterator[Problem]:
    """Check the shape of ``matrix:``; fill ``lists`` with its prompts and images entries."""
    if not isinstance(node, yaml.MappingNode):
        yield Problem(line_of(node), ("matrix",), "must be a mapping with prompts: and images:")
        return
    yield from _dup_problems(node, deep=False)
    given: set[str] = set()
    for key, key_node, value_node in mapping_entries(node):
        given.add(key)
        if key not in ("prompts", "images"):
            yield Problem(line_of(key_node), ("matrix", str(key)), "unknown key")
        elif not isinstance(value_node, yaml.SequenceNode):
            yield Problem(line_of(value_node), ("matrix", key), "must be a list")
        else:
            lists.setdefault(key, value_node.value)
    for needed in ("prompts", "images"):
        if needed not in given:
            yield Problem(line_of(node), ("matrix", needed), "Field required")


def _part(
    node: yaml.Node, default_id: str, parsed: tuple[dict[str, Any], list[FieldProblem]]
) -> _Part | list[Problem]:
    """A matrix prompt or image set with its id (``id`` or the default), or its problems."""
    fields, problems = parsed
    part_id = default_id
    if "id" in fields:
        try:
            part_id = validate_id(fields.pop("id"))
        except ValueError as exc:
            problems = [(("id",), str(exc)), *problems]
    if problems:
        return [Problem(line_of(node), loc, why) for loc, why in problems]
    return _Part(part_id, line_of(node), fields)


def _prompt_fields(value: Any, ctx: ReadContext) -> tuple[dict[str, Any], list[FieldProblem]]:
    if isinstance(value, str):
        return {"prompt": value}, []
    if not isinstance(value, dict):
        return {}, [((), "a matrix prompt must be a string or a mapping")]
    fields = dict(value)
    problems: list[FieldProblem] = []
    if "prompt" not in fields:
        problems.append((("prompt",), "Field required"))
    for key in (IMAGE_FIELD, *IMAGE_ALIASES):
        if key in fields:
            del fields[key]
            why = "not allowed in a matrix prompt (images come from matrix.images)"
            problems.append(((key,), why))
    _, field_problems = check_fields(
        {k: v for k, v in fields.items() if k != "id"}, ctx.base_dir, ctx.files
    )
    return fields, problems + field_problems


def _image_set_fields(value: Any, ctx: ReadContext) -> tuple[dict[str, Any], list[FieldProblem]]:
    """An image set: a URL, a list of URLs, or a mapping {id?, urls | image_urls}."""
    fields: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    if isinstance(value, dict):
        why = "unknown key (expected id, urls or image_urls)"
        problems += [((str(k),), why) for k in value if k not in _SET_KEYS]
        if "urls" in value and IMAGE_FIELD in value:
            problems.append((("urls",), f"conflicts with {IMAGE_FIELD}"))
        if "id" in value:
            fields["id"] = value["id"]
        value = value.get("urls", value.get(IMAGE_FIELD))
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs:
        problems.append(((IMAGE_FIELD,), "an image set must be a URL or a non-empty list of URLs"))
        return fields, problems
    for position, ref in enumerate(refs):
        if not isinstance(ref, str):
            problems.append(((IMAGE_FIELD, position), "Input should be a valid string"))
            continue
        try:
            resolve_image_ref(ref, ctx.base_dir, ctx.files)
        except ImageRefError as exc:
            problems.append(((IMAGE_FIELD, position), str(exc)))
        except LocalFileError as exc:
            problems.append(((LOCAL_IMAGE_FIELD,), str(exc)))
    fields[IMAGE_FIELD] = refs
    return fields, problems
