"""Supervised fine-tuning, the pure part: examples, batches, LR schedule, DeepSpeed config.

Imports no torch, Ray or DeepSpeed (a test checks), so all of it is unit-tested in milliseconds.
The training process in ``themis.training.loop`` turns these lists into tensors.

An example is ``{"input_ids": [...], "labels": [...], "kinds": [...]}`` where ``labels`` is -100
over the prompt: the loss covers only the judgment the student must learn to write, not the
instruction it reads. ``kinds`` marks each token for the multi-objective loss
(``themis.training.loss``): PROMPT, SCORE (a ``[[N]]`` verdict, a section header, the end token) or
RATIONALE (the free text that explains the verdict).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

from themis.config import TrainConfig
from themis.engines.base import render_chat_prompt

IGNORE = -100  # the label id Hugging Face's cross-entropy skips
PROMPT, SCORE, RATIONALE = 0, 1, 2  # token kinds: not a target, score/format, rationale
# What a judgment's format is made of (themis.judge.prompts asks for these): verdicts in [[ ]] and the
# section headers. Everything else in the target is rationale.
FORMAT_SPAN = re.compile(
    r"\[\[[^\[\]\n]{0,12}\]\]|(?:Overall rating|Verdict|Criteria|Strengths|Shortcomings|Scenario)\s*:", re.I
)
GROUP_STEPS = 16  # length grouping sorts windows of this many optimizer steps (keeps the shuffle's spread)

Example = dict[str, list[int]]


def build_example(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> Example:
    """Tokenise one chat whose last message is the assistant target; mask the prompt in ``labels``.

    Prompt and target are tokenised separately and concatenated, so the mask boundary is exact
    (tokenising the joined text could merge tokens across it). An over-long prompt loses tokens
    from its left (the system message and the start of the instruction go first); the target is
    never cut: if it alone does not fit, ValueError.
    """
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ValueError("a training chat needs at least one prompt message and a final assistant one")
    prompt = render_chat_prompt(tokenizer, messages[:-1])
    content = messages[-1]["content"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids, kinds = _target_tokens(tokenizer, content)
    if len(target_ids) > max_seq_len:
        raise ValueError(f"target of {len(target_ids)} tokens does not fit max_seq_len={max_seq_len}")
    keep = max_seq_len - len(target_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if len(prompt_ids) > keep else prompt_ids
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE] * len(prompt_ids) + target_ids,
        "kinds": [PROMPT] * len(prompt_ids) + kinds,
    }


def _target_tokens(tokenizer: Any, content: str) -> tuple[list[int], list[int]]:
    """The target's token ids (content + end token) and each one's kind, from character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("marking score and rationale tokens needs a fast (Rust) tokenizer with offsets")
    text = content + (tokenizer.eos_token or "")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # The end token is format: the judge must learn where to stop.
    spans = [m.span() for m in FORMAT_SPAN.finditer(content)] + [(len(content), len(text))]
    kinds = [
        SCORE if any(start < end_s and begin_s < end for begin_s, end_s in spans) else RATIONALE
        for start, end in encoded["offset_mapping"]
    ]
    return encoded["input_ids"], kinds


def collate(examples: list[Example], pad_id: int) -> dict[str, list[list[int]]]:
    """Pad a batch on the right to its longest example: input_ids, labels, attention_mask, and
    kinds when the examples carry them."""
    width = max(len(e["input_ids"]) for e in examples)
    keys = ["input_ids", "labels", "attention_mask"] + (["kinds"] if "kinds" in examples[0] else [])
    batch: dict[str, list[list[int]]] = {k: [] for k in keys}
    for e in examples:
        pad = width - len(e["input_ids"])
        batch["input_ids"].append(e["input_ids"] + [pad_id] * pad)
        batch["labels"].append(e["labels"] + [IGNORE] * pad)
        batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
        if "kinds" in batch:
            batch["kinds"].append(e["kinds"] + [PROMPT] * pad)
    return batch


# --- the step plan ------------------------------------------------------------------------------


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


# --- DeepSpeed ----------------------------------------------------------------------------------


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
