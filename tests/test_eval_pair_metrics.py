"""Pair metrics a reader compares with published tables: macro averages whose class set does not
change from one bootstrap resample to the next, and the pair-level aggregate over both orders."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from themis.evaluation import markdown
from themis.evaluation import metrics as m
from themis.evaluation.benchmarks import PairwiseItem
from themis.evaluation.judges import Prediction
from themis.evaluation.paired import paired_differences, scored_units
from themis.evaluation.report import PAIR_ACCURACY, Settings, build_report
from themis.judge.call import flip_winner

HEADER = {
    "judge": {"name": "j", "kind": "recorded"},
    "benchmark": {"name": "b", "source": "s", "items": 12, "sha256": "0" * 64},
}


# --- macro averages: one class set for the value and every resample -----------------------------------


def three_ties_in_350() -> tuple[list[PairwiseItem], list[Prediction]]:
    """The issue's judge: gold A/B only, 3 tie verdicts in 350 pairs, two thirds of the rest right."""
    golds = ["A", "B"] * 175
    items = [PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", (g,)) for k, g in enumerate(golds)]
    flip = {"A": "B", "B": "A"}
    verdicts = ["tie"] * 3 + [g if k % 3 else flip[g] for k, g in enumerate(golds[3:])]
    return items, [Prediction(i.item_id, "ab", False, winner=v) for i, v in zip(items, verdicts)]


def test_macro_classes_fixed_for_every_resample() -> None:
    """Before: resamples without one of the 3 ties averaged F1 over two classes, so the interval was
    [0.41, 0.67] around 0.44. The class set now comes from the whole sample, as sklearn's labels=."""
    items, preds = three_ties_in_350()
    pair = build_report(items, preds, Settings(resamples=1000))["pairwise"]
    gold = [i.human_winner for i in items]
    verdicts = [p.winner for p in preds]
    expected = f1_score(gold, verdicts, labels=["tie", "A", "B"], average="macro", zero_division=0)
    f1 = pair["metrics"]["f1"]
    assert pair["macro_classes"] == ["tie", "A", "B"]
    assert f1["value"] == pytest.approx(expected) == pytest.approx(0.4419, abs=1e-4)
    low, high = f1["ci"]
    assert low < f1["value"] < high
    assert high - low < 0.1 and high < f1["value"] + 0.05  # was 0.67: two-class resamples
    for name in ("precision", "recall"):
        low, high = pair["metrics"][name]["ci"]
        assert low < pair["metrics"][name]["value"] < high and high - low < 0.1


def test_macro_classes_fixed_in_the_chance_level_and_paired_differences() -> None:
    items, preds = three_ties_in_350()
    s = Settings(resamples=300)
    report = build_report(items, preds, s)
    # A random judge drawn from the gold labels never says tie, yet is averaged over the same three
    # classes as the judge: (0.5 + 0.5 + 0) / 3, not 0.5.
    assert report["pairwise"]["chance"]["f1"] == pytest.approx(1 / 3, abs=0.01)
    perfect = [Prediction(i.item_id, "ab", False, winner=i.human_winner) for i in items]
    units = [scored_units(items, p, s) for p in (preds, perfect)]
    diff = paired_differences(*units, s)["pairwise/f1"]
    assert diff["difference"] == pytest.approx(report["pairwise"]["metrics"]["f1"]["value"] - 1.0)
    assert diff["ci"][0] < diff["difference"] < diff["ci"][1] and diff["ci"][1] - diff["ci"][0] < 0.1


def test_macro_labels_must_be_winner_codes() -> None:
    confusion = m.winner_confusions(m.winner_codes(["A"]), m.winner_codes(["A"]))
    with pytest.raises(ValueError, match="winner codes 0-2"):
        m.batched_winner_metrics(confusion, [])
    assert m.confusion_labels(confusion[0], "occurring") == [1]
    assert m.confusion_labels(confusion[0], "all") == [0, 1, 2]


# --- the pair-level aggregate over both orders ----------------------------------------------------------

# (gold, ab verdict, ba verdict in the order shown; None = not judged, "?" = unparsable), whether the
# pair counts as right, and why. A "ba" verdict "B" names the second response shown: response_a.
PAIRS = [
    ("A", "A", "B", True),  # both orders name A: +2
    ("A", "A", "tie", True),  # +1, 0: right (correct_both_orders says wrong)
    ("A", "A", "A", False),  # always the first shown: A, then B: +1 - 1 = 0
    ("A", "tie", "tie", False),  # 0
    ("A", "A", "?", True),  # an unparsable order counts 0: +1
    ("A", "B", "tie", False),  # -1
    ("A", "A", None, True),  # one order judged: +1
    ("tie", "tie", "tie", True),  # a gold tie: net 0 with a verdict given
    ("tie", "A", "A", True),  # the orders cancel: a tie, as swapped verdicts that disagree
    ("tie", "A", "tie", False),  # names A
    ("tie", "?", "?", False),  # no verdict at all
    ("B", "B", "A", True),  # both orders name B
]


def two_order_judge() -> tuple[list[PairwiseItem], list[Prediction]]:
    items = [
        PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", (gold,), category="x" if k < 6 else "y")
        for k, (gold, *_) in enumerate(PAIRS)
    ]
    preds = [
        Prediction(item.item_id, order, False, winner=None if verdict == "?" else verdict)
        for item, (_, ab, ba, _) in zip(items, PAIRS)
        for order, verdict in (("ab", ab), ("ba", ba))
        if verdict is not None
    ]
    return items, preds


def test_pair_aggregate_hand_computed() -> None:
    ab = [m.UNPARSABLE if x == "?" else x for _, x, _, _ in PAIRS]
    ba = [m.UNPARSABLE if y == "?" else y for _, _, y, _ in PAIRS]
    gold = [g for g, *_ in PAIRS]
    assert m.pair_accuracy_two_orders(ab, ba, gold) == pytest.approx(7 / 12)
    for (g, _, _, right), x, y in zip(PAIRS, ab, ba):
        assert m.pair_accuracy_two_orders([x], [y], [g]) == float(right), (g, x, y)
    # The stricter and the per-verdict figures differ on the same pairs with both orders judged.
    both = [k for k, (_, _, y, _) in enumerate(PAIRS) if y is not None]
    pick = [[v[k] for k in both] for v in (ab, ba, gold)]
    assert m.correct_both_orders(*pick) == pytest.approx(3 / 11)  # pairs 1, 8 and 12
    with pytest.raises(ValueError, match="at least one judged order"):
        m.pair_accuracy_two_orders([None], [None], ["A"])


def test_pair_aggregate_in_the_report_overall_and_per_group() -> None:
    items, preds = two_order_judge()
    report = build_report(items, preds, Settings(resamples=1000, breakdown="category"))
    pair = report["pairwise"]
    cell = pair["metrics"][PAIR_ACCURACY]
    assert cell["value"] == pytest.approx(7 / 12)
    # Bootstrapped by pair: every resample holds 12 pairs, so the bounds are steps of 1/12.
    low, high = cell["ci"]
    assert low < 7 / 12 < high and all(abs(x * 12 - round(x * 12)) < 1e-9 for x in (low, high))
    # Per verdict: 23 verdicts, 11 right (unparsable is wrong); per pair in both orders: 3 of 11.
    assert pair["metrics"]["accuracy"]["value"] == pytest.approx(11 / 23)
    assert pair["metrics"]["correct_both_orders"]["value"] == pytest.approx(3 / 11)
    groups = pair["groups"]
    assert groups["x"][PAIR_ACCURACY] == pytest.approx(3 / 6) and groups["y"][PAIR_ACCURACY] == pytest.approx(4 / 6)
    assert groups["x"]["n"] == 6 and len(groups["x"][f"{PAIR_ACCURACY}_ci"]) == 2
    assert "accuracy" in groups["x"]  # the per-verdict headline stays
    assert "minus those naming the other" in report["policy"]["pair_aggregate"]
    # Under the tie policy an unparsable order is a tie: pair 11 (gold tie, no verdict) becomes right.
    tie_policy = build_report(items, preds, Settings(resamples=0, unparsable="tie"))
    assert tie_policy["pairwise"]["metrics"][PAIR_ACCURACY]["value"] == pytest.approx(8 / 12)


def test_pair_aggregate_in_markdown_and_compare() -> None:
    items, preds = two_order_judge()
    s = Settings(resamples=200, breakdown="category")
    report = build_report(items, preds, s) | HEADER
    text = markdown.render_report(report)
    assert f"| {PAIR_ACCURACY} | 0.5833 |" in text
    assert f"| group | n | accuracy | 95% CI | {PAIR_ACCURACY} | 95% CI |" in text
    assert "| x | 6 | " in text and "0.5000" in text.split("| x | 6 | ")[1].splitlines()[0]
    assert f"{PAIR_ACCURACY} 0.5833" in markdown.headline_line(report)
    perfect = [
        Prediction(i.item_id, o, False, winner=i.human_winner if o == "ab" else flip_winner(i.human_winner))
        for i in items
        for o in ("ab", "ba")
    ]
    other = build_report(items, perfect, s) | HEADER
    assert f"| pairwise/{PAIR_ACCURACY} | 0.5833 |" in markdown.compare_reports(report, other)
    units = [scored_units(items, p, s) for p in (preds, perfect)]
    paired = paired_differences(*units, s)
    assert paired[f"pairwise/{PAIR_ACCURACY}"]["difference"] == pytest.approx(7 / 12 - 1)
    # Units written before the aggregate existed (17 features) still compare, without it.
    old = [{**u, "features": [f[:17] for f in u["features"]]} for u in units]
    assert f"pairwise/{PAIR_ACCURACY}" not in paired_differences(old[0], units[1], s)
    assert paired_differences(*old, s)["pairwise/accuracy"]["difference"] == pytest.approx(
        paired["pairwise/accuracy"]["difference"]
    )
    assert np.isfinite(paired["pairwise/f1"]["difference"])
