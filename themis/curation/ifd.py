"""Instruction-following difficulty (IFD), the pure part: what is scored, and the arithmetic.

For a training record (prompt Q, judgment A) under a model, the paper (after Li et al., "From
Quantity to Quality") uses

    s(A|Q) = mean per-token cross-entropy of A's tokens given Q,
    s(A)   = mean per-token cross-entropy of A's tokens alone,
    IFD    = s(A|Q) / s(A).

A high IFD means the prompt helps the model little to write the judgment: the record teaches
something. Q and A are tokenised exactly as the student sees them in training (``sft.build_example``:
the chat template, the target with its end token, the prompt cut from the left to fit). "A alone"
is A after the tokenizer's start token (its BOS, else its EOS), so both means cover exactly the
same tokens of A: without it the first token of A would be scored given Q but not alone.

Imports no torch or Ray: the scoring actor (``themis.dataplane.ifd_scoring``) turns these examples into tensors
and hands the per-token losses back to ``score_from_token_losses``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from themis.curation.sft import IGNORE, Example, build_example


@dataclass(frozen=True)
class IFDScore:
    """The two mean losses of a record and their ratio; ``ifd`` is None when s(A) is 0 (the
    model is certain of A without Q, so the ratio means nothing)."""

    s_a_given_q: float
    s_a: float
    ifd: float | None
    answer_tokens: int


def build_ifd_examples(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> tuple[Example, Example]:
    """(Q + A, A alone) as training examples whose ``labels`` cover only A's tokens.

    ``messages`` is the SFT chat: the judge prompt, then the assistant's judgment.
    """
    conditioned = build_example(tokenizer, messages, max_seq_len)
    answer = [t for t in conditioned["labels"] if t != IGNORE]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the IFD model's tokenizer has neither a BOS nor an EOS token to start A alone")
    alone = {"input_ids": [start, *answer], "labels": [IGNORE, *answer]}
    return conditioned, alone


def mean_loss(token_losses: list[float]) -> float:
    """The mean per-token cross-entropy (nats) of a sequence of scored tokens."""
    if not token_losses:
        raise ValueError("no scored tokens: the answer is empty")
    return math.fsum(token_losses) / len(token_losses)


def score_from_token_losses(given_q: list[float], alone: list[float]) -> IFDScore:
    """s(A|Q), s(A) and IFD from the per-token losses of A's tokens with and without Q."""
    if len(given_q) != len(alone):
        raise ValueError(f"A has {len(given_q)} tokens given Q but {len(alone)} alone: they must be the same tokens")
    s_aq, s_a = mean_loss(given_q), mean_loss(alone)
    return IFDScore(s_aq, s_a, s_aq / s_a if s_a > 0 else None, len(alone))


def ifd_key(model_fingerprint: str, messages: list[dict[str, str]], max_seq_len: int) -> str:
    """The cache key of one record's score: the model and exactly what it reads (like ``call_key``)."""
    blob = json.dumps(
        [model_fingerprint, [[m["role"], m["content"]] for m in messages], max_seq_len], ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()
