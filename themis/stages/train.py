"""Stage 5, train: fine-tune the student on the judgment dataset with Ray Train and DeepSpeed.

Reads ``dataset/train.parquet`` and ``dataset/validation.parquet``, tokenises them with Ray Data
into Parquet shards under ``train/tokenized/`` (before any worker starts, so bad data fails
early), and runs ``train.num_workers`` Ray Train workers (``themis.training.worker``), each of which
starts one training process (``themis.training.loop``) that reads its rows from those shards.
Checkpoints go to ``checkpoints/train`` in the run's store. A worker that dies is replaced and the
run continues from the latest checkpoint (``train.max_failures``); running the stage again also
resumes from it (Ray Train V2 restores it for the same run name and storage). The trained judge is
exported as a Hugging Face folder (or a LoRA adapter) to ``model/``; ``train/summary.json`` holds
the step and loss history, ``train/loss_curve.png`` draws it, ``train/tensorboard/`` holds
TensorBoard events, and ``rejects/train/examples.parquet`` the chats whose target exceeds
max_seq_len.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from themis.config import PipelineConfig, TrainConfig
from themis.models import resolve_model
from themis.runtime import init_ray
from themis.stages import StageReport
from themis.storage import RunStore, StorageError
from themis.training import checkpoints, plan
from themis.training import worker as train_worker
from themis.training.data import TOKENIZED, open_split, tokenize_split
from themis.training.loop import SUMMARY
from themis.training.metrics import LOSS_CURVE, TENSORBOARD, render_loss_curve

TRAIN, VALIDATION = "dataset/train.parquet", "dataset/validation.parquet"
KEEP_CHECKPOINTS = 2  # the latest is all a resume needs; one more guards a half-written upload


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Fine-tune ``cfg.train.base_model``, resuming from its checkpoints; export ``model/``."""
    for rel in (TRAIN, VALIDATION):
        _check_split(store, rel)
    if store.count_rows(TRAIN) == 0:
        raise ValueError(f"the train set {store.uri(TRAIN)} is empty: nothing to fine-tune on")
    model_dir = resolve_model(cfg.train.base_model)  # ModelNotFoundError names what was looked for
    init_ray(cfg.ray)
    loop_config, counts = _prepare(cfg.train, cfg.run.seed, store, model_dir)
    latest = _fit(cfg.train, store, loop_config)
    store.mark_written("model", SUMMARY, TENSORBOARD)  # written by the rank-0 worker into this attempt
    summary = store.read_json(SUMMARY)
    store.write_bytes(LOSS_CURVE, render_loss_curve(summary))
    val_losses = summary["val_loss"]
    return StageReport(
        inputs={"train": store.uri(TRAIN), "validation": store.uri(VALIDATION)},
        outputs={
            "model": store.uri("model"),
            "checkpoints": store.uri(checkpoints.FOLDER, checkpoints.RUN_NAME),
            "summary": store.uri(SUMMARY),
            "loss_curve": store.uri(LOSS_CURVE),
            "tensorboard": store.uri(TENSORBOARD),
            "tokenized": store.uri(TOKENIZED),
        },
        counts={
            **counts,
            "steps": summary["step"],
            "resumed_from_step": summary["resumed_from_step"],
        },
        details={
            "train_loss": summary["train_loss"],
            "score_loss": summary["score_loss"],
            "rationale_loss": summary["rationale_loss"],
            "val_loss": val_losses[-1]["loss"] if val_losses else None,
            "val_loss_history": val_losses,  # at each epoch end and at the last step
            "zero_stage": cfg.train.zero_stage,
            "world_size": cfg.train.num_workers,
            "lora": cfg.train.lora is not None,
            "export": cfg.train.export if cfg.train.lora else "full",
            "steps_per_epoch": loop_config["steps_per_epoch"],
            "latest_checkpoint": latest,
            "peak_rss_mb": summary["peak_rss_mb"],  # per worker, up to the end of training
            "peak_rss_growth_mb": summary["peak_rss_growth_mb"],
        },
    )


def _check_split(store: RunStore, rel: str) -> None:
    """A dataset split exists and has the chat columns; StorageError / ValueError name it."""
    if not store.exists(rel):
        raise StorageError(f"input not found: {store.uri(rel)} (run the dataset stage first)")
    names = pads.dataset(store.read_path(rel), filesystem=store.fs, format="parquet").schema.names
    missing = {"example_id", "messages"} - set(names)
    if missing:
        raise ValueError(f"{store.uri(rel)} lacks column(s) {sorted(missing)}: is it a dataset split?")


def _prepare(tcfg: TrainConfig, seed: int, store: RunStore, model_dir: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """Tokenise both splits to storage (Ray Data), record rejects, plan the steps."""
    from transformers import AutoTokenizer

    shards = {
        split: tokenize_split(store, rel, split, str(model_dir), tcfg.max_seq_len)
        for split, rel in (("train", TRAIN), ("validation", VALIDATION))
    }
    opened = {split: open_split(store.fs, path) for split, path in shards.items()}
    rejects = [{"split": split, **r} for split, data in opened.items() for r in data.rejects]
    _write_rejects(store, rejects)
    per_epoch = _steps_per_epoch(len(opened["train"]), tcfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id
    loop_config = {
        "train": tcfg,
        "store": store,
        "seed": seed,
        "shards": shards,  # folders on the run's filesystem; workers read their rows from there
        "pad_id": tokenizer.eos_token_id if pad_id is None else pad_id,
        "steps_per_epoch": per_epoch,
        "total_steps": plan.total_steps(per_epoch, tcfg.epochs, tcfg.max_steps),
    }
    counts = {
        "train_examples": len(opened["train"]),
        "validation_examples": len(opened["validation"]),
        "rejected": len(rejects),
    }
    return loop_config, counts


def _write_rejects(store: RunStore, rejects: list[dict[str, str]]) -> None:
    if rejects:
        store.write_table("rejects/train/examples.parquet", pa.Table.from_pylist(rejects))
    else:
        store.mark_written("rejects/train/examples.parquet")  # none now: publishing clears an older one


def _steps_per_epoch(n_examples: int, tcfg: TrainConfig) -> int:
    per_epoch = plan.steps_per_epoch(n_examples, tcfg.num_workers, tcfg.micro_batch_size, tcfg.grad_accum)
    if per_epoch == 0:
        raise ValueError(
            f"{n_examples} usable training examples are fewer than one optimizer step takes "
            f"(num_workers {tcfg.num_workers} x micro_batch_size {tcfg.micro_batch_size} "
            f"x grad_accum {tcfg.grad_accum}): add data or lower those settings"
        )
    return per_epoch


def _fit(tcfg: TrainConfig, store: RunStore, loop_config: dict[str, Any]) -> str | None:
    """Run the workers; return the URI of the latest checkpoint (None if there is none)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    trainer = train_worker.trainer(
        loop_config,
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=checkpoints.RUN_NAME,
            storage_path=store.path(checkpoints.FOLDER),
            storage_filesystem=store.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            # A dead worker restarts the group from the latest registered checkpoint, in this call.
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError carrying the worker's traceback
    if result.checkpoint is None:
        return None
    return store.uri(checkpoints.FOLDER, checkpoints.RUN_NAME, posixpath.basename(result.checkpoint.path))
