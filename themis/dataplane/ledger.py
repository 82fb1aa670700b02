"""The stage-output ledger: how a generation stage's rows are shaped, written once, counted and
published.

A stage plans its rows (``planned_schema``: preset ``reason``, ``engine``, ``request``), sends them
through the engine pools (``generation``), parses them into ``rows_schema``, and ends here:
``write_rows`` runs the stream once into a scratch folder, ``tally`` counts what it came to (rows
kept and rejected per reason, engine calls, tokens, cost, where rows ran) scanning a few columns at
a time, and ``publish_split``/``publish_parts`` rewrite the written rows into the stage's typed
output and rejects. Every planned row leaves as exactly one output or one reject, so counts
reconcile.

This module knows rows and storage, not engines: ``generation`` builds on it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from themis.config import EngineConfig, OpenAIEngineConfig
from themis.dataplane.tables import GENERATED, REQUEST, to_table, with_columns
from themis.storage import RunStore

# Ray Data's own tasks around the engine (read, plan, parse, write) are light Python; asking for a
# quarter core each leaves room beside an engine actor that holds most of a small machine.
LIGHT: dict[str, Any] = {"num_cpus": 0.25}


class EngineUnavailableError(RuntimeError):
    """Every call of a generation pass failed, so the engine (not the data) is at fault."""


def read_rows(store: RunStore, rel: str) -> Any:
    """A stage's input as a lazy Ray dataset, read where the workers are (local folder or S3)."""
    import ray

    return ray.data.read_parquet(store.path(rel), filesystem=store.fs, **LIGHT)


def planned_schema(columns: pa.Schema) -> pa.Schema:
    """A stage's rows before generation: its columns, a preset ``reason`` (a row rejected before
    any call), the ``engine`` to use and the ``request`` (null = no call)."""
    return with_columns(columns, ("reason", pa.string()), ("engine", pa.string()), ("request", REQUEST))


def rows_schema(reject_schema: pa.Schema) -> pa.Schema:
    """A stage's rows after parsing: its reject columns plus how each row was generated."""
    extra = [(n, t) for n, t in [("engine", pa.string()), *GENERATED] if n not in reject_schema.names]
    return with_columns(reject_schema, *extra)


def generation_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The generation columns of a row, to carry into its parsed form."""
    return {name: row.get(name) for name, _ in [("engine", None), *GENERATED]}


def map_rows(ds: Any, fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], schema: pa.Schema, **kwargs) -> Any:
    """``ds`` with each row turned into zero or more rows of exactly ``schema`` (strictly typed)."""

    def apply(batch: pa.Table) -> pa.Table:
        return to_table((out for row in batch.to_pylist() for out in fn(row)), schema)

    return ds.map_batches(apply, batch_format="pyarrow", **(LIGHT | kwargs))


@dataclass
class StageTally:
    """What a stage's rows came to: counts, parse rates, engine usage, where rows were generated."""

    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    per_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    reasons: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)  # per engine: calls, cached, failed
    tokens: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    paid_tokens: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # not reused
    rows_by_node: Counter = field(default_factory=Counter)
    rows_by_actor: Counter = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)

    def add_calls(self, batch: pa.RecordBatch, placed: bool = True) -> None:
        """Count the engine calls of a batch of generated rows (rows with an ``engine`` name);
        ``placed`` counts them per node and actor too (a stage's own rows, not helper calls)."""
        data = batch.to_pydict()
        for i, engine in enumerate(data["engine"]):
            if not engine:
                continue
            self.calls[(engine, "calls")] += 1
            self.calls[(engine, "cached")] += bool(data["cached"][i])
            self.tokens[engine][0] += data["prompt_tokens"][i] or 0
            self.tokens[engine][1] += data["completion_tokens"][i] or 0
            if not data["cached"][i]:
                self.paid_tokens[engine][0] += data["prompt_tokens"][i] or 0
                self.paid_tokens[engine][1] += data["completion_tokens"][i] or 0
            if data["error"][i]:
                self.calls[(engine, "failed")] += 1
                self.first_error.setdefault(engine, data["error"][i])
            if placed:
                self.rows_by_node[data["node"][i]] += 1
                self.rows_by_actor[data["actor"][i]] += 1

    def usage(self, engines: dict[str, EngineConfig]) -> dict[str, Any]:
        """Per engine: calls, reused calls, failures, tokens, and where prices are set the cost of
        every call behind the rows (``cost_usd``) and of the calls this attempt made (``paid_usd``:
        a rerun that reuses every call pays nothing)."""
        out = {}
        for name in sorted({e for e, _ in self.calls}):
            prompt, completion = self.tokens[name]
            entry: dict[str, float] = {
                "calls": self.calls[(name, "calls")],
                "reused": self.calls[(name, "cached")],
                "failed": self.calls[(name, "failed")],
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
            cfg = engines.get(name)
            if isinstance(cfg, OpenAIEngineConfig) and cfg.price_per_million_input_tokens is not None:
                entry["cost_usd"] = price(cfg, prompt, completion)
                entry["paid_usd"] = price(cfg, *self.paid_tokens[name])
            out[name] = entry
        return out

    def call_counts(self) -> dict[str, int]:
        """Engine calls made and reused from the cache, over all engines (for the console)."""
        calls = sum(n for (_, what), n in self.calls.items() if what == "calls")
        return {"calls": calls, "reused_calls": sum(n for (_, what), n in self.calls.items() if what == "cached")}

    def check_engines(self) -> None:
        """Raise when an engine answered none of its calls: it is down, not the data."""
        for (name, what), n in self.calls.items():
            if what == "calls" and n and self.calls[(name, "failed")] == n:
                raise EngineUnavailableError(
                    f"all {n} calls to engine {name!r} failed; first error: {self.first_error.get(name)}"
                )


def price(cfg: OpenAIEngineConfig, prompt_tokens: int, completion_tokens: int) -> float:
    """What the tokens cost at the engine's prices, in US dollars."""
    cost = prompt_tokens * (cfg.price_per_million_input_tokens or 0) + completion_tokens * (
        cfg.price_per_million_output_tokens or 0
    )
    return round(cost / 1e6, 6)


def write_rows(ds: Any, store: RunStore, name: str, schema: pa.Schema) -> str:
    """Run the stage's stream once, writing every row (output or reject) to a scratch folder."""
    path = store.scratch_path(name)
    ds.write_parquet(path, filesystem=store.fs)
    if not any(True for _ in _files(store, path)):
        import pyarrow.parquet as pq

        store.fs.create_dir(path, recursive=True)
        pq.write_table(schema.empty_table(), f"{path}/empty.parquet", filesystem=store.fs)
    return path


def tally(
    store: RunStore,
    path: str,
    kind_column: str | None = None,
    tally_: StageTally | None = None,
    calls_only: str | None = None,
) -> StageTally:
    """Counts of the written rows, scanned a few columns at a time (the driver holds no rows).
    Rows whose kind is ``calls_only`` count as engine calls but not as rows of the stage."""
    t = tally_ or StageTally()
    columns = ["reason", "engine", "cached", "error", "prompt_tokens", "completion_tokens", "node", "actor"]
    columns += [kind_column] if kind_column else []
    for batch in store.scan_path(path, columns):
        t.add_calls(batch)
        reasons = batch.column("reason").to_pylist()
        kinds = batch.column(kind_column).to_pylist() if kind_column else [""] * len(reasons)
        for reason, kind in zip(reasons, kinds):
            if calls_only is not None and kind == calls_only:
                continue
            t.rows_in += 1
            if reason is None:
                t.rows_out += 1
                t.per_kind[kind][0] += 1
            else:
                t.rows_rejected += 1
                t.per_kind[kind][1] += 1
                t.reasons[_reason_head(reason)] += 1
    return t


@dataclass(frozen=True)
class Part:
    """One published output of a stage: where, its schema, and which written rows go there."""

    rel: str
    schema: pa.Schema
    where: pc.Expression


def publish_split(
    store: RunStore, path: str, out_rel: str, out_schema: pa.Schema, rejects_rel: str, reject_schema: pa.Schema
) -> dict[str, str]:
    """Split the written rows into the stage's output (reason null) and its rejects, both typed."""
    reason = pc.field("reason")
    parts = [Part(out_rel, out_schema, reason.is_null()), Part(rejects_rel, reject_schema, reason.is_valid())]
    return publish_parts(store, path, parts)


def publish_parts(store: RunStore, path: str, parts: list[Part]) -> dict[str, str]:
    """Write each part's rows of the written rows to its own typed file.

    A streaming rewrite, one record batch at a time: cheaper than more Ray Data runs for what is a
    filter, and the driver never holds more than a batch.
    """
    import pyarrow.parquet as pq

    writers = []
    try:
        for part in parts:
            folder = store.write_path(part.rel)  # the folder is what gets published
            store.fs.create_dir(folder, recursive=True)
            writers.append(pq.ParquetWriter(f"{folder}/part-0.parquet", part.schema, filesystem=store.fs))
        columns = list(dict.fromkeys(name for part in parts for name in part.schema.names))
        for batch in store.scan_path(path, columns):
            table = pa.Table.from_batches([batch])
            for part, writer in zip(parts, writers):
                chosen = table.filter(part.where)
                if chosen.num_rows:
                    writer.write_table(chosen.select(part.schema.names).cast(part.schema))
    finally:
        for writer in writers:
            writer.close()
    return {part.rel: store.uri(part.rel) for part in parts}


def _files(store: RunStore, path: str):
    import pyarrow.fs as pafs

    info = store.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return (f for f in info if f.type == pafs.FileType.File and f.base_name.endswith(".parquet"))


def _reason_head(reason: str) -> str:
    """The reason's kind, without the row-specific detail (for counts per reason)."""
    return reason.split(":", 1)[0]
