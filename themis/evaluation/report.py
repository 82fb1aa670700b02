"""From predictions to a report: every number with its interval, counts in and used, per-group
breakdowns, human ceilings, the normalised overall score and the effect of reference answers.
Pure: no Ray or torch. Over 400 lines because the metrics, groups and ceilings share one bootstrap
and one rule for which prediction counts; split apart, each part would restate both.

Which prediction counts: an item is scored on the prompt it is normally judged with (with its
reference when it has one, unless the judge never saw references); the other reference mode, when
judged, only feeds the reference-effect table. Unparsable verdicts: pairs follow the configured
policy (tie, wrong or exclude), always stated in the report; scores are excluded and counted.
Macro precision/recall/F1 average over the classes that occur, or all three (``macro_classes``),
a class set fixed from all pairs for the value, every resample and the chance level;
``pair_accuracy_two_orders`` merges each pair's orders as published judge benchmarks do (see
``metrics``), overall and per group; ``decisive_only`` adds agreement on the verdicts where both
the humans and the judge pick a winner.
Pairs judged in both orders are resampled as units: the two orders of a pair never split.
The judge's ``score`` / ``winner`` is compared with the item's ``human_score`` / ``human_winner``
(for a ``ba`` call, the human winner flipped to the order shown).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from themis.evaluation import metrics as m
from themis.evaluation import stats
from themis.evaluation.benchmarks import Item, PairwiseItem, PointwiseItem
from themis.evaluation.judges import Prediction
from themis.judge.call import flip_winner
from themis.judge.scales import SCALES, Scale, get_scale

POLICIES = {
    "tie": "an unparsable pairwise verdict counts as a tie",
    "wrong": "an unparsable pairwise verdict counts as wrong",
    "exclude": "an unparsable pairwise verdict is excluded (and counted)",
}
SCORE_POLICY = "an unparsable score is excluded (and counted)"
MACRO = {
    "occurring": "macro precision/recall/F1 average over the classes that occur in the gold labels or the verdicts",
    "all": "macro precision/recall/F1 average over all three classes (tie, A, B), used or not",
}
PAIR_AGGREGATE = (
    "pair_accuracy_two_orders: per pair, the orders naming the gold winner minus those naming the other "
    "(tie or unparsable: 0), right when above 0 (a gold tie: when they balance); unlike accuracy it counts "
    "pairs, not verdicts, and unlike correct_both_orders one right order and a tie is right"
)
DECISIVE_POLICY = (
    "decisive_accuracy: agreement on the verdicts where both the humans and the judge pick a winner (no tie)"
)
# The metrics the normalised overall score averages, per judgment family (the paper uses MAE and Agr).
KENDALL_RESAMPLES = 200
ACROSS_SCALES = (
    "items on several scales: MAE and correlations on normalised scores (0-1), Agr and exact agreement "
    "on each item's own scale, no kappa; by_scale has each scale's own figures"
)
AGGREGATED = {"pointwise": ("mae", "agr"), "pairwise": ("accuracy", "f1")}


@dataclass(frozen=True)
class Settings:
    """How to score: the unparsable policy, Agr's p and q, the bootstrap, the breakdown key."""

    unparsable: str = "wrong"
    p: float = 2
    q: float = 2
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    breakdown: str = "scenario"
    macro_classes: str = "occurring"
    decisive_only: bool = False


def build_report(items: Sequence[Item], predictions: Sequence[Prediction], settings: Settings) -> dict[str, Any]:
    """Every number for one judge on one benchmark."""
    if settings.unparsable not in POLICIES:
        raise ValueError(f"unparsable policy must be one of {sorted(POLICIES)}, got {settings.unparsable!r}")
    if settings.macro_classes not in MACRO:
        raise ValueError(f"macro classes must be one of {sorted(MACRO)}, got {settings.macro_classes!r}")
    preds = index_predictions(predictions)
    report: dict[str, Any] = {
        "policy": {
            "pairwise": POLICIES[settings.unparsable],
            "pointwise": SCORE_POLICY,
            "unparsable": settings.unparsable,
            "macro": MACRO[settings.macro_classes],
            "pair_aggregate": PAIR_AGGREGATE,
            **({"decisive": DECISIVE_POLICY} if settings.decisive_only else {}),
        },
        "settings": settings.__dict__,
        "items_in": len(items),
    }
    point = [i for i in items if isinstance(i, PointwiseItem)]
    pairs = [i for i in items if isinstance(i, PairwiseItem)]
    if point:
        report["pointwise"] = pointwise_section(point, preds, settings)
    if pairs:
        report["pairwise"] = pairwise_section(pairs, preds, settings)
    report["reference_effect"] = reference_effect(items, preds, settings)
    normalised = {
        f"{fam}/{k}": v
        for fam in ("pointwise", "pairwise")
        if fam in report
        for k, v in report[fam]["normalised"].items()
    }
    report["overall"] = {
        "value": stats.overall(normalised),
        "normalised": normalised,
        "anchors": "random = a judge drawing from the human label distribution; perfect = 1 (MAE 0)",
    }
    return report


Key = tuple[str, str, bool]  # item id, order, with_reference


def index_predictions(predictions: Sequence[Prediction]) -> dict[Key, Prediction]:
    return {(p.item_id, p.order, p.with_reference): p for p in predictions}


def primary(item: Item, order: str, preds: dict[Key, Prediction]) -> Prediction | None:
    """The prediction an item is scored on: with its reference if judged so, else without."""
    return preds.get((item.item_id, order, item.reference is not None)) or preds.get((item.item_id, order, False))


def group_of(item: Item, breakdown: str) -> str:
    return (item.category if breakdown == "category" else item.scenario) or "(none)"


# --- scores ---------------------------------------------------------------------------------------


def pointwise_section(items: Sequence[PointwiseItem], preds: dict[Key, Prediction], s: Settings) -> dict[str, Any]:
    """Score metrics on the items' scale; over several scales, the aggregates of ``_mixed_metrics``
    and each scale's own figures in ``by_scale``. ``scales`` counts the items per scale."""
    judged = [(i, primary(i, "", preds)) for i in items]
    used = [(i, p.score) for i, p in judged if p is not None and p.score is not None]
    out: dict[str, Any] = {"counts": _counts(judged, len(used)), "scales": dict(Counter(_scale(i) for i in items))}
    if not used:
        return out | {"metrics": {}, "normalised": {}}
    scales = sorted({_scale(i) for i, _ in used}, key=list(SCALES).index)
    if len(scales) == 1:
        out |= _scale_metrics(used, get_scale(scales[0]), s)
    else:
        out |= _mixed_metrics(used, s)
    out["groups"] = _groups([(i, m.agreement([v], [i.human_score], s.p, s.q), 1.0) for i, v in used], s, "agr")
    if len(scales) == 1:
        out |= _scale_tables(used, [i for i in items if _scale(i) == scales[0]], get_scale(scales[0]))
    else:
        out["by_scale"] = {name: _scale_summary(used, items, get_scale(name), s) for name in scales}
    return out


def _scale(item: PointwiseItem) -> str:
    return item.score_scale.name


def _scale_metrics(used: Sequence[tuple[PointwiseItem, int]], scale: Scale, s: Settings) -> dict[str, Any]:
    """Every score metric on one scale, with bootstrap intervals, chance levels and normalised values."""
    pred, gold = [v for _, v in used], [i.human_score for i, _ in used]
    values = _rename_agr(m.score_metrics(pred, gold, s.p, s.q, scale.values))
    pred_arr, gold_arr = np.asarray(pred), np.asarray(gold)
    cis = stats.bootstrap_cis(
        len(used),
        lambda idx: m.batched_score_metrics(pred_arr[idx], gold_arr[idx], s.p, s.q, scale.values),
        s.resamples,
        s.confidence,
        s.seed,
        vectorized=True,
    )
    cis |= _kendall_cis(pred_arr, gold_arr, s)
    gaps = stats.chance_levels(lambda d: m.batched_gap_metrics(d, gold_arr, s.p, s.q), gold_arr, seed=s.seed)
    return _with_chance(values, cis, gaps)


def _mixed_metrics(used: Sequence[tuple[PointwiseItem, int]], s: Settings) -> dict[str, Any]:
    """Score metrics over items on several scales (``metrics.mixed_score_metrics``: MAE on 0-1, Agr on
    each item's own scale); a random judge draws each verdict from the human scores of its scale."""
    pred, gold = np.asarray([v for _, v in used]), np.asarray([i.human_score for i, _ in used])
    low = np.asarray([i.score_scale.low for i, _ in used])
    high = np.asarray([i.score_scale.high for i, _ in used])
    values = _rename_agr(m.mixed_score_metrics(pred.tolist(), gold.tolist(), low.tolist(), high.tolist(), s.p, s.q))
    cis = stats.bootstrap_cis(
        len(used),
        lambda idx: m.batched_mixed_score_metrics(pred[idx], gold[idx], low[idx], high[idx], s.p, s.q),
        s.resamples,
        s.confidence,
        s.seed,
        vectorized=True,
    )
    cis |= _kendall_cis(m.normalised(pred, low, high), m.normalised(gold, low, high), s)
    gaps = stats.chance_levels(
        lambda d: m.batched_gap_metrics(d, gold, s.p, s.q, high - low), gold, seed=s.seed, strata=low * 100 + high
    )
    return _with_chance(values, cis, gaps) | {"across_scales": ACROSS_SCALES}


def _kendall_cis(pred: np.ndarray, gold: np.ndarray, s: Settings) -> dict[str, Any]:
    # Kendall has no batched form: fewer resamples keep it to about a second.
    return stats.bootstrap_cis(
        len(pred),
        lambda idx: {"kendall": m.correlation(pred[idx], gold[idx], "kendall")},
        min(s.resamples, KENDALL_RESAMPLES),
        s.confidence,
        s.seed,
    )


def _with_chance(values: dict[str, Any], cis: dict[str, Any], gaps: dict[str, Any]) -> dict[str, Any]:
    chance = {k: gaps[k] for k in AGGREGATED["pointwise"]}
    return {
        "metrics": {k: stats.with_interval(v, cis.get(k)) for k, v in values.items()},
        "chance": chance,
        "normalised": {k: stats.normalise(k, values[k], chance[k]) for k in AGGREGATED["pointwise"]},
    }


def _scale_tables(used: Sequence[tuple[PointwiseItem, int]], items: Sequence[PointwiseItem], scale: Scale) -> dict:
    """The verdict distributions, the confusion matrix and the human ceiling on one scale."""
    pred, gold = [v for _, v in used], [i.human_score for i, _ in used]
    labels = list(scale.values)
    return {
        "distribution": {"judge": _histogram(pred, labels), "human": _histogram(gold, labels)},
        "confusion": {"labels": labels, "matrix": _confusion(gold, pred, labels, labels)},
        "human_human": _human_ceiling(items, "pointwise", labels),
    }


def _scale_summary(
    used: Sequence[tuple[PointwiseItem, int]], items: Sequence[PointwiseItem], scale: Scale, s: Settings
) -> dict[str, Any]:
    """One scale's items of a mixed benchmark: their metrics on that scale (no intervals) and tables."""
    mine = [(i, v) for i, v in used if _scale(i) == scale.name]
    pred, gold = [v for _, v in mine], [i.human_score for i, _ in mine]
    metrics = _rename_agr(m.score_metrics(pred, gold, s.p, s.q, scale.values))
    tables = _scale_tables(mine, [i for i in items if _scale(i) == scale.name], scale)
    return {"n": len(mine), "metrics": metrics, **tables}


def _rename_agr(values: dict[str, float | None]) -> dict[str, float | None]:
    """``agr_2_2`` -> ``agr`` (the settings record p and q), so reports compare across settings."""
    return {("agr" if k.startswith("agr_") else k): v for k, v in values.items()}


# --- pairs ----------------------------------------------------------------------------------------


def pairwise_section(items: Sequence[PairwiseItem], preds: dict[Key, Prediction], s: Settings) -> dict[str, Any]:
    units, judged = pair_units(items, preds, s)
    n_used = sum(len(u) for u in units)
    out: dict[str, Any] = {"counts": _counts(judged, n_used)}
    if not n_used:
        return out | {"metrics": {}, "normalised": {}}
    keep = [k for k, u in enumerate(units) if u]
    units = [units[k] for k in keep]
    unit_items = [items[k] for k in keep]

    rows = [r for u in units for r in u]
    pred, gold = [r[1] for r in rows], [r[2] for r in rows]
    features = pair_features(units)
    labels = pair_labels(features.sum(0), s)  # one class set for the value, every resample and chance
    statistic = pair_statistic(features, s)
    values = m.winner_metrics(pred, gold, labels=labels) | _order_values(statistic, len(units))
    cis = stats.bootstrap_cis(len(units), statistic, s.resamples, s.confidence, s.seed, vectorized=True)
    gold_codes = m.winner_codes(gold)

    def random_judge(draws: np.ndarray) -> dict[str, np.ndarray]:
        return m.batched_winner_metrics(m.winner_confusions(draws, gold_codes), labels)

    chance = stats.chance_levels(random_judge, gold_codes, seed=s.seed)
    chance = {k: chance[k] for k in AGGREGATED["pairwise"]}
    out["counts"]["pairs"] = len(units)
    out["counts"]["pairs_in_both_orders"] = sum(len({o for o, _, _ in u}) == 2 for u in units)
    if s.decisive_only:
        out["counts"]["decisive"] = sum(_decisive(v, g) for _, v, g in rows)
    out["macro_classes"] = [m.CODED_WINNERS[k] for k in labels]
    out["metrics"] = {k: stats.with_interval(v, cis.get(k)) for k, v in values.items()}
    out["position"] = {"judge": m.position_rates(pred), "human": m.position_rates(gold)}
    out["chance"] = chance
    out["normalised"] = {k: stats.normalise(k, values[k], chance[k]) for k in AGGREGATED["pairwise"]}
    out["groups"] = _groups(
        [(i, sum(v == g for _, v, g in u), len(u)) for i, u in zip(unit_items, units)], s, "accuracy"
    )
    by_pair = _groups([(i, f[PAIR_CORRECT], 1.0) for i, f in zip(unit_items, features)], s, PAIR_ACCURACY)
    for name, row in by_pair.items():
        out["groups"][name] |= {k: v for k, v in row.items() if k != "n"}
    winners = list(m.CODED_WINNERS)
    out["confusion"] = {
        "labels": winners,
        "predicted": [*winners, m.UNPARSABLE],
        "matrix": _confusion(gold, pred, winners, [*winners, m.UNPARSABLE]),
    }
    out["human_human"] = _human_ceiling(items, "pairwise")
    return out


def pair_units(
    items: Sequence[PairwiseItem], preds: dict[Key, Prediction], s: Settings
) -> tuple[list[list[tuple]], list]:
    """Per pair, its judged orders as (order, winner after the policy, human winner for that order)."""
    units, judged = [], []
    for item in items:
        unit = []
        for order in ("ab", "ba"):
            p = primary(item, order, preds)
            if p is None:
                continue
            judged.append((item, p))
            winner = p.winner if p.winner is not None else _apply_policy(s.unparsable)
            if winner is not None:
                unit.append((order, winner, _human_winner(item, order)))
        units.append(unit)
    return units, judged


# Per-pair features the bootstrap sums: the 12 confusion cells (gold code * 4 + verdict code), then
# these. A resample of pairs is a sum of their rows, so both orders of a pair always move together.
# PAIRS and PAIR_CORRECT came later: scored units written before them have 17 columns.
BOTH, CONSISTENT, CORRECT_BOTH, DECISIVE, DECISIVE_CORRECT, PAIRS, PAIR_CORRECT = range(12, 19)
N_PAIR_FEATURES = 19
PAIR_ACCURACY = "pair_accuracy_two_orders"


def pair_features(units: Sequence[Sequence[tuple]]) -> np.ndarray:
    """One row of features per pair (see ``BOTH`` ...) from its judged orders."""
    features = np.zeros((len(units), N_PAIR_FEATURES))
    for k, unit in enumerate(units):
        if unit:
            features[k, PAIRS] = 1
            in_ab = [v if o == "ab" or v == m.UNPARSABLE else flip_winner(v) for o, v, _ in unit]
            gold_ab = unit[0][2] if unit[0][0] == "ab" else flip_winner(unit[0][2])
            features[k, PAIR_CORRECT] = m.two_order_verdict(in_ab) == gold_ab
        for _, winner, gold in unit:
            features[k, m.CODES[gold] * 4 + m.CODES[winner]] += 1
            features[k, DECISIVE] += _decisive(winner, gold)
            features[k, DECISIVE_CORRECT] += _decisive(winner, gold) and winner == gold
        orders = {o: (v, g) for o, v, g in unit}
        if "ab" in orders and "ba" in orders:
            (ab, g), (ba, _) = orders["ab"], orders["ba"]
            features[k, BOTH] = 1
            # As metrics.dual_order_consistency / correct_both_orders, per pair (no numpy call per pair).
            features[k, CONSISTENT] = m.UNPARSABLE not in (ab, ba) and ab == flip_winner(ba)
            features[k, CORRECT_BOTH] = ab == g and ba == flip_winner(g)
    return features


def pair_labels(total: np.ndarray, s: Settings) -> list[int]:
    """The macro class set of a whole sample, from its summed pair features (one row)."""
    return m.confusion_labels(np.asarray(total)[:12], s.macro_classes)


def pair_statistic(features: np.ndarray, s: Settings) -> Any:
    """Every pair metric of resampled pairs (rows of ``pair_features``), a (batch, n) array of pair
    indices at a time; macro averages over the class set of all the pairs."""
    sums, labels = stats.unit_sums(features), pair_labels(features.sum(0), s)
    return lambda idx: pair_metrics(sums(idx), labels, s)


def pair_metrics(total: np.ndarray, labels: Sequence[int], s: Settings) -> dict[str, np.ndarray]:
    """Every pair metric from summed pair features (batch, 17 or more): one value per row; macro
    averages over the winner codes ``labels`` (``pair_labels`` of the whole sample)."""
    out = m.batched_winner_metrics(total[:, :12].reshape(-1, 3, 4), labels)
    out["dual_order_consistency"] = _share(total[:, CONSISTENT], total[:, BOTH])
    out["correct_both_orders"] = _share(total[:, CORRECT_BOTH], total[:, BOTH])
    if total.shape[1] > PAIR_CORRECT:
        out[PAIR_ACCURACY] = _share(total[:, PAIR_CORRECT], total[:, PAIRS])
    if s.decisive_only:
        out["decisive_accuracy"] = _share(total[:, DECISIVE_CORRECT], total[:, DECISIVE])
    return out


def _order_values(statistic: Any, n_units: int) -> dict[str, float | None]:
    """The figures scikit-learn has no form for, on all pairs: the statistic on the full sample."""
    full = statistic(np.arange(n_units)[None, :])
    names = [
        k for k in ("dual_order_consistency", "correct_both_orders", PAIR_ACCURACY, "decisive_accuracy") if k in full
    ]
    return {k: float(full[k][0]) if np.isfinite(full[k][0]) else None for k in names}


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(whole > 0, part / whole, np.nan)


def _decisive(winner: str, gold: str) -> bool:
    """Both the humans and the judge picked a winner (neither a tie nor unparsable)."""
    return gold in ("A", "B") and winner in ("A", "B")


def _human_winner(item: PairwiseItem, order: str) -> str:
    """The humans' winner for the order shown: flipped when the judge saw the pair as ``ba``."""
    return flip_winner(item.human_winner) if order == "ba" else item.human_winner


def _apply_policy(policy: str) -> str | None:
    return {"tie": "tie", "wrong": m.UNPARSABLE, "exclude": None}[policy]


# --- shared parts -----------------------------------------------------------------------------------


def _counts(judged: Sequence[tuple[Item, Prediction | None]], used: int) -> dict[str, Any]:
    """How many predictions came in, how many were used, and why the others were not."""
    reasons = Counter(_reason(p) for _, p in judged if p is None or not p.parsed)
    return {
        "predictions": len(judged),
        "parsed": sum(p is not None and p.parsed for _, p in judged),
        "used": used,
        "unparsable_by_reason": dict(reasons),
    }


def _reason(p: Prediction | None) -> str:
    """Why a prediction has no verdict; engine errors are grouped (their details are in predictions.parquet)."""
    if p is None:
        return "not judged"
    error = p.error or "no verdict"
    return "engine error" if error.startswith("engine error") else error


def _groups(rows: Sequence[tuple[Item, float, float]], s: Settings, headline: str) -> dict[str, Any]:
    """Per scenario (or category): the item count, the headline metric and its bootstrap interval.
    ``rows`` hold (item, credit, weight): the headline is sum(credit) / sum(weight) over a group."""
    by_group: dict[str, list] = defaultdict(list)
    for item, credit, weight in rows:
        by_group[group_of(item, s.breakdown)].append((credit, weight))
    out = {}
    for name, members in sorted(by_group.items()):
        num, den = [c for c, _ in members], [w for _, w in members]
        ci = stats.ratio_ci(num, den, s.resamples, s.confidence, s.seed)
        out[name] = {"n": len(members), headline: sum(num) / sum(den), f"{headline}_ci": list(ci) if ci else None}
    return out


def _histogram(values: Sequence, labels: Sequence) -> dict[str, int]:
    counts = Counter(values)
    return {str(k): counts.get(k, 0) for k in labels}


def _confusion(gold: Sequence, pred: Sequence, rows: list, cols: list) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    full = confusion_matrix([str(g) for g in gold], [str(p) for p in pred], labels=[str(c) for c in cols])
    keep = [cols.index(r) for r in rows]
    return full[keep].tolist()


def _human_ceiling(items: Sequence[Item], kind: str, labels: Sequence = m.SCORES) -> dict[str, Any] | None:
    """Annotator-vs-annotator agreement on the items with the most annotators (if more than one);
    ``labels``: the score scale's values."""
    most = max(len(i.human) for i in items)
    if most < 2:
        return None
    votes = [i.human for i in items if len(i.human) == most]
    return {"annotators": most, "items": len(votes), **m.annotator_agreement(votes, kind, labels)}


# --- reference effect -------------------------------------------------------------------------------


def reference_effect(items: Sequence[Item], preds: dict[Key, Prediction], s: Settings) -> dict[str, Any] | None:
    """Per scenario, the headline metric with and without the reference, on items judged both ways."""
    rows: dict[tuple[str, str], dict[bool, list]] = defaultdict(lambda: {True: [], False: []})
    for item in items:
        orders = ("",) if isinstance(item, PointwiseItem) else ("ab", "ba")
        for order in orders:
            with_ref, without = preds.get((item.item_id, order, True)), preds.get((item.item_id, order, False))
            if with_ref is None or without is None:
                continue
            row = rows[(item.scenario, item.kind)]
            if isinstance(item, PointwiseItem):
                row[True].append((with_ref.score, item.human_score))
                row[False].append((without.score, item.human_score))
            else:
                gold = _human_winner(item, order)
                row[True].append((with_ref.winner, gold))
                row[False].append((without.winner, gold))
    if not rows:
        return None
    table = {}
    for (scenario, kind), pair in sorted(rows.items()):
        metric = "agr" if kind == "pointwise" else "accuracy"
        with_v, without_v = (_headline(kind, pair[f], s) for f in (True, False))
        table[f"{scenario}/{kind}"] = {
            "metric": metric,
            "n": len(pair[True]),
            "with_reference": with_v,
            "without_reference": without_v,
            "effect": None if with_v is None or without_v is None else with_v - without_v,
        }
    return table


def _headline(kind: str, rows: list[tuple], s: Settings) -> float | None:
    if kind == "pointwise":
        used = [(v, g) for v, g in rows if v is not None]
        return m.agreement([v for v, _ in used], [g for _, g in used], s.p, s.q) if used else None
    winners = [(v if v is not None else _apply_policy(s.unparsable), g) for v, g in rows]
    used = [(v, g) for v, g in winners if v is not None]
    return m.accuracy([v for v, _ in used], [g for _, g in used]) if used else None
