"""The whole pipeline on an ``s3://`` run root (moto's S3 server), run as a user runs it, and what
it leaves in the temp folder: nothing of Themis's, whether it succeeds, fails or is stopped.

Each run is ``python -m themis.cli`` in a subprocess with TMPDIR pointed at a fresh folder, so every
process it starts (its private Ray's workers, the training processes) writes its temp files there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_pipeline import TINY, tiny_overrides
from tests.test_train_stage import _rows
from themis.config import StorageConfig
from themis.scratch import TREE_ENV
from themis.storage import RunStore

# Each test runs `themis` with its own private Ray: 1.5-4 minutes on a 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "themis"
# Ray's dashboard starts its modules from a multiprocessing forkserver, whose listener socket lives
# in a pymp-* folder of the temp folder; Ray kills that process at shutdown, before Python's own
# exit hook could remove it. Not Themis's: every Ray on the machine leaves these.
RAYS_OWN = ("pymp-",)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


class Run:
    """One ``themis`` command in a subprocess whose temp folder is ``temp``."""

    def __init__(self, endpoint: str, temp: Path, cache: Path, model: Path, prefix: str):
        self.temp, self.endpoint, self.model = temp, endpoint, model
        self.root = f"s3://{BUCKET}/{prefix}"
        env = {k: v for k, v in os.environ.items() if k not in (TREE_ENV, "RAY_ADDRESS")}
        self.env = {
            **env,
            **CREDS,
            "PYTHONPATH": str(ROOT),
            "TMPDIR": str(temp),
            # The node's model cache is meant to outlive the run: keep it beside, not in, the temp folder.
            "THEMIS_MODEL_CACHE": str(cache),
            "DS_ACCELERATOR": "cpu",
        }

    def start(self, command: str, *extra: str) -> subprocess.Popen:
        overrides = tiny_overrides(self.model, self.root, f"run.storage.s3_endpoint={self.endpoint}", *extra)
        # Ray's unix sockets live under its temp folder and have a ~107-byte limit: a short one
        # of its own (Ray's session logs are not Themis's scratch; finish() removes them).
        self.ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        return subprocess.Popen(
            [sys.executable, "-m", "themis.cli", command, str(TINY), *overrides],
            env={**self.env, "RAY_TMPDIR": self.ray_temp},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(self, proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            shutil.rmtree(self.ray_temp, ignore_errors=True)
        return proc.returncode, out

    def store(self) -> RunStore:
        return RunStore(StorageConfig(root=self.root, s3_endpoint=self.endpoint), "tiny")

    def left_over(self) -> list[str]:
        """Everything left in the temp folder (it began empty) but Ray's own leftovers."""
        found = (p.relative_to(self.temp) for p in self.temp.rglob("*"))
        return sorted(str(p) for p in found if not p.parts[0].startswith(RAYS_OWN))


@pytest.fixture
def run_of(s3_endpoint: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    """Runs on ``s3://themis/<prefix>`` whose TMPDIR is a fresh, empty folder."""
    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)  # for this process's own look at the run root
    temp = tmp_path / "tmp"
    temp.mkdir()
    return lambda prefix: Run(s3_endpoint, temp, tmp_path / "model-cache", tiny_model_dir, prefix)


def test_s3_pipeline_runs_every_stage_and_no_scratch_left(run_of) -> None:
    run = run_of("ok")
    started = time.monotonic()
    code, out = run.finish(run.start("pipeline"))
    print(f"pipeline on s3:// took {time.monotonic() - started:.1f} s")
    assert code == 0, out[-4000:]
    store = run.store()
    stages = store.manifest()["stages"]
    assert [(name, entry["status"]) for name, entry in stages.items()] == [
        (name, "ok") for name in ("instructions", "responses", "judgments", "dataset", "train", "evaluate", "serve")
    ]
    assert store.exists("model/model.safetensors") and store.exists("train/tensorboard")
    assert store.exists("reports/evaluation/trained/report.json")
    assert stages["serve"]["counts"]["smoke_requests"] >= 1
    assert run.left_over() == []


def test_no_scratch_left_when_training_is_killed_and_the_driver_stopped(run_of) -> None:
    """The train stage on an ``s3://`` root fails while scratch folders are in use: the kernel
    kills a training process (as the OOM killer does; Ray Train restarts the group), then the
    driver is stopped by SIGTERM (Ray's workers and the new training process are killed)."""
    run = run_of("killed")
    store = run.store()
    store.write_table("dataset/train.parquet", _rows(16, "tr"))
    store.write_table("dataset/validation.parquet", _rows(3, "va"))
    store.record_stage("dataset", {"status": "ok"})  # what the runner checks before train starts
    # Far more steps than the test lets it run.
    proc = run.start("train", "train.epochs=1000", "train.checkpoint_every=1", "train.max_failures=1")
    first = _wait_for_scratch(run.temp, "tb-", proc)  # rank 0's training process holds it
    os.kill(first, signal.SIGKILL)
    second = _wait_for_scratch(run.temp, "tb-", proc, besides=first)  # the restarted group's
    proc.send_signal(signal.SIGTERM)
    code, out = run.finish(proc, timeout=300)
    # An exit, not an abort (134) or a bare kill (-15): themis.runtime raises SystemExit(143), and
    # when the signal lands inside a Ray wait, Ray turns it into SystemExit(1). Which one depends on
    # where the driver is; either way atexit ran (Ray stopped, scratch removed).
    assert code in (1, 143) and store.stage_status("train") == "failed", (code, out[-4000:])
    assert second != first and run.left_over() == []


def _wait_for_scratch(temp: Path, prefix: str, proc: subprocess.Popen, besides: int = 0, timeout: float = 300) -> int:
    """Wait until a process of the run (other than ``besides``) holds a scratch folder named
    ``prefix...``; return its pid."""
    deadline = time.monotonic() + timeout
    while True:
        # A scratch folder is <root>/<tree>/<process: host_pid_start>/<prefix>XXXXXXXX.
        pids = {int(p.parent.name.split("_")[-2]) for p in temp.glob(f"themis-scratch-*/*/*/{prefix}*")} - {besides}
        if pids:
            return pids.pop()
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"no {prefix} scratch folder after {timeout} s"
        time.sleep(0.2)
