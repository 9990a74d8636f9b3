"""A shortcut for valid rows: a request's fields straight to its payload and canonical JSON.

A manifest row becomes a request in three steps: `EditInput` validates it into a model,
``model_dump(mode="json", exclude_unset=True)`` turns the model into the payload dict, and
`canonical_json` (sorted keys, no spaces, UTF-8 kept) spells the payload as it is stored and
hashed. For a million rows these are most of the cost of reading a manifest.
`payload_shortcut(EditInput, canonical_json)` does the same in one validation and one
serialization, both in pydantic-core:

- it validates a TypedDict built from the model's own fields, with the same types and
  constraints, which gives the payload directly: the fields given, an enum as its value, a
  nested model as a dict, every dict's keys in sorted order;
- it writes that payload with `pydantic_core.to_json`, which spells strings, integers, booleans
  and null as `canonical_json` does, and keys in the dict's order — here, sorted. Floats are
  spelled differently (``1e-05`` against ``0.00001``), so a payload with a field that may hold
  a float goes to `canonical_json`, as does anything `to_json` cannot write (a lone surrogate).

It is only a shortcut. A row it refuses goes through the model, whose errors are reported; a
row it accepts, the model accepts too, with the same payload (`tests/test_manifest_payload.py`
checks both on thousands of rows). And it exists only for models whose fields it copies
faithfully: plain types (``str``, ``int``, ``float`` — never inf or NaN —, ``bool``,
``None``), ``Literal``, ``list``, unions, string enums, nested models of the same kind, and
`annotated_types` constraints; no validators, serializers, aliases, or model config other than
``extra``. For any other model `payload_shortcut` returns None.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import typing_extensions
from pydantic import AllowInfNan, BaseModel, ConfigDict, Strict, TypeAdapter
from pydantic_core import PydanticSerializationError, to_json

_LEAVES: tuple[Any, ...] = (str, int, bool, type(None))
_METADATA = (annotated_types.BaseMetadata, Strict, AllowInfNan)
_EXTRA = ("forbid", "ignore")

# Made through Any: mypy wants literal arguments for these, and these are made at run time.
_typed_dict: Any = typing_extensions.TypedDict
_not_required: Any = typing_extensions.NotRequired
_literal: Any = Literal
_union: Any = Union
_annotated: Any = Annotated


class PayloadShortcut:
    """``shortcut(data)`` → (payload, its canonical JSON), for the data it accepts; it raises
    `pydantic.ValidationError` for the rest (some of which the model may accept)."""

    def __init__(
        self,
        validate: Callable[[Any], dict[str, Any]],
        float_fields: frozenset[str],
        canonical_json: Callable[[Any], str],
    ) -> None:
        self._validate = validate
        self._float_fields = float_fields
        self._canonical_json = canonical_json

    def __call__(self, data: Any) -> tuple[dict[str, Any], str]:
        payload = self._validate(data)
        if self._float_fields.isdisjoint(payload):
            try:
                return payload, to_json(payload).decode()
            except PydanticSerializationError:
                pass  # e.g. a lone surrogate, which UTF-8 cannot hold
        return payload, self._canonical_json(payload)


class _Unsupported(Exception):
    """The model uses something the copy would not reproduce."""


def payload_shortcut(
    model: type[BaseModel], canonical_json: Callable[[Any], str]
) -> PayloadShortcut | None:
    """The shortcut for ``model`` (see the module's docstring), or None if the model cannot
    be copied. ``canonical_json`` spells the payloads that `to_json` would spell otherwise."""
    try:
        typed, floats = _typed_dict_of(model)
    except _Unsupported:
        return None
    validate: Callable[[Any], dict[str, Any]] = TypeAdapter(typed).validator.validate_python
    return PayloadShortcut(validate, frozenset(floats), canonical_json)


def _typed_dict_of(model: type[BaseModel]) -> tuple[Any, set[str]]:
    """A TypedDict of the model's fields in sorted order, and the fields that may hold a
    float (at any depth)."""
    config = dict(model.model_config)
    extra = config.pop("extra", "ignore")
    decorators = model.__pydantic_decorators__
    if (
        config
        or extra not in _EXTRA
        or model.__pydantic_root_model__
        or model.__pydantic_generic_metadata__["origin"] is not None
        or any(
            (
                decorators.validators,
                decorators.field_validators,
                decorators.root_validators,
                decorators.field_serializers,
                decorators.model_serializers,
                decorators.model_validators,
                decorators.computed_fields,
            )
        )
    ):
        raise _Unsupported(model.__name__)
    fields: dict[str, Any] = {}
    floats: set[str] = set()
    for name, info in sorted(model.model_fields.items()):
        if (
            info.alias is not None
            or info.validation_alias is not None
            or info.serialization_alias is not None
            or info.exclude
            or info.discriminator is not None
            or not all(isinstance(m, _METADATA) for m in info.metadata)
        ):
            raise _Unsupported(f"{model.__name__}.{name}")
        found: list[bool] = []
        annotation = _copy(info.annotation, found)
        if found:
            floats.add(name)
        if info.metadata:
            annotation = _annotated[(annotation, *info.metadata)]
        fields[name] = annotation if info.is_required() else _not_required[annotation]
    typed = _typed_dict(f"{model.__name__}Payload", fields)
    typed.__pydantic_config__ = ConfigDict(extra="forbid") if extra == "forbid" else ConfigDict()
    return typed, floats


def _copy(annotation: Any, floats: list[bool]) -> Any:
    """The annotation with enums as literals of their values and models as TypedDicts; only
    types whose validated value is already what the JSON-mode dump gives. A float anywhere in
    it appends to ``floats``."""
    origin = get_origin(annotation)
    if origin is None:
        return _copy_type(annotation, floats)
    args = get_args(annotation)
    if origin is Literal:
        if not all(isinstance(value, str | int | bool | None) for value in args):
            raise _Unsupported(repr(annotation))
        return annotation
    if origin is Annotated:
        if not all(isinstance(m, _METADATA) for m in args[1:]):
            raise _Unsupported(repr(annotation))
        return _annotated[(_copy(args[0], floats), *args[1:])]
    if origin in (Union, types.UnionType):
        return _union[tuple(_copy(arg, floats) for arg in args)]
    if origin is list and len(args) == 1:
        return list[_copy(args[0], floats)]  # type: ignore[misc]
    raise _Unsupported(repr(annotation))


def _copy_type(annotation: Any, floats: list[bool]) -> Any:
    if annotation in _LEAVES:
        return annotation
    if annotation is float:
        floats.append(True)
        return _annotated[float, AllowInfNan(False)]  # the JSON dump changes inf and NaN
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = tuple(member.value for member in annotation)
        if not all(isinstance(value, str) for value in values):
            raise _Unsupported(annotation.__name__)
        return _literal[values]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        typed, nested_floats = _typed_dict_of(annotation)
        if nested_floats:
            floats.append(True)
        return typed
    raise _Unsupported(repr(annotation))
