"""The Serve application builder of the RayService (themis.serve_app), and where replicas get the
model: from the run's storage, themselves, so that a replica on another node than the driver has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from themis.config import StorageConfig
from themis.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
ARGS = {"config": "jobs/configs/cluster.yaml"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server with a bucket; credentials in the environment for pyarrow."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="runs")
    yield endpoint
    server.stop()


def test_args_are_checked() -> None:
    from themis.serve_app import build_judge_app

    with pytest.raises(ValidationError, match="storage_roots"):
        build_judge_app(ARGS | {"storage_roots": "s3://x"})
    with pytest.raises(ValidationError, match="config"):
        build_judge_app({})


def test_a_missing_trained_model_is_named(tmp_path: Path) -> None:
    from themis.serve_app import build_judge_app

    with pytest.raises(FileNotFoundError, match=f"no trained model to serve at {tmp_path}/cluster/model"):
        build_judge_app(ARGS | {"storage_root": str(tmp_path)})


def test_relative_config_paths_resolve_from_the_project_root(tmp_path: Path, monkeypatch) -> None:
    from themis.serve_app import resolve_config_path

    monkeypatch.chdir(tmp_path)  # Ray may start the builder anywhere
    assert resolve_config_path("jobs/configs/cluster.yaml") == ROOT / "jobs" / "configs" / "cluster.yaml"
    assert resolve_config_path("nope.yaml") == Path("nope.yaml")  # load_config then names it


@pytest.mark.integration
def test_replicas_fetch_the_model_from_s3_themselves(s3_endpoint, tiny_model_dir: Path, ray_local) -> None:
    from themis.serve_app import build_judge_app
    from themis.stages.serve import ModelSource

    root = "s3://runs/themis"
    storage = StorageConfig(root=root, s3_endpoint=s3_endpoint)
    RunStore(storage, "cluster").upload_dir(tiny_model_dir, "model")
    app = build_judge_app(ARGS | {"storage_root": root, "overrides": [f"run.storage.s3_endpoint={s3_endpoint}"]})
    source = app._bound_deployment.init_args[0]
    # The driver handed over where the model is, not a folder on its own disk.
    assert source == ModelSource(storage=storage, run_name="cluster")

    # A Ray worker process (as a replica would be) downloads its own copy.
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}

    @ray_local.remote(runtime_env={"env_vars": creds})
    def fetch_in_a_worker(src: ModelSource) -> tuple[int, list[str]]:
        folder = src.fetch()
        return os.getpid(), sorted(p.name for p in folder.iterdir())

    pid, files = ray_local.get(fetch_in_a_worker.remote(source))
    assert pid != os.getpid()
    assert "config.json" in files and "model.safetensors" in files
