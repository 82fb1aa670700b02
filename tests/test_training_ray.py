"""The train stage's scaling features on local Ray (2 gloo workers, tiny random models on CPU):
LoRA under ZeRO-2 and ZeRO-3, a worker killed mid-run, per-worker memory under ZeRO-3, and the
tokenised shards on S3 (moto). Each fit costs ~10-17 s of Ray Train overhead: few steps, shared Ray.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.test_train_stage import _cfg, _rows, _store
from themis import runner
from themis.config import StorageConfig, TransformersEngineConfig
from themis.models import ModelSource, is_adapter_folder
from themis.stages import train as train_stage
from themis.storage import RunStore

pytestmark = pytest.mark.integration
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _judge_once(model_dir: Path) -> str:
    """What the evaluate stage does with a trained judge: load it in the transformers engine, judge."""
    from themis.engines.base import GenerationRequest
    from themis.engines.hf import TransformersEngine

    engine = TransformersEngine(TransformersEngineConfig(model=str(model_dir), batch_size=1), model_path=model_dir)
    request = GenerationRequest(messages=[{"role": "user", "content": "Rate: 2+2=4."}], max_tokens=4)
    [result] = engine.generate([request])
    assert result.ok, result.error
    return result.text


@pytest.mark.slow
def test_lora_zero2_merged_and_zero3_adapter_export_load_and_judge(ray_local, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for zero, export in ((2, "merged"), (3, "adapter")):
        store = _store(tmp_path / f"z{zero}", n_train=8, n_val=0)
        cfg = _cfg(str(tiny_model_dir), zero_stage=zero, max_steps=2, lora=LORA, export=export, lr=5e-2)
        report = train_stage.run(cfg, store)
        assert report.counts["steps"] == 2 and report.details["export"] == export
        exported = store.local_dir("model")
        assert is_adapter_folder(exported) == (export == "adapter")
        # Evaluate and serve load the run's model through ModelSource: an adapter is merged onto its base.
        folder = ModelSource(storage=store.storage, run_name=store.run_name).fetch()
        tuned = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert set(tuned) == set(base) and not any("lora" in k for k in tuned)
        changed = {k.split(".")[-2] for k in base if not tuned[k].equal(base[k])}
        assert changed == {"q_proj", "v_proj"}  # only the adapted layers moved
        assert isinstance(_judge_once(folder), str)


def _kill_a_worker_after(checkpoint_dir: Path, outcome: dict) -> None:
    """Wait for a checkpoint folder, then SIGKILL one Ray Train worker of this test's Ray."""
    import ray
    from ray.util.state import list_actors

    try:
        deadline = time.monotonic() + 600
        while not checkpoint_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # This Ray's address: other Ray instances may run on the machine.
        address = ray.get_runtime_context().gcs_address
        filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        workers = list_actors(address=address, filters=filters, detail=True)
        os.kill(workers[-1]["pid"], signal.SIGKILL)
        outcome["killed"] = workers[-1]["pid"]
    except Exception as exc:  # reported by the test, not lost in the thread
        outcome["error"] = repr(exc)


@pytest.mark.slow
def test_self_heal_worker_killed_mid_run_recovers_in_the_same_call(ray_local, tiny_model_dir, tmp_path):
    store = _store(tmp_path, n_train=16, n_val=0)
    cfg = _cfg(str(tiny_model_dir), zero_stage=2, epochs=2, checkpoint_every=2, max_failures=2)
    outcome: dict = {}
    # Kill once step 6's folder exists: a worker reports 6 only after the controller has taken 4
    # from its one-slot queue, so by then step 2 has been collected and registered. (At step 4's
    # folder, step 2 could still be waiting in the queue: then the run rightly restarts from 0.)
    watcher = threading.Thread(
        target=_kill_a_worker_after, args=(Path(store.path("checkpoints", "train", "step_000006")), outcome)
    )
    watcher.start()
    report = train_stage.run(cfg, store)
    watcher.join()
    assert "killed" in outcome, outcome
    planned = 2 * 16 // (2 * 1 * 1)  # epochs x examples / (workers x micro-batch x grad_accum)
    assert report.counts["steps"] == planned == len(report.details["train_loss"])
    assert 2 <= report.counts["resumed_from_step"] < planned  # from a registered checkpoint, not from 0
    print(f"killed pid {outcome['killed']}; resumed from step {report.counts['resumed_from_step']} of {planned}")


def _bigger_model(folder: Path, tiny: Path) -> int:
    """A ~29M-parameter random Llama with the tiny model's tokenizer, saved to ``folder``: big
    enough that optimizer state dominates a worker's memory. Returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=640,
        intermediate_size=1920,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def _peak_mb_per_worker(model: Path, tmp_path: Path, zero_stage: int) -> dict[int, float]:
    """The highest peak resident memory of a worker's training process (ru_maxrss, up to the end of
    training) for one and two workers."""
    peak = {}
    for workers in (1, 2):
        store = _store(tmp_path / f"z{zero_stage}w{workers}", n_train=4, n_val=0)
        cfg = _cfg(str(model), zero_stage=zero_stage, num_workers=workers, max_steps=1, max_seq_len=64)
        report = train_stage.run(cfg, store)
        peak[workers] = max(report.details["peak_rss_mb"])
        print(f"ZeRO-{zero_stage}, {workers} worker(s): peak RSS {report.details['peak_rss_mb']} MiB")
    return peak


@pytest.mark.slow
def test_zero3_memory_per_worker_falls_with_two_workers(ray_local, tiny_model_dir, tmp_path):
    """ZeRO-3 shards parameters, gradients and optimizer state: each of two workers holds half.
    fp32 weights, gradients and two Adam moments are 4 copies of the model; halving them saves
    each worker 2 copies, so a peak lower by 1 copy is proven sharding, beyond noise (without
    sharding, as under ZeRO-0, each of two workers peaks as high as one worker alone)."""
    model = tmp_path / "model"
    one_copy_mb = _bigger_model(model, tiny_model_dir) * 4 / 2**20
    peak = _peak_mb_per_worker(model, tmp_path, zero_stage=3)
    assert peak[2] < peak[1] - one_copy_mb, (peak, one_copy_mb)


@pytest.fixture(scope="module")
def s3_root():
    """moto's S3 server with a bucket; credentials in the environment for pyarrow."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="train")
    yield StorageConfig(root="s3://train/runs", s3_endpoint=endpoint)
    server.stop()


def test_tokenized_shards_are_written_to_and_read_from_s3(ray_local, tiny_model_dir, s3_root):
    from themis.training.data import open_split, tokenize_split

    store = RunStore(s3_root, "shards").begin_attempt("train")
    table = _rows(5, "tr")
    store.write_table("dataset/train.parquet", table)
    rows = table.to_pylist()
    rows[3]["messages"][-1]["content"] = "[[5]] " * 60  # a target too long for max_seq_len: a reject
    store.write_table("dataset/train.parquet", type(table).from_pylist(rows, schema=table.schema))
    path = tokenize_split(store, "dataset/train.parquet", "train", str(tiny_model_dir), 64)
    assert path.startswith("train/runs/shards/_attempts/")  # on the bucket, not on local disk
    split = open_split(store.fs, path)
    assert split.example_ids == ["tr-0", "tr-1", "tr-2", "tr-4"]
    assert [r["example_id"] for r in split.rejects] == ["tr-3"]
    taken = split.take([3, 1])
    assert sorted(taken) == [1, 3] and len(taken[3]["input_ids"]) == split.lengths[3]
    assert len(taken[1]["kinds"]) == len(taken[1]["labels"]) == len(taken[1]["input_ids"])


@pytest.fixture(scope="module")
def counted_s3():
    """moto's S3 server counting requests and who sent them (tests/fakes/counting_s3.py)."""
    import boto3

    from tests.fakes.counting_s3 import CountingMotoServer

    server = CountingMotoServer()
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="ckpt")
    yield server
    server.stop()


@pytest.mark.slow
def test_s3_checkpoints_go_up_through_themis_transfer_and_resume(ray_local, tiny_model_dir, counted_s3):
    """On an ``s3://`` root every rank's checkpoint files go up through ``themis.transfer``
    (boto3's transfer manager: parallel parts), not Ray Train's pyarrow copy (sequential 1 MB
    parts); the stored checkpoint is one Ray Train resumes from."""
    from tests.test_train_stage import _cfg

    storage = {"root": "s3://ckpt/runs", "s3_endpoint": counted_s3.endpoint}
    store = RunStore(StorageConfig(**storage), "t")
    store.write_table("dataset/train.parquet", _rows(16, "tr"))
    store.write_table("dataset/validation.parquet", _rows(3, "va"))
    store.record_stage("dataset", {"status": "ok"})
    counted_s3.log.clear()
    first = runner.run_stage("train", _cfg(str(tiny_model_dir), storage=storage, max_steps=2))
    assert first.counts["steps"] == 2 and first.outputs["checkpoints"] == "s3://ckpt/runs/t/checkpoints/train"
    writes = [
        r for r in counted_s3.log.requests if r.method in ("PUT", "POST") and "/checkpoints/train/step_" in r.path
    ]
    written = {r.path.rsplit("/checkpoints/train/", 1)[1] for r in writes}
    assert {"step_000002/themis_state.json", "step_000002/ds/mp_rank_00_model_states.pt"} <= written, written
    # Both ranks' optimizer shards, all sent by boto3: none by pyarrow's C++ client.
    assert sum("optim_states" in w for w in written if w.startswith("step_000002/")) == 2, written
    assert all("Botocore/" in r.user_agent for r in writes), {r.user_agent for r in writes}

    again = runner.run_stage("train", _cfg(str(tiny_model_dir), storage=storage, max_steps=4))
    assert again.counts["resumed_from_step"] == 2 and again.counts["steps"] == 4
    assert store.exists("checkpoints/train/step_000004/themis_state.json")
