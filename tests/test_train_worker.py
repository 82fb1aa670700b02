"""The Ray Train workers of the train stage on a Ray that has (logical) GPUs: each worker sees all
of its node's GPUs for the run, as NCCL needs, and hands its training process the torchrun
variables that pick its own, without importing torch itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

# Run in a process of its own: this Ray declares 2 GPUs, unlike the tests' shared local Ray.
SCRIPT = """
import json, os, sys
import ray, ray.train
from ray.train import RunConfig, ScalingConfig
from themis.training import worker as train_worker

def report_env(config):
    ctx = ray.train.get_context()
    env = train_worker._child_env(ctx, ("127.0.0.1", 29500))
    seen = {
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "child": {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")},
        "torch_imported": "torch" in sys.modules,
    }
    with open(os.path.join(config["out"], f"rank{ctx.get_world_rank()}.json"), "w") as f:
        json.dump(seen, f)

out = sys.argv[1]
ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
scaling = ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 0.5, "GPU": 1})
train_worker.trainer({"out": out}, scaling, RunConfig(name="gpu-env", storage_path=out), loop=report_env).fit()
"""


def test_workers_share_the_nodes_gpus_and_give_each_child_its_local_rank(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["visible"] for s in seen] == ["0,1", "0,1"]  # shared, not one GPU each
    assert sorted(s["gpu_ids"][0] for s in seen) == ["0", "1"]  # Ray still gave each its own
    for rank, s in enumerate(seen):
        assert s["child"] == {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": s["gpu_ids"][0],  # the child's device, by position in the shared list
            "MASTER_PORT": "29500",
            "CUDA_VISIBLE_DEVICES": "0,1",
        }
        assert not s["torch_imported"]
