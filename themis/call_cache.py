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


class CallCache:
    """One actor's view of a stage's cache: every entry there when it opened, plus its own."""

    def __init__(self, spec: CacheSpec, fingerprint: str):
        from themis.storage import RunStore

        self.store = RunStore(spec.storage, spec.run_name)
        self.rel = spec.rel
        self.fingerprint = fingerprint
        self.writer_id = uuid.uuid4().hex[:12]
        self.parts = 0
        self.entries: dict[str, tuple[str, int, int]] = {}
        self._load()

    def _load(self) -> None:
        if not self.store.exists(self.rel):
            return
        try:
            for batch in self.store.scan(self.rel, SCHEMA.names):
                for key, output, p, c in zip(*(batch.column(i).to_pylist() for i in range(4))):
                    self.entries[key] = (output, p or 0, c or 0)
        except (OSError, pa.ArrowInvalid) as exc:
            # A damaged cache costs money, not correctness: start over and say so.
            log.warning("ignoring unreadable call cache %s: %s", self.store.uri(self.rel), exc)
            self.entries.clear()

    def key(self, req: GenerationRequest) -> str:
        return call_key(self.fingerprint, req)

    def get(self, key: str) -> GenerationResult | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        output, prompt_tokens, completion_tokens = hit
        return GenerationResult(text=output, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def put(self, keyed: list[tuple[str, GenerationResult]]) -> None:
        """Keep the successful results of one batch, durably, in one file."""
        ok = [(k, r) for k, r in keyed if r.ok]
        if not ok:
            return
        table = pa.table(
            {
                "key": [k for k, _ in ok],
                "output": [r.text for _, r in ok],
                "prompt_tokens": [r.prompt_tokens for _, r in ok],
                "completion_tokens": [r.completion_tokens for _, r in ok],
            },
            schema=SCHEMA,
        )
        self.parts += 1
        self.store.write_table_atomic(f"{self.rel}/{self.writer_id}-{self.parts:06d}.parquet", table)
        for k, r in ok:
            self.entries[k] = (r.text, r.prompt_tokens, r.completion_tokens)
