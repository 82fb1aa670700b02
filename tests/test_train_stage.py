"""The train stage on local Ray: 2 DeepSpeed workers on CPU (gloo); ZeRO-2, ZeRO-3, resume, export.

Each fit costs ~10-17 s of Ray Train overhead, so the tests share fits: the ZeRO-2 test also
covers the multi-objective loss, the loss curve and TensorBoard; one ZeRO-3 training (a module
fixture, run through the runner as ``themis train`` runs it) is checked for its export, then rerun
on copies of its run root: once as it finished, once after a failed rerun (resume, more steps).
Most error tests fail before Ray starts; the two that need the tokenised data run after the Ray
Data step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from themis import runner
from themis.config import PipelineConfig, StorageConfig
from themis.models import ModelNotFoundError
from themis.stages import train as train_stage
from themis.stages.dataset import SFT_SCHEMA
from themis.storage import RunStore, StorageError
from themis.training.metrics import TENSORBOARD

SYSTEM = "You are a judge. Rate the response on a scale of 1 to 5."


def _rows(n: int, prefix: str) -> pa.Table:
    rows = []
    for i in range(max(n, 1)):
        score = i % 5 + 1
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Instruction: answer question {i}. Response: data {i}."},
            {
                "role": "assistant",
                "content": f"Strengths: clear and correct. Overall rating: [[{score}]]",
            },
        ]
        rows.append(
            {
                "example_id": f"{prefix}-{i}",
                "kind": "single",
                "scenario": "general",
                "instruction_id": f"ins-{i}",
                "score": score,
                "winner": None,
                "messages": messages,
            }
        )
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA).slice(0, n)  # n == 0 keeps the schema


def _store(tmp_path: Path, n_train: int = 16, n_val: int = 3) -> RunStore:
    store = RunStore(StorageConfig(root=str(tmp_path)), "t")
    store.write_table("dataset/train.parquet", _rows(n_train, "tr"))
    store.write_table("dataset/validation.parquet", _rows(n_val, "va"))
    return store


def _cfg(model: str, root: Path | None = None, storage: dict | None = None, **train) -> PipelineConfig:
    """A train config for the tiny model; ``root`` (a folder) or ``storage`` (``run.storage``)
    names the run root (run "t") for the runner."""
    storage = storage or ({"root": str(root)} if root else None)
    run = {"run": {"name": "t", "storage": storage}} if storage else {}
    return PipelineConfig.model_validate(
        {
            **run,
            "engines": {"teacher": {"kind": "transformers", "model": model}},
            "responses": {"pool": [{"name": "m", "engine": "teacher"}]},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
            "train": {
                "base_model": model,
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "max_seq_len": 128,
                "lr": 1e-3,
                "warmup_ratio": 0.0,
                "checkpoint_every": 2,
                "max_failures": 0,  # a bug fails the test at once; the self-heal test sets its own
                **train,
            },
        }
    )


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


@pytest.mark.integration
def test_zero2_multi_objective_loss_trains_both_parts_and_exports_a_loadable_model(ray_local, tiny_model_dir, tmp_path):
    import torch

    store = _store(tmp_path)
    loss = {"rationale": "cosine", "score_weight": 1.0, "rationale_weight": 1.0}
    cfg = _cfg(str(tiny_model_dir), zero_stage=2, max_steps=8, checkpoint_every=0, loss=loss, lr=1e-2)
    report = train_stage.run(cfg, store)
    assert report.counts["steps"] == 8 and report.counts["resumed_from_step"] == 0
    assert len(report.details["train_loss"]) == 8 and report.details["val_loss"] > 0
    assert report.details["zero_stage"] == 2 and report.details["world_size"] == 2
    for part in ("score_loss", "rationale_loss"):  # both parts logged, both fall
        history = report.details[part]
        assert sum(history[-2:]) < sum(history[:2]), (part, history)
    assert store.exists("train", "loss_curve.png") and store.read_path("train", "loss_curve.png")
    events = [p.name for p in Path(store.read_path("train", "tensorboard")).iterdir()]
    assert any(name.startswith("events.out.tfevents") for name in events)
    model, tokenizer = _load(store.local_dir("model"))
    ids = tokenizer("Overall rating: [[4]]", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids, labels=ids).loss)
    assert report.outputs["model"] == store.uri("model")


@pytest.fixture(scope="module")
def zero3_run(ray_local, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One finished ZeRO-3 training (2 workers, 2 steps) run as ``themis train`` runs it, shared by
    the tests that read its export or rerun the stage on a copy of its run root."""
    root = tmp_path_factory.mktemp("zero3")
    store = _store(root)
    store.record_stage("dataset", {"status": "ok"})  # what the runner checks before train starts
    report = runner.run_stage("train", _cfg(str(tiny_model_dir), root=root, zero_stage=3, max_steps=2))
    assert report.counts["steps"] == 2 and report.counts["resumed_from_step"] == 0
    return root, {"counts": report.counts, "details": report.details}


def _copy_run(zero3_run: tuple[Path, dict], tmp_path: Path) -> RunStore:
    """A copy of the shared run's root for a test that reruns on it (Ray Train's checkpoint
    index names its checkpoints relative to the run, so the copy resumes as the original would)."""
    shutil.copytree(zero3_run[0], tmp_path, dirs_exist_ok=True)
    return RunStore(StorageConfig(root=str(tmp_path)), "t")


def _events(store: RunStore) -> list[str]:
    return sorted(p.name for p in Path(store.read_path(TENSORBOARD)).glob("events.out.tfevents*"))


@pytest.mark.slow
@pytest.mark.integration
def test_zero3_exports_real_weights(zero3_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    store = RunStore(StorageConfig(root=str(zero3_run[0])), "t")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    tuned, _ = _load(store.local_dir("model"))
    tuned_sd = tuned.state_dict()
    assert set(tuned_sd) == set(base)
    assert all(tuned_sd[k].shape == base[k].shape for k in base)  # gathered, not ZeRO-3 shards
    assert any(not tuned_sd[k].equal(base[k]) for k in base)
    assert zero3_run[1]["details"]["zero_stage"] == 3 and len(_events(store)) == 1


@pytest.mark.slow
@pytest.mark.integration
def test_rerun_finished_train_stage_reuses_the_last_checkpoint(zero3_run, tiny_model_dir, tmp_path):
    """``themis train`` (or ``make demo``) again on a run where train finished: no step is
    trained again, the model is exported anew, the TensorBoard events are kept."""
    store = _copy_run(zero3_run, tmp_path)
    before = _events(store)
    again = runner.run_stage("train", _cfg(str(tiny_model_dir), root=tmp_path, zero_stage=3, max_steps=2))
    assert again.counts["resumed_from_step"] == 2 and again.counts["steps"] == 2
    assert again.details["train_loss"] == zero3_run[1]["details"]["train_loss"]  # the history, not retrained
    assert store.stage_status("train") == "ok" and store.exists("model", "model.safetensors")
    after = _events(store)
    assert set(before) < set(after) and len(after) == 2  # the first run's file kept, the rerun's added
    assert not any(Path(store.path("_attempts")).iterdir())  # published, nothing left half-way


@pytest.mark.slow
@pytest.mark.integration
def test_rerun_finished_train_stage_after_a_failed_rerun_resumes_and_trains_on(zero3_run, tiny_model_dir, tmp_path):
    """A rerun that failed (here: a changed worker count, refused by the training process) leaves
    the run as it was; the next rerun resumes from the checkpoint and trains the new steps."""
    store = _copy_run(zero3_run, tmp_path)
    first = zero3_run[1]["details"]
    # An error inside a rank's training process reaches the driver with its message.
    with pytest.raises(Exception, match="resume with the same train.num_workers"):
        runner.run_stage("train", _cfg(str(tiny_model_dir), root=tmp_path, zero_stage=3, max_steps=4, num_workers=1))
    assert store.stage_status("train") == "failed" and store.exists("model", "model.safetensors")

    second = runner.run_stage("train", _cfg(str(tiny_model_dir), root=tmp_path, zero_stage=3, max_steps=4))
    assert second.counts["resumed_from_step"] == 2 and second.counts["steps"] == 4
    assert len(second.details["train_loss"]) == 4  # history carried over in the checkpoint
    assert second.details["train_loss"][:2] == first["train_loss"]
    assert store.stage_status("train") == "ok" and len(_events(store)) == 2  # the first run's carried over


def test_missing_dataset_names_the_path(tiny_model_dir, tmp_path):
    store = RunStore(StorageConfig(root=str(tmp_path)), "t")
    with pytest.raises(StorageError, match="dataset/train.parquet"):
        train_stage.run(_cfg(str(tiny_model_dir)), store)


def test_empty_train_set_is_an_error(tiny_model_dir, tmp_path):
    store = _store(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="empty"):
        train_stage.run(_cfg(str(tiny_model_dir)), store)


@pytest.mark.integration  # the check follows tokenisation, a Ray Data step
def test_too_few_examples_for_one_step_is_an_error(ray_local, tiny_model_dir, tmp_path):
    store = _store(tmp_path, n_train=1)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        train_stage.run(_cfg(str(tiny_model_dir)), store)


def test_missing_base_model_is_an_error(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        train_stage.run(_cfg(str(tmp_path / "no-such-model")), store)


@pytest.mark.integration
def test_chats_whose_target_cannot_fit_are_rejected_with_a_reason(ray_local, tiny_model_dir, tmp_path):
    store = RunStore(StorageConfig(root=str(tmp_path)), "t")
    table = _rows(2, "tr").to_pylist()
    long_reply = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "[[5]] " * 40}]
    table[1]["messages"] = long_reply
    store.write_table("dataset/train.parquet", pa.Table.from_pylist(table, schema=SFT_SCHEMA))
    store.write_table("dataset/validation.parquet", _rows(1, "va"))
    with pytest.raises(ValueError, match="1 usable training examples"):
        train_stage.run(_cfg(str(tiny_model_dir), max_seq_len=32), store)
    rejects = store.read_table("rejects/train/examples.parquet").to_pylist()
    assert [(r["split"], r["example_id"]) for r in rejects] == [("train", "tr-1")]
    assert "does not fit max_seq_len=32" in rejects[0]["reason"]


def test_an_empty_split_is_tokenized_without_a_ray_data_job(tiny_model_dir, tmp_path, monkeypatch):
    import ray.data

    from themis.training.data import open_split, tokenize_split

    def no_job(*args, **kwargs):
        raise AssertionError("a Ray Data job for an empty split")

    monkeypatch.setattr(ray.data, "read_parquet", no_job)
    store = _store(tmp_path, n_val=0)
    path = tokenize_split(store, "dataset/validation.parquet", "validation", str(tiny_model_dir), 64)
    split = open_split(store.fs, path)
    assert len(split) == 0 and split.rejects == []
