"""Uncertainty and aggregation: bootstrap intervals, chance levels, the paper's normalised overall
score and its relative gap between two judges. Pure: no Ray or torch.

- Bootstrap: scipy's percentile bootstrap over *units* (an item, or a pair with both its orders),
  so the two orders of a pair are never split across resamples.
- Chance level of a metric: its mean value for a random judge that draws each verdict
  independently from the human label distribution of the benchmark (the "random" anchor of the
  paper's normalisation, computed against the actual labels as the paper asks).
- Normalised value: (value - chance) / (perfect - chance), so random = 0 and perfect = 1 whether
  the metric rises (accuracy) or falls (MAE) as the judge improves.
- Relative gap (the paper's Table 3 comparison): per metric, an MAE gap is divided by the
  baseline's MAE and an agreement gap by our judge's value; the gaps are averaged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

LOWER_IS_BETTER = frozenset({"mae"})
# Perfect value of each metric the aggregate may use (MAE: 0; everything else: 1).
PERFECT = {"mae": 0.0}


def bootstrap_cis(
    n_units: int,
    statistic: Callable[[np.ndarray], Mapping[str, Any]],
    resamples: int,
    confidence: float,
    seed: int,
    vectorized: bool = False,
) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of every metric ``statistic(unit indices)`` returns, from one
    set of resamples. With ``vectorized`` the statistic takes a (batch, n) index array and returns
    one value per row. A metric gets None where its interval is undefined (fewer than two units,
    or undefined on resamples)."""
    names = list(statistic(np.arange(n_units)[None, :] if vectorized else np.arange(n_units)))
    if n_units < 2 or resamples < 1 or not names:
        return dict.fromkeys(names)

    def as_array(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        values = statistic(np.asarray(idx, dtype=int))
        return np.stack([np.asarray(np.nan if values.get(k) is None else values[k], dtype=float) for k in names])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on degenerate (constant) resamples; we report None
        result = stats.bootstrap(
            (np.arange(n_units),),
            as_array,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=vectorized,
            batch=200 if vectorized else None,
            random_state=np.random.default_rng(seed),
        )
    lows, highs = result.confidence_interval
    return {
        k: (float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else None
        for k, lo, hi in zip(names, np.atleast_1d(lows), np.atleast_1d(highs))
    }


def ratio_ci(
    num: Sequence[float], den: Sequence[float], resamples: int, confidence: float, seed: int
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of sum(num) / sum(den) over units, vectorised (fast enough for
    many small groups): a mean of per-item credit (den = 1), or the accuracy over pairs that hold
    one or two judged orders each."""
    if len(num) < 2 or resamples < 1 or len(set(num)) < 2 and len(set(den)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (np.asarray(num, float), np.asarray(den, float)),
            lambda a, b, axis: a.sum(axis) / b.sum(axis),
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return (float(low), float(high)) if np.isfinite(low) and np.isfinite(high) else None


def chance_level(
    batched_metric: Callable[[np.ndarray], np.ndarray], gold: Sequence, draws: int = 500, seed: int = 0
) -> float | None:
    """Mean of a metric for random verdicts drawn from the gold distribution: ``batched_metric``
    takes a (draws, n) array of random verdicts and scores each row against the gold labels."""
    return chance_levels(lambda d: {"metric": batched_metric(d)}, gold, draws, seed)["metric"]


def chance_levels(
    batched_metrics: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    gold: Sequence | np.ndarray,
    draws: int = 500,
    seed: int = 0,
    chunk: int = 100,
    strata: Sequence | np.ndarray | None = None,
) -> dict[str, float | None]:
    """Chance levels of several metrics from one set of random judges (see ``chance_level``).
    Draws are scored ``chunk`` at a time, so memory stays flat on large benchmarks. With ``strata``
    (one label per item, e.g. its score scale), each item's verdict is drawn from the gold labels
    of its own stratum only."""
    rng, gold = np.random.default_rng(seed), np.asarray(gold)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for start in range(0, draws, chunk):
        sample = _draw(rng, gold, min(chunk, draws - start), strata)
        for name, values in batched_metrics(sample).items():
            values = np.asarray(values, float)
            values = values[np.isfinite(values)]
            sums[name] = sums.get(name, 0.0) + float(values.sum())
            counts[name] = counts.get(name, 0) + values.size
    return {k: sums[k] / counts[k] if counts[k] else None for k in sums}


def _draw(rng: np.random.Generator, gold: np.ndarray, rows: int, strata: Sequence | np.ndarray | None) -> np.ndarray:
    """(rows, n) random verdicts from the gold labels, within each stratum when given."""
    if strata is None:
        return rng.choice(gold, size=(rows, len(gold)), replace=True)
    strata = np.asarray(strata)
    sample = np.empty((rows, len(gold)), dtype=gold.dtype)
    for stratum in np.unique(strata):
        cols = np.flatnonzero(strata == stratum)
        sample[:, cols] = rng.choice(gold[cols], size=(rows, len(cols)), replace=True)
    return sample


def unit_sums(features: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Resampled sums of per-unit features: ``features`` has one row per unit (a pair with its
    orders, an item); the returned function maps (batch, n) unit indices to (batch, features) sums.

    Units with equal features are pooled into types first, so a resample costs one bincount of type
    ids and a small matrix product, whatever the number of features."""
    types, type_of = np.unique(np.asarray(features, float), axis=0, return_inverse=True)
    type_of = type_of.ravel()

    def sums(idx: np.ndarray) -> np.ndarray:
        idx = np.atleast_2d(idx)
        batch, n_types = idx.shape[0], len(types)
        flat = type_of[idx] + n_types * np.arange(batch)[:, None]
        counts = np.bincount(flat.ravel(), minlength=batch * n_types).reshape(batch, n_types)
        return counts @ types

    return sums


def normalise(name: str, value: float | None, chance: float | None) -> float | None:
    """Rescale so that chance = 0 and perfect = 1 (None when undefined)."""
    if value is None or chance is None:
        return None
    perfect = PERFECT.get(name, 1.0)
    if abs(perfect - chance) < 1e-12:
        return None  # a benchmark where chance is already perfect says nothing
    return (value - chance) / (perfect - chance)


def overall(normalised: Mapping[str, float | None]) -> float | None:
    """The paper's single number: the mean of the normalised metrics that are defined."""
    values = [v for v in normalised.values() if v is not None]
    return float(np.mean(values)) if values else None


def metric_gap(name: str, ours: float, baseline: float) -> float:
    """Our relative advantage on one metric: MAE-like gaps over the baseline's value, others over ours."""
    if name in LOWER_IS_BETTER:
        return (baseline - ours) / baseline
    return (ours - baseline) / ours


def relative_gap(ours: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """The mean relative gap over the metrics both judges report (positive: ours is better).

    Keys can be any labels (e.g. ``"synui/mae"``); the metric name is the part after the last '/'.
    """
    shared = [
        k
        for k in ours
        if k in baseline
        and ours[k] is not None
        and baseline[k] is not None
        and (baseline[k] if k.rsplit("/", 1)[-1] in LOWER_IS_BETTER else ours[k]) != 0
    ]
    if not shared:
        raise ValueError("the two judges share no metric to compare")
    return float(np.mean([metric_gap(k.rsplit("/", 1)[-1], ours[k], baseline[k]) for k in shared]))


def with_interval(value: Any, ci: tuple[float, float] | None) -> dict[str, Any]:
    """A metric as stored in a report: its value and its interval (None where there is none)."""
    return {"value": value, "ci": list(ci) if ci else None}
