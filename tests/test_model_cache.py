"""Folder transfers with S3 and the node's model cache, against moto's HTTP server on loopback.

The server counts the requests it answers (tests/fakes/counting_s3.py), so the tests can say how a
folder moved (how many parts, how many in flight at once) and that a second load downloaded nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from themis import transfer
from themis.config import StorageConfig
from themis.model_cache import ModelCacheError, NodeModelCache, content_key
from themis.models import ModelSource
from themis.storage import RunStore, StorageError, fetch_folder

MB = 1024 * 1024
CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    """A counting moto server with a bucket of its own (moto's buckets are global to the process)."""
    import boto3

    from tests.fakes.counting_s3 import CountingMotoServer

    server = CountingMotoServer()
    server.start()
    os.environ.update(CREDS)
    bucket = f"cache-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    server.bucket = bucket
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The node cache of this test: its own folder, named by the environment as on a cluster."""
    folder = tmp_path / "node-cache"
    monkeypatch.setenv("THEMIS_MODEL_CACHE", str(folder))
    return folder


def model_folder(path: Path, weights_mb: int = 20, seed: bytes = b"") -> Path:
    """A folder shaped like an export: one big weights file, small JSON files, a nested one."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(seed + os.urandom(weights_mb * MB - len(seed)))
    (path / "config.json").write_text('{"hidden": 64}')
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
    (path / "empty.txt").write_bytes(b"")
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def store_on(s3, run: str) -> RunStore:
    return RunStore(StorageConfig(root=f"s3://{s3.bucket}/runs", s3_endpoint=s3.endpoint), run)


# --- transfers ------------------------------------------------------------------------------------


def test_folder_round_trips_byte_identical_in_8mb_parts_in_parallel(s3, cache, tmp_path) -> None:
    source = model_folder(tmp_path / "export")
    store = store_on(s3, "roundtrip")
    s3.log.clear()
    store.upload_dir(source, "model")
    parts = [r for r in s3.log.requests if r.method == "PUT" and "partNumber=" in r.query]
    assert len(parts) == 3  # 20 MB in 8 MB parts
    s3.log.clear()
    s3.log.get_delay_s = 0.2  # every GET takes a while: parallel ones overlap, sequential ones cannot
    try:
        local = store.local_dir("model")
    finally:
        s3.log.get_delay_s = 0.0
    assert files_of(local) == files_of(source)
    weights = [r for r in s3.log.object_gets() if r.path.endswith("model.safetensors")]
    assert {r.range for r in weights} == {f"bytes=0-{8 * MB - 1}", f"bytes={8 * MB}-{16 * MB - 1}", f"bytes={16 * MB}-"}
    assert len(s3.log.object_gets()) == 6  # 3 parts + 3 small files; no HEAD or GET per file beyond
    assert s3.log.max_in_flight >= 4  # the parts and the small files at once, not one after another


def test_upload_replaces_the_folder_and_refuses_a_missing_one(s3, cache, tmp_path) -> None:
    store = store_on(s3, "replace")
    store.upload_dir(model_folder(tmp_path / "a", weights_mb=1), "model")
    second = tmp_path / "b"
    second.mkdir()
    (second / "config.json").write_text("{}")
    store.upload_dir(second, "model")
    assert files_of(store.local_dir("model")) == {"config.json": b"{}"}  # nothing of the first left
    with pytest.raises(StorageError, match="not a folder"):
        store.upload_dir(tmp_path / "absent", "model")
    with pytest.raises(StorageError, match=f"not found: s3://{s3.bucket}/runs/replace/absent"):
        store.local_dir("absent")


def test_a_key_pointing_outside_the_folder_is_refused(tmp_path) -> None:
    files = [transfer.RemoteFile(rel="../../escaped.txt", size=1, etag="x")]
    with pytest.raises(ValueError, match="points outside"):
        transfer.download_folder(None, StorageConfig(), "bucket", "prefix", files, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_publishing_a_folder_copies_server_side_big_files_in_parts(s3, cache, tmp_path, monkeypatch) -> None:
    # S3 copies at most 5 GB in one request; with the limit at 5 MB here, a 12 MB file takes parts.
    monkeypatch.setattr(transfer, "COPY_THRESHOLD", 5 * MB)
    monkeypatch.setattr(transfer, "COPY_PART", 5 * MB)
    source = model_folder(tmp_path / "export", weights_mb=12)
    store = store_on(s3, "publish")
    attempt = store.begin_attempt("train")
    attempt.upload_dir(source, "model")
    s3.log.clear()
    attempt.publish()
    assert s3.log.object_gets() == []  # no byte came through this process
    copies = [r for r in s3.log.requests if r.method == "PUT" and "partNumber=" in r.query]
    assert len(copies) == 3  # 5 + 5 + 2 MB of model.safetensors
    assert files_of(store.local_dir("model")) == files_of(source)
    assert not store.exists("_attempts", attempt.attempt_id)


def test_local_root_copies_and_loads_in_place(tmp_path) -> None:
    source = model_folder(tmp_path / "export", weights_mb=1)
    store = RunStore(StorageConfig(root=str(tmp_path / "runs")), "r")
    store.upload_dir(source, "model")
    local = store.local_dir("model")
    assert local == tmp_path / "runs" / "r" / "model"  # no copy: the run's own folder
    assert files_of(local) == files_of(source)
    assert fetch_folder(store.storage, "r", "model") == local
    with pytest.raises(StorageError, match="not found: .*/r/absent"):
        fetch_folder(store.storage, "r", "absent")


def test_fetch_folder_names_a_missing_export_and_an_unreachable_server(s3, cache) -> None:
    storage = StorageConfig(root=f"s3://{s3.bucket}/runs", s3_endpoint=s3.endpoint)
    with pytest.raises(StorageError, match=f"not found: s3://{s3.bucket}/runs/nobody/model"):
        fetch_folder(storage, "nobody", "model")
    offline = StorageConfig(root="s3://bucket/runs", s3_endpoint="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="cannot list s3://bucket/runs/r/model: "):
        fetch_folder(offline, "r", "model")
    assert not cache.exists() or not any(cache.iterdir())  # nothing staged for a failed listing


# --- the node cache ---------------------------------------------------------------------------------


def test_node_cache_second_load_downloads_nothing(s3, cache, tmp_path) -> None:
    source = model_folder(tmp_path / "export")
    store_on(s3, "twice").upload_dir(source, "model")
    first = store_on(s3, "twice").local_dir("model")
    s3.log.clear()
    # As a second replica on the node would: through ModelSource, which every model load takes.
    storage = StorageConfig(root=f"s3://{s3.bucket}/runs", s3_endpoint=s3.endpoint)
    second = ModelSource(storage=storage, run_name="twice").fetch()
    assert second == first and first.parent == cache
    assert [(r.method, r.query.split("&")[0]) for r in s3.log.requests] == [("GET", "list-type=2")]  # one LIST
    assert files_of(second) == files_of(source)
    assert all(p.stat().st_mode & 0o222 == 0 for p in second.rglob("*") if p.is_file())  # read-only
    # A re-exported model is new content: a new entry, downloaded.
    (tmp_path / "export" / "config.json").write_text('{"hidden": 128}')
    store_on(s3, "twice").upload_dir(source, "model")
    third = store_on(s3, "twice").local_dir("model")
    assert third != first and files_of(third) == files_of(source)


FETCH = """
import sys, time
from pathlib import Path
from themis.config import StorageConfig
from themis.storage import RunStore
ready = Path(sys.argv[1])
ready.touch()
while len(list(ready.parent.glob("ready-*"))) < 2:  # both processes start fetching together
    time.sleep(0.01)
print(RunStore(StorageConfig(root=sys.argv[2], s3_endpoint=sys.argv[3]), "two").local_dir("model"))
"""


def test_node_cache_two_processes_fetching_at_once_download_once(s3, cache, tmp_path) -> None:
    source = model_folder(tmp_path / "export")
    store_on(s3, "two").upload_dir(source, "model")
    s3.log.clear()
    s3.log.get_delay_s = 0.3  # the download lasts long enough for the other process to arrive
    env = os.environ | CREDS | {"PYTHONPATH": str(ROOT)}
    root = f"s3://{s3.bucket}/runs"
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FETCH, str(tmp_path / f"ready-{i}"), root, s3.endpoint],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        s3.log.get_delay_s = 0.0
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0]).parent == cache
    assert len(s3.log.object_gets()) == 6  # one download: 3 parts + 3 small files
    assert files_of(Path(outputs[0])) == files_of(source)


def test_node_cache_changed_export_during_download_is_refused(s3, cache, tmp_path, monkeypatch) -> None:
    store = store_on(s3, "changing")
    store.upload_dir(model_folder(tmp_path / "export", weights_mb=1), "model")
    real = transfer.download_folder

    def download_then_reexport(*args, **kwargs):
        real(*args, **kwargs)
        store.write_text("model/config.json", '{"re": "exported"}')  # a new export lands meanwhile

    monkeypatch.setattr(transfer, "download_folder", download_then_reexport)
    with pytest.raises(StorageError, match="changed while it was downloaded"):
        store.local_dir("model")
    assert NodeModelCache.for_storage().entries() == {}
    assert not list(cache.glob("*.staging"))


def fill_with(nbytes: int):
    def fill(staging: Path) -> None:
        (staging / "weights.bin").write_bytes(b"w" * nbytes)

    return fill


def key(name: str) -> str:
    return content_key([(name, 0, name)])


def test_node_cache_evicts_least_recently_used_by_size_never_one_in_use(tmp_path) -> None:
    cache = NodeModelCache(tmp_path / "c", limit_bytes=3 * MB)
    a = cache.fetch(key("a"), MB, fill_with(MB))
    cache.fetch(key("b"), MB, fill_with(MB))
    time.sleep(0.01)
    cache.fetch(key("a"), MB, fill_with(MB))  # used again: b is now the least recently used
    cache.release(key("a"))
    cache.release(key("b"))
    cache.fetch(key("c"), 2 * MB, fill_with(2 * MB))
    assert set(cache.entries()) == {key("a"), key("c")}  # b went; a, used later, stayed
    assert (a / "weights.bin").read_bytes() == b"w" * MB
    # c is in use (held by this process): a must go, not c, to make room for d.
    cache.fetch(key("d"), MB, fill_with(MB))
    assert set(cache.entries()) == {key("c"), key("d")}
    assert sum(cache.entries().values()) <= 3 * MB
    with pytest.raises(ModelCacheError, match="does not fit the node's model cache"):
        cache.fetch(key("e"), 4 * MB, fill_with(4 * MB))


HOLD = """
import sys, time
from pathlib import Path
from themis.model_cache import NodeModelCache
cache = NodeModelCache(Path(sys.argv[1]), 10**9)
def fill(staging):
    (staging / "weights.bin").write_bytes(b"x" * 1000)
    if sys.argv[3] == "die-while-filling":
        print("filling", flush=True)
        time.sleep(600)
cache.fetch(sys.argv[2], 1000, fill)
print("holding", flush=True)
time.sleep(600)
"""


def start_holder(folder: Path, k: str, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), k, mode],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() in ("holding", "filling")
    return proc


def test_node_cache_entry_held_by_another_process_is_not_evicted_until_it_dies(tmp_path) -> None:
    folder = tmp_path / "c"
    holder = start_holder(folder, key("held"), "hold")
    cache = NodeModelCache(folder, limit_bytes=1500)
    try:
        cache.fetch(key("new"), 1000, fill_with(1000))  # over the limit: the held entry stays
        assert set(cache.entries()) == {key("held"), key("new")}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    cache.release(key("new"))
    cache.fetch(key("newer"), 1000, fill_with(1000))  # the holder's lock died with it
    assert key("held") not in cache.entries()


def test_node_cache_partial_download_is_never_visible(tmp_path) -> None:
    folder = tmp_path / "c"
    cache = NodeModelCache(folder, limit_bytes=10 * MB)

    def fails_half_way(staging: Path) -> None:
        (staging / "weights.bin").write_bytes(b"half")
        raise ConnectionError("the server went away")

    with pytest.raises(ConnectionError):
        cache.fetch(key("m"), 1000, fails_half_way)
    assert cache.entries() == {} and not list(folder.glob("*.staging"))
    # A fetcher killed mid-download leaves its staging folder, never an entry.
    holder = start_holder(folder, key("m"), "die-while-filling")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert cache.entries() == {} and (folder / f"{key('m')}.staging").is_dir()
    entry = cache.fetch(key("m"), 1000, fill_with(1000))  # the next fetch starts over
    assert files_of(entry) == {"weights.bin": b"w" * 1000}
    assert not list(folder.glob("*.staging"))


def test_node_cache_settings_config_then_environment_then_home(monkeypatch, tmp_path) -> None:
    import tempfile

    from themis.model_cache import cache_limit_bytes, cache_root

    for name in ("THEMIS_MODEL_CACHE", "THEMIS_MODEL_CACHE_GB", "THEMIS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    default = cache_root(StorageConfig())
    assert default == Path.home() / ".cache" / "themis" / "model-cache"
    assert not default.is_relative_to(tempfile.gettempdir())  # nodes clean their temp folder
    assert cache_limit_bytes(StorageConfig()) == 50 * 2**30
    monkeypatch.setenv("THEMIS_MODEL_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("THEMIS_MODEL_CACHE_GB", "2.5")
    assert cache_root(StorageConfig()) == tmp_path / "env"
    assert cache_limit_bytes(StorageConfig()) == int(2.5 * 2**30)
    configured = StorageConfig(model_cache_dir=str(tmp_path / "cfg"), model_cache_gb=1)
    assert (cache_root(configured), cache_limit_bytes(configured)) == (tmp_path / "cfg", 2**30)
    monkeypatch.setenv("THEMIS_MODEL_CACHE_GB", "lots")
    with pytest.raises(ModelCacheError, match="THEMIS_MODEL_CACHE_GB='lots' is not a number"):
        cache_limit_bytes(StorageConfig())
