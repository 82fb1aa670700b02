"""The baseline for `make bench-train`: a bare DeepSpeed loop under `torchrun --nproc_per_node 2`.

Same model, same DeepSpeed config, same micro-batches (the tokenised shards and step plan the train
stage used) and the same per-step work a real script does: forward, backward, step, and one
all-reduce of the loss for logging. No Ray. Rank 0 prints one JSON line with its step times.

    torchrun --nproc_per_node 2 tests/benchmarks/bare_deepspeed_train.py <settings.json>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(settings_path: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import pyarrow.fs as pafs
    import torch
    from transformers import AutoModelForCausalLM

    from themis.config import TrainConfig
    from themis.training import plan as train_plan
    from themis.training.data import open_split

    settings = json.loads(Path(settings_path).read_text())
    tcfg = TrainConfig.model_validate(settings["train"])
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    model = AutoModelForCausalLM.from_pretrained(tcfg.base_model, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ds_config = train_plan.build_deepspeed_config(tcfg, world, settings["steps"])
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    data = open_split(pafs.LocalFileSystem(), settings["shard"])
    lengths = data.lengths if tcfg.group_by_length else None
    plan = train_plan.epoch_plan(
        len(data), 0, settings["seed"], rank, world, tcfg.micro_batch_size, tcfg.grad_accum, lengths
    )
    rows = data.take([i for step in plan for mb in step for i in mb])
    seconds, losses, first_step_at = [], [], None
    warmup = round(tcfg.warmup_ratio * settings["steps"])
    for step, micro_batches in enumerate(plan[: settings["steps"]]):
        began = time.perf_counter()
        for group in engine.optimizer.param_groups:  # the stage's schedule, so both runs match
            group["lr"] = tcfg.lr * train_plan.lr_factor(step, warmup, settings["steps"])
        loss = _step(engine, [[rows[i] for i in mb] for mb in micro_batches], settings["pad_id"])
        if rank == 0:
            print(f"bare: step {step + 1} loss={loss:.4f}", flush=True)
        seconds.append(time.perf_counter() - began)
        losses.append(loss)
        first_step_at = first_step_at or time.time()
    if rank == 0:
        result = {"step_seconds": seconds, "first_step_at": first_step_at, "train_loss": losses}
        print("BARE " + json.dumps(result), flush=True)


def _step(engine, micro_batches, pad_id: int) -> float:
    import torch

    from themis.curation import sft

    engine.train()
    losses = []
    for examples in micro_batches:
        batch = {k: torch.tensor(v) for k, v in sft.collate(examples, pad_id).items() if k != "kinds"}
        loss = engine(**batch).loss  # Hugging Face's own shifted cross-entropy
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach())
    mean = torch.stack(losses).mean()
    torch.distributed.all_reduce(mean)
    return mean.item() / torch.distributed.get_world_size()


if __name__ == "__main__":
    main(sys.argv[1])
