"""Row lists <-> Arrow tables with a fixed schema, so an empty stage output still has its columns."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def string_schema(columns: list[str], **typed: pa.DataType) -> pa.Schema:
    """A schema of string columns, except those given a type in ``typed``."""
    return pa.schema([(c, typed.get(c, pa.string())) for c in columns])


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table with exactly ``schema``'s columns (missing values -> null, extras dropped)."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table({name: pa.array(vals, type=schema.field(name).type) for name, vals in cols.items()})
