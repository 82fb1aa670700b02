"""A requested verdict constraint that the teacher's engine cannot apply is said, not dropped."""

from __future__ import annotations

from themis.config import JudgmentsConfig, OpenAIEngineConfig, TransformersEngineConfig
from themis.stages.judgments import constraint_not_applied


def _engines(**openai) -> dict:
    return {
        "http": OpenAIEngineConfig(base_url="http://127.0.0.1:9/v1", model="m", **openai),
        "local": TransformersEngineConfig(model="builtin:smollm2-135m-instruct"),
    }


def test_constraint_not_applied_names_a_plain_openai_teacher() -> None:
    notes = constraint_not_applied(JudgmentsConfig(engine="http", constrain_format=True), _engines())
    assert list(notes) == ["http"] and "server: vllm" in notes["http"]


def test_constraint_applied_by_a_vllm_server_or_a_local_engine_or_not_asked() -> None:
    assert constraint_not_applied(JudgmentsConfig(engine="http"), _engines(server="vllm")) == {}
    assert constraint_not_applied(JudgmentsConfig(engine="local"), _engines()) == {}
    assert constraint_not_applied(JudgmentsConfig(engine="http", constrain_format=False), _engines()) == {}
