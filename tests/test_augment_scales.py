"""Other score scales (0-1, 1-3, 1-10) end to end: conversion, prompt, parser, forced verdicts on a
local engine, evaluation metrics and the served judge."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from themis.config import Sampling
from themis.engines.base import GenerationRequest
from themis.judging import JudgeCall, judge_request, parse_verdict, render_call
from themis.parsing import ParseError, parse_score
from themis.prompts import SCORE_OPENING
from themis.scales import SCALES, convert_score, get_scale

Q = "What is the capital of France?"
OTHER_SCALES = ("0-1", "1-3", "1-10")

# --- conversion: linear map 1 -> low, 5 -> high, rounded half up --------------------------------

CONVERTED = {
    "1-5": [1, 2, 3, 4, 5],
    "0-1": [0, 0, 1, 1, 1],
    "1-3": [1, 2, 2, 3, 3],
    "1-10": [1, 3, 6, 8, 10],
}


@pytest.mark.parametrize("scale", list(CONVERTED))
def test_scale_conversion_of_every_teacher_score(scale: str) -> None:
    s = get_scale(scale)
    got = [convert_score(n, scale) for n in range(1, 6)]
    assert got == CONVERTED[scale]
    exact = [s.low + (n - 1) * s.width / 4 for n in range(1, 6)]
    assert all(g - e in (0, 0.5) or abs(g - e) < 0.5 for g, e in zip(got, exact))  # half rounds up
    assert got == sorted(got) and got[0] == s.low and got[-1] == s.high


def test_scale_conversion_rejects_scores_off_the_teacher_scale() -> None:
    for bad in (0, 6, 2.5):
        with pytest.raises(ValueError, match="1-5"):
            convert_score(bad, "1-10")
    with pytest.raises(ValueError, match="known: 1-5, 0-1, 1-3, 1-10"):
        convert_score(3, "1-7")


# --- prompt text per scale -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", list(SCALES))
def test_scale_prompt_lists_one_tier_per_value_and_the_range(scale: str) -> None:
    s = get_scale(scale)
    call = JudgeCall("single", "open_qa", Q, ("Paris.",), scale=scale)
    prompt = render_call(call)
    text = prompt.messages[-1]["content"]
    block = text[text.index("[Scale Begin]") : text.index("[Scale End]")]
    lines = [line for line in block.splitlines()[1:] if line]
    assert [line.split(" = ")[0] for line in lines] == [str(v) for v in s.values]
    assert f'N]]" with N from {s.low} to {s.high}' in text and f"{s.low}-{s.high};" in text
    assert prompt.choices == s.choices and prompt.opening == SCORE_OPENING


@pytest.mark.parametrize("scale", OTHER_SCALES)
def test_scale_reference_note_uses_the_converted_anchors(scale: str) -> None:
    call = JudgeCall("reference", "math_qa", "2+2?", ("4",), reference="4", scale=scale)
    text = render_call(call).messages[-1]["content"]
    assert f"deserves {convert_score(4, scale)}, one better than the reference {convert_score(5, scale)}" in text


# --- parsing per scale ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "text", "score"),
    [
        ("1-10", "Overall rating: [[10]] Great.", 10),
        ("1-10", "Overall rating: [[1]]", 1),
        ("1-10", "Overall rating: [[ 7 ]]", 7),
        ("0-1", "Overall rating: [[0]]", 0),
        ("0-1", "Overall rating: [[1]]", 1),
        ("1-3", "Overall rating: [[3]]", 3),
    ],
)
def test_scale_scores_parse_on_their_own_scale(scale: str, text: str, score: int) -> None:
    assert parse_score(text, scale).score == score
    assert parse_verdict("single", text, scale).score == score


@pytest.mark.parametrize(
    ("scale", "text"),
    [
        ("1-10", "Overall rating: [[11]]"),
        ("1-10", "Overall rating: [[0]]"),
        ("0-1", "Overall rating: [[2]]"),
        ("1-3", "Overall rating: [[0]]"),
        ("1-3", "Overall rating: [[4]]"),
        ("1-5", "Overall rating: [[10]]"),
    ],
)
def test_scale_scores_off_the_scale_are_rejected(scale: str, text: str) -> None:
    with pytest.raises(ParseError, match="out of range"):
        parse_score(text, scale)


# --- forced verdicts on the transformers engine ---------------------------------------------------


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir: Path):
    from themis.config import TransformersEngineConfig
    from themis.engines.hf import TransformersEngine

    cfg = TransformersEngineConfig(model=str(tiny_model_dir), device="cpu", batch_size=4)
    return TransformersEngine(cfg, model_path=tiny_model_dir)


def _requests(scale: str, n: int = 3, temperature: float = 0.0) -> list[GenerationRequest]:
    """Short chats (a full judge prompt is slow on a CPU) forced into the verdict on ``scale``, one
    per prompt length so that batches pad."""
    return [
        GenerationRequest(
            [{"role": "user", "content": "Rate: Paris." + " Why?" * k}],
            max_tokens=3,
            temperature=temperature,
            seed=7,
            prefix=SCORE_OPENING,
            choices=get_scale(scale).choices,
            closing="]]",
        )
        for k in range(n)
    ]


def _bias(engine, **bonus: float):
    """A forward hook on the LM head that adds ``bonus`` to the logits of the named texts' tokens."""
    import torch

    logits_bonus = torch.zeros(engine.model.config.vocab_size)
    for text, value in bonus.items():
        (token,) = engine.tokenizer.encode(text.replace("_", ""), add_special_tokens=False)
        logits_bonus[token] = value
    return engine.model.lm_head.register_forward_hook(lambda _m, _i, out: out + logits_bonus)


def test_scale_1_10_choices_share_a_first_token_on_the_tiny_tokenizer(hf_engine) -> None:
    tok = hf_engine.tokenizer
    assert tok.encode("10", add_special_tokens=False)[0] == tok.encode("1", add_special_tokens=False)[0]


@pytest.mark.parametrize(("bonus", "expected"), [({"_1": 50.0, "_0": 40.0}, 10), ({"_1": 50.0, "]]": 40.0}, 1)])
def test_scale_1_10_forced_verdict_takes_ten_or_stops_at_one(hf_engine, bonus, expected: int) -> None:
    # the short chats, and one full judge prompt as the served and evaluated judges send it
    judged = judge_request(JudgeCall("single", "open_qa", Q, ("Paris.",), scale="1-10"), Sampling(max_tokens=2))
    hook = _bias(hf_engine, **bonus)
    try:
        results = hf_engine.generate([*_requests("1-10"), judged])
    finally:
        hook.remove()
    for res in results:
        assert res.ok, res.error
        assert res.text.startswith(f"{SCORE_OPENING}{expected}]]")
        assert parse_score(res.text, "1-10").score == expected
        # the choice's tokens and the closing count as completion tokens, plus what was generated
        assert res.completion_tokens >= len(str(expected)) + 1


@pytest.mark.parametrize("scale", list(SCALES))
def test_scale_forced_verdicts_always_parse_and_batches_match_single_rows(hf_engine, scale: str) -> None:
    reqs = _requests(scale, n=5)
    batched = hf_engine.generate(reqs)
    alone = [hf_engine.generate([r])[0] for r in reqs]
    for b, a in zip(batched, alone):
        assert b.ok and a.ok, (b.error, a.error)
        assert parse_score(b.text, scale).score == parse_score(a.text, scale).score


def test_scale_1_10_sampled_verdicts_stop_at_one_or_go_on_to_ten(hf_engine) -> None:
    # "1" is made certain at the first step; at a high temperature the second step (stop after
    # "1", or go on with "0") is then near even, so both 1 and 10 come up, and nothing else.
    import torch

    torch.manual_seed(0)
    reqs = [replace(r, seed=None) for r in _requests("1-10", n=1, temperature=50.0)] * 24
    hook = _bias(hf_engine, _1=1e4)
    try:
        scores = [parse_score(r.text, "1-10").score for r in hf_engine.generate(reqs)]
    finally:
        hook.remove()
    assert set(scores) == {1, 10}


def test_scale_choices_that_cannot_be_told_apart_fail_the_rows_with_a_reason(hf_engine) -> None:
    req = replace(_requests("1-5", n=1)[0], choices=("1", "1"))
    (res,) = hf_engine.generate([req])
    assert not res.ok and "distinct" in res.error
