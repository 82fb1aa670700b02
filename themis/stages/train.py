"""Stage 5, train: fine-tune the student on the judgment dataset with Ray Train and DeepSpeed.

Reads ``dataset/train.parquet`` and ``dataset/validation.parquet``, tokenises them here in the
driver (small, and errors show up before any worker starts), and runs
``themis.training_loop.train_loop_per_worker`` on ``train.num_workers`` Ray Train workers.
Checkpoints go to ``checkpoints/train`` in the run's store; running the stage again resumes from
the latest one (Ray Train V2 restores it for the same run name and storage). The trained judge is
exported as a Hugging Face folder to ``model/``; ``train/summary.json`` holds the step and loss
history, and ``rejects/train/examples.parquet`` the chats whose target exceeds max_seq_len.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from themis import sft
from themis.config import PipelineConfig, TrainConfig
from themis.models import resolve_model
from themis.runtime import init_ray
from themis.stages import StageReport
from themis.storage import RunStore
from themis.training_loop import SUMMARY, train_loop_per_worker

TRAIN, VALIDATION = "dataset/train.parquet", "dataset/validation.parquet"
KEEP_CHECKPOINTS = 2  # the latest is all a resume needs; one more guards a half-written upload


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Fine-tune ``cfg.train.base_model``, resuming from its checkpoints; export ``model/``."""
    loop_config, counts = _prepare(cfg.train, cfg.run.seed, store)
    init_ray(cfg.ray)
    latest = _fit(cfg.train, store, loop_config)
    store.mark_written("model", SUMMARY)  # written by the rank-0 worker into this attempt
    summary = store.read_json(SUMMARY)
    val_losses = summary["val_loss"]
    return StageReport(
        inputs={"train": store.uri(TRAIN), "validation": store.uri(VALIDATION)},
        outputs={
            "model": store.uri("model"),
            "checkpoints": store.uri("checkpoints", "train"),
            "summary": store.uri(SUMMARY),
        },
        counts={
            **counts,
            "steps": summary["step"],
            "resumed_from_step": summary["resumed_from_step"],
        },
        details={
            "train_loss": summary["train_loss"],
            "val_loss": val_losses[-1]["loss"] if val_losses else None,
            "val_loss_history": val_losses,  # at each epoch end and at the last step
            "zero_stage": cfg.train.zero_stage,
            "world_size": cfg.train.num_workers,
            "steps_per_epoch": loop_config["steps_per_epoch"],
            "latest_checkpoint": latest,
        },
    )


def _prepare(tcfg: TrainConfig, seed: int, store: RunStore) -> tuple[dict[str, Any], dict[str, int]]:
    """Read and tokenise both splits, record rejects, plan the steps: everything before Ray."""
    train_rows, val_rows = _read_chats(store, TRAIN), _read_chats(store, VALIDATION)
    if not train_rows:
        raise ValueError(f"the train set {store.uri(TRAIN)} is empty: nothing to fine-tune on")
    model_dir = resolve_model(tcfg.base_model)  # ModelNotFoundError names what was looked for
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, rejects = _tokenize(tokenizer, train_rows, tcfg.max_seq_len, "train")
    val, val_rejects = _tokenize(tokenizer, val_rows, tcfg.max_seq_len, "validation")
    _write_rejects(store, rejects + val_rejects)
    per_epoch = _steps_per_epoch(len(train), tcfg)
    pad_id = tokenizer.pad_token_id
    loop_config = {
        "train": tcfg,
        "store": store,
        "seed": seed,
        "train_examples": train,
        "val_examples": val,
        "pad_id": tokenizer.eos_token_id if pad_id is None else pad_id,
        "steps_per_epoch": per_epoch,
        "total_steps": sft.total_steps(per_epoch, tcfg.epochs, tcfg.max_steps),
    }
    counts = {
        "train_examples": len(train),
        "validation_examples": len(val),
        "rejected": len(rejects) + len(val_rejects),
    }
    return loop_config, counts


def _read_chats(store: RunStore, rel: str) -> list[dict[str, Any]]:
    """A split's rows as ``{"example_id", "messages"}``; StorageError names a missing file."""
    table = store.read_table(rel)
    missing = {"example_id", "messages"} - set(table.column_names)
    if missing:
        raise ValueError(f"{store.uri(rel)} lacks column(s) {sorted(missing)}: is it a dataset split?")
    return table.select(["example_id", "messages"]).to_pylist()  # messages: a list of {role, content}


def _tokenize(
    tokenizer: Any, rows: list[dict[str, Any]], max_seq_len: int, split: str
) -> tuple[list[sft.Example], list[dict[str, str]]]:
    """Tokenised examples, and a reject (with its reason) for each chat that cannot be used."""
    examples, rejects = [], []
    for row in rows:
        try:
            examples.append(sft.build_example(tokenizer, row["messages"], max_seq_len))
        except ValueError as exc:
            rejects.append({"split": split, "example_id": row["example_id"], "reason": str(exc)})
    return examples, rejects


def _write_rejects(store: RunStore, rejects: list[dict[str, str]]) -> None:
    if rejects:
        store.write_table("rejects/train/examples.parquet", pa.Table.from_pylist(rejects))
    else:
        store.mark_written("rejects/train/examples.parquet")  # none now: publishing clears an older one


def _steps_per_epoch(n_examples: int, tcfg: TrainConfig) -> int:
    per_epoch = sft.steps_per_epoch(n_examples, tcfg.num_workers, tcfg.micro_batch_size, tcfg.grad_accum)
    if per_epoch == 0:
        raise ValueError(
            f"{n_examples} usable training examples are fewer than one optimizer step takes "
            f"(num_workers {tcfg.num_workers} x micro_batch_size {tcfg.micro_batch_size} "
            f"x grad_accum {tcfg.grad_accum}): add data or lower those settings"
        )
    return per_epoch


def _fit(tcfg: TrainConfig, store: RunStore, loop_config: dict[str, Any]) -> str | None:
    """Run the workers; return the URI of the latest checkpoint (None if there is none)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker},
        ),
        # Same name and storage on every attempt: that is what makes Ray Train V2 resume.
        run_config=RunConfig(
            name="train",
            storage_path=store.path("checkpoints"),
            storage_filesystem=store.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError carrying the worker's traceback
    if result.checkpoint is None:
        return None
    return store.uri("checkpoints", "train", posixpath.basename(result.checkpoint.path))
