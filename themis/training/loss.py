"""The paper's multi-objective loss for a judge, as a pure function of logits (torch only).

A judgment mixes two kinds of target tokens (``themis.curation.sft`` marks them): score and format tokens
(``[[4]]``, ``Strengths:``, the end token), where one exact token is right, and rationale tokens,
where many words would do. Score tokens get cross-entropy. Rationale tokens get an
embedding-similarity loss between the *expected* output embedding, ``softmax(logits) @ E``
(differentiable, unlike the argmax token's embedding), and the true token's embedding ``E[y]``,
as MSE or cosine distance. ``E`` is the output embedding matrix, used as a fixed target space
(detached): the loss moves the predicted distribution, not the embeddings themselves.

The total is a weighted mean over all target tokens::

    total = (score_weight * sum(ce over score tokens) + rationale_weight * sum(r over rationale tokens))
            / number of target tokens

With ``rationale="ce"`` and both weights 1 this is exactly the usual token-mean cross-entropy.
No Ray or DeepSpeed here, so it is unit-tested against a direct computation on hand-made logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCORE, RATIONALE = 1, 2  # token kinds, as themis.curation.sft writes them (0 = not a target)
IGNORE = -100  # the label of a position that is not a target (themis.curation.sft.IGNORE, PyTorch's default)
RATIONALE_LOSSES = ("ce", "mse", "cosine")


@dataclass
class LossParts:
    """The total to backpropagate and both parts' means (for logging), with their token counts."""

    total: torch.Tensor
    score: torch.Tensor  # mean cross-entropy over score/format tokens (0 if none)
    rationale: torch.Tensor  # mean rationale loss over rationale tokens (0 if none)
    score_tokens: torch.Tensor
    rationale_tokens: torch.Tensor


def judge_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kinds: torch.Tensor,
    embeddings: torch.Tensor | None = None,
    rationale: str = "ce",
    score_weight: float = 1.0,
    rationale_weight: float = 1.0,
) -> LossParts:
    """The multi-objective loss of a causal LM batch.

    ``logits`` is (batch, seq, vocab); ``labels`` and ``kinds`` are (batch, seq) aligned with the
    inputs (shifted here: position t predicts token t+1). ``embeddings`` (vocab, hidden) is the
    output embedding matrix, needed unless ``rationale == "ce"``.
    """
    if rationale not in RATIONALE_LOSSES:
        raise ValueError(f"rationale loss must be one of {RATIONALE_LOSSES}, not {rationale!r}")
    if rationale != "ce" and embeddings is None:
        raise ValueError(f"the {rationale!r} rationale loss needs the output embedding matrix")
    # Shift the labels, not the logits: slicing off the last position would copy the whole
    # (batch, seq, vocab) tensor, and each boolean gather of logit rows would copy them again, as
    # Hugging Face's own loss avoids; parts are summed with masks instead of indexing.
    logits = logits.float()
    targets = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    kind = F.pad(kinds, (0, 1), value=0)[:, 1:]
    is_score, is_rationale = kind == SCORE, kind == RATIONALE
    # Every labelled position's cross-entropy; the masks keep the ones each part owns.
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view_as(targets)
    score_sum = (ce * is_score).sum()
    if rationale == "ce":
        rationale_sum = (ce * is_rationale).sum()
    else:
        if embeddings is None:
            raise ValueError(f"the {rationale!r} rationale loss needs the output embedding matrix")
        rationale_sum = similarity_loss(logits[is_rationale], targets[is_rationale], embeddings, rationale).sum()
    n_score, n_rationale = is_score.sum(), is_rationale.sum()
    total = (score_weight * score_sum + rationale_weight * rationale_sum) / (n_score + n_rationale).clamp(min=1)
    return LossParts(
        total=total,
        score=score_sum.detach() / n_score.clamp(min=1),
        rationale=rationale_sum.detach() / n_rationale.clamp(min=1),
        score_tokens=n_score,
        rationale_tokens=n_rationale,
    )


def similarity_loss(logits: torch.Tensor, targets: torch.Tensor, embeddings: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token distance between the expected output embedding and the true token's embedding.

    ``logits`` is (tokens, vocab), ``targets`` (tokens,), ``embeddings`` (vocab, hidden).
    MSE is the mean squared difference over the hidden size; cosine is 1 - cosine similarity.
    """
    table = embeddings.detach().to(logits.dtype)
    expected = logits.softmax(dim=-1) @ table
    true = table[targets]
    if kind == "mse":
        return (expected - true).pow(2).mean(dim=-1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(expected, true, dim=-1)
    raise ValueError(f"unknown similarity loss {kind!r}: use 'mse' or 'cosine'")
