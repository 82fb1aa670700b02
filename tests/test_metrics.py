"""Agreement metrics: hand-checked values, and the batched forms against scikit-learn and scipy."""

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score

from themis.evaluation import metrics as m


def test_agr_2_2_hand_checked() -> None:
    # gaps 0, 1, 2, 1 -> 1, 1/4, 0, 1/4 -> mean 1.5/4
    assert m.agreement([3, 4, 5, 2], [3, 3, 3, 3], 2, 2) == pytest.approx(0.375)
    assert m.agreement([3, 4, 5, 2], [3, 3, 3, 3], 1, 0) == pytest.approx(0.25)  # Agr(1, q) = exact accuracy
    # Agr(3, 1): gaps 0, 1, 2, 1 -> 1, 1/2, 1/3, 1/2
    assert m.agreement([3, 4, 5, 2], [3, 3, 3, 3], 3, 1) == pytest.approx((1 + 0.5 + 1 / 3 + 0.5) / 4)


def test_mae_accuracy_and_consistency() -> None:
    assert m.mae([1, 2, 5], [1, 3, 3]) == pytest.approx(1.0)
    assert m.accuracy(["A", "B", "tie"], ["A", "A", "tie"]) == pytest.approx(2 / 3)
    # ab says A; ba (swapped) says B -> same response: consistent. Second pair flips: inconsistent.
    assert m.dual_order_consistency(["A", "A", "tie"], ["B", "A", "tie"]) == pytest.approx(2 / 3)
    # correct in both orders: only the first pair (gold A: ab A, ba B).
    assert m.correct_both_orders(["A", "A", "tie"], ["B", "A", "tie"], ["A", "A", "B"]) == pytest.approx(1 / 3)


def test_unparsable_is_always_wrong_and_never_consistent() -> None:
    assert m.accuracy([m.UNPARSABLE, "A"], ["A", "A"]) == 0.5
    assert m.dual_order_consistency([m.UNPARSABLE], [m.UNPARSABLE]) == 0.0
    assert m.winner_metrics([m.UNPARSABLE, "A", "B"], ["A", "A", "B"])["accuracy"] == pytest.approx(2 / 3)


def test_position_rates() -> None:
    rates = m.position_rates(["A", "A", "B", "tie", m.UNPARSABLE])
    assert rates == {"prefer_first": 0.5, "prefer_second": 0.25, "tie_rate": 0.25}


def test_correlations_are_none_when_undefined() -> None:
    assert m.correlation([3, 3, 3], [1, 2, 3], "pearson") is None
    assert m.correlation([1, 2, 3], [1, 2, 3], "kendall") == pytest.approx(1.0)
    assert m.weighted_kappa([4, 4], [4, 4]) is None


def test_batched_winner_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    gold = rng.choice(["tie", "A", "B"], size=(5, 200), p=[0.2, 0.4, 0.4])
    pred = rng.choice(["tie", "A", "B", m.UNPARSABLE], size=(5, 200), p=[0.1, 0.4, 0.4, 0.1])
    for g, p in zip(gold, pred):
        for classes in m.MACRO_CLASSES:
            confusion = m.winner_confusions(m.winner_codes(p), m.winner_codes(g))
            batched = m.batched_winner_metrics(confusion, m.confusion_labels(confusion[0], classes))
            exact = m.winner_metrics(list(p), list(g), classes)
            for key, value in exact.items():
                assert batched[key][0] == pytest.approx(value), (classes, key)


def test_macro_scores_of_a_perfect_judge_are_one_with_or_without_ties() -> None:
    for gold in (["A", "B", "B", "A"], ["A", "tie", "B", "A"]):
        plain = m.winner_metrics(gold, gold)
        confusion = m.winner_confusions(m.winner_codes(gold), m.winner_codes(gold))
        batched = m.batched_winner_metrics(confusion, m.confusion_labels(confusion[0], "occurring"))
        assert all(plain[k] == 1.0 and batched[k][0] == 1.0 for k in ("accuracy", "precision", "recall", "f1"))
    # Averaged over all three classes, the unused tie class costs a third.
    assert m.winner_metrics(["A", "B"], ["A", "B"], "all")["f1"] == pytest.approx(2 / 3)
    assert m.macro_labels(m.winner_codes(["A", "A"]), m.winner_codes(["A", "tie"]), "occurring") == [0, 1]


def test_winner_confusions_count_codes_per_row() -> None:
    gold = m.winner_codes(["A", "B", "tie"])
    pred = m.winner_codes([["A", "B", "tie"], ["B", m.UNPARSABLE, "tie"]])
    confusion = m.winner_confusions(pred, gold)
    assert confusion.shape == (2, 3, 4) and np.trace(confusion[0]) == 3
    assert confusion[1].tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_batched_score_metrics_match_scipy_and_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        gold = rng.integers(1, 6, size=60)
        pred = np.clip(gold + rng.integers(-2, 3, size=60), 1, 5)
        batched = {k: v[0] for k, v in m.batched_score_metrics(pred[None, :], gold[None, :], 2, 2).items()}
        assert batched["mae"] == pytest.approx(m.mae(pred, gold))
        assert batched["agr"] == pytest.approx(m.agreement(pred, gold, 2, 2))
        assert batched["pearson"] == pytest.approx(sps.pearsonr(pred, gold).statistic)
        assert batched["spearman"] == pytest.approx(sps.spearmanr(pred, gold).statistic)
        qwk = cohen_kappa_score(gold, pred, labels=[1, 2, 3, 4, 5], weights="quadratic")
        assert batched["qwk"] == pytest.approx(qwk)


def test_annotator_agreement_has_every_pair() -> None:
    votes = [("A", "A", "B"), ("B", "B", "B"), ("tie", "A", "tie"), ("A", "A", "A")]
    out = m.annotator_agreement(votes, "pairwise")
    assert set(out) == {"kappa_1_2", "kappa_1_3", "kappa_2_3", "mean"}
    assert out["kappa_1_2"] == pytest.approx(cohen_kappa_score(["A", "B", "tie", "A"], ["A", "B", "A", "A"]))


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="length"):
        m.mae([1], [1, 2])
    with pytest.raises(ValueError, match="no items"):
        m.accuracy([], [])
