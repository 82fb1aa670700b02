"""The run store on a local folder and on a real HTTP S3 endpoint (moto's server, in process)."""

import pyarrow as pa
import pytest

from themis.config import StorageConfig
from themis.storage import RunStore, StorageError, read_text_at


@pytest.fixture(scope="module")
def s3_endpoint():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import os

    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="themis")
    yield endpoint
    server.stop()


def roundtrip(store: RunStore, tmp_path) -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    uri = store.write_table("stage/data.parquet", table)
    assert uri.endswith("stage/data.parquet")
    assert store.read_table("stage/data.parquet").equals(table)
    store.write_json("reports/r.json", {"ok": 1})
    assert store.read_json("reports/r.json") == {"ok": 1}
    # By full URI, as `themis evaluate compare` reads reports (local path or s3://).
    assert read_text_at(store.uri("reports/r.json"), store.storage) == '{\n  "ok": 1\n}'
    with pytest.raises(StorageError, match="not found"):
        read_text_at(store.uri("reports/absent.json"), store.storage)
    store.record_stage("one", {"counts": {"rows_in": 3}})
    store.record_stage("two", {"counts": {"rows_in": 1}})
    assert set(store.manifest()["stages"]) == {"one", "two"}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    store.upload_dir(folder, "model")
    assert (store.local_dir("model") / "config.json").read_text() == "{}"
    with pytest.raises(StorageError, match="input not found: .*missing.parquet"):
        store.read_table("missing.parquet")
    attempt_publishes_only_on_success(store)


def attempt_publishes_only_on_success(store: RunStore) -> None:
    """An attempt's writes are invisible until it publishes; then they replace the old outputs."""
    old = pa.table({"a": [1]})
    store.write_table("stage/out.parquet/part-0.parquet", old)
    store.write_text("stage/stale.txt", "from an older run")
    attempt = store.begin_attempt("stage")
    new = pa.table({"a": [2, 3]})
    attempt.write_table("stage/out.parquet/part-0.parquet", new)
    attempt.write_text("rejects/stage.txt", "why")
    assert store.read_table("stage/out.parquet").equals(old) and not store.exists("rejects/stage.txt")
    failed = store.begin_attempt("stage")
    failed.write_table("stage/out.parquet/part-0.parquet", pa.table({"a": [9]}))  # never published
    attempt.publish()
    assert store.read_table("stage/out.parquet").equals(new)
    assert store.read_text("rejects/stage.txt") == "why"
    assert not store.exists("_attempts", attempt.attempt_id)
    assert store.exists("_attempts", failed.attempt_id)  # left for a person to look at
    assert store.count_rows("stage/out.parquet") == 2


def test_local_store(tmp_path) -> None:
    roundtrip(RunStore(StorageConfig(root=str(tmp_path / "runs")), "r1"), tmp_path)


def test_s3_store_against_a_real_http_endpoint(s3_endpoint, tmp_path) -> None:
    store = RunStore(StorageConfig(root="s3://themis/runs", s3_endpoint=s3_endpoint), "r1")
    assert store.uri_root == "s3://themis/runs/r1"
    roundtrip(store, tmp_path)


def test_unreachable_s3_root_is_a_one_line_storage_error() -> None:
    storage = StorageConfig(root="s3://bucket/runs", s3_endpoint="http://127.0.0.1:9")
    with pytest.raises(StorageError, match=r"^cannot use run root s3://bucket/runs/r: [^\n]*$"):
        RunStore(storage, "r")


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="unsupported storage root"):
        RunStore(StorageConfig(root="gs://bucket/x"), "r")
