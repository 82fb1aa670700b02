"""Other score scales (0-1, 1-3, 1-10) end to end: conversion, prompt, parser, forced verdicts on a
local engine, evaluation metrics and the served judge."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from themis.config import Sampling
from themis.engines.base import GenerationRequest
from themis.judge.call import JudgeCall, judge_request, parse_verdict, render_call
from themis.judge.parsing import ParseError, parse_score
from themis.judge.prompts import SCORE_OPENING
from themis.judge.scales import SCALES, convert_score, get_scale

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


@pytest.mark.parametrize("scale", ["1-5", "1-10"])
def test_scale_forced_verdicts_go_on_from_the_prompt_cache_exactly_as_without_it(hf_engine, monkeypatch, scale) -> None:
    # generate() continues from the forcing pass's key-value cache (the prompt encoded once); the
    # text must be what a fresh encoding of prompt + verdict gives, padding included.
    reqs = [replace(r, max_tokens=8) for r in _requests(scale, n=4)]
    with_cache = hf_engine.generate(reqs)
    force = hf_engine._force_verdict
    monkeypatch.setattr(hf_engine, "_force_verdict", lambda *a: (*force(*a)[:4], None))
    without = hf_engine.generate(reqs)
    assert [r.text for r in with_cache] == [r.text for r in without]
    assert all(r.ok for r in with_cache)


def test_scale_choices_that_cannot_be_told_apart_fail_the_rows_with_a_reason(hf_engine) -> None:
    req = replace(_requests("1-5", n=1)[0], choices=("1", "1"))
    (res,) = hf_engine.generate([req])
    assert not res.ok and "distinct" in res.error


# --- evaluation: items on their own scale, aggregates normalised ----------------------------------

# (scale, human, judge): gaps 1 (of 4), 0, 1 (of 1), 2 (of 9)
MIXED = [("1-5", 4, 5), ("1-10", 10, 10), ("0-1", 1, 0), ("1-10", 2, 4)]


def _scored(rows: list[tuple[str, int, int]]) -> tuple[list, list]:
    from themis.evaluation.benchmarks import PointwiseItem
    from themis.evaluation.judges import Prediction

    items = [
        PointwiseItem(f"i{k}", "q", "r", "open_qa", (human,), scale=None if scale == "1-5" else scale)
        for k, (scale, human, _) in enumerate(rows)
    ]
    preds = [Prediction(i.item_id, "", False, score=judge) for i, (_, _, judge) in zip(items, rows)]
    return items, preds


def _settings():
    from themis.evaluation.report import Settings

    return Settings(resamples=40)


def test_scale_mixed_report_has_normalised_mae_and_agr_on_each_items_scale() -> None:
    from themis.evaluation.report import build_report

    items, preds = _scored(MIXED * 3)
    section = build_report(items, preds, _settings())["pointwise"]
    values = {k: cell["value"] for k, cell in section["metrics"].items()}
    assert values["mae"] == pytest.approx((0.25 + 0 + 1 + 2 / 9) / 4)
    assert values["agr"] == pytest.approx((0.25 + 1 + 0.25 + 0) / 4)
    assert values["exact"] == pytest.approx(0.25) and "qwk" not in values
    assert section["scales"] == {"1-5": 3, "1-10": 6, "0-1": 3}
    assert "normalised scores (0-1)" in section["across_scales"]
    by_scale = section["by_scale"]
    assert list(by_scale) == ["1-5", "0-1", "1-10"]
    assert by_scale["1-10"]["n"] == 6 and by_scale["1-10"]["metrics"]["mae"] == pytest.approx(1.0)  # own units
    assert by_scale["1-10"]["confusion"]["labels"] == list(range(1, 11))
    assert by_scale["0-1"]["distribution"] == {"judge": {"0": 3, "1": 0}, "human": {"0": 0, "1": 3}}
    assert section["normalised"]["mae"] is not None and section["chance"]["mae"] <= 1


def test_scale_single_other_scale_reports_on_its_own_units() -> None:
    from themis.evaluation.report import build_report

    items, preds = _scored([("1-10", 2, 4), ("1-10", 9, 9), ("1-10", 5, 6), ("1-10", 1, 1)])
    section = build_report(items, preds, _settings())["pointwise"]
    assert section["metrics"]["mae"]["value"] == pytest.approx(0.75)  # (2 + 0 + 1 + 0) / 4, not normalised
    assert section["metrics"]["agr"]["value"] == pytest.approx((0 + 1 + 0.25 + 1) / 4)
    assert section["confusion"]["labels"] == list(range(1, 11)) and "by_scale" not in section
    assert section["scales"] == {"1-10": 4} and section["metrics"]["qwk"]["value"] is not None


def test_scale_default_data_is_reported_as_before() -> None:
    from themis.evaluation import metrics as m
    from themis.evaluation.report import build_report

    rows = [("1-5", h, j) for h, j in [(1, 2), (3, 3), (5, 4), (2, 2), (4, 1)]]
    items, preds = _scored(rows)
    section = build_report(items, preds, _settings())["pointwise"]
    expected = m.score_metrics([j for *_, j in rows], [h for _, h, _ in rows])
    assert (
        section["metrics"]["mae"]["value"] == expected["mae"] and section["metrics"]["qwk"]["value"] == expected["qwk"]
    )
    assert section["scales"] == {"1-5": 5} and "by_scale" not in section and "across_scales" not in section
    assert section["confusion"]["labels"] == [1, 2, 3, 4, 5]


def test_scale_mixed_report_renders_and_plots_per_scale() -> None:
    from themis.evaluation import markdown, plots
    from themis.evaluation.report import build_report

    items, preds = _scored(MIXED * 2)
    report = build_report(items, preds, _settings())
    lines = markdown._family("pointwise", report["pointwise"])
    assert any(line.startswith("scales: 1-5 (2 items), 1-10 (4 items), 0-1 (2 items)") for line in lines)
    assert any(line.startswith("| 1-10 | 4 |") for line in lines)
    pngs = plots.render_plots(report)
    assert {"pointwise_1-10_confusion", "pointwise_0-1_distribution", "pointwise_groups"} <= set(pngs)


def test_scale_paired_comparison_over_mixed_scales() -> None:
    from themis.evaluation.paired import paired_differences, scored_units

    items, good = _scored(MIXED * 3)
    _, bad = _scored([(s, h, h) for s, h, _ in MIXED] * 3)  # the perfect judge
    units_a, units_b = scored_units(items, good, _settings()), scored_units(items, bad, _settings())
    assert units_a["features"][1] == [10.0, 10.0, 1.0, 10.0] and units_a["features"][0] == [5.0, 4.0]
    diff = paired_differences(units_a, units_b, _settings())
    assert diff["pointwise/mae"]["difference"] == pytest.approx((0.25 + 0 + 1 + 2 / 9) / 4)
    assert diff["pointwise/agr"]["difference"] == pytest.approx(0.375 - 1)


def test_scale_column_in_a_labelled_file(tmp_path: Path) -> None:
    import json

    from themis.evaluation import benchmarks

    rows = [
        {"instruction": "q", "response": "r", "scenario": "open_qa", "human": 10, "scale": "1-10"},
        {"instruction": "q", "response": "r", "scenario": "open_qa", "human": 0, "scale": "0-1"},
        {"instruction": "q", "response": "r", "scenario": "open_qa", "human": 4, "scale": "1-5"},
        {"instruction": "q", "response": "r", "scenario": "open_qa", "human": 4},
        {"instruction": "q", "response": "r", "scenario": "open_qa", "human": 4, "scale": "1-7"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    loaded = benchmarks.load_file(path, "pointwise")
    assert [(i.scale, i.human_score) for i in loaded.items] == [("1-10", 10), ("0-1", 0), (None, 4), (None, 4)]
    assert len(loaded.rejects) == 1 and "unknown scale '1-7'" in loaded.rejects[0].reason
    path.write_text(json.dumps(rows[0] | {"human": 11}))
    with pytest.raises(benchmarks.BenchmarkError, match="integer 1-10"):
        benchmarks.load_file(path, "pointwise")
    with pytest.raises(benchmarks.BenchmarkError, match="no score scale"):
        benchmarks.load_file(path, "pairwise", columns={"scale": "scale"})


def test_scale_engine_judge_asks_for_and_parses_the_items_scale() -> None:
    from themis.engines.base import GenerationResult
    from themis.evaluation.judges import item_calls, parse_call

    items, _ = _scored([("1-10", 7, 0), ("1-5", 3, 0)])
    calls = item_calls(items, both_orders=True, reference_modes=(True,))
    assert [c.call.scale for c in calls] == ["1-10", None]
    assert "with N from 1 to 10" in render_call(calls[0].call).messages[-1]["content"]
    ten = parse_call(calls[0], GenerationResult(text=f"{SCORE_OPENING}10]] fine"))
    assert ten.score == 10 and ten.error is None
    off = parse_call(calls[1], GenerationResult(text=f"{SCORE_OPENING}10]] fine"))
    assert off.score is None and "out of range 1-5" in off.error


def test_scale_recorded_score_off_the_items_scale_is_an_error() -> None:
    from themis.evaluation.judges import _recorded

    items, _ = _scored([("0-1", 1, 0), ("1-10", 7, 0)])
    assert _recorded(items[0], "", "3", {"3": "3"}).error == "recorded score '3' is off the item's scale 0-1"
    assert _recorded(items[1], "", "9", {"9": "9"}).score == 9


# --- the served judge: scale in /v1/judge -------------------------------------------------------


def _serve(body: dict) -> dict:
    """What the deployment does for one /v1/judge body (``serving.JudgeServer._judge_one`` with a
    given scenario), on the fake judge engine, without Ray."""
    from tests.fakes.judge_engine import FakeJudgeEngine
    from themis.serving.api import check_judge_request, judge_call, judge_response
    from themis.serving.models import JudgeRequest

    req = JudgeRequest.model_validate(body)
    kind = check_judge_request(req)
    call = judge_call(req, kind, req.scenario)
    (result,) = FakeJudgeEngine().generate([judge_request(call, Sampling(max_tokens=8))])
    return judge_response(kind, req.scenario, "given", result, call.scale).model_dump()


@pytest.mark.parametrize("scale", OTHER_SCALES)
def test_scale_served_judge_asks_parses_and_echoes_the_scale(scale: str) -> None:
    out = _serve({"instruction": Q, "response": "Paris.", "scenario": "close_qa", "scale": scale})
    # the fake engine takes the last allowed choice: the scale's top, "10" on 1-10
    assert (out["score"], out["scale"], out["parsed"]) == (get_scale(scale).high, scale, True)


def test_scale_served_judge_defaults_to_1_5_and_refuses_scales_it_does_not_know() -> None:
    from pydantic import ValidationError

    out = _serve({"instruction": Q, "response": "Paris.", "reference": "Paris.", "scenario": "close_qa"})
    assert (out["kind"], out["score"], out["scale"]) == ("reference", 5, "1-5")
    with pytest.raises(ValidationError, match="'1-5', '0-1', '1-3' or '1-10'"):
        _serve({"instruction": Q, "response": "Paris.", "scenario": "close_qa", "scale": "1-100"})
    with pytest.raises(ValidationError, match="no score scale"):
        _serve({"instruction": Q, "response_a": "a", "response_b": "b", "scenario": "open_qa", "scale": "1-3"})
