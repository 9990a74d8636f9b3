"""YAML read as nodes, so that every value keeps its line (manifests and job files).

Hostile input is refused with a line, never a crash: collections nested deeper than
`MAX_DEPTH` (the composer would recurse without end), characters YAML does not allow, and
scalars Python cannot hold — an integer of more digits than Python converts, ``.nan``/``.inf``
— which become `InvalidValue` in their place, reported at their field. A key given twice in
any mapping is found by `duplicate_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from batch.manifest.errors import (
    MAX_DEPTH,
    NOT_FINITE,
    InvalidValue,
    Loc,
    too_many_digits,
)
from batch.manifest.fields import IMAGE_ALIASES, IMAGE_FIELD, LOCAL_IMAGE_FIELD

_NESTED = f"nested deeper than {MAX_DEPTH} levels"
_OTHER_ENCODINGS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


class YamlFileError(ValueError):
    """The file cannot be read or is not valid YAML; ``line`` is 1-based or None."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def encoding_problem(raw: bytes) -> str | None:
    """``the file is UTF-16 …`` for a file that starts with another Unicode encoding's BOM."""
    for bom, name in _OTHER_ENCODINGS.items():
        if raw.startswith(bom):
            return f"the file is {name}, not UTF-8: save it as UTF-8"
    return None


def _marked(exc: yaml.YAMLError) -> YamlFileError:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        reason = exc.problem or exc.context or "invalid"
    else:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid"
    return YamlFileError(line, f"invalid YAML: {reason}")


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing collections nested deeper than `MAX_DEPTH` as they start."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        nests = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if nests and self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, _NESTED, mark)
        self._depth += nests
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe constructors; an integer Python cannot convert or a float that is not finite
    becomes an `InvalidValue` (reported at its field), an impossible date stays text."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            return too_many_digits(sum(c.isdigit() for c in str(node.value)))

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        value = super().construct_yaml_float(node)
        return value if math.isfinite(value) else InvalidValue(NOT_FINITE)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):  # 2024-13-45: not a date, so the text it says
            return str(node.value)


for _tag, _method in (
    ("int", _Constructor.construct_yaml_int),
    ("float", _Constructor.construct_yaml_float),
    ("timestamp", _Constructor.construct_yaml_timestamp),
):
    _Constructor.add_constructor(f"tag:yaml.org,2002:{_tag}", _method)  # type: ignore[type-var]


def compose_file(path: Path) -> yaml.Node | None:
    """The document's root node (None for an empty file). UTF-8, with or without a BOM."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError(None, "file not found") from None
    except IsADirectoryError:
        raise YamlFileError(None, "not a file (a folder)") from None
    except OSError as exc:
        raise YamlFileError(None, f"cannot read ({exc.strerror})") from None
    other = encoding_problem(raw)
    if other is not None:
        raise YamlFileError(1, other)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlFileError(line, "not valid UTF-8") from None
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, …)
        line = text.count("\n", 0, exc.position) + 1
        why = f"invalid YAML: character {_codepoint(exc.character)} is not allowed"
        raise YamlFileError(line, why) from None
    except yaml.YAMLError as exc:
        raise _marked(exc) from None
    except RecursionError:  # not expected past the depth limit; never a crash
        raise YamlFileError(None, f"invalid YAML: {_NESTED}") from None
    return node


def _codepoint(character: Any) -> str:
    code = character if isinstance(character, int) else ord(str(character)[:1] or "\0")
    return f"U+{code:04X}"


def construct(node: yaml.Node) -> Any:
    """The Python value of a node (safe tags only; see `_Constructor`)."""
    try:
        return _Constructor().construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise _marked(exc) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise YamlFileError(line_of(node), f"invalid YAML: {exc}") from None


def mapping_entries(node: yaml.MappingNode) -> Iterator[tuple[Any, yaml.Node, yaml.Node]]:
    """(key, key node, value node) for each scalar key of a mapping, in file order."""
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            yield construct(key_node), key_node, value_node


def duplicate_keys(node: yaml.Node, *, deep: bool = True) -> Iterator[tuple[Loc, int]]:
    """Keys given twice in a mapping anywhere in ``node`` (YAML would silently keep the last),
    or only in ``node`` itself unless ``deep``: (the key's path below ``node``, its line), in
    line order. Each node is visited once (an alias shares its anchor's node)."""
    seen_nodes: set[int] = set()
    stack: list[tuple[Loc, yaml.Node]] = [((), node)]
    found: list[tuple[Loc, int]] = []
    while stack:
        loc, current = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.SequenceNode) and deep:
            stack.extend(((*loc, i), child) for i, child in enumerate(current.value))
        elif isinstance(current, yaml.MappingNode):
            keys: set[Any] = set()
            for key, key_node, value_node in mapping_entries(current):
                try:
                    new = key not in keys
                    keys.add(key)
                except TypeError:  # an unhashable key (a list written as a key)
                    new = True
                if not new:
                    found.append(((*loc, str(key)), line_of(key_node)))
                if deep:
                    stack.append(((*loc, str(key)), value_node))
    found.sort(key=lambda entry: entry[1])
    yield from found


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
