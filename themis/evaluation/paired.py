"""Two judges on the same items: a paired bootstrap of each metric's difference. Pure: no Ray or torch.

A report's scored units (``scored_units``: per pair its summed features, per pointwise item its
score and the human score, then its scale's low and high when that is not 1-5) are written beside
it. When two reports share their items (equal
item hashes), ``paired_differences`` resamples the items once per resample for both judges, so
the interval of the difference accounts for both judges erring on the same items: a sharper test
than asking whether two separate intervals overlap. Pairs count from the union of both judges'
scored pairs (a pair a judge never scored adds nothing to its sums, as in its own report);
scores count on the items both judges scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from themis.evaluation import metrics as m
from themis.evaluation import stats
from themis.evaluation.benchmarks import Item, PairwiseItem, PointwiseItem
from themis.evaluation.judges import Prediction
from themis.evaluation.report import (
    Settings,
    index_predictions,
    pair_features,
    pair_labels,
    pair_metrics,
    pair_units,
    primary,
)


def scored_units(items: Sequence[Item], predictions: Sequence[Prediction], s: Settings) -> dict[str, list]:
    """Columns item_id, family, features: what a paired comparison resamples, one row per unit."""
    preds = index_predictions(predictions)
    pairs = [i for i in items if isinstance(i, PairwiseItem)]
    units, _ = pair_units(pairs, preds, s)
    rows = [(i.item_id, "pairwise", f.tolist()) for i, u, f in zip(pairs, units, pair_features(units)) if u]
    for item in items:
        if isinstance(item, PointwiseItem):
            p = primary(item, "", preds)
            if p is not None and p.score is not None:
                scale = [] if item.scale is None else [float(item.score_scale.low), float(item.score_scale.high)]
                rows.append((item.item_id, "pointwise", [float(p.score), float(item.human_score), *scale]))
    return {"item_id": [r[0] for r in rows], "family": [r[1] for r in rows], "features": [r[2] for r in rows]}


def paired_differences(a: Mapping[str, list], b: Mapping[str, list], s: Settings) -> dict[str, dict[str, Any]]:
    """``family/metric`` -> {difference (a - b), ci, n}: the paired bootstrap interval of each
    metric's difference between two judges' scored units (``scored_units``)."""
    out: dict[str, dict[str, Any]] = {}
    for family in ("pairwise", "pointwise"):
        fa, fb = _features(a, family), _features(b, family)
        ids = sorted(fa.keys() | fb.keys()) if family == "pairwise" else sorted(fa.keys() & fb.keys())
        if len(ids) < 2:
            continue
        if family == "pointwise":  # every row with its scale, 1-5 where the units leave it out
            fa, fb = ({i: [*f, 1.0, 5.0][:4] for i, f in x.items()} for x in (fa, fb))
        # Pair units written before a feature was added are shorter: compare the features both have.
        width = min(len(f) for f in [*fa.values(), *fb.values()])
        fa, fb = ({i: f[:width] for i, f in x.items()} for x in (fa, fb))
        xa = np.array([fa.get(i, [0.0] * width) for i in ids])
        xb = np.array([fb.get(i, [0.0] * width) for i in ids])
        statistic = _pair_difference(xa, xb, s) if family == "pairwise" else _score_difference(xa, xb, s)
        full = statistic(np.arange(len(ids))[None, :])
        cis = stats.bootstrap_cis(len(ids), statistic, s.resamples, s.confidence, s.seed, vectorized=True)
        for name, value in full.items():
            diff = float(value[0]) if np.isfinite(value[0]) else None
            ci = cis.get(name)
            out[f"{family}/{name}"] = {"difference": diff, "ci": list(ci) if ci else None}
            out[f"{family}/{name}"]["n"] = len(ids)
    return out


def _features(units: Mapping[str, list], family: str) -> dict[str, list[float]]:
    return {i: f for i, fam, f in zip(units["item_id"], units["family"], units["features"]) if fam == family}


def _pair_difference(xa: np.ndarray, xb: np.ndarray, s: Settings) -> Any:
    """Each judge's macro class set is its own report's, fixed from all its pairs."""
    sums_a, sums_b = stats.unit_sums(xa), stats.unit_sums(xb)
    labels_a, labels_b = pair_labels(xa.sum(0), s), pair_labels(xb.sum(0), s)

    def statistic(idx: np.ndarray) -> dict[str, np.ndarray]:
        ma, mb = pair_metrics(sums_a(idx), labels_a, s), pair_metrics(sums_b(idx), labels_b, s)
        return {k: ma[k] - mb[k] for k in ma}

    return statistic


def _score_difference(xa: np.ndarray, xb: np.ndarray, s: Settings) -> Any:
    """Score metrics on the items' one scale, or across scales as the report has them."""
    bounds = {(lo, hi) for lo, hi in xa[:, 2:4].tolist() + xb[:, 2:4].tolist()}

    def metrics(x: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
        if len(bounds) > 1:
            return m.batched_mixed_score_metrics(x[idx, 0], x[idx, 1], x[idx, 2], x[idx, 3], s.p, s.q)
        ((low, high),) = bounds
        return m.batched_score_metrics(x[idx, 0], x[idx, 1], s.p, s.q, range(int(low), int(high) + 1))

    def statistic(idx: np.ndarray) -> dict[str, np.ndarray]:
        ma, mb = metrics(xa, idx), metrics(xb, idx)
        return {k: ma[k] - mb[k] for k in ma}

    return statistic
