"""The Ray Train worker: DeepSpeed fine-tuning with resumable checkpoints and a Hugging Face export.

``train_loop_per_worker`` runs on every worker. The driver (``themis.stages.train``) hands it
tokenised examples and the step plan; each worker takes its shard by rank (no Ray Data, so
workers never starve read tasks of CPUs). A checkpoint is one folder in the run's store that
merges every rank's DeepSpeed shards plus ``themis_state.json`` (step and loss history); Ray
Train V2 hands the latest one back when the stage is re-run, and the loop continues from it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from themis import sft
from themis.config import TrainConfig
from themis.models import resolve_model
from themis.storage import RunStore

STATE_FILE = "themis_state.json"
SUMMARY = "train/summary.json"  # rank 0's final step, loss history and resume point, for the driver
DS_TAG = "ds"  # a fixed DeepSpeed tag: one step per checkpoint folder, named by Ray


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train (or resume), export to the store's ``model/``, write ``train/summary.json``."""
    tcfg: TrainConfig = config["train"]
    if not tcfg.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # read once, at DeepSpeed's first import
    import ray.train
    import torch

    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    engine = _build_engine(tcfg, config["total_steps"], world)
    state = _restore(engine, world)
    resumed_from = state["step"]
    if state["step"] < config["total_steps"]:
        _train(engine, config, state, rank, world)
    _export(engine, tcfg, config["store"], rank)
    if rank == 0:
        # Not a final ray.train.report: Ray Train V2's Result.metrics are the latest checkpoint's,
        # and metrics reported without a checkpoint never reach the driver.
        summary = {k: state[k] for k in ("step", "train_loss", "val_loss")}
        config["store"].write_json(SUMMARY, {**summary, "resumed_from_step": resumed_from})


def _build_engine(tcfg: TrainConfig, total_steps: int, world: int) -> Any:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 weights even for bf16: DeepSpeed casts the module and keeps fp32 master weights.
    model = AutoModelForCausalLM.from_pretrained(resolve_model(tcfg.base_model), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ds_config = sft.build_deepspeed_config(tcfg, world, total_steps)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def _restore(engine: Any, world: int) -> dict[str, Any]:
    """Load the checkpoint Ray Train handed this run, if any; return the loop state."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "train_loss": [], "val_loss": [], "world_size": world}
    with checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
        if state["world_size"] != world:
            raise ValueError(
                f"checkpoint {checkpoint.path} was written by {state['world_size']} workers, "
                f"this run has {world}: resume with the same train.num_workers or delete "
                "the checkpoints"
            )
        loaded, _ = engine.load_checkpoint(folder, tag=DS_TAG, load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {checkpoint.path}")
    return state


def _train(engine: Any, config: dict[str, Any], state: dict[str, Any], rank: int, world: int) -> None:
    """Run optimizer steps from ``state['step']`` to the end, checkpointing as configured."""
    tcfg: TrainConfig = config["train"]
    per_epoch, total = config["steps_per_epoch"], config["total_steps"]
    warmup = round(tcfg.warmup_ratio * total)
    while state["step"] < total:
        epoch = state["step"] // per_epoch
        plan = sft.epoch_plan(
            len(config["train_examples"]),
            epoch,
            config["seed"],
            rank,
            world,
            tcfg.micro_batch_size,
            tcfg.grad_accum,
        )
        for micro_batches in plan[state["step"] % per_epoch :]:
            step = state["step"]
            lr = tcfg.lr * sft.lr_factor(step, warmup, total)
            loss = _optimizer_step(engine, config, micro_batches, lr)
            state["step"] = step = step + 1
            state["train_loss"].append(loss)
            metrics = {"step": step, "epoch": epoch, "train_loss": loss, "lr": lr}
            if rank == 0:  # progress for the driver's console (Ray forwards worker stdout)
                print(f"[themis] train: step {step}/{total} loss={loss:.4f} lr={lr:.2e}", flush=True)
            if step % per_epoch == 0 or step == total:
                metrics["val_loss"] = _evaluate(engine, config, rank, world)
                state["val_loss"].append({"epoch": epoch, "step": step, "loss": metrics["val_loss"]})
            if _checkpoint_due(step, total, per_epoch, tcfg.checkpoint_every):
                _save_and_report(engine, state, metrics, rank)
            if step == total:
                return


def _checkpoint_due(step: int, total: int, per_epoch: int, every: int) -> bool:
    # Always at the last step, so a re-run with a larger max_steps resumes from the very end.
    return step == total or (step % every == 0 if every else step % per_epoch == 0)


def _optimizer_step(engine: Any, config: dict[str, Any], micro_batches: list[list[int]], lr: float) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; return the loss averaged over ranks."""
    import torch

    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    engine.train()
    losses = []
    for indices in micro_batches:
        loss = engine(**_tensors(config, "train_examples", indices, engine.device)).loss
        engine.backward(loss)  # DeepSpeed divides by grad_accum itself
        engine.step()  # steps the optimizer only at the accumulation boundary
        losses.append(loss.detach().float())
    mean = torch.stack(losses).mean()
    torch.distributed.all_reduce(mean)
    return mean.item() / torch.distributed.get_world_size()


def _evaluate(engine: Any, config: dict[str, Any], rank: int, world: int) -> float | None:
    """Validation loss per target token over the whole split (every rank runs the same passes)."""
    import torch

    n = len(config["val_examples"])
    if n == 0:
        return None
    engine.eval()
    sums = torch.zeros(2, device=engine.device)
    with torch.no_grad():
        for indices, weight in sft.eval_plan(n, rank, world, config["train"].micro_batch_size):
            batch = _tensors(config, "val_examples", indices, engine.device)
            tokens = (batch["labels"][:, 1:] != sft.IGNORE).sum()  # HF shifts labels by one
            sums += weight * torch.stack([engine(**batch).loss.float() * tokens, tokens.float()])
    torch.distributed.all_reduce(sums)
    return (sums[0] / sums[1].clamp(min=1)).item()


def _tensors(config: dict[str, Any], split: str, indices: list[int], device: Any) -> dict[str, Any]:
    import torch

    batch = sft.collate([config[split][i] for i in indices], config["pad_id"])
    return {k: torch.tensor(v, device=device) for k, v in batch.items()}


def _save_and_report(engine: Any, state: dict[str, Any], metrics: dict[str, Any], rank: int) -> None:
    """Each rank saves its DeepSpeed shards to a temp folder; Ray merges them into one folder."""
    import ray.train

    folder = tempfile.mkdtemp(prefix="themis-ckpt-")
    try:
        engine.save_checkpoint(folder, tag=DS_TAG)
        if rank == 0:
            Path(folder, STATE_FILE).write_text(json.dumps(state))
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"step_{state['step']:06d}",
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _export(engine: Any, tcfg: TrainConfig, store: RunStore, rank: int) -> None:
    """Gather full weights (all ranks take part under ZeRO-3); rank 0 uploads a HF folder."""
    import torch
    from transformers import AutoTokenizer

    if tcfg.zero_stage == 3:
        # Private but the one DeepSpeed's own save_16bit_model uses: gathers one layer at a time
        # onto rank 0 and keeps tied weights tied. Must run on every rank.
        state_dict = engine._zero3_consolidated_16bit_state_dict()
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix="themis-export-") as folder:
            engine.module.save_pretrained(folder, state_dict=state_dict)
            AutoTokenizer.from_pretrained(resolve_model(tcfg.base_model)).save_pretrained(folder)
            store.upload_dir(folder, "model")
    torch.distributed.barrier()
