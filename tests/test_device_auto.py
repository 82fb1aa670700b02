"""`device: auto` for the transformers engine: each use's Ray reservation follows the cluster's GPUs
(generation pools, the trained judge in evaluate, the served judge, the IFD scorer), and a Ray
actor runs on a GPU exactly when Ray gave it one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from themis.config import (
    IFDScorerConfig,
    OpenAIEngineConfig,
    ServeConfig,
    ServeVLLMConfig,
    StorageConfig,
    TrainedJudge,
    TransformersEngineConfig,
    load_config,
)
from themis.dataplane.generation import local_model_gpus, pool_plan
from themis.dataplane.ifd_scoring import scorer_plan
from themis.serving.options import deployment_options, replica_gpus, serve_engine_config
from themis.stages.evaluate import judge_engine
from themis.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
NO_GPU, TWO_GPUS = 0.0, 2.0


@pytest.mark.parametrize("config", ["demo.yaml", "tiny.yaml"])
def test_generation_pools_of_a_shipped_config_take_a_gpu_only_where_the_cluster_has_one(config):
    cfg = load_config(ROOT / "jobs" / "configs" / config)
    local = {n: e for n, e in cfg.engines.items() if isinstance(e, TransformersEngineConfig)}
    assert local and all(e.device == "auto" for e in local.values())  # the default, as shipped
    for engine in local.values():
        assert pool_plan(engine, NO_GPU).num_gpus == 0
        assert pool_plan(engine, TWO_GPUS).num_gpus == 1


def test_the_pool_setting_and_an_explicit_device_win_over_the_cluster():
    auto = TransformersEngineConfig(model="m")
    assert local_model_gpus("auto", None, TWO_GPUS) == 1
    assert local_model_gpus("auto", 0, TWO_GPUS) == 0  # gpus_per_actor: 0 keeps it on the CPU
    assert local_model_gpus("auto", 0.5, NO_GPU) == 0.5
    assert local_model_gpus("cuda:1", None, NO_GPU) == 1
    assert local_model_gpus("cpu", None, TWO_GPUS) == 0
    assert pool_plan(auto.model_copy(update={"device": "cpu"}), TWO_GPUS).num_gpus == 0
    # The network engine never reserves a GPU, and never asks the cluster (no Ray here).
    assert pool_plan(OpenAIEngineConfig(base_url="http://h/v1", model="m")).num_gpus == 0


def test_the_trained_judge_in_evaluate_runs_on_a_gpu_where_the_cluster_has_one(tmp_path):
    cfg = load_config(ROOT / "jobs" / "configs" / "tiny.yaml", [f"run.storage.root={tmp_path}"])
    store = RunStore(StorageConfig(root=str(tmp_path)), cfg.run.name)
    store.write_json("model/config.json", {})  # an export is there
    engine = judge_engine(TrainedJudge(), cfg, store)
    assert isinstance(engine.cfg, TransformersEngineConfig) and engine.cfg.device == "auto"
    assert pool_plan(engine.cfg, NO_GPU).num_gpus == 0
    assert pool_plan(engine.cfg, TWO_GPUS).num_gpus == 1


def test_the_served_judge_reserves_a_gpu_where_the_cluster_has_one():
    serve = ServeConfig()  # gpus_per_replica unset
    assert deployment_options(serve, NO_GPU)["ray_actor_options"]["num_gpus"] == 0
    assert deployment_options(serve, TWO_GPUS)["ray_actor_options"]["num_gpus"] == 1
    vllm = ServeConfig(engine="vllm", vllm=ServeVLLMConfig(tensor_parallel_size=2))
    assert replica_gpus(vllm, TWO_GPUS) == 2 and replica_gpus(vllm, NO_GPU) == 0
    assert replica_gpus(ServeConfig(gpus_per_replica=0), TWO_GPUS) == 0  # as set
    with pytest.raises(ValueError, match="set serve.gpus_per_replica"):
        replica_gpus(serve, None)  # no Ray to count GPUs: say so rather than guess
    # The replica tells its engine's child process the device it was given (no Ray in the child).
    assert serve_engine_config(serve, "/m", "cuda").device == "cuda"
    assert serve_engine_config(serve, "/m", "cpu").device == "cpu"


def test_the_ifd_scorer_takes_a_gpu_where_the_cluster_has_one():
    assert scorer_plan(IFDScorerConfig(), NO_GPU).num_gpus == 0
    assert scorer_plan(IFDScorerConfig(), TWO_GPUS).num_gpus == 1


def test_an_autoscaling_cluster_counts_the_gpus_it_may_add(monkeypatch):
    import ray
    from ray._private.state import state

    from themis.dataplane.generation import cluster_gpus

    # KubeRay's GPU worker group scaled to zero: none up now, four in the autoscaler's config.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 36, "GPU": 4})
    assert cluster_gpus() == 4
    assert pool_plan(TransformersEngineConfig(model="trained")).num_gpus == 1  # asked of Ray
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)  # no autoscaler
    assert cluster_gpus() == 0
    assert scorer_plan(IFDScorerConfig()).num_gpus == 0


# A Ray with one logical GPU; CUDA made to look present, as on a GPU node where Ray 2.60 leaves
# CUDA_VISIBLE_DEVICES alone for an actor given no GPU.
ACTORS = """
import json, sys
import ray, torch
from themis.engines.hf import _pick_device
from themis.dataplane.generation import cluster_gpus
from themis.serving.replica import replica_device

@ray.remote
class Probe:
    def devices(self):
        torch.cuda.is_available = lambda: True
        return {"engine": _pick_device("auto"), "replica": replica_device(), "explicit": _pick_device("cpu")}

ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False)
torch.cuda.is_available = lambda: True
seen = {
    "with_gpu": ray.get(Probe.options(num_cpus=0, num_gpus=1).remote().devices.remote()),
    "without_gpu": ray.get(Probe.options(num_cpus=0, num_gpus=0).remote().devices.remote()),
    "driver": _pick_device("auto"),  # not an actor: CUDA's own answer
    "cluster_gpus": cluster_gpus(),  # a local Ray: no autoscaler config, the GPUs it has
}
print(json.dumps(seen))
"""


@pytest.mark.integration  # one local Ray with a logical GPU, in its own process (~10 s)
def test_an_actor_runs_on_a_gpu_exactly_when_ray_gave_it_one():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-c", ACTORS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["with_gpu"] == {"engine": "cuda", "replica": "cuda", "explicit": "cpu"}
    assert seen["without_gpu"] == {"engine": "cpu", "replica": "cpu", "explicit": "cpu"}
    assert seen["driver"] == "cuda" and seen["cluster_gpus"] == 1
