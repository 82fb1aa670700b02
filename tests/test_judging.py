"""The one judging core: calls, prompts by kind, engine requests, parsing by kind, the flip."""

from __future__ import annotations

import pytest

from themis.config import Sampling
from themis.judge.call import (
    CLASSIFIER_SAMPLING,
    JudgeCall,
    Verdict,
    classifier_request,
    flip_winner,
    judge_request,
    pairwise_calls,
    parse_classification,
    parse_verdict,
    prompt_request,
    render_call,
    single_call,
    winner_in_ab_order,
)
from themis.judge.parsing import ParseError
from themis.judge.prompts import PAIR_OPENING, SCENARIO_OPENING, SCORE_CHOICES, SCORE_OPENING
from themis.judge.scenarios import load_scenarios

Q = "What is the capital of France?"
SAMPLING = Sampling(max_tokens=9, temperature=0.3, top_p=0.8)


def _user(call: JudgeCall) -> str:
    return render_call(call).messages[-1]["content"]


def test_single_and_reference_calls_by_whether_a_reference_is_given() -> None:
    single = single_call("close_qa", Q, "Paris.")
    assert (single.kind, single.responses, single.reference, single.order) == ("single", ("Paris.",), None, "")
    assert single_call("close_qa", Q, "Paris.", reference="").kind == "single"  # empty = none
    ref = single_call("close_qa", Q, "Lyon.", reference="Paris.")
    assert (ref.kind, ref.reference) == ("reference", "Paris.")


def test_prompts_render_by_kind() -> None:
    single = render_call(single_call("close_qa", Q, "Paris."))
    assert (single.opening, single.choices) == (SCORE_OPENING, SCORE_CHOICES)
    assert Q in single.messages[-1]["content"] and "[Reference Answer]" not in single.messages[-1]["content"]
    ref = _user(single_call("close_qa", Q, "Lyon.", reference="Paris."))
    assert "[Reference Answer]\nParis." in ref and "[Response]\nLyon." in ref
    pair = render_call(pairwise_calls("open_qa", Q, "Paris.", "Lyon.")[0])
    assert (pair.opening, pair.choices) == (PAIR_OPENING, ("A", "B", "C"))
    assert "[Response A]\nParis." in pair.messages[-1]["content"]


def test_pairs_come_in_both_orders_with_the_responses_swapped() -> None:
    ab, ba = pairwise_calls("open_qa", Q, "Paris.", "Lyon.", reference="Paris.")
    assert (ab.order, ab.responses) == ("ab", ("Paris.", "Lyon."))
    assert (ba.order, ba.responses, ba.reference) == ("ba", ("Lyon.", "Paris."), "Paris.")
    assert "[Response A]\nLyon.\n***\n[Response B]\nParis." in _user(ba)
    assert ba.swapped() == ab
    assert pairwise_calls("open_qa", Q, "a", "b", both_orders=False) == [
        JudgeCall("pairwise", "open_qa", Q, ("a", "b"), None, "ab")
    ]


def test_requests_force_the_verdict_sentence_only_when_constrained() -> None:
    call = single_call("close_qa", Q, "Paris.")
    forced = judge_request(call, SAMPLING, seed=7)
    assert (forced.prefix, forced.choices, forced.closing) == (SCORE_OPENING, SCORE_CHOICES, "]]")
    assert (forced.max_tokens, forced.temperature, forced.top_p, forced.seed) == (9, 0.3, 0.8, 7)
    assert forced.messages == render_call(call).messages
    free = judge_request(call, SAMPLING, constrain=False)
    assert (free.prefix, free.choices, free.closing, free.seed) == ("", (), "", None)
    assert prompt_request(render_call(call), SAMPLING) == judge_request(call, SAMPLING)


@pytest.mark.parametrize(
    ("kind", "text", "verdict"),
    [
        ("single", "Overall rating: [[4]]\nStrengths: clear", Verdict(score=4, rationale="Strengths: clear")),
        ("reference", "Overall rating: [[2]", Verdict(score=2)),
        ("pairwise", "Verdict: [[B]] B is right.", Verdict(winner="B", rationale="B is right.")),
        ("pairwise", "Verdict: [[C]]", Verdict(winner="tie")),
    ],
)
def test_outputs_parse_by_kind(kind, text: str, verdict: Verdict) -> None:
    assert parse_verdict(kind, text) == verdict


@pytest.mark.parametrize(
    ("kind", "text", "reason"),
    [
        ("single", "Verdict: [[A]]", "not a number"),  # a pairwise answer to a score question
        ("pairwise", "Overall rating: [[4]]", "not A, B or C"),
        ("reference", "", "empty output"),
    ],
)
def test_unparsable_outputs_raise_with_the_reason(kind, text: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_verdict(kind, text)


def test_flip_and_ab_order() -> None:
    assert [flip_winner(w) for w in ("A", "B", "tie")] == ["B", "A", "tie"]
    with pytest.raises(ValueError, match="winner must be one of"):
        flip_winner("C")
    assert winner_in_ab_order("A", "ab") == "A" and winner_in_ab_order("A", "ba") == "B"
    assert winner_in_ab_order("tie", "ba") == "tie"


def test_classifier_has_one_request_and_one_parser() -> None:
    req = classifier_request(Q, seed=3)
    ids = list(load_scenarios())
    assert (req.prefix, req.closing, req.seed) == (SCENARIO_OPENING, "]]", 3)
    assert len(req.choices) == len(ids) and Q in req.messages[-1]["content"]
    assert (req.max_tokens, req.temperature) == (CLASSIFIER_SAMPLING.max_tokens, CLASSIFIER_SAMPLING.temperature)
    assert parse_classification(f"{SCENARIO_OPENING}C]]") == ids[2]
    with pytest.raises(ParseError):
        parse_classification("no idea")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "triple", "responses": ("a",)}, "unknown judgment kind"),
        ({"kind": "single", "responses": ("a", "b")}, "shows 1 response"),
        ({"kind": "pairwise", "responses": ("a",), "order": "ab"}, "shows 2 response"),
        ({"kind": "reference", "responses": ("a",)}, "needs a non-empty reference"),
        ({"kind": "single", "responses": ("a",), "reference": "r"}, "shows no reference"),
        ({"kind": "pairwise", "responses": ("a", "b")}, "does not fit kind"),
        ({"kind": "single", "responses": ("a",), "order": "ab"}, "does not fit kind"),
    ],
)
def test_invalid_calls_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JudgeCall(scenario="open_qa", instruction=Q, **fields)


def test_only_pairs_can_be_swapped() -> None:
    with pytest.raises(ValueError, match="only a pairwise call"):
        single_call("open_qa", Q, "a").swapped()
