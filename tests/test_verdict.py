"""The one verdict record, the one way from an engine result to it, and the one vocabulary."""

from __future__ import annotations

import pytest

from themis.engines.base import GenerationResult
from themis.evaluation import metrics
from themis.evaluation.judges import Prediction
from themis.judge.call import read_verdict
from themis.judge.parsing import parse_pairwise
from themis.judge.prompts import PAIR_CHOICES, PAIR_OPENING, render_pair_verdict
from themis.judge.verdict import (
    KINDS,
    POINTWISE_KINDS,
    PROMPT_LETTERS,
    WINNERS,
    Verdict,
    engine_error_reason,
    family_of,
    unparsable_reason,
)


def test_a_score_and_its_rationale_are_read_with_the_output() -> None:
    verdict = read_verdict("single", GenerationResult(text="Overall rating: [[4]]. Clear and right."))
    assert (verdict.score, verdict.winner, verdict.rationale, verdict.error) == (4, None, "Clear and right.", None)
    assert verdict.parsed and verdict.output == "Overall rating: [[4]]. Clear and right."


def test_a_winner_is_read_in_the_data_vocabulary_not_the_prompts_letter() -> None:
    verdict = read_verdict("pairwise", GenerationResult(text="Verdict: [[C]] Both are fine."))
    assert (verdict.winner, verdict.score, verdict.parsed) == ("tie", None, True)
    assert read_verdict("pairwise", GenerationResult(text="Verdict: [[tie]]")).winner == "tie"


def test_the_score_is_read_on_the_calls_scale() -> None:
    result = GenerationResult(text="Overall rating: [[9]]")
    assert read_verdict("reference", result, "1-10").score == 9
    off = read_verdict("reference", result)  # 1-5 by default
    assert not off.parsed and off.error == "unparsable: rating out of range 1-5: 9"


@pytest.mark.parametrize(
    ("kind", "result", "reason"),
    [
        ("single", GenerationResult(error="CUDA out of memory"), "engine error: CUDA out of memory"),
        ("pairwise", GenerationResult(text="partial", error="deadline"), "engine error: deadline"),
        ("single", GenerationResult(text=""), "unparsable: empty output"),
        ("single", GenerationResult(text="   \n"), "unparsable: empty output"),
        ("single", GenerationResult(text="It is quite good."), "unparsable: no rating found"),
        ("single", GenerationResult(text="Rating: [[great]]"), "unparsable: rating is not a number: 'great'"),
        ("pairwise", GenerationResult(text="I prefer the first."), "unparsable: no verdict found"),
        ("pairwise", GenerationResult(text="Verdict: [[D]]"), "unparsable: verdict is not A, B or C: 'D'"),
    ],
)
def test_bad_engine_results_become_a_verdict_with_a_clear_reason(kind, result, reason) -> None:
    verdict = read_verdict(kind, result)
    assert not verdict.parsed and verdict.score is None and verdict.winner is None
    assert verdict.error == reason and verdict.output == result.text


def test_the_reject_reasons_are_one_set() -> None:
    assert engine_error_reason("boom") == "engine error: boom"
    assert unparsable_reason("no rating found") == "unparsable: no rating found"


def test_a_verdict_is_a_score_or_a_known_winner_and_never_both_or_with_an_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        Verdict(score=3, winner="A")
    with pytest.raises(ValueError, match="winner must be one of A, B, tie"):
        Verdict(winner="C")  # the prompt's letter for a tie is not a winner
    with pytest.raises(ValueError, match="has no error"):
        Verdict(score=3, error="engine error: x")
    assert not Verdict(error="engine error: x").parsed


def test_equality_is_the_decision_and_its_output_not_the_rationale_cut_from_it() -> None:
    assert Verdict(score=3, output="[[3]] ok", rationale="ok") == Verdict(score=3, output="[[3]] ok")
    assert Verdict(score=3, output="[[3]] ok") != Verdict(score=4, output="[[3]] ok")


def test_a_prediction_is_a_verdict_placed_on_an_item() -> None:
    verdict = read_verdict("pairwise", GenerationResult(text="Verdict: [[B]] because"))
    prediction = Prediction.of("x", "ba", True, verdict)
    assert (prediction.item_id, prediction.order, prediction.with_reference) == ("x", "ba", True)
    assert prediction.verdict == verdict and prediction.parsed
    with pytest.raises(ValueError, match="winner must be one of"):
        Prediction("x", "ab", False, winner="C")


def test_one_winner_vocabulary_and_the_prompt_letters_map_both_ways() -> None:
    assert WINNERS == ("A", "B", "tie")
    assert PAIR_CHOICES == tuple(PROMPT_LETTERS[w] for w in WINNERS) == ("A", "B", "C")
    for winner in WINNERS:
        assert parse_pairwise(render_pair_verdict(winner)).winner == winner
    assert render_pair_verdict("tie") == f"{PAIR_OPENING}C]]"
    with pytest.raises(ValueError, match="winner must be one of"):
        render_pair_verdict("C")


def test_metrics_codes_come_from_the_one_vocabulary() -> None:
    assert set(metrics.CODED_WINNERS) == set(WINNERS)
    assert [metrics.CODES[w] for w in metrics.CODED_WINNERS] == [0, 1, 2]
    assert metrics.CODES[metrics.UNPARSABLE] == 3


def test_kinds_fall_in_two_families() -> None:
    assert [family_of(k) for k in KINDS] == ["pointwise", "pointwise", "pairwise"]
    assert POINTWISE_KINDS == ("single", "reference")
    with pytest.raises(ValueError, match="unknown judgment kind"):
        family_of("score")


@pytest.mark.parametrize(
    "result",
    [GenerationResult(error="CUDA out of memory"), GenerationResult(text="It is fine."), GenerationResult(text="")],
)
def test_the_stage_evaluation_and_endpoint_give_one_reason_for_one_bad_result(result) -> None:
    from themis.evaluation.judges import ItemCall, parse_call
    from themis.judge.call import single_call
    from themis.serving.api import judge_response
    from themis.stages.judgments import REJECT_SCHEMA, parse_judgment

    expected = read_verdict("single", result).error
    planned = {name: None for name in REJECT_SCHEMA.names} | {"kind": "single", "sample": 0}
    row = parse_judgment(planned | {"output": result.text, "error": result.error})
    prediction = parse_call(ItemCall("i", False, single_call("close_qa", "q", "r")), result)
    answer = judge_response("single", "close_qa", "given", result)
    assert row["reason"] == prediction.error == answer.error == expected
    assert (row["score"], row["rationale"], prediction.score, answer.score, answer.parsed) == (None,) * 4 + (False,)


def test_a_parsed_judgment_row_holds_the_verdicts_fields() -> None:
    from themis.stages.judgments import REJECT_SCHEMA, parse_judgment

    planned = {name: None for name in REJECT_SCHEMA.names} | {"kind": "pairwise", "order": "ba", "sample": 0}
    row = parse_judgment(planned | {"output": "Verdict: [[C]] Equal.", "error": None})
    assert (row["winner"], row["score"], row["rationale"], row["reason"]) == ("tie", None, "Equal.", None)
