"""The call cache a stage leaves behind: compacted into one file once its stream has ended."""

from __future__ import annotations

from pathlib import Path

from themis.config import StorageConfig
from themis.dataplane.call_cache import CacheSpec, CallCache, compact
from themis.engines.base import GenerationRequest, GenerationResult


def test_compact_merges_parts_and_keeps_every_entry(tmp_path: Path) -> None:
    spec = CacheSpec(StorageConfig(root=str(tmp_path)), "run", "judgments")
    writer = CallCache(spec, "engine")
    keys = [writer.key(GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}])) for i in range(5)]
    for i, key in enumerate(keys):  # one part per saved result, as group commit writes them at worst
        writer.put([(key, GenerationResult(text=f"a{i}", prompt_tokens=i, completion_tokens=1))])
    folder = tmp_path / "run" / "cache" / "judgments"
    (folder / "_tmp-killed-mid-write.parquet").write_bytes(b"partial")
    assert len(list(folder.glob("[!_]*.parquet"))) == 5
    compact(spec)
    assert len(list(folder.glob("[!_]*.parquet"))) == 1
    reader = CallCache(spec, "engine")
    assert [reader.get(k).text for k in keys] == [f"a{i}" for i in range(5)]
    assert reader.get(keys[3]).prompt_tokens == 3
