"""Agreement between a judge and human labels, on scipy and scikit-learn. Pure: no Ray or torch.

Scores (1-5, or another scale of ``themis.judge.scales``): MAE, the paper's Agr(p, q), Pearson, Spearman,
Kendall and quadratic-weighted kappa. Agr(p, q) = mean over items of 1/(|judge - human| + 1)^q where
the gap is below p, else 0; Agr(2, 2) gives 1 for an exact match and 0.25 for off by one. Items on
different scales (``mixed_score_metrics``): Agr and exact agreement from each item's gap on its own
scale, MAE and the correlations on normalised scores (0-1), and no kappa (it needs one scale).

Pairs (winners "A", "B", "tie" for the order shown): accuracy, macro precision/recall/F1, Cohen's
kappa, and the position-bias figures that need both orders (dual-order
consistency, correct in both orders) or none (how often the first or second position wins). A
``ba`` winner is compared with an ``ab`` one through ``themis.judge.call.flip_winner``. An unparsable
winner is the string ``UNPARSABLE``: it matches no class, so it is always wrong.

Macro averages run over the classes that occur (in the gold labels or the verdicts) by default:
on a benchmark without ties, a tie class that nobody uses would otherwise add a 0 to the mean, and a
judge that copies the gold labels would score F1 0.667. ``classes="all"`` averages over all three.
The class set is taken once, from the whole sample, and held fixed for every bootstrap resample and
random judge (scikit-learn's ``labels=``): a resample that happens to hold none of a judge's three
ties must still average over three classes, or its F1 jumps from (a + b + 0) / 3 to (a + b) / 2.

Two orders, three pair-level figures (every pair judged as ``ab`` and as ``ba``):
- ``accuracy`` counts verdicts: each order is one verdict, right or wrong on its own.
- ``correct_both_orders`` counts pairs right in both orders (one right order and a tie is wrong).
- ``pair_accuracy_two_orders`` counts pairs as published judge benchmarks do (JudgeBench; Auto-J
  merges swapped verdicts the same way): per pair, the orders that name the gold winner minus those
  that name the other (a tie or an unparsable verdict counts 0); the pair is right when that is
  above 0. So one right order and a tie is right, one right and one wrong is not. For a gold tie
  the pair is right when the orders cancel out or say tie (net 0) with at least one verdict given.
  A pair judged in one order only counts that order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from themis.judge.call import flip_winner
from themis.judge.scales import DEFAULT_SCALE, get_scale
from themis.judge.verdict import TIE, WINNERS

SCORES = get_scale(DEFAULT_SCALE).values  # (1, 2, 3, 4, 5)
# Winner codes, for confusion matrices (gold rows, predicted columns) and scikit-learn's labels:
# the tie first, then the winners in vocabulary order, as PandaLM numbers its labels (0 = tie,
# 1 = A, 2 = B) and as reports have always listed classes. An unparsable verdict takes the code
# after them, a predicted column that no gold row has.
CODED_WINNERS = (TIE, *(w for w in WINNERS if w != TIE))  # ("tie", "A", "B")
UNPARSABLE = "unparsable"
CODES = {w: code for code, w in enumerate((*CODED_WINNERS, UNPARSABLE))}
MACRO_CLASSES = ("occurring", "all")


def mae(pred: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Mean absolute error."""
    _check(pred, gold)
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(gold, float))))


def agreement(pred: Sequence[float], gold: Sequence[float], p: float = 2, q: float = 2) -> float:
    """Agr(p, q) of the paper: partial credit 1/(gap + 1)^q for gaps below p."""
    _check(pred, gold)
    gap = np.abs(np.asarray(pred, float) - np.asarray(gold, float))
    return float(np.mean(np.where(gap < p, 1.0 / (gap + 1.0) ** q, 0.0)))


def correlation(pred: Sequence[float], gold: Sequence[float], method: str) -> float | None:
    """Pearson, Spearman or Kendall; None where it is undefined (a constant side)."""
    _check(pred, gold)
    if len(set(pred)) < 2 or len(set(gold)) < 2:
        return None
    test = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[method]
    return _finite(test(pred, gold).statistic)


def weighted_kappa(pred: Sequence[int], gold: Sequence[int], labels: Sequence[int] = SCORES) -> float | None:
    """Quadratic-weighted Cohen's kappa over the score scale; None where undefined."""
    _check(pred, gold)
    return _kappa(pred, gold, list(labels), "quadratic")


def score_metrics(
    pred: Sequence[int], gold: Sequence[int], p: float = 2, q: float = 2, labels: Sequence[int] = SCORES
) -> dict[str, float | None]:
    """Every score metric for one set of (judge, human) scores on one scale (``labels``: its values)."""
    return {
        "mae": mae(pred, gold),
        f"agr_{_num(p)}_{_num(q)}": agreement(pred, gold, p, q),
        "exact": agreement(pred, gold, 1, 0),
        "pearson": correlation(pred, gold, "pearson"),
        "spearman": correlation(pred, gold, "spearman"),
        "kendall": correlation(pred, gold, "kendall"),
        "qwk": weighted_kappa(pred, gold, labels),
    }


def mixed_score_metrics(
    pred: Sequence[int], gold: Sequence[int], low: Sequence[int], high: Sequence[int], p: float = 2, q: float = 2
) -> dict[str, float | None]:
    """Score metrics over items on different scales (item k's scale is ``low[k]``-``high[k]``): MAE
    on 0-1, Agr and exact agreement on each item's own scale, correlations on normalised scores."""
    _check(pred, gold)
    pred_n, gold_n = normalised(pred, low, high), normalised(gold, low, high)
    return {
        "mae": mae(pred_n, gold_n),
        f"agr_{_num(p)}_{_num(q)}": agreement(pred, gold, p, q),
        "exact": agreement(pred, gold, 1, 0),
        **{k: correlation(pred_n.tolist(), gold_n.tolist(), k) for k in ("pearson", "spearman", "kendall")},
    }


def normalised(
    values: Sequence[float] | np.ndarray, low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Scores on 0-1 (each scale's low -> 0, high -> 1), as ``themis.judge.scales.Scale.normalise``."""
    low = np.asarray(low, float)
    return (np.asarray(values, float) - low) / (np.asarray(high, float) - low)


def accuracy(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Share of exact matches."""
    _check(pred, gold)
    return float(np.mean([a == b for a, b in zip(pred, gold)]))


def winner_metrics(
    pred: Sequence[str], gold: Sequence[str], classes: str = "occurring", labels: Sequence[int] | None = None
) -> dict[str, float | None]:
    """Accuracy, macro precision/recall/F1 (over the ``classes`` of ``macro_labels``, or the winner
    codes ``labels`` when a caller fixed them from a larger sample), Cohen's kappa."""
    _check(pred, gold)
    # Integer codes: scikit-learn is several times faster on them than on strings (bootstraps call this often).
    p, g = winner_codes(pred), winner_codes(gold)
    labels = macro_labels(p, g, classes) if labels is None else list(labels)
    precision, recall, f1, _ = precision_recall_fscore_support(g, p, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(np.mean(p == g)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "kappa": _kappa(p, g, [0, 1, 2, 3], None),
    }


def macro_labels(pred: np.ndarray, gold: np.ndarray, classes: str) -> list[int]:
    """The winner codes a macro average runs over: those in gold or verdicts ("occurring"), or all three."""
    if classes not in MACRO_CLASSES:
        raise ValueError(f"macro classes must be one of {MACRO_CLASSES}, got {classes!r}")
    if classes == "all":
        return [0, 1, 2]
    return [k for k in (0, 1, 2) if (gold == k).any() or (pred == k).any()]


def confusion_labels(confusion: np.ndarray, classes: str) -> list[int]:
    """``macro_labels`` of a whole sample given as one confusion matrix (3, 4) (``winner_confusions``):
    the class set every resample of that sample averages over."""
    if classes not in MACRO_CLASSES:
        raise ValueError(f"macro classes must be one of {MACRO_CLASSES}, got {classes!r}")
    c = np.asarray(confusion).reshape(3, 4)
    used = c.sum(axis=1) + c.sum(axis=0)[:3]
    return [0, 1, 2] if classes == "all" else [k for k in (0, 1, 2) if used[k] > 0]


def winner_codes(winners: Sequence[str] | np.ndarray) -> np.ndarray:
    """Winner strings as integer codes (``CODES``), any shape; an unknown string is a KeyError."""
    arr = np.asarray(winners)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    flat = arr.ravel()
    codes = np.fromiter((CODES[v] for v in flat.tolist()), dtype=np.int64, count=flat.size)
    return codes.reshape(arr.shape)


def position_rates(pred: Sequence[str]) -> dict[str, float]:
    """How often the judge picks the first response, the second, or a tie (of all winners given)."""
    given = [v for v in pred if v != UNPARSABLE]
    n = len(given) or 1
    return {
        "prefer_first": given.count("A") / n,
        "prefer_second": given.count("B") / n,
        "tie_rate": given.count("tie") / n,
    }


def dual_order_consistency(ab: Sequence[str], ba: Sequence[str]) -> float:
    """Share of pairs whose ``ba`` winner, mapped back to the ``ab`` order, equals the ``ab`` one."""
    _check(ab, ba)
    return float(np.mean([x != UNPARSABLE and y != UNPARSABLE and x == flip_winner(y) for x, y in zip(ab, ba)]))


def correct_both_orders(ab: Sequence[str], ba: Sequence[str], gold_ab: Sequence[str]) -> float:
    """Share of pairs judged correctly in both orders (the ``ba`` winner must be the flipped gold)."""
    _check(ab, gold_ab)
    _check(ba, gold_ab)
    return float(np.mean([x == g and y == flip_winner(g) for x, y, g in zip(ab, ba, gold_ab)]))


def two_order_verdict(winners_ab: Sequence[str]) -> str:
    """A pair's verdict over its judged orders, each already in the ``ab`` order: the winner more
    orders name (a tie or an unparsable verdict names none), a tie when they balance, unparsable
    when no order gave a verdict at all."""
    net = sum((w == "A") - (w == "B") for w in winners_ab)
    if net:
        return "A" if net > 0 else "B"
    return "tie" if any(w != UNPARSABLE for w in winners_ab) else UNPARSABLE


def pair_accuracy_two_orders(ab: Sequence[str | None], ba: Sequence[str | None], gold_ab: Sequence[str]) -> float:
    """Share of pairs whose ``two_order_verdict`` is the gold winner (see the module docstring):
    ``ab`` and ``ba`` hold each pair's verdict in the order shown, None where that order was not
    judged; ``gold_ab`` the gold winner in the ``ab`` order."""
    _check(ab, gold_ab)
    _check(ba, gold_ab)
    right = []
    for x, y, g in zip(ab, ba, gold_ab):
        orders = [w for w in (x, y if y in (None, UNPARSABLE) else flip_winner(y)) if w is not None]
        if not orders:
            raise ValueError("a pair needs at least one judged order")
        right.append(two_order_verdict(orders) == g)
    return float(np.mean(right))


def annotator_agreement(votes: Sequence[Sequence], kind: str, labels: Sequence = SCORES) -> dict[str, float | None]:
    """Human-human agreement, the ceiling: every annotator pair's Cohen's kappa (quadratic-weighted
    for scores on the scale whose values are ``labels``) and their mean. ``votes`` has one row per
    item, one column per annotator."""
    columns = list(zip(*votes))
    out: dict[str, float | None] = {}
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            if kind == "pairwise":
                out[f"kappa_{i + 1}_{j + 1}"] = _kappa(columns[i], columns[j], list(CODED_WINNERS), None)
            else:
                out[f"qwk_{i + 1}_{j + 1}"] = _kappa(columns[i], columns[j], list(labels), "quadratic")
    values = [v for v in out.values() if v is not None]
    out["mean"] = float(np.mean(values)) if values else None
    return out


def _kappa(
    a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray, labels: list[Any], weights: str | None
) -> float | None:
    if len(set(a) | set(b)) < 2:
        return None  # one class only: chance agreement is 1 and kappa is undefined
    return _finite(cohen_kappa_score(a, b, labels=labels, weights=weights))


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(float(x)) else float(x)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} predictions, {len(b)} to compare them with")
    if len(a) == 0:
        raise ValueError("no items to score")


# --- batched forms, for bootstrap resamples ----------------------------------------------------------
# A bootstrap evaluates a metric on a thousand resamples; scikit-learn's per-call validation makes
# that take minutes. These compute the same numbers for a whole batch of resamples at once, from
# confusion matrices or per-item arrays; tests check them against scikit-learn and scipy.


def batched_winner_metrics(confusion: np.ndarray, labels: Sequence[int]) -> dict[str, np.ndarray]:
    """Accuracy, macro P/R/F1 and Cohen's kappa from confusion matrices of shape (..., 3, 4): gold
    tie/A/B rows, predicted tie/A/B/unparsable columns. The macro mean runs over the winner codes
    ``labels`` in every matrix, as scikit-learn's ``labels=`` with ``zero_division=0``: take them
    from the whole sample (``confusion_labels``), never from each resample."""
    c = confusion.astype(float)
    n = c.sum(axis=(-2, -1))
    diag = np.stack([c[..., k, k] for k in range(3)], axis=-1)
    gold_totals, pred_totals = c.sum(axis=-1), c.sum(axis=-2)[..., :3]
    precision = np.divide(diag, pred_totals, out=np.zeros_like(diag), where=pred_totals > 0)
    recall = np.divide(diag, gold_totals, out=np.zeros_like(diag), where=gold_totals > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(diag), where=denom > 0)
    observed = diag.sum(axis=-1) / n
    expected = (gold_totals * pred_totals).sum(axis=-1) / n**2
    if not labels or not set(labels) <= {0, 1, 2}:
        raise ValueError(f"macro labels must be winner codes 0-2 (tie, A, B), got {list(labels)}")
    counted = np.isin(np.arange(3), list(labels))
    n_classes = counted.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
    macro = {
        k: (v * counted).sum(-1) / n_classes for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    return {"accuracy": observed, **macro, "kappa": kappa}


def winner_confusions(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Confusion matrices (batch, 3, 4) of winner codes (``winner_codes``): one per row of ``pred``
    (batch, n) against ``gold`` (n,). Counted with one bincount, never per string."""
    pred = np.atleast_2d(pred)
    cells = np.asarray(gold, dtype=np.int64) * 4 + pred + 12 * np.arange(pred.shape[0])[:, None]
    return np.bincount(cells.ravel(), minlength=12 * pred.shape[0]).reshape(pred.shape[0], 3, 4)


def batched_score_metrics(
    pred: np.ndarray, gold: np.ndarray, p: float, q: float, labels: Sequence[int] = SCORES
) -> dict[str, np.ndarray]:
    """MAE, Agr(p, q), exact agreement, Pearson, Spearman and quadratic-weighted kappa (over the
    scale's values ``labels``) for arrays of shape (..., n) (Kendall has no cheap batched form; it is
    bootstrapped one resample at a time)."""
    pred, gold = pred.astype(float), gold.astype(float)
    return {
        **batched_gap_metrics(pred, gold, p, q),
        "pearson": _batched_pearson(pred, gold),
        "spearman": _batched_pearson(stats.rankdata(pred, axis=-1), stats.rankdata(gold, axis=-1)),
        "qwk": _batched_qwk(pred, gold, labels),
    }


def batched_mixed_score_metrics(
    pred: np.ndarray, gold: np.ndarray, low: np.ndarray, high: np.ndarray, p: float, q: float
) -> dict[str, np.ndarray]:
    """``mixed_score_metrics`` for arrays of shape (..., n), ``low`` and ``high`` alike (no Kendall)."""
    pred_n, gold_n = normalised(pred, low, high), normalised(gold, low, high)
    return {
        **batched_gap_metrics(pred, gold, p, q, np.asarray(high, float) - low),
        "pearson": _batched_pearson(pred_n, gold_n),
        "spearman": _batched_pearson(stats.rankdata(pred_n, axis=-1), stats.rankdata(gold_n, axis=-1)),
    }


def batched_gap_metrics(
    pred: np.ndarray, gold: np.ndarray, p: float, q: float, width: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """MAE, Agr(p, q) and exact agreement for arrays of shape (..., n): the cheap part of the score
    metrics, all a chance level needs. With ``width`` (each item's scale, high - low), MAE is on
    0-1 (each gap over its width); Agr and exact agreement always use the gap on the item's scale."""
    gap = np.abs(np.asarray(pred, float) - np.asarray(gold, float))
    return {
        "mae": gap.mean(-1) if width is None else (gap / width).mean(-1),
        "agr": np.where(gap < p, 1.0 / (gap + 1.0) ** q, 0.0).mean(-1),
        "exact": (gap == 0).mean(-1),
    }


def _batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    norm = np.sqrt((x**2).sum(-1) * (y**2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, (x * y).sum(-1) / norm, np.nan)


def _batched_qwk(pred: np.ndarray, gold: np.ndarray, labels: Sequence[int] = SCORES) -> np.ndarray:
    """Quadratic-weighted kappa on one scale (``labels``: its values): 1 - sum(w * observed) / sum(w * expected)."""
    k = len(labels)
    p_hot = pred[..., None] == np.asarray(labels, float)
    g_hot = gold[..., None] == np.asarray(labels, float)
    observed = np.einsum("...ni,...nj->...ij", g_hot.astype(float), p_hot.astype(float))
    n = observed.sum(axis=(-2, -1), keepdims=True)
    expected = observed.sum(-1, keepdims=True) * observed.sum(-2, keepdims=True) / n
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(float)
    den = (weights * expected).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 1 - (weights * observed).sum(axis=(-2, -1)) / den, np.nan)
