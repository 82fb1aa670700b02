import pytest

from themis.metrics import accuracy, agreement, dual_order_consistency, mae


def test_agr_2_2_hand_checked() -> None:
    # gaps 0, 1, 2, 1 -> 1, 1/4, 0, 1/4 -> mean 1.5/4
    assert agreement([3, 4, 5, 2], [3, 3, 3, 3], 2, 2) == pytest.approx(0.375)
    assert agreement([3, 4, 5, 2], [3, 3, 3, 3], 1, 0) == pytest.approx(0.25)  # Agr(1, q) = exact accuracy


def test_mae_accuracy_and_consistency() -> None:
    assert mae([1, 2, 5], [1, 3, 3]) == pytest.approx(1.0)
    assert accuracy(["A", "B", "tie"], ["A", "A", "tie"]) == pytest.approx(2 / 3)
    # ab says A; ba (swapped) says B -> same response: consistent. Second pair flips: inconsistent.
    assert dual_order_consistency(["A", "A", "tie"], ["B", "A", "tie"]) == pytest.approx(2 / 3)


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="length"):
        mae([1], [1, 2])
    with pytest.raises(ValueError, match="no items"):
        accuracy([], [])
