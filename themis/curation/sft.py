"""Supervised fine-tuning records, the pure part: one tokenised example and a padded batch.

Imports no torch, Ray or DeepSpeed (a test checks), so all of it is unit-tested in milliseconds.
The training process (``themis.training.loop``) turns these lists into tensors; the step plan
that orders them is ``themis.training.plan``.

An example is ``{"input_ids": [...], "labels": [...], "kinds": [...]}`` where ``labels`` is -100
over the prompt: the loss covers only the judgment the student must learn to write, not the
instruction it reads. ``kinds`` marks each token for the multi-objective loss
(``themis.training.loss``): PROMPT, SCORE (a ``[[N]]`` verdict, a section header, the end token) or
RATIONALE (the free text that explains the verdict).
"""

from __future__ import annotations

import re
from typing import Any

from themis.engines.base import render_chat_prompt

IGNORE = -100  # the label id Hugging Face's cross-entropy skips
PROMPT, SCORE, RATIONALE = 0, 1, 2  # token kinds: not a target, score/format, rationale
# What a judgment's format is made of (themis.judge.prompts asks for these): verdicts in [[ ]] and the
# section headers. Everything else in the target is rationale.
FORMAT_SPAN = re.compile(
    r"\[\[[^\[\]\n]{0,12}\]\]|(?:Overall rating|Verdict|Criteria|Strengths|Shortcomings|Scenario)\s*:", re.I
)

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
