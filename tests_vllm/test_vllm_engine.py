"""SmolLM2 through ``VLLMEngine`` on CPU: forced verdicts always parse, sampling is per request,
a bad request fails alone."""

from __future__ import annotations

import pytest

from themis.config import Sampling
from themis.engines import GenerationRequest
from themis.judge.call import (
    classifier_request,
    judge_request,
    pairwise_calls,
    parse_classification,
    parse_verdict,
    single_call,
)

QUESTION = "What is the capital of France?"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _calls():
    return [
        single_call("close_qa", QUESTION, "Paris is the capital of France."),
        single_call("close_qa", QUESTION, "Berlin.", reference="Paris."),
        *pairwise_calls("close_qa", QUESTION, "Paris.", "Berlin."),
        *pairwise_calls("open_qa", "Why is the sky blue?", "Rayleigh scattering of sunlight.", "It just is."),
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forced_verdicts_always_parse(vllm_engine, temperature: float) -> None:
    calls = _calls()
    sampling = Sampling(max_tokens=16, temperature=temperature)
    requests = [judge_request(c, sampling, constrain=True, seed=i) for i, c in enumerate(calls)]
    results = vllm_engine.generate(requests)
    assert [r.error for r in results] == [None] * len(calls)
    for call, req, res in zip(calls, requests, results):
        # The reply is prefix + choice + closing + free continuation, as the transformers engine gives it.
        forced = res.text[: len(req.prefix) + 1 + len(req.closing)]
        assert forced[: len(req.prefix)] == req.prefix and forced.endswith(req.closing), res.text
        assert forced[len(req.prefix)] in req.choices
        verdict = parse_verdict(call.kind, res.text)
        assert (verdict.winner in ("A", "B", "tie")) if call.kind == "pairwise" else (1 <= verdict.score <= 5)
        assert res.prompt_tokens > 100 and 0 < res.completion_tokens <= 1 + 2 + sampling.max_tokens


def test_classifier_answer_parses(vllm_engine) -> None:
    instructions = ["Translate 'good morning' into French.", "What is 17 * 3?", "Write a haiku about rain."]
    results = vllm_engine.generate([classifier_request(i) for i in instructions])
    assert all(r.ok for r in results), [r.error for r in results]
    for res in results:
        assert parse_classification(res.text)


def test_prefix_without_choices_is_continued(vllm_engine) -> None:
    """Without choices there is one free pass, from the prompt plus the forced prefix."""
    (res,) = vllm_engine.generate([GenerationRequest(CHAT, max_tokens=8, prefix="Red, ")])
    assert res.ok and res.text.startswith("Red, ") and len(res.text) > len("Red, ")
    assert 0 < res.completion_tokens <= 8


def test_sampling_settings_differ_within_one_batch(vllm_engine) -> None:
    requests = [
        GenerationRequest(CHAT, max_tokens=4),
        GenerationRequest(CHAT, max_tokens=24),
        GenerationRequest(CHAT, max_tokens=24, temperature=1.5, seed=7),
        GenerationRequest(CHAT, max_tokens=24, temperature=1.5, seed=7),
        GenerationRequest(CHAT, max_tokens=24, temperature=1.5, seed=8),
        GenerationRequest(CHAT, max_tokens=24, temperature=1.5, seed=9),
    ]
    short, long, hot7, hot7_again, hot8, hot9 = vllm_engine.generate(requests)
    assert all(r.ok for r in (short, long, hot7, hot7_again, hot8, hot9))
    assert short.completion_tokens == 4 and long.completion_tokens > 4
    assert long.text.startswith(short.text)  # greedy: the longer budget only continues
    assert hot7.text == hot7_again.text  # same seed, same sample
    assert len({hot7.text, hot8.text, hot9.text, long.text}) > 1  # temperature and seed are honoured


def test_overlong_prompt_fails_alone(vllm_engine) -> None:
    from tests_vllm.conftest import MAX_MODEL_LEN

    too_long = [{"role": "user", "content": "word " * (MAX_MODEL_LEN + 50)}]
    requests = [
        GenerationRequest(CHAT, max_tokens=4),
        GenerationRequest(too_long, max_tokens=4),
        judge_request(_calls()[2], Sampling(max_tokens=4)),
        judge_request(single_call("close_qa", "word " * MAX_MODEL_LEN, "Paris."), Sampling(max_tokens=4)),
    ]
    ok, bad, forced, bad_forced = vllm_engine.generate(requests)
    assert ok.ok and forced.ok and parse_verdict("pairwise", forced.text).winner
    for res in (bad, bad_forced):
        assert not res.ok and "prompt too long" in res.error and res.text == ""


def test_a_request_vllm_rejects_fails_alone(vllm_engine, monkeypatch) -> None:
    """A request that passes our checks but that vLLM refuses (here: past the context by a
    hair, with the check switched off) gets the error; the batch's other rows still run."""
    monkeypatch.setattr(vllm_engine, "max_model_len", 10**6)
    too_long = [{"role": "user", "content": "word " * (vllm_engine.llm.llm_engine.model_config.max_model_len + 50)}]
    ok, bad, ok_too = vllm_engine.generate(
        [GenerationRequest(CHAT, max_tokens=4), GenerationRequest(too_long, max_tokens=4), GenerationRequest(CHAT)]
    )
    assert ok.ok and ok_too.ok
    assert not bad.ok and bad.error
