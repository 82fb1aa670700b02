"""Reading records from a JSON array, JSONL or Parquet file, each with where it was. Pure: no Ray or torch.

Benchmarks and recorded verdicts come in all three formats; both read them here so that every error
and every rejected row names the file and the line (JSONL, or a JSON array's record) or row (Parquet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BenchmarkError(ValueError):
    """A labelled set or verdict file that cannot be read; the message names the file and, where it
    can, the line."""


@dataclass(frozen=True)
class Record:
    """One record and where it came from: ``unit`` is "line", "record" or "row"; ``n`` counts from 1."""

    file: Path
    unit: str
    n: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        """ "file.jsonl: line 12", as errors name it."""
        return f"{self.file}: {self.unit} {self.n}"

    @property
    def source(self) -> str:
        """ "file.jsonl:12", as a rejected row names it."""
        return f"{self.file.name}:{self.n}"

    def raw(self) -> str:
        """The record as JSON text (values JSON cannot hold are written as strings)."""
        return json.dumps(self.data, ensure_ascii=False, default=str)


def read_records(path: str | Path, what: str = "labelled set") -> list[Record]:
    """Every record of a file: Parquet by suffix; JSON when the text opens with '[' (an array of
    objects; errors give the real line of the array), else JSONL (blank lines skipped)."""
    file = Path(path)
    if not file.is_file():
        raise BenchmarkError(f"{what} not found: {file}")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Record(file, "row", n, row) for n, row in enumerate(pq.read_table(file).to_pylist(), 1)]
    text = file.read_text()
    return _json_array(file, text) if text.lstrip().startswith("[") else _jsonl(file, text)


def _json_array(file: Path, text: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{file}: line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    records = []
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise BenchmarkError(f"{file}: record {n}: expected a JSON object, got {type(row).__name__}")
        records.append(Record(file, "record", n, row))
    return records


def _jsonl(file: Path, text: str) -> list[Record]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{file}: line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise BenchmarkError(f"{file}: line {n}: expected a JSON object")
        records.append(Record(file, "line", n, row))
    return records
