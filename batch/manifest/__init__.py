"""Manifests: YAML, CSV or JSONL files → a validated stream of `EditItem`.

The format is chosen by the extension (``.yaml``/``.yml``, ``.csv``, ``.jsonl``); see
`batch.manifest.yaml_reader` and `batch.manifest.readers` for what each may say. Every item is
one request: its fields are the job's defaults, then the manifest's ``defaults:``, then the
row's own fields (later wins), validated by `batch.schema.EditInput`.

- `scan` reads everything once, without network, and reports every problem as
  ``file:line: field: reason`` (a `ManifestError`), with counts for planning;
- `iter_items` streams the valid items, one row in memory at a time;
- `load` does both: a scanned `Manifest` whose iteration yields the items (two passes);
- `ManifestCheck` does both in one pass: the items stream while every row is checked, and
  `ManifestError` comes at the end (planning a run writes the items in one transaction).

Most valid rows go from their fields to their payload and its canonical JSON by a shortcut that
gives what the model gives, in a fraction of the time (`batch.manifest.payload`).

Hostile input is an input error with its line, never a crash or a run: values are bounded as
the ledger stores them and fal takes them (`batch.schema`), text is checked for control
characters and lone surrogates, integers Python cannot convert and non-finite numbers are
reported at their field, nesting deeper than `MAX_DEPTH` and keys given twice are refused
(`batch.manifest.readers`, `batch.manifest.yamlfile`), an empty file or a CSV header without
rows is an error; local images are refused on their headers (`batch.manifest.imagecheck`) and
globs never loop (`batch.manifest.globwalk`).

An item's key is its ``id`` if given, else ``h`` + 20 hex digits of `request_hash`. Identical
rows collapse into one item with a warning; two different requests with the same ``id`` are an
error.

Job files are YAML too: `batch.job` reads them with this part's YAML reader (line numbers for
every node) and reports problems with its formatting. This part imports only `batch.schema`,
`batch.errors` and third-party libraries.
"""

from batch.manifest.errors import (
    NESTED_ERROR,
    ManifestError,
    display_path,
    format_loc,
    invalid_values,
    printable,
    validation_problems,
)
from batch.manifest.fields import ImageRefError, check_fields, resolve_image_ref, validate_id
from batch.manifest.items import EditItem, request_hash
from batch.manifest.localfiles import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEGAPIXELS,
    ImageLimits,
    LocalFile,
    LocalFiles,
)
from batch.manifest.pricing import BudgetSpec, Estimate, PriceSpec, usd
from batch.manifest.scan import Manifest, ManifestCheck, ManifestScan, iter_items, load, scan
from batch.manifest.yamlfile import (
    YamlFileError,
    compose_file,
    construct,
    duplicate_keys,
    find_line,
    line_of,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MEGAPIXELS",
    "NESTED_ERROR",
    "BudgetSpec",
    "EditItem",
    "Estimate",
    "ImageLimits",
    "ImageRefError",
    "LocalFile",
    "LocalFiles",
    "Manifest",
    "ManifestCheck",
    "ManifestError",
    "ManifestScan",
    "PriceSpec",
    "YamlFileError",
    "check_fields",
    "compose_file",
    "construct",
    "display_path",
    "duplicate_keys",
    "find_line",
    "format_loc",
    "invalid_values",
    "iter_items",
    "line_of",
    "load",
    "printable",
    "request_hash",
    "resolve_image_ref",
    "scan",
    "usd",
    "validate_id",
    "validation_problems",
]
