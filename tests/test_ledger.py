"""The stage-output ledger without Ray: written rows are counted, then split into a typed output and
rejects that together hold every row once."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from themis.config import StorageConfig
from themis.dataplane.ledger import EngineUnavailableError, publish_split, rows_schema, tally
from themis.dataplane.tables import to_table
from themis.storage import RunStore

REJECTS = pa.schema([("item", pa.string()), ("reason", pa.string())])
OUTPUT = pa.schema([("item", pa.string())])


def row(item: str, reason: str | None, error: str | None = None, cached: bool = False) -> dict:
    return {
        "item": item,
        "reason": reason,
        "engine": "teacher",
        "output": None if error else "text",
        "error": error,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached": cached,
        "node": "n1",
        "actor": "a1",
    }


def written(tmp_path, rows: list[dict]) -> tuple[RunStore, str]:
    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r").begin_attempt("responses")
    path = store.scratch_path("rows")
    store.fs.create_dir(path, recursive=True)
    pq.write_table(to_table(rows, rows_schema(REJECTS)), f"{path}/part.parquet", filesystem=store.fs)
    return store, path


def test_tally_counts_rows_reasons_and_calls(tmp_path):
    store, path = written(
        tmp_path,
        [row("a", None), row("b", "unparsed: no verdict"), row("c", "unparsed: empty", cached=True), row("d", None)],
    )
    t = tally(store, path)
    assert (t.rows_in, t.rows_out, t.rows_rejected) == (4, 2, 2)
    assert t.reasons == {"unparsed": 2}
    assert t.call_counts() == {"calls": 4, "reused_calls": 1}
    assert t.paid_tokens["teacher"] == [30, 15]
    t.check_engines()  # some calls answered: the engine is up


def test_publish_split_keeps_every_row_once(tmp_path):
    store, path = written(tmp_path, [row("a", None), row("b", "too long"), row("c", None)])
    publish_split(store, path, "out", OUTPUT, "rejects", REJECTS)
    out = pq.read_table(store.write_path("out"), filesystem=store.fs)
    rejects = pq.read_table(store.write_path("rejects"), filesystem=store.fs)
    assert out.schema.equals(OUTPUT) and rejects.schema.equals(REJECTS)
    assert sorted(out.column("item").to_pylist()) == ["a", "c"]
    assert rejects.to_pylist() == [{"item": "b", "reason": "too long"}]


def test_an_engine_that_failed_every_call_is_down(tmp_path):
    store, path = written(tmp_path, [row("a", "engine error", error="connection refused")] * 2)
    with pytest.raises(EngineUnavailableError, match="all 2 calls to engine 'teacher' failed"):
        tally(store, path).check_engines()
