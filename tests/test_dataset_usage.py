"""The dataset stage's teacher calls (criteria paraphrases) are in the manifest like any stage's:
the engine, its calls, reused calls, tokens and cost (``pytest -k paraphrase_usage``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from themis.config import PipelineConfig


@pytest.mark.integration
def test_dataset_paraphrase_usage_is_in_the_manifest(ray_local, tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer
    from tests.test_augment import fake_teacher, stage_judgments
    from themis.dataplane.tables import to_table
    from themis.runner import run_stage
    from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
    from themis.storage import RunStore

    with FakeOpenAIServer(reply=fake_teacher, usage=(11, 3)) as server:
        teacher = {
            "kind": "openai",
            "base_url": server.base_url,
            "model": "fake",
            "price_per_million_input_tokens": 2.0,
            "price_per_million_output_tokens": 10.0,
        }
        cfg = PipelineConfig.model_validate(
            {
                "run": {"name": "usage", "storage": {"root": str(tmp_path)}},
                "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
                "engines": {"teacher": teacher, "unused": teacher | {"model": "other"}},
                "judgments": {"engine": "teacher"},
                "dataset": {
                    "balance": False,
                    "validation_fraction": 0.25,
                    "augment": {"paraphrase": {"enabled": True, "variants": 2}},
                },
            }
        )
        store = RunStore(cfg.run.storage, cfg.run.name)
        store.write_table("judgments/data.parquet", to_table(stage_judgments(), JUDGMENTS_SCHEMA))
        store.record_stage("judgments", {"status": "ok"})
        first = run_stage("dataset", cfg)
        entry = store.manifest()["stages"]["dataset"]
        again = run_stage("dataset", cfg)  # a rerun reuses every call, and still says so
        rerun = store.manifest()["stages"]["dataset"]
    calls = len(server.bodies)
    assert calls == 4  # two scenarios x two variants
    cost = round((4 * 11 * 2.0 + 4 * 3 * 10.0) / 1e6, 6)
    expected = {"calls": 4, "reused": 0, "failed": 0, "prompt_tokens": 44, "completion_tokens": 12}
    expected |= {"cost_usd": cost, "paid_usd": cost}
    assert entry["details"]["usage"] == {"teacher": expected} == first.details["usage"]
    assert list(entry["config"]["engines"]) == ["teacher"]  # the engine the stage called, and only it
    assert rerun["details"]["usage"]["teacher"] == expected | {"reused": 4, "paid_usd": 0}
    assert again.counts == first.counts
