"""The training plan, pure: steps, each rank's batches per epoch, the LR schedule, DeepSpeed's config.

Imports no torch, Ray or DeepSpeed (a test checks), so it is unit-tested in milliseconds. The
training process (``themis.training.loop``) follows it step by step.
"""

from __future__ import annotations

import math
import random
from typing import Any

from themis.config import TrainConfig

GROUP_STEPS = 16  # length grouping sorts windows of this many optimizer steps (keeps the shuffle's spread)


def steps_per_epoch(n_examples: int, world_size: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over the data; the remainder short of a full step is dropped."""
    return n_examples // (world_size * micro_batch * grad_accum)


def total_steps(per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """Steps of the whole run: all epochs, capped at ``max_steps`` when it is set."""
    return min(per_epoch * epochs, max_steps) if max_steps else per_epoch * epochs


def epoch_plan(
    n_examples: int,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    micro_batch: int,
    grad_accum: int,
    lengths: list[int] | None = None,
) -> list[list[list[int]]]:
    """This rank's example indices for one epoch: ``plan[step][micro_step] = [index, ...]``.

    Every rank gets the same number of steps and micro-batches, which DeepSpeed's collectives
    need (a rank with one batch more would hang the others). The shuffle depends only on seed
    and epoch, so a resumed run skips exactly the batches the interrupted one trained on. With
    ``lengths``, micro-batches hold examples of similar length (see ``group_by_length``).
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(n_examples))
    rng.shuffle(order)
    per_step = world_size * micro_batch * grad_accum
    order = order[: (n_examples // per_step) * per_step]
    if lengths is not None:
        order = group_by_length(order, lengths, per_step, rng)
    plan = []
    for s in range(len(order) // per_step):
        mine = order[s * per_step : (s + 1) * per_step][rank::world_size]
        plan.append([mine[m * micro_batch : (m + 1) * micro_batch] for m in range(grad_accum)])
    return plan


def group_by_length(order: list[int], lengths: list[int], per_step: int, rng: random.Random) -> list[int]:
    """Reorder shuffled indices so each micro-batch pads little, keeping the epoch random.

    Windows of GROUP_STEPS optimizer steps are sorted longest first, so neighbours (which
    ``epoch_plan`` deals into the same micro-batch) have similar lengths; then the steps inside a
    window are shuffled, so long and short steps alternate instead of the epoch running sorted.
    """
    window = per_step * GROUP_STEPS
    grouped: list[int] = []
    for start in range(0, len(order), window):
        ranked = sorted(order[start : start + window], key=lambda i: -lengths[i])
        steps = [ranked[k : k + per_step] for k in range(0, len(ranked), per_step)]
        rng.shuffle(steps)
        grouped += [i for step in steps for i in step]
    return grouped


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """The share of a plan's padded tokens that are padding (right-padding to each batch's longest)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded if padded else 0.0


def eval_plan(n_examples: int, rank: int, world_size: int, micro_batch: int) -> list[tuple[list[int], float]]:
    """This rank's validation batches as ``(indices, weight)``, the same count on every rank.

    ZeRO-3 gathers parameters collectively in every forward pass, so a rank whose shard ran out
    still runs a pass, on a stand-in batch with weight 0.
    """
    mine = list(range(rank, n_examples, world_size))
    count = math.ceil(math.ceil(n_examples / world_size) / micro_batch)
    batches = [(mine[i * micro_batch : (i + 1) * micro_batch], 1.0) for i in range(count)]
    return [(idx, w) if idx else ([0], 0.0) for idx, w in batches]


def lr_factor(step: int, warmup_steps: int, total: int) -> float:
    """Multiplier of the peak LR for 0-based optimizer ``step``: linear warmup, then linear decay.

    Never 0 inside the run (step 0 already learns; the last step still moves), and a pure
    function of the step, so a resumed run continues the schedule without any saved state.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def build_deepspeed_config(train_cfg: TrainConfig, world_size: int, total_steps: int) -> dict[str, Any]:
    """The DeepSpeed config for ``train_cfg`` on ``world_size`` workers.

    No ``optimizer`` block: the loop passes a torch AdamW (ZeRO supports it, and DeepSpeed's CPU
    Adam would compile another op for ~45 s). No ``scheduler`` block either: DeepSpeed's
    WarmupDecayLR starts at warmup_min_lr and its first two steps run at LR 0, and its position is
    checkpoint state; the loop sets the LR from ``lr_factor`` instead. ``total_steps`` only sets
    ``steps_per_print`` so DeepSpeed logs its throughput line once, at the end.
    """
    zero: dict[str, Any] = {"stage": train_cfg.zero_stage}
    if train_cfg.zero_stage == 3:
        # Without it a ZeRO-3 export gathers nothing and writes no weights.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": train_cfg.micro_batch_size * train_cfg.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": train_cfg.micro_batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": train_cfg.bf16},
        "zero_optimization": zero,
        "steps_per_print": max(1, total_steps),
        "wall_clock_breakdown": False,
    }
