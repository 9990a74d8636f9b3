"""YAML read as nodes, so that every value keeps its line (manifests and job files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from batch.manifest.errors import Loc
from batch.manifest.fields import IMAGE_ALIASES, IMAGE_FIELD, LOCAL_IMAGE_FIELD


class YamlFileError(ValueError):
    """The file cannot be read or is not valid YAML; ``line`` is 1-based or None."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _marked(exc: yaml.YAMLError) -> YamlFileError:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        reason = exc.problem or exc.context or "invalid"
    else:
        reason = str(exc)
    return YamlFileError(line, f"invalid YAML: {reason}")


def compose_file(path: Path) -> yaml.Node | None:
    """The document's root node (None for an empty file). UTF-8, with or without a BOM."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError(None, "file not found") from None
    except OSError as exc:
        raise YamlFileError(None, f"cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlFileError(line, "not valid UTF-8") from None
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _marked(exc) from None
    return node


def construct(node: yaml.Node) -> Any:
    """The Python value of a node (safe tags only)."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise _marked(exc) from None


def mapping_entries(node: yaml.MappingNode) -> Iterator[tuple[Any, yaml.Node, yaml.Node]]:
    """(key, key node, value node) for each scalar key of a mapping, in file order."""
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            yield construct(key_node), key_node, value_node


def duplicate_keys(node: yaml.MappingNode) -> Iterator[tuple[Any, int]]:
    """Keys given twice in one mapping (YAML would silently keep the last): (key, line)."""
    seen: set[Any] = set()
    for key, key_node, _ in mapping_entries(node):
        if key in seen:
            yield key, line_of(key_node)
        seen.add(key)


def find_line(node: yaml.Node, loc: Loc) -> int:
    """The line of the deepest node along ``loc`` (a mapping key's own line for a key).

    ``image_urls`` (and ``image``, where local-file problems are reported) also finds the
    aliases it was written as (``image_url``, ``images``).
    """
    line = line_of(node)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            images = part in (IMAGE_FIELD, LOCAL_IMAGE_FIELD)
            names = (IMAGE_FIELD, *IMAGE_ALIASES) if images else (part,)
            match = next(((k, v) for key, k, v in mapping_entries(node) if key in names), None)
            if match is None:
                break
            line, node = line_of(match[0]), match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = line_of(node)
        else:
            break
    return line
