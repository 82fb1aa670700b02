"""Agreement between a judge and reference labels. Pure: no Ray or torch.

Scores: MAE and the paper's Agr(p, q) = mean of 1/(|judge - human| + 1)^q where the gap is below
p, else 0 (Agr(2, 2): 1 for exact, 0.25 for off by one). Pairs: accuracy, and dual-order
consistency, the share of pairs whose verdicts in both orders name the same response.
"""

from __future__ import annotations

from collections.abc import Sequence

from themis.parsing import flip_winner


def mae(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Mean absolute error; both sequences must be non-empty and equally long."""
    _check(pred, gold)
    return sum(abs(p - g) for p, g in zip(pred, gold)) / len(gold)


def agreement(pred: Sequence[float], gold: Sequence[float], p: float = 2, q: float = 2) -> float:
    """Agr(p, q) of the paper."""
    _check(pred, gold)
    return sum(1 / (abs(a - b) + 1) ** q if abs(a - b) < p else 0.0 for a, b in zip(pred, gold)) / len(gold)


def accuracy(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Share of exact matches."""
    _check(pred, gold)
    return sum(a == b for a, b in zip(pred, gold)) / len(gold)


def dual_order_consistency(ab: Sequence[str], ba: Sequence[str]) -> float:
    """Share of pairs whose ``ba`` verdict, mapped back to the ``ab`` order, equals the ``ab`` one."""
    _check(ab, ba)
    return sum(x == flip_winner(y) for x, y in zip(ab, ba)) / len(ab)


def _check(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} predictions, {len(b)} labels")
    if not a:
        raise ValueError("no items to score")
