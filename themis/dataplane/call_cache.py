"""Finished engine calls, kept in the run root so that a rerun never pays for them twice.

A call's key is a SHA-256 of what decides its output: the engine (kind, model, endpoint without
credentials, extra body, dtype) and the request (messages, forced format, sampling, seed). So a
changed prompt or teacher misses the cache only for the calls that changed. Only successful calls
are kept: a failure is tried again on the next run.

Layout: ``<run>/cache/<stage>/<actor>-<n>.parquet``, one small file per batch an engine actor
finished, written atomically (a process killed mid-write leaves an ignored ``_tmp-`` file). An
actor loads the stage's entries when it starts, so a stage killed at any point re-pays at most
the calls that were in flight in each actor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from themis.config import EngineConfig, OpenAIEngineConfig, StorageConfig
from themis.engines.base import GenerationRequest, GenerationResult
from themis.redact import redact_tree, redact_url

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("output", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)


@dataclass(frozen=True)
class CacheSpec:
    """Where a stage keeps its finished calls: ``<storage.root>/<run_name>/cache/<stage>/``."""

    storage: StorageConfig
    run_name: str
    stage: str

    @property
    def rel(self) -> str:
        return f"cache/{self.stage}"


def engine_fingerprint(cfg: EngineConfig) -> str:
    """What about an engine decides its outputs (never its credentials, never its throughput knobs)."""
    if isinstance(cfg, OpenAIEngineConfig):
        ident: dict[str, Any] = {
            "kind": cfg.kind,
            "model": cfg.model,
            "base_url": redact_url(cfg.base_url),
            "extra_body": redact_tree(cfg.extra_body),
            "continue_final_message": cfg.continue_final_message,
        }
        if cfg.server != "openai":  # forced verdicts change the replies; default keys stay as they were
            ident["server"] = cfg.server
    else:
        ident = {"kind": cfg.kind, "model": cfg.model, "dtype": cfg.dtype}
    return json.dumps(ident, sort_keys=True)


def call_key(fingerprint: str, req: GenerationRequest) -> str:
    """The cache key of one call."""
    blob = json.dumps(
        [
            fingerprint,
            req.messages,
            req.prefix,
            list(req.choices),
            req.closing,
            req.max_tokens,
            req.temperature,
            req.top_p,
            req.seed,
        ],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class KeyedParts:
    """Rows keyed by a string, kept as one small parquet file per batch under ``<run>/<rel>/``.

    Opening loads every part there (a damaged one empties the store with a warning: it costs a
    re-run of the work, never correctness); ``add`` writes one part atomically, so a process killed
    mid-write leaves an ignored ``_tmp-`` file. Used for engine calls here and IFD scores
    (``themis.dataplane.ifd_scoring``).
    """

    def __init__(self, spec: CacheSpec, schema: pa.Schema):
        from themis.storage import RunStore

        if schema.names[0] != "key":
            raise ValueError("a keyed store's first column is 'key'")
        self.store = RunStore(spec.storage, spec.run_name)
        self.rel = spec.rel
        self.schema = schema
        self.writer_id = uuid.uuid4().hex[:12]
        self.parts = 0
        self.entries: dict[str, tuple] = {}
        self._load()

    def _load(self) -> None:
        if not self.store.exists(self.rel):
            return
        try:
            for batch in self.store.scan(self.rel, self.schema.names):
                columns = [batch.column(i).to_pylist() for i in range(len(self.schema))]
                for key, *values in zip(*columns):
                    self.entries[key] = tuple(values)
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("ignoring unreadable cache %s: %s", self.store.uri(self.rel), exc)
            self.entries.clear()

    def get(self, key: str) -> tuple | None:
        return self.entries.get(key)

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Keep one batch of rows (each with ``key``), durably, in one file."""
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self.schema)
        self.parts += 1
        self.store.write_table_atomic(f"{self.rel}/{self.writer_id}-{self.parts:06d}.parquet", table)
        for row in rows:
            self.entries[row["key"]] = tuple(row[name] for name in self.schema.names[1:])


def compact(spec: CacheSpec, schema: pa.Schema = SCHEMA) -> None:
    """Merge a stage's parts into one file, once no actor writes there (its stream has ended).

    Actors save results in small files as they finish (a kill loses little); a later run's actors
    then load one file instead of hundreds. Streamed, a batch at a time; the merged file is in
    place before the parts it holds are deleted, so a process killed in between leaves duplicate
    entries, never lost ones. An unreadable part is left alone (its entries are re-paid, as ever).
    """
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from themis.storage import RunStore

    store = RunStore(spec.storage, spec.run_name)
    fs, folder = store.fs, store.path(spec.rel)
    info = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    files = [f.path for f in info if f.type == pafs.FileType.File and not f.base_name.startswith(("_", "."))]
    if len(files) < 2:
        return
    name = f"all-{uuid.uuid4().hex[:12]}.parquet"
    tmp, dest = f"{folder}/_tmp-{name}", f"{folder}/{name}"
    try:
        with pq.ParquetWriter(tmp, schema, filesystem=fs) as writer:
            for batch in pads.dataset(files, schema=schema, filesystem=fs, format="parquet").to_batches():
                writer.write_batch(batch)
    except (OSError, pa.ArrowInvalid) as exc:
        log.warning("not compacting the cache %s: %s", store.uri(spec.rel), exc)
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        return
    fs.move(tmp, dest)
    for path in files:
        fs.delete_file(path)


class CallCache:
    """One actor's view of a stage's cache: every entry there when it opened, plus its own."""

    def __init__(self, spec: CacheSpec, fingerprint: str):
        self.parts = KeyedParts(spec, SCHEMA)
        self.fingerprint = fingerprint

    @property
    def entries(self) -> dict[str, tuple]:
        return self.parts.entries

    def key(self, req: GenerationRequest) -> str:
        return call_key(self.fingerprint, req)

    def get(self, key: str) -> GenerationResult | None:
        hit = self.parts.get(key)
        if hit is None:
            return None
        output, prompt_tokens, completion_tokens = hit
        return GenerationResult(text=output, prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0)

    def put(self, keyed: list[tuple[str, GenerationResult]]) -> None:
        """Keep the successful results of one batch, durably, in one file."""
        self.parts.add(
            [
                {"key": k, "output": r.text, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
                for k, r in keyed
                if r.ok
            ]
        )
