"""Typed tables: row lists <-> Arrow tables with a fixed schema.

Lists and nested values are Arrow list and struct columns (``MESSAGES``, ``STRINGS``), never JSON
strings, so no stage re-parses what the previous one wrote. ``to_table`` is strict: a row with a
missing or an unknown column is an error, not a silent null, so a typo in a stage cannot drop
data on the floor. Every empty output still has its columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
STRINGS = pa.list_(pa.string())

# One engine call, carried by every row that goes through generation (see engines.base.request_to_row).
REQUEST = pa.struct(
    [
        ("messages", MESSAGES),
        ("max_tokens", pa.int32()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("seed", pa.int64()),
        ("prefix", pa.string()),
        ("choices", STRINGS),
        ("closing", pa.string()),
    ]
)

# What generation adds to a row: the reply, or why there is none, and what it cost.
GENERATED = [
    ("output", pa.string()),
    ("error", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cached", pa.bool_()),
    ("node", pa.string()),
    ("actor", pa.string()),
]


class SchemaError(ValueError):
    """Rows that do not have exactly a table's columns."""


def string_schema(columns: list[str], **typed: pa.DataType) -> pa.Schema:
    """A schema of string columns, except those given a type in ``typed``."""
    return pa.schema([(c, typed.get(c, pa.string())) for c in columns])


def with_columns(schema: pa.Schema, *fields: tuple[str, pa.DataType]) -> pa.Schema:
    """``schema`` plus more columns (e.g. a reject's ``reason``)."""
    for name, type_ in fields:
        schema = schema.append(pa.field(name, type_))
    return schema


def to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table with exactly ``schema``'s columns; raise ``SchemaError`` on a missing or
    unknown column (values are converted to the column's type, or the conversion error names it)."""
    rows = list(rows)
    names = schema.names
    wanted = set(names)
    for n, row in enumerate(rows):
        if row.keys() != wanted:
            missing, unknown = sorted(wanted - row.keys()), sorted(row.keys() - wanted)
            raise SchemaError(f"row {n}: missing columns {missing}, unknown columns {unknown}")
    arrays = []
    for field in schema:
        try:
            arrays.append(pa.array([r[field.name] for r in rows], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SchemaError(f"column {field.name!r} ({field.type}): {exc}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def select(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Exactly ``schema``'s columns of a wider table, cast to its types; a missing column is an error."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"missing columns {missing}; have {table.column_names}")
    return table.select(schema.names).cast(schema)
