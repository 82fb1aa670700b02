"""The on-disk stores that make reruns cheap: finished engine calls and IFD scores."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from themis.config import StorageConfig
from themis.dataplane.call_cache import SCHEMA, CacheSpec, CallCache, KeyedParts, call_key
from themis.engines.base import GenerationRequest, GenerationResult


def spec(tmp_path: Path, stage: str = "judgments") -> CacheSpec:
    return CacheSpec(StorageConfig(root=str(tmp_path)), "run", stage)


def test_a_second_opening_sees_every_finished_call_and_none_of_the_failures(tmp_path: Path) -> None:
    first = CallCache(spec(tmp_path), "teacher")
    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    other = GenerationRequest(messages=[{"role": "user", "content": "bye"}], max_tokens=8)
    first.put([(first.key(req), GenerationResult(text="hello", prompt_tokens=3, completion_tokens=1))])
    first.put([(first.key(other), GenerationResult(text="", error="HTTP 500"))])
    again = CallCache(spec(tmp_path), "teacher")
    assert again.get(again.key(req)) == GenerationResult(text="hello", prompt_tokens=3, completion_tokens=1)
    assert again.get(again.key(other)) is None
    assert len(list((tmp_path / "run" / "cache" / "judgments").glob("*.parquet"))) == 1


def test_a_changed_engine_or_request_misses(tmp_path: Path) -> None:
    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert call_key("teacher", req) != call_key("other teacher", req)
    assert call_key("teacher", req) != call_key("teacher", GenerationRequest(messages=req.messages, max_tokens=9))


def test_a_damaged_part_empties_the_store_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parts = KeyedParts(spec(tmp_path), SCHEMA)
    parts.add([{"key": "k", "output": "x", "prompt_tokens": 1, "completion_tokens": 1}])
    (tmp_path / "run" / "cache" / "judgments" / "zz-broken.parquet").write_bytes(b"not parquet")
    again = KeyedParts(spec(tmp_path), SCHEMA)
    assert again.entries == {}
    assert "ignoring unreadable cache" in caplog.text


def test_a_keyed_store_needs_its_key_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first column is 'key'"):
        KeyedParts(spec(tmp_path), pa.schema([("output", pa.string()), ("key", pa.string())]))
