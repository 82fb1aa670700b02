"""The multi-objective loss against a direct computation on hand-made logits, and the collation
that marks score/format tokens apart from rationale tokens."""

from __future__ import annotations

import math

import pytest
import torch

from themis.config import LossConfig, TrainConfig
from themis.curation import sft
from themis.training import plan
from themis.training.loss import judge_loss, similarity_loss

# Vocabulary of 3, hidden size 2; one sequence of 4 positions, so 3 predictions.
EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LOGITS = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]])
LABELS = torch.tensor([[-100, 0, 2, 1]])  # position t predicts label t+1
KINDS = torch.tensor([[0, sft.SCORE, sft.RATIONALE, sft.RATIONALE]])


def _probs(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def _ce(row: list[float], target: int) -> float:
    return -math.log(_probs(row)[target])


def _expected_embedding(row: list[float]) -> list[float]:
    p = _probs(row)
    return [sum(p[v] * EMB[v][h].item() for v in range(3)) for h in range(2)]


def test_multi_objective_default_is_plain_cross_entropy():
    parts = judge_loss(LOGITS, LABELS, KINDS)
    ces = [_ce([2, 0, 0], 0), _ce([0, 1, 0], 2), _ce([0, 0, 3], 1)]
    assert parts.total.item() == pytest.approx(sum(ces) / 3, rel=1e-6)
    assert parts.score.item() == pytest.approx(ces[0], rel=1e-6)
    assert parts.rationale.item() == pytest.approx((ces[1] + ces[2]) / 2, rel=1e-6)
    hf = torch.nn.functional.cross_entropy(LOGITS[0, :-1], LABELS[0, 1:])
    assert parts.total.item() == pytest.approx(hf.item(), rel=1e-6)


def test_multi_objective_mse_on_rationale_tokens_matches_direct_computation():
    parts = judge_loss(LOGITS, LABELS, KINDS, EMB, rationale="mse", score_weight=2.0, rationale_weight=0.5)
    mses = []
    for row, target in (([0, 1, 0], 2), ([0, 0, 3], 1)):
        e, t = _expected_embedding(row), EMB[target].tolist()
        mses.append(sum((a - b) ** 2 for a, b in zip(e, t)) / 2)
    ce = _ce([2, 0, 0], 0)
    assert parts.score.item() == pytest.approx(ce, rel=1e-6)
    assert parts.rationale.item() == pytest.approx(sum(mses) / 2, rel=1e-6)
    assert parts.total.item() == pytest.approx((2.0 * ce + 0.5 * sum(mses)) / 3, rel=1e-6)
    assert (parts.score_tokens.item(), parts.rationale_tokens.item()) == (1, 2)


def test_multi_objective_cosine_matches_direct_computation():
    row, target = [0.0, 0.0, 3.0], 1
    e, t = _expected_embedding(row), EMB[target].tolist()
    cos = sum(a * b for a, b in zip(e, t)) / (math.hypot(*e) * math.hypot(*t))
    got = similarity_loss(torch.tensor([row]), torch.tensor([target]), EMB, "cosine")
    assert got.item() == pytest.approx(1 - cos, rel=1e-6)


def test_multi_objective_rationale_gradient_flows_through_probabilities_only():
    logits = LOGITS.clone().requires_grad_(True)
    emb = EMB.clone().requires_grad_(True)
    judge_loss(logits, LABELS, KINDS, emb, rationale="cosine").total.backward()
    assert logits.grad[0, 1:3].abs().sum() > 0  # rationale positions learn
    assert emb.grad is None  # the embedding table is a fixed target space


def test_multi_objective_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="one of"):
        judge_loss(LOGITS, LABELS, KINDS, EMB, rationale="l1")
    with pytest.raises(ValueError, match="embedding matrix"):
        judge_loss(LOGITS, LABELS, KINDS, None, rationale="mse")
    with pytest.raises(ValueError, match="both be 0"):
        LossConfig(score_weight=0, rationale_weight=0)
    with pytest.raises(ValueError, match="needs train.lora"):
        TrainConfig(export="adapter")
    with pytest.raises(ValueError, match="needs train.bf16"):
        TrainConfig(bf16_weights=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_multi_objective_collation_marks_scores_and_format_apart_from_rationale(tokenizer):
    chat = [
        {"role": "user", "content": "Rate it."},
        {"role": "assistant", "content": "Overall rating: [[4]] Strengths: clear and correct."},
    ]
    ex = sft.build_example(tokenizer, chat, max_seq_len=256)
    target = [(i, k) for i, k, lab in zip(ex["input_ids"], ex["kinds"], ex["labels"]) if lab != sft.IGNORE]
    score_text = tokenizer.decode([i for i, k in target if k == sft.SCORE])
    rationale_text = tokenizer.decode([i for i, k in target if k == sft.RATIONALE])
    assert "[[4]]" in score_text and "Strengths:" in score_text and score_text.endswith(tokenizer.eos_token)
    assert "clear and correct" in rationale_text and "[[" not in rationale_text
    prompt_kinds = [k for k, lab in zip(ex["kinds"], ex["labels"]) if lab == sft.IGNORE]
    assert set(prompt_kinds) == {sft.PROMPT}
    batch = sft.collate([ex, {k: v[:3] for k, v in ex.items()}], pad_id=0)
    assert batch["kinds"][1] == ex["kinds"][:3] + [sft.PROMPT] * (len(ex["kinds"]) - 3)


def test_length_grouping_cuts_padding_and_keeps_shards_equal():
    import random

    rng = random.Random(1)
    lengths = [rng.choice([20, 40, 300, 600]) for _ in range(256)]
    args = (len(lengths), 0, 7, 0, 2, 4, 2)
    plain = plan.epoch_plan(*args)
    grouped = plan.epoch_plan(*args, lengths=lengths)
    other_rank = plan.epoch_plan(len(lengths), 0, 7, 1, 2, 4, 2, lengths=lengths)
    assert len(grouped) == len(plain) == len(other_rank)
    seen = [i for shard in (grouped, other_rank) for step in shard for mb in step for i in mb]
    assert len(seen) == len(set(seen)) == 256  # every example once, across both ranks
    micro = [mb for step in grouped for mb in step]
    assert plan.padding_fraction(micro, lengths) < 0.5 * plan.padding_fraction([mb for s in plain for mb in s], lengths)


def test_multi_objective_counts_only_marked_positions():
    """A prompt position (kind 0) never counts, even with a real token as its label."""
    labelled_prompt = LABELS.clone()
    labelled_prompt[0, 0] = 1
    shifted_kinds = torch.tensor([[0, 0, sft.RATIONALE, sft.RATIONALE]])  # the score position is now prompt
    parts = judge_loss(LOGITS, labelled_prompt, shifted_kinds)
    ces = [_ce([0, 1, 0], 2), _ce([0, 0, 3], 1)]
    assert parts.total.item() == pytest.approx(sum(ces) / 2, rel=1e-6)
    assert (parts.score_tokens.item(), parts.score.item()) == (0, 0.0)
