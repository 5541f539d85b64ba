"""JSON Schemas of the spec files, generated from the models: one schema per file.

Each config file names its own schema in the ``# yaml-language-server: $schema=`` modeline
on its first line, so editors and validators report a mistake at the key that holds it
(one schema for both files would make every error look like "'accounts' was unexpected").
Regenerate after changing a model::

    python -m mailops.spec.schema [--out-dir schema]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mailops.fileio import atomic_write
from mailops.spec.models import AccountsFile, DefaultsFile

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URL = "https://mailops.dev/schema/"
DEFAULT_OUT_DIR = Path("schema")

# The schema file name of each spec file, and the model that describes it.
SCHEMA_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    "accounts.schema.json": ("config/accounts.yaml", AccountsFile),
    "defaults.schema.json": ("config/defaults.yaml", DefaultsFile),
}


# Keywords that constrain only one JSON type (a `null` passes them all), and annotations.
# A branch made of these alone may take `null` into its `type` without changing what it accepts.
_TYPE_SPECIFIC = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "title",
        "description",
        "default",
        "examples",
    }
)
_NULL = {"type": "null"}
_LOCAL_REF = "#/$defs/"


def _collapse_nullable(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``anyOf: [X, {type: null}]`` written as X whose ``type`` also allows null.

    pydantic writes ``ServerSettings | None`` as that ``anyOf``. A validator then reports a
    typo inside it as "not valid under any of the given schemas" (best match: "is not of
    type 'null'"); with one schema it descends and names the key and the allowed values.
    A model behind a ``$ref`` is inlined for this.
    """
    if isinstance(node, list):
        return [_collapse_nullable(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    branches = node.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and _NULL in branches:
        other = branches[0] if branches[1] == _NULL else branches[1]
        if set(other) == {"$ref"} and other["$ref"].startswith(_LOCAL_REF):
            other = defs[other["$ref"].removeprefix(_LOCAL_REF)]
        if isinstance(other.get("type"), str) and set(other) <= _TYPE_SPECIFIC:
            outer = {key: value for key, value in node.items() if key != "anyOf"}
            node = {**other, **outer, "type": [other["type"], "null"]}
    return {key: _collapse_nullable(value, defs) for key, value in node.items()}


def _refs_in(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_refs_in(item) for item in node))
    if not isinstance(node, dict):
        return set()
    own = {node["$ref"].removeprefix(_LOCAL_REF)} if str(node.get("$ref", "")).startswith(_LOCAL_REF) else set()
    return own.union(*(_refs_in(value) for value in node.values()))


def _without_unused_defs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})
    used: set[str] = set()
    pending = _refs_in({key: value for key, value in schema.items() if key != "$defs"})
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending |= _refs_in(defs[name])
    kept = {name: value for name, value in defs.items() if name in used}
    rest = {key: value for key, value in schema.items() if key != "$defs"}
    return {"$defs": kept, **rest} if kept else rest


def spec_json_schema(schema_name: str) -> dict[str, Any]:
    """The JSON Schema named ``schema_name`` (a key of :data:`SCHEMA_FILES`)."""
    spec_file, model = SCHEMA_FILES[schema_name]
    generated = model.model_json_schema()
    collapsed = _without_unused_defs(_collapse_nullable(generated, generated.get("$defs", {})))
    return {
        **collapsed,
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URL + schema_name,
        "title": f"mailops {spec_file}",
    }


def render_schema(schema_name: str) -> str:
    """The text of the schema file ``schema_name``, exactly as it is committed."""
    return json.dumps(spec_json_schema(schema_name), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def render_schemas() -> dict[str, str]:
    """Every schema file: its name and its text."""
    return {name: render_schema(name) for name in SCHEMA_FILES}


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every schema file into ``out_dir`` atomically; the paths written."""
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        atomic_write(path, text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailops.spec.schema", description="Write the JSON Schema of each spec file."
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"directory to write the schema files into (default: {DEFAULT_OUT_DIR})",
    )
    args = parser.parse_args(argv)
    if not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir} is not a directory")
    for path in write_schemas(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
