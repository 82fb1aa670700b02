"""Self-consistency of the teacher: the agreement rule, the k sampled calls per item, and the
judgments stage on local Ray with a real HTTP teacher whose verdicts depend on the sample's seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from themis.config import JudgmentsConfig
from themis.curation.filters import DISAGREE, samples_agree, self_consistent
from themis.stages.judgments import plan_judgments


def sample(i: int, kind: str = "single", score: int | None = None, winner: str | None = None, reason=None) -> dict:
    return {"sample": i, "kind": kind, "score": score, "winner": winner, "reason": reason, "judgment_id": "j"}


def test_self_consistency_rule() -> None:
    assert samples_agree("pairwise", ["A", "A", "A"], 0) and not samples_agree("pairwise", ["A", "tie"], 5)
    assert samples_agree("single", ["3", "4"], 1) and not samples_agree("single", ["3", "5"], 1)
    assert samples_agree("reference", ["2", "2"], 0)
    # Kept: the first sample with the most common verdict, carrying all k verdicts.
    kept = self_consistent([sample(2, score=4), sample(0, score=3), sample(1, score=4)], tolerance=1)
    assert (kept["sample"], kept["reason"], kept["verdicts"]) == (1, None, ["3", "4", "4"])
    # Disagreeing: rejected with the k verdicts.
    pairs = [sample(0, "pairwise", winner="A"), sample(1, "pairwise", winner="B")]
    rejected = self_consistent(pairs, tolerance=0)
    assert (rejected["reason"], rejected["verdicts"]) == (DISAGREE, ["A", "B"])
    # A sample that did not parse: the item cannot be checked, and says why.
    failed = self_consistent([sample(0, score=3), sample(1, reason="unparsable: no [[score]]")], tolerance=0)
    assert (failed["reason"], failed["verdicts"]) == ("unparsable: no [[score]]", ["3", None])


def response(k: int, instruction_id: str = "i1", scenario: str = "open_qa") -> dict[str, Any]:
    return {
        "response_id": f"{instruction_id}-r{k}",
        "instruction_id": instruction_id,
        "instruction": f"question {instruction_id}",
        "scenario": scenario,
        "passage": "",
        "reference": "",
        "model": "m",
        "k": k,
        "response": f"answer {k} to {instruction_id}",
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


def test_self_consistency_plans_k_sampled_calls_per_item() -> None:
    section = JudgmentsConfig(self_consistency={"samples": 3, "temperature": 0.9}, reference_guided=False)
    rows = plan_judgments([response(0), response(1)], None, section, seed=7)
    singles = [r for r in rows if r["kind"] == "single"]
    assert len(singles) == 2 * 3 and len([r for r in rows if r["kind"] == "pairwise"]) == 2 * 3
    first = [r for r in singles if r["judgment_id"] == singles[0]["judgment_id"]]
    assert [r["sample"] for r in first] == [0, 1, 2] and [r["request"]["seed"] for r in first] == [7, 8, 9]
    assert {r["request"]["temperature"] for r in rows} == {0.9}
    plain = plan_judgments([response(0)], None, JudgmentsConfig(reference_guided=False), seed=7)
    assert [(r["sample"], r["request"]["seed"]) for r in plain] == [(0, 7)]


def seeded_teacher(body: dict[str, Any]) -> str:
    """Verdicts that depend on the sample's seed for answers to i2 (open_qa and close_qa), not i1."""
    text = " ".join(str(m.get("content")) for m in body["messages"])
    shift = body.get("seed", 0) % 2 if "answer 0 to i2" in text or "answer 0 to i3" in text else 0
    if "Verdict: [[" in text:
        return f"Verdict: [[{'AB'[shift]}]] reasons"
    return f"Overall rating: [[{2 + 2 * shift}]] reasons"


@pytest.mark.integration
def test_self_consistency_judgments_stage_keeps_agreeing_items(ray_local, tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer
    from themis.config import PipelineConfig, StorageConfig
    from themis.dataplane.tables import to_table
    from themis.stages import judgments
    from themis.stages.responses import SCHEMA as RESPONSES
    from themis.storage import RunStore

    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    rows = [response(k, i, s) for i, s in (("i1", "open_qa"), ("i2", "open_qa"), ("i3", "math_qa")) for k in (0, 1)]
    store.write_table("responses/data.parquet", to_table(rows, RESPONSES))
    with FakeOpenAIServer(reply=seeded_teacher) as server:
        cfg = PipelineConfig.model_validate(
            {
                "engines": {"teacher": {"kind": "openai", "base_url": server.base_url, "model": "fake"}},
                "judgments": {"reference_guided": False, "self_consistency": {"samples": 3, "score_tolerance": 1}},
            }
        )
        report = judgments.run(cfg, store)
    counts, details = report.counts, report.details
    # Items: 6 single + 3 pairs x 2 orders = 12 rows; 3 samples each = 36 calls.
    assert counts["rows_in"] == 12 == counts["rows_out"] + counts["rows_rejected"]
    assert details["usage"]["teacher"]["calls"] == 36 and counts["parse_rate"] == {"pairwise": 1.0, "single": 1.0}
    sc = details["self_consistency"]
    # The first answers of i2 (open_qa) and i3 (math_qa) flip between samples: their single items
    # and both orders of their pairs disagree (scores 2 vs 4 are beyond a tolerance of 1).
    assert sc["agreement_rate"] == {"math_qa": 0.25, "open_qa": 0.625} and sc["items_checked"] == 12
    rejects = store.read_table("rejects/judgments.parquet").to_pylist()
    assert {r["reason"] for r in rejects} == {DISAGREE} and all(len(r["verdicts"]) == 3 for r in rejects)
    kept = store.read_table("judgments/data.parquet").to_pylist()
    assert len(kept) == counts["rows_out"] and "verdicts" not in kept[0]
