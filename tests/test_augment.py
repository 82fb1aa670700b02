"""Custom-prompt augmentation: the regression that re-predicts the overall score, subset and scale
targets, paraphrase parsing, markers and the split, and the dataset stage augmenting on local Ray
with a fake HTTP teacher (``pytest -k augment``)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from themis.config import AugmentConfig, PipelineConfig, SubsetsConfig
from themis.curation.augment import (
    NotFittable,
    OverallFit,
    add_scales,
    add_subsets,
    augment_records,
    call_of,
    check_sides,
    criteria_block,
    fit_overall,
    paraphrase_record,
    parse_paraphrase,
    scale_record,
    subset_record,
)
from themis.curation.filters import render_target, split_by_instruction, to_sft_example
from themis.judge.call import judge_request, pairwise_calls, single_call
from themis.judge.parsing import ParseError
from themis.judge.scenarios import get_scenario

OPEN_QA = [c.name for c in get_scenario("open_qa").criteria]  # Helpfulness, Relevance, Accuracy, Depth, ...
TAIL = "Strengths:\n- on topic [[4]]\nShortcomings:\n- brief [[3]]"


def rationale(scores: dict[str, int], tail: str = TAIL) -> str:
    return "\n".join(["Criteria:", *(f"{n}: [[{s}]]" for n, s in scores.items()), tail])


def graded(i: int, score: int, scores: dict[str, int] | None, scenario: str = "open_qa", **fields: Any) -> dict:
    """A single-grading judgment row as the judgments stage writes it (prompt from the judging core)."""
    call = single_call(scenario, f"question {i}?", f"answer {i}.")
    messages = judge_request(call, PipelineConfig().judgments.sampling).messages
    return {
        "judgment_id": f"single:r{i}",
        "kind": "single",
        "order": "",
        "pair_id": "",
        "instruction_id": f"i{i}",
        "scenario": scenario,
        "instruction": call.instruction,
        "reference": None,
        "response_ids": [f"r{i}"],
        "responses": list(call.responses),
        "messages": messages,
        "output": "",
        "score": score,
        "winner": None,
        "rationale": rationale(scores) if scores is not None else "Fine.",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    } | fields


def pairwise(i: int, order: str = "ab") -> dict:
    """A pairwise judgment row (the first response wins, so both orders agree)."""
    call = pairwise_calls("open_qa", f"question {i}?", "first", "second")[order == "ba"]
    row = graded(i, 0, None) | {"kind": "pairwise", "order": order, "pair_id": f"p{i}", "score": None}
    return row | {
        "judgment_id": f"pairwise:p{i}:{order}",
        "winner": "A" if order == "ab" else "B",
        "responses": list(call.responses),
        "messages": judge_request(call, PipelineConfig().judgments.sampling).messages,
        "rationale": "The first is clearer.",
    }


def user_text(row: dict) -> str:
    return row["messages"][-1]["content"]


# --- the regression -------------------------------------------------------------------------------


def test_augment_regression_matches_a_hand_computed_fit() -> None:
    # One criterion: x = 1..5, y = 1, 3, 2, 5, 4. Means 3 and 3; Sxy = 8, Sxx = 10: slope 0.8, intercept 0.6.
    data = [({"Accuracy": x}, y) for x, y in zip([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])]
    data.append(({"Depth": 5}, 5))  # does not score Accuracy: not a complete case, not used
    fit = fit_overall(data, ("Accuracy",), min_rows=5)
    assert fit.rows == 5
    assert fit.coef[0] == pytest.approx(0.8) and fit.intercept == pytest.approx(0.6)
    assert [fit.predict({"Accuracy": x}) for x in (1, 2, 4, 5)] == [1, 2, 4, 5]  # 1.4, 2.2, 3.8, 4.6


def test_augment_regression_two_criteria_exact_fit_rounds_half_up_and_clips() -> None:
    rows = [(1, 1), (2, 1), (1, 2), (3, 2), (2, 3), (4, 4)]
    data = [({"Helpfulness": a, "Accuracy": b}, 2 * a - b + 1) for a, b in rows]  # y = 1 + 2a - b exactly
    fit = fit_overall(data, ("Helpfulness", "Accuracy"), min_rows=5)
    assert fit.coef == pytest.approx((2.0, -1.0)) and fit.intercept == pytest.approx(1.0, abs=1e-9)
    assert fit.predict({"Helpfulness": 5, "Accuracy": 1}) == 5  # 10, clipped to 5
    assert fit.predict({"Helpfulness": 1, "Accuracy": 5}) == 1  # -2, clipped to 1
    assert OverallFit(("Depth",), (0.5,), 0.0, 5).predict({"Depth": 5}) == 3  # 2.5 rounds half up, not to even


def test_augment_regression_refuses_too_little_or_singular_data() -> None:
    few = [({"Depth": x}, x) for x in (1, 2, 3, 4)]
    with pytest.raises(NotFittable, match="too few"):
        fit_overall(few, ("Depth",), min_rows=5)
    constant = [({"Depth": 3, "Tone": x}, x) for x in (1, 2, 3, 4, 5)]
    with pytest.raises(NotFittable, match="singular"):
        fit_overall(constant, ("Depth", "Tone"), min_rows=5)


# --- subset, scale and paraphrase records ---------------------------------------------------------


def test_augment_prompt_is_re_rendered_by_the_judging_core() -> None:
    row = graded(1, 4, {"Helpfulness": 4})
    from themis.judge.call import render_call

    assert render_call(call_of(row)).messages == row["messages"]  # the same prompt the teacher saw


def test_augment_subset_record_drops_other_criteria_and_re_predicts_the_score() -> None:
    row = graded(1, 4, {"Helpfulness": 4, "Relevance": 5, "Accuracy": 3, "Depth": 2})
    block = criteria_block(row["rationale"], OPEN_QA)
    assert block is not None and block.scores == {"Helpfulness": 4, "Relevance": 5, "Accuracy": 3, "Depth": 2}
    fit = OverallFit(("Helpfulness", "Accuracy"), (0.5, 0.5), 0.2, 10)  # 0.2 + 2 + 1.5 = 3.7 -> 4
    rec = subset_record(row, block, ("Helpfulness", "Accuracy"), fit, "0")
    assert rec["score"] == 4 and rec["augmentation"] == "subset" and rec["source_example_id"] == "single:r1"
    assert rec["judgment_id"] == "single:r1#subset0" and rec["instruction_id"] == row["instruction_id"]
    assert rec["rationale"] == rationale({"Helpfulness": 4, "Accuracy": 3})
    assert render_target(rec).startswith("Overall rating: [[4]]\nCriteria:\nHelpfulness: [[4]]\nAccuracy: [[3]]\n")
    prompt = user_text(rec)
    assert "1. Helpfulness:" in prompt and "2. Accuracy:" in prompt and "Relevance" not in prompt
    assert row["rationale"] == rationale({"Helpfulness": 4, "Relevance": 5, "Accuracy": 3, "Depth": 2})  # untouched


def test_augment_subsets_fit_on_the_teachers_data_and_count_what_they_skip() -> None:
    rng = random.Random(0)
    scores = [{n: rng.randint(1, 5) for n in OPEN_QA[:3]} for _ in range(12)]
    fit_rows = [graded(i, max(1, min(5, s["Helpfulness"])), s) for i, s in enumerate(scores)]
    rows = [*fit_rows[:3], graded(20, 3, None), pairwise(21), graded(22, 3, {"Helpfulness": 3})]
    cfg = SubsetsConfig(enabled=True, per_record=2, min_criteria=2, min_fit_rows=5)
    out = add_subsets(rows, fit_rows, cfg, random.Random(1))
    assert out.skipped == {
        "subset: no per-criterion scores in the rationale": 1,
        "subset: pairwise (only paraphrase applies)": 1,
        "subset: fewer scored criteria than min_criteria": 1,
    }
    assert out.rows and {r["source_example_id"] for r in out.rows} <= {r["judgment_id"] for r in fit_rows[:3]}
    for rec in out.rows:
        subset = [n for n in OPEN_QA if f"\n{n}: [[" in rec["rationale"]]
        assert 2 <= len(subset) <= 3 and 1 <= rec["score"] <= 5
        data = [(s, r["score"]) for s, r in zip(scores, fit_rows)]
        source = next(r for r in fit_rows if r["judgment_id"] == rec["source_example_id"])
        expected = fit_overall(data, tuple(subset), 5).predict(criteria_block(source["rationale"], OPEN_QA).scores)
        assert rec["score"] == expected
    few = add_subsets(rows[:1], fit_rows[:3], cfg, random.Random(1))
    assert not few.rows and few.skipped == {"subset: too few teacher judgments scoring the subset to fit": 2}


def test_augment_scale_record_converts_the_verdict_and_every_score() -> None:
    row = graded(1, 4, {"Helpfulness": 5, "Accuracy": 3})
    rec = scale_record(row, "1-10")
    assert (rec["score"], rec["scale"], rec["augmentation"]) == (8, "1-10", "scale:1-10")
    assert rec["rationale"] == "\n".join(
        [
            "Criteria:",
            "Helpfulness: [[10]]",
            "Accuracy: [[6]]",
            "Strengths:\n- on topic [[8]]\nShortcomings:\n- brief [[6]]",
        ]
    )
    assert render_target(rec).startswith("Overall rating: [[8]]")
    assert "10 = excellent" in user_text(rec) and "from 1 to 10" in user_text(rec)
    assert to_sft_example(rec)["scale"] == "1-10" and to_sft_example(row)["scale"] is None
    assert scale_record(row, "0-1")["score"] == 1 and scale_record(row, "1-3")["score"] == 3
    odd = graded(2, 4, {"Helpfulness": 4}) | {"rationale": "Criteria:\nHelpfulness: [[9]]"}
    out = add_scales([odd, pairwise(3)], ["1-10"], per_scale=5, rng=random.Random(0))
    assert not out.rows and out.skipped == {"scale:1-10: a [[ ]] in the rationale is not a 1-5 score": 1}


def paraphrase_text(names: list[str], prefix: str = "Reworded") -> str:
    return "\n".join(
        f"{k}. {prefix} {n.lower()}: In other words, how well it does on {n.lower()}." for k, n in enumerate(names, 1)
    )


def test_augment_paraphrase_parsing_is_strict() -> None:
    scenario = get_scenario("open_qa")
    criteria = parse_paraphrase(paraphrase_text(OPEN_QA), scenario)
    assert [c.name for c in criteria] == [f"Reworded {n.lower()}" for n in OPEN_QA]
    good = paraphrase_text(OPEN_QA).split("\n")
    bad = {
        "one line per criterion": "\n".join(good[:-1]),
        "in order": "\n".join([good[1], good[0], *good[2:]]),
        "prompt markers": "\n".join([good[0] + " [Data End]", *good[1:]]),
        "markers, \\[\\[": "\n".join([good[0] + " [[5]]", *good[1:]]),
        "formatting": "\n".join(["1. **Bold**: a description of it.", *good[1:]]),
        "share a name": "\n".join([good[0], good[0].replace("1.", "2.", 1), *good[2:]]),
        "unchanged": "\n".join(f"{k}. {c.name}: {c.description}" for k, c in enumerate(scenario.criteria, 1)),
    }
    for reason, text in bad.items():
        with pytest.raises(ParseError, match=reason):
            parse_paraphrase(text, scenario)


def test_augment_paraphrase_record_renames_criterion_lines_by_position() -> None:
    variant = parse_paraphrase(paraphrase_text(OPEN_QA), get_scenario("open_qa"))
    row = graded(1, 4, {"Helpfulness": 4, "Accuracy": 3})
    rec = paraphrase_record(row, variant, "1")
    assert rec["score"] == 4 and rec["augmentation"] == "paraphrase" and rec["judgment_id"] == "single:r1#paraphrase1"
    assert rec["rationale"] == rationale({"Reworded helpfulness": 4, "Reworded accuracy": 3})
    assert "1. Reworded helpfulness: In other words" in user_text(rec) and "1. Helpfulness:" not in user_text(rec)
    pair = paraphrase_record(pairwise(2), variant, "0")
    assert (
        pair["rationale"] == "The first is clearer." and pair["winner"] == "A" and "Reworded depth" in user_text(pair)
    )


# --- markers, the split, the config ---------------------------------------------------------------


def test_augment_records_stay_on_their_sources_side_of_the_split() -> None:
    rows = [graded(i, 1 + i % 5, {n: 1 + (i * k) % 5 for k, n in enumerate(OPEN_QA[:4])}) for i in range(30)]
    train, val = split_by_instruction(rows, 0.3, seed=0)
    variants = {"open_qa": [parse_paraphrase(paraphrase_text(OPEN_QA, p), get_scenario("open_qa")) for p in "AB"]}
    cfg = AugmentConfig.model_validate(
        {
            "paraphrase": {"enabled": True, "variants": 2, "per_record": 2},
            "subsets": {"enabled": True},
            "scales": {"names": ["0-1", "1-3", "1-10"], "per_scale": 4},
        }
    )
    out = augment_records(train, cfg, 0, variants, train)
    assert out.by_kind() == {
        "paraphrase": 2 * len(train),
        "scale:0-1": 4,
        "scale:1-10": 4,
        "scale:1-3": 4,
        "subset": len(train) - sum(out.skipped.values()),
    }
    check_sides(out.rows, train, val)
    assert {r["instruction_id"] for r in out.rows} <= {r["instruction_id"] for r in train}
    examples = [to_sft_example(r) for r in out.rows]
    assert len({e["example_id"] for e in examples}) == len(examples)
    assert all(e["augmentation"] and e["source_example_id"] != e["example_id"] for e in examples)
    original = to_sft_example(train[0])
    assert (original["augmentation"], original["source_example_id"]) == ("", original["example_id"])
    assert augment_records(train, cfg, 0, variants, train).rows == out.rows  # seeded
    with pytest.raises(AssertionError, match="off their source's side"):
        check_sides([out.rows[0] | {"instruction_id": val[0]["instruction_id"]}], train, val)


def test_augment_config_is_checked() -> None:
    assert not AugmentConfig().enabled and not PipelineConfig().dataset.augment.enabled
    for bad, message in [
        ({"scales": {"names": ["1-7"]}}, "unknown scale"),
        ({"scales": {"names": ["1-5"]}}, "teacher's own scale"),
        ({"scales": {"names": ["1-3", "1-3"]}}, "twice"),
        ({"paraphrase": {"enabled": True, "variants": 1, "per_record": 2}}, "cannot exceed"),
        ({"subsets": {"min_criteria": 0}}, "greater than or equal"),
        ({"subset": {}}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=message):
            AugmentConfig.model_validate(bad)


# --- the dataset stage on local Ray, with a fake HTTP teacher -------------------------------------


def fake_teacher(body: dict[str, Any]) -> str:
    """Paraphrases a criteria list it is shown: each variant words the names its own way."""
    text = body["messages"][-1]["content"]
    variant = re.search(r"rewording number (\d+)", text).group(1)
    names = re.findall(r"^\d+\. ([^:\n]+):", text, re.M)
    return paraphrase_text(names, prefix=f"Variant {variant}")


def stage_judgments() -> list[dict]:
    rng = random.Random(3)
    rows = []
    for i in range(24):
        scenario = "open_qa" if i % 2 else "math_qa"
        names = [c.name for c in get_scenario(scenario).criteria][:4]
        scores = {n: rng.randint(1, 5) for n in names}
        overall = max(1, min(5, round(sum(scores.values()) / 4 + rng.choice([-1, 0, 0, 1]))))
        rows.append(graded(i, overall, scores, scenario) | {"instruction_id": f"i{i // 2}"})
    return rows + [pairwise(p, order) | {"instruction_id": f"i{p - 97}"} for p in (100, 104) for order in ("ab", "ba")]


@pytest.mark.integration
def test_augment_dataset_stage_on_ray_never_crosses_the_split(ray_local, tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer
    from themis.dataplane.tables import to_table
    from themis.stages import dataset
    from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
    from themis.storage import RunStore

    judgments = stage_judgments()
    with FakeOpenAIServer(reply=fake_teacher) as server:
        cfg = PipelineConfig.model_validate(
            {
                "run": {"name": "aug", "storage": {"root": str(tmp_path)}},
                "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
                "engines": {"teacher": {"kind": "openai", "base_url": server.base_url, "model": "fake"}},
                "judgments": {"engine": "teacher"},
                "dataset": {
                    "balance": False,
                    "validation_fraction": 0.25,
                    "selection": {"strategy": "random", "target": 14, "outlier_z": None},
                    "augment": {
                        "paraphrase": {"enabled": True, "variants": 2},
                        "subsets": {"enabled": True, "min_fit_rows": 5},
                        "scales": {"names": ["0-1", "1-3", "1-10"], "per_scale": 2},
                    },
                },
            }
        )
        store = RunStore(cfg.run.storage, cfg.run.name)
        store.write_table("judgments/data.parquet", to_table(judgments, JUDGMENTS_SCHEMA))
        dataset.check(cfg)
        result = dataset.run(cfg, store)
        calls = len(server.bodies)
        again = dataset.run(cfg, store)  # a rerun: the paraphrases come from the run's cache
        assert len(server.bodies) == calls == 4  # two scenarios x two variants, paid once
    counts, report = result.counts, result.details
    assert again.counts == counts
    assert counts["rows_in"] + counts["rows_augmented"] == counts["rows_out"] + counts["rows_rejected"]
    assert counts["rows_in"] == len(judgments) and counts["rows_augmented"] > 0
    for s in report["steps"]:
        assert s["rows_in"] + s.get("rows_added", 0) == s["rows_out"] + s["rows_rejected"], s
    assert [s["step"] for s in report["steps"]] == ["filters", "selection", "augmentation"]

    train = store.read_table("dataset/train.parquet").to_pylist()
    val = store.read_table("dataset/validation.parquet").to_pylist()
    augmented = [r for r in train if r["augmentation"]]
    sources = [r for r in train if not r["augmentation"]]
    assert len(sources) == 14 and len(train) == counts["train"] and len(val) == counts["validation"]
    assert not any(r["augmentation"] for r in val)
    val_ids = {r["instruction_id"] for r in val}
    assert not val_ids & {r["instruction_id"] for r in train}  # no instruction on both sides
    by_id = {r["example_id"]: r for r in sources}
    assert all(by_id[r["source_example_id"]]["instruction_id"] == r["instruction_id"] for r in augmented)

    section = report["augmentation"]
    assert (
        section["by_split"]
        == {"train": len(augmented), "validation": 0}
        == {"train": counts["rows_augmented"], "validation": 0}
    )
    kinds = {k: sum(r["augmentation"] == k for r in augmented) for k in section["by_kind"]}
    assert kinds == section["by_kind"] and {"paraphrase", "subset", "scale:0-1", "scale:1-3", "scale:1-10"} <= set(
        kinds
    )
    assert kinds["paraphrase"] == len(sources) and kinds["scale:1-10"] == 2
    assert section["paraphrase"] == {"requested": 4, "accepted": 4, "rejected_by_reason": {}}
    assert section["skipped_by_reason"].get("subset: pairwise (only paraphrase applies)", 0) == sum(
        r["kind"] == "pairwise" for r in sources
    )
    assert report["rows_augmented"] == counts["rows_augmented"]
    paraphrases = json.loads((tmp_path / "aug/dataset/paraphrases.json").read_text())
    assert len(paraphrases) == 4 and all(p["criteria"] and p["reason"] is None for p in paraphrases)
    scaled = next(r for r in augmented if r["augmentation"] == "scale:1-10")
    assert scaled["scale"] == "1-10" and scaled["messages"][-1]["content"].startswith(
        f"Overall rating: [[{scaled['score']}]]"
    )


def test_augment_is_pure_even_after_a_fit() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from themis.curation.augment import fit_overall; "
        "fit_overall([({'a': x}, x) for x in range(1, 6)], ('a',), 5); "
        "print([m for m in ('ray', 'torch', 'deepspeed', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
