"""The training process of one rank: DeepSpeed fine-tuning with resumable checkpoints and a
Hugging Face export. No Ray here.

Each Ray Train worker (``themis.training.worker``) starts one such process (``python -m
themis.training.loop``) with torchrun's variables (rank, world size, the rendezvous address of
the ranks' process group) and passes it, over a socket, the stage's config (the step plan, where
the tokenised shards lie: each rank reads the rows of its own micro-batches from storage,
``themis.training.data``) and the checkpoint folder to resume from, if any
(``themis.training.checkpoints``); the step plan is ``themis.training.plan``.

Under ZeRO-3 the model is built partitioned (transformers' DeepSpeed integration runs
``from_pretrained`` inside ``deepspeed.zero.Init``), so no worker ever holds the whole model.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from themis.config import TrainConfig
from themis.curation import sft
from themis.models import resolve_model
from themis.scratch import scoped_scratch_dir
from themis.storage import RunStore
from themis.training import checkpoints, plan
from themis.training.checkpoints import HISTORY
from themis.training.data import open_split
from themis.training.metrics import TensorBoardLog, mfu, peak_bf16_flops

SUMMARY = "train/summary.json"  # rank 0's final step, loss history and resume point, for the driver
ROWS_PER_READ = 64  # optimizer steps whose rows a worker reads from storage at once
# Progress lines for the driver's console at most this often: Ray forwards each line through its
# log monitor, the GCS and the driver, which on a small machine costs the workers' CPU every step.
PROGRESS_EVERY_S = 10.0


class WorkerLink:
    """This process's line to its Ray Train worker: rank, resume point, checkpoint reports."""

    def __init__(self, conn: Connection, link: dict[str, Any]):
        self.conn = conn
        # From torchrun's variables, which the worker sets and init_distributed reads too.
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.checkpoint: str | None = link["checkpoint"]  # a local folder, or None on a fresh start
        self.checkpoint_uri: str | None = link["checkpoint_uri"]

    def report(self, metrics: dict[str, Any], folder: str, name: str) -> None:
        """Have the worker report ``folder`` as checkpoint ``name``; it deletes the folder after."""
        self.conn.send(("report", metrics, folder, name))
        self.conn.recv()  # the report is a barrier across ranks in Ray Train: wait for it


def main(conn_fd: int, lifeline_fd: int) -> None:
    """The process's entry point: run the loop for the config the worker sends, report the outcome."""
    _die_with_worker(lifeline_fd)
    conn = Connection(conn_fd)
    config, link = conn.recv()
    try:
        train(config, WorkerLink(conn, link))
    except BaseException:
        conn.send(("error", traceback.format_exc()))  # the worker raises it: printed once, there
        sys.exit(1)
    conn.send(("done",))


def _die_with_worker(lifeline_fd: int) -> None:
    """Exit when the worker's end of the lifeline closes: a killed worker leaves no orphan rank
    holding the others at a collective (portable, unlike Linux's parent-death signal)."""

    def watch() -> None:
        while os.read(lifeline_fd, 1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def train(config: dict[str, Any], link: WorkerLink) -> None:
    """Train (or resume), export to the store's ``model/``, write ``train/summary.json``."""
    tcfg: TrainConfig = config["train"]
    if not tcfg.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # read once, at DeepSpeed's first import
    import torch

    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))
    start_rss = _rss_mb()
    rank, world = link.rank, link.world
    store: RunStore = config["store"]
    data = {split: open_split(store.fs, path) for split, path in config["shards"].items()}
    engine = _build_engine(tcfg, config["total_steps"], world)
    state = checkpoints.restore(engine, world, link.checkpoint, link.checkpoint_uri)
    resumed_from = state["step"]
    log = TensorBoardLog(rank == 0, store, resumed_from)
    timing = {"loop_started_at": time.time()}
    if state["step"] < config["total_steps"]:
        _train(engine, config, data, state, link, log, timing)
    peak = _gather_peak_memory(start_rss, engine.device)  # before the export, which gathers the whole model on rank 0
    _export(engine, tcfg, store, rank)
    log.close()
    if rank == 0:
        # Not a final ray.train.report: Ray Train V2's Result.metrics are the latest checkpoint's,
        # and metrics reported without a checkpoint never reach the driver.
        summary = {k: state[k] for k in ("step", "val_loss", *HISTORY)}
        extra = {"resumed_from_step": resumed_from, "loss_kind": tcfg.loss.rationale, **peak, **timing}
        store.write_json(SUMMARY, {**summary, **extra})


def _build_engine(tcfg: TrainConfig, total_steps: int, world: int) -> Any:
    import deepspeed
    import torch

    ds_config = plan.build_deepspeed_config(tcfg, world, total_steps)
    if tcfg.use_gpu:
        # As under torchrun: each rank on its node's GPU number LOCAL_RANK (Ray Train shows a
        # node's workers all of the node's GPUs), before NCCL or zero.Init touch a device.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # The ranks' group, from the variables the worker set (env://); zero.Init needs it before
    # deepspeed.initialize would set it up.
    deepspeed.init_distributed(dist_backend="nccl" if tcfg.use_gpu else "gloo")
    model = _load_model(tcfg, ds_config)
    if tcfg.lora is not None:
        from themis.training.lora import apply_lora

        model = apply_lora(model, tcfg.lora)
    if tcfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works with LoRA too.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def _load_model(tcfg: TrainConfig, ds_config: dict[str, Any]) -> Any:
    """The base model: fp32 (DeepSpeed keeps fp32 master weights) or bf16 weights on request;
    under ZeRO-3 built inside ``zero.Init``, each rank keeping only its partition."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if tcfg.bf16_weights else torch.float32
    path = resolve_model(tcfg.base_model)
    if tcfg.zero_stage != 3:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # While this object lives, from_pretrained partitions as it loads (transformers' ZeRO-3 path).
    hf_ds_config = HfDeepSpeedConfig(ds_config)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    finally:
        del hf_ds_config
        unset_hf_deepspeed_config()  # a later from_pretrained (the LoRA export on rank 0) must load whole


def _train(
    engine: Any,
    config: dict[str, Any],
    data: dict[str, Any],
    state: dict[str, Any],
    link: WorkerLink,
    log: Any,
    timing: dict[str, float],
) -> None:
    """Run optimizer steps from ``state['step']`` to the end, checkpointing as configured; note
    when the first step ended in ``timing`` (start-up overhead, for bench-train)."""
    tcfg: TrainConfig = config["train"]
    rank, world = link.rank, link.world
    per_epoch, total = config["steps_per_epoch"], config["total_steps"]
    warmup = round(tcfg.warmup_ratio * total)
    train = data["train"]
    lengths = train.lengths if tcfg.group_by_length else None
    flops_per_token = _flops_budget(engine, tcfg)
    while state["step"] < total:
        epoch = state["step"] // per_epoch
        steps = plan.epoch_plan(
            len(train), epoch, config["seed"], rank, world, tcfg.micro_batch_size, tcfg.grad_accum, lengths
        )
        rows: dict[int, sft.Example] = {}
        printed_at = 0.0
        for position in range(state["step"] % per_epoch, per_epoch):
            began = time.perf_counter()  # the whole iteration counts: reading rows, the step, logging
            if not rows.keys() >= {i for mb in steps[position] for i in mb}:
                rows = train.take([i for s in steps[position : position + ROWS_PER_READ] for mb in s for i in mb])
            lr = tcfg.lr * plan.lr_factor(state["step"], warmup, total)
            parts = _optimizer_step(engine, config, [[rows[i] for i in mb] for mb in steps[position]], lr)
            state["step"] = step = state["step"] + 1
            if rank == 0 and (step == total or time.monotonic() - printed_at >= PROGRESS_EVERY_S):
                print(f"[themis] train: step {step}/{total} loss={parts['total']:.4f} lr={lr:.2e}", flush=True)
                printed_at = time.monotonic()
            seconds = time.perf_counter() - began
            timing.setdefault("first_step_at", time.time())
            _record(state, parts, seconds)
            metrics = {"step": step, "epoch": epoch, "train_loss": parts["total"], "lr": lr}
            if step % per_epoch == 0 or step == total:
                metrics["val_loss"] = _evaluate(engine, config, data["validation"], rank, world)
                state["val_loss"].append({"epoch": epoch, "step": step, "loss": metrics["val_loss"]})
            log.scalars(step, _scalars(parts, lr, seconds, flops_per_token, metrics.get("val_loss")))
            if checkpoints.due(step, total, per_epoch, tcfg.checkpoint_every):
                log.upload()
                link.report(metrics, checkpoints.save(engine, state, rank), checkpoints.name(step))
            if step == total:
                return


def _record(state: dict[str, Any], parts: dict[str, float], seconds: float) -> None:
    state["train_loss"].append(parts["total"])
    state["score_loss"].append(parts["score"])
    state["rationale_loss"].append(parts["rationale"])
    state["step_seconds"].append(round(seconds, 5))


def _scalars(
    parts: dict[str, float], lr: float, seconds: float, flops_per_token: float | None, val_loss: float | None
) -> dict[str, float | None]:
    tokens_per_s = parts["tokens"] / seconds
    return {
        "loss/total": parts["total"],
        "loss/score_ce": parts["score"],
        "loss/rationale": parts["rationale"],
        "loss/validation_ce": val_loss,
        "lr": lr,
        "throughput/tokens_per_s": tokens_per_s,
        "throughput/mfu": flops_per_token * tokens_per_s if flops_per_token else None,
    }


def _flops_budget(engine: Any, tcfg: TrainConfig) -> float | None:
    """MFU per token/s on a GPU with a known bf16 peak (over all workers); None on CPU."""
    import torch

    if not tcfg.use_gpu or not torch.cuda.is_available():
        return None
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    if peak is None:
        return None
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return mfu(n_params, 1.0, peak, torch.distributed.get_world_size())


def _optimizer_step(
    engine: Any, config: dict[str, Any], micro_batches: list[list[sft.Example]], lr: float
) -> dict[str, float]:
    """One optimizer step over ``grad_accum`` micro-batches; return the losses averaged over ranks
    (total, score and rationale parts) and the tokens all ranks processed."""
    import torch

    tcfg: TrainConfig = config["train"]
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    engine.train()
    table = _output_embeddings(engine, tcfg)
    # One all-reduce per step of: total loss sum, micro-batches, score sum and tokens,
    # rationale sum and tokens, input tokens.
    sums = torch.zeros(7, dtype=torch.float64, device=engine.device)
    for examples in micro_batches:
        batch = _tensors(examples, config["pad_id"], engine.device)
        parts = _loss(engine, batch, tcfg, table)
        engine.backward(parts.total)  # DeepSpeed divides by grad_accum itself
        engine.step()  # steps the optimizer only at the accumulation boundary
        sums += torch.stack(
            [
                parts.total.detach(),
                torch.ones_like(parts.total),
                parts.score * parts.score_tokens,
                parts.score_tokens,
                parts.rationale * parts.rationale_tokens,
                parts.rationale_tokens,
                batch["attention_mask"].sum(),
            ]
        ).double()  # stays on the device: no host sync per micro-batch
    torch.distributed.all_reduce(sums)
    return {
        "total": (sums[0] / sums[1]).item(),
        "score": (sums[2] / sums[3].clamp(min=1)).item(),
        "rationale": (sums[4] / sums[5].clamp(min=1)).item(),
        "tokens": sums[6].item(),
    }


def _loss(engine: Any, batch: dict[str, Any], tcfg: TrainConfig, table: Any, rationale: str | None = None) -> Any:
    from themis.training.loss import judge_loss

    logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return judge_loss(
        logits,
        batch["labels"],
        batch["kinds"],
        table,
        rationale=rationale or tcfg.loss.rationale,
        score_weight=tcfg.loss.score_weight,
        rationale_weight=tcfg.loss.rationale_weight,
    )


def _output_embeddings(engine: Any, tcfg: TrainConfig) -> Any:
    """The output embedding matrix for the rationale loss (a detached copy; gathered whole under
    ZeRO-3, once per optimizer step); None when the rationale loss is plain cross-entropy."""
    if tcfg.loss.rationale == "ce":
        return None
    weight = engine.module.get_output_embeddings().weight
    if tcfg.zero_stage != 3:
        return weight.detach()
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight]):
        return weight.detach().clone()


def _evaluate(engine: Any, config: dict[str, Any], val: Any, rank: int, world: int) -> float | None:
    """Validation cross-entropy per target token over the whole split (every rank runs the same passes)."""
    import torch

    if len(val) == 0:
        return None
    engine.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=engine.device)
    batches = plan.eval_plan(len(val), rank, world, config["train"].micro_batch_size)
    rows = val.take([i for indices, _ in batches for i in indices])
    with torch.no_grad():
        for indices, weight in batches:
            batch = _tensors([rows[i] for i in indices], config["pad_id"], engine.device)
            parts = _loss(engine, batch, config["train"], None, rationale="ce")
            tokens = parts.score_tokens + parts.rationale_tokens
            sums += weight * torch.stack([parts.total * tokens, tokens]).double()
    torch.distributed.all_reduce(sums)
    return (sums[0] / sums[1].clamp(min=1)).item()


def _tensors(examples: list[sft.Example], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    batch = sft.collate(examples, pad_id)
    return {k: torch.tensor(v, device=device) for k, v in batch.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _gather_peak_memory(start_rss_mb: float, device: Any) -> dict[str, list[float]]:
    """Every rank's peak resident memory (MiB) so far, and its growth since the loop began."""
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    mine = torch.tensor([peak, peak - start_rss_mb], dtype=torch.float64, device=device)
    every = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(every, mine)
    return {
        "peak_rss_mb": [round(t[0].item(), 1) for t in every],
        "peak_rss_growth_mb": [round(t[1].item(), 1) for t in every],
    }


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
        with scoped_scratch_dir("export-") as folder:
            if tcfg.lora is not None:
                from themis.training.lora import export_lora

                export_lora(state_dict, tcfg, Path(folder))
            else:
                engine.module.save_pretrained(folder, state_dict=state_dict)
            AutoTokenizer.from_pretrained(resolve_model(tcfg.base_model)).save_pretrained(folder)
            store.upload_dir(folder, "model")
    torch.distributed.barrier()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
