"""An engine judge end to end: the evaluate stage calls a real local OpenAI-compatible server through
Ray Data, in both pair orders and with and without references, and every call is accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from themis import runner
from themis.config import load_config

pytestmark = pytest.mark.integration
TINY = Path(__file__).parents[1] / "jobs" / "configs" / "tiny.yaml"


def biased_judge(body: dict) -> str:
    """Always prefers the first response; grades 5 with a reference and 3 without; garbles row X."""
    prompt = body["messages"][-1]["content"]
    if "Unanswerable X" in prompt:
        return "I cannot decide."
    if "[Response A]" in prompt:
        return "Verdict: [[A]] the first one reads better."
    return "Overall rating: [[5]] fine." if "[Reference Answer]" in prompt else "Overall rating: [[3]] fine."


def write_sets(tmp_path: Path) -> tuple[Path, Path]:
    point = tmp_path / "points.jsonl"
    rows = [
        {
            "instruction": f"What is {k} + {k}?",
            "response": str(2 * k),
            "scenario": "math_qa",
            "reference": str(2 * k),
            "human": 5,
        }
        for k in range(6)
    ]
    rows += [{"instruction": "Unanswerable X", "response": "?", "scenario": "open_qa", "human": 2}]
    point.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {
                    "instruction": f"Say hi {k}",
                    "response_a": "hi",
                    "response_b": "hello",
                    "scenario": "open_qa",
                    "human": ["A", "A", "B"],
                }
            )
            for k in range(5)
        )
        + "\n"
    )
    return point, pairs


def test_endpoint_judge_reference_effect_and_position_bias(ray_local, tmp_path: Path) -> None:
    point, pairs = write_sets(tmp_path)
    with FakeOpenAIServer(reply=biased_judge) as server:
        base = [
            f"run.storage.root={tmp_path}",
            "run.name=evalrun",
            "stages=[evaluate]",
            f"engines.api={{kind: openai, base_url: '{server.base_url}', model: fake, max_retries: 0}}",
            "evaluate.judges=[{kind: engine, name: api, engine: api}]",
            "evaluate.bootstrap.resamples=100",
        ]
        cfg = load_config(
            TINY,
            base
            + [
                "evaluate.reference_effect=true",
                f"evaluate.benchmark={{name: file, path: '{point}', kind: pointwise}}",
            ],
        )
        runner.run_stage("evaluate", cfg)
        report = json.loads((tmp_path / "evalrun/reports/evaluation/api/report.json").read_text())
        # 6 items with a reference judged twice, 1 without once: 13 calls, all accounted for.
        assert len(server.bodies) == 13
        counts = report["pointwise"]["counts"]
        assert (counts["predictions"], counts["parsed"], counts["used"]) == (7, 6, 6)
        assert report["pointwise"]["metrics"]["mae"]["value"] == 0  # scored on the reference prompt
        effect = report["reference_effect"]["math_qa/pointwise"]
        assert effect["n"] == 6 and effect["with_reference"] == 1.0 and effect["effect"] == pytest.approx(1 - 0.0)

        cfg = load_config(
            TINY, base + [f"evaluate.benchmark={{name: file, path: '{pairs}', kind: pairwise}}", "run.name=evalpairs"]
        )
        runner.run_stage("evaluate", cfg)
        pair = json.loads((tmp_path / "evalpairs/reports/evaluation/api/report.json").read_text())["pairwise"]
        assert pair["counts"]["predictions"] == 10  # 5 pairs x 2 orders
        assert pair["position"]["judge"]["prefer_first"] == 1.0
        assert pair["metrics"]["dual_order_consistency"]["value"] == 0.0
        assert pair["metrics"]["accuracy"]["value"] == 0.5
        assert pair["human_human"]["annotators"] == 3
