"""Meta-evaluation: published numbers reproduced, adapters, reports, compare, and bad input.

The shared human-labelled sets are read from ../shared/data (never copied into the project).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_shared
from themis import cli
from themis.config import RecordedJudge, Sampling
from themis.engines.base import GenerationResult
from themis.evaluation import benchmarks, judges, markdown, plots, stats
from themis.evaluation.benchmarks import BenchmarkError, PairwiseItem, PointwiseItem
from themis.evaluation.judges import ItemCall, Prediction
from themis.evaluation.report import Settings, build_report

ROOT = Path(__file__).parents[1]
PANDALM = SHARED_DATA / "pandalm"
GPT = {"1": "A", "2": "B", "Tie": "tie"}
PANDALM_7B = {"0": "tie", "1": "A", "2": "B"}


def pct(report: dict, metric: str) -> float:
    return round(report["pairwise"]["metrics"][metric]["value"] * 100, 2)


def pandalm_report(file: str, field: str, values: dict, policy: str) -> dict:
    items = benchmarks.load_pandalm(SHARED_DATA)
    judge = RecordedJudge(name="j", path=str(PANDALM / file), verdict_field=field, values=values)
    recorded = judges.load_recorded(judge, items)
    assert recorded.unmatched_ids == [] and recorded.warnings == []
    return build_report(items, recorded.predictions, Settings(unparsable=policy, resamples=200))


@needs_shared
def test_pandalm_table_gpt35_reproduces_to_the_hundredth() -> None:
    tie = pandalm_report("gpt-3.5-turbo-testset-v1.json", "gpt_result", GPT, "tie")
    assert [pct(tie, k) for k in ("accuracy", "precision", "recall", "f1")] == [71.07, 58.79, 57.36, 57.55]
    wrong = pandalm_report("gpt-3.5-turbo-testset-v1.json", "gpt_result", GPT, "wrong")
    assert pct(wrong, "accuracy") == 69.77 and pct(wrong, "f1") == 52.74
    # Nothing is dropped silently: all 999 in, 25 unparsable, counted and used under the policy.
    counts = wrong["pairwise"]["counts"]
    assert (counts["predictions"], counts["parsed"], counts["used"]) == (999, 974, 999)
    assert wrong["policy"]["unparsable"] == "wrong" and "counts as wrong" in wrong["policy"]["pairwise"]
    excluded = pandalm_report("gpt-3.5-turbo-testset-v1.json", "gpt_result", GPT, "exclude")
    assert excluded["pairwise"]["counts"]["used"] == 974


@needs_shared
def test_pandalm_table_pandalm7b_and_annotator_kappas() -> None:
    report = pandalm_report("pandalm-7b-testset-v1.json", "pandalm_result", PANDALM_7B, "tie")
    assert [pct(report, k) for k in ("accuracy", "precision", "recall", "f1")] == [66.77, 57.38, 57.50, 57.43]
    ceiling = report["pairwise"]["human_human"]
    assert [round(ceiling[k], 2) for k in ("kappa_1_2", "kappa_1_3", "kappa_2_3")] == [0.85, 0.88, 0.86]
    low, high = report["pairwise"]["metrics"]["accuracy"]["ci"]
    assert low < 0.6677 < high


def test_paper_relative_gaps_from_table_3() -> None:
    # (MAE, Agr(2,2)) on Alignbench-extended and SynUI, from the paper's Table 3.
    table = {
        "themis": (0.756, 0.559, 0.673, 0.582),
        "qwen14b": (1.320, 0.366, 1.035, 0.437),
        "qwenmax": (1.131, 0.424, 0.840, 0.497),
        "gpt4": (0.685, 0.595, 0.664, 0.590),
    }

    def metrics(name: str, which: str = "both") -> dict[str, float]:
        a_mae, a_agr, s_mae, s_agr = table[name]
        out = {"align/mae": a_mae, "align/agr": a_agr, "synui/mae": s_mae, "synui/agr": s_agr}
        return {k: v for k, v in out.items() if which == "both" or k.startswith(which)}

    assert round(stats.relative_gap(metrics("themis"), metrics("qwen14b")) * 100, 1) == 34.3
    assert round(stats.relative_gap(metrics("themis"), metrics("qwenmax")) * 100, 1) == 22.9
    assert round(stats.relative_gap(metrics("themis", "synui"), metrics("gpt4", "synui")) * 100, 1) == -1.4
    assert round(stats.relative_gap(metrics("themis", "align"), metrics("gpt4", "align")) * 100, 1) == -8.4


def test_normalisation_anchors_chance_at_zero_and_perfect_at_one() -> None:
    assert stats.normalise("accuracy", 1.0, 0.4) == pytest.approx(1.0)
    assert stats.normalise("accuracy", 0.4, 0.4) == pytest.approx(0.0)
    assert stats.normalise("mae", 0.0, 1.6) == pytest.approx(1.0) and stats.normalise("mae", 0.8, 1.6) == pytest.approx(
        0.5
    )
    # Chance accuracy of a judge drawing from the labels' distribution is sum(p_k^2).
    import numpy as np

    gold = ["A"] * 60 + ["B"] * 30 + ["tie"] * 10
    chance = stats.chance_level(lambda d: (d == np.asarray(gold)).mean(-1), gold, draws=2000)
    assert chance == pytest.approx(0.6**2 + 0.3**2 + 0.1**2, abs=0.01)


def test_pointwise_report_and_reference_effect() -> None:
    items = [
        PointwiseItem(f"i{k}", "q", "r", "close_qa" if k % 2 else "role_playing", (1 + k % 5, 1 + k % 5), "ref")
        for k in range(20)
    ]
    preds = [Prediction(i.item_id, "", True, score=i.human_score) for i in items]  # perfect with the reference
    preds += [Prediction(i.item_id, "", False, score=min(5, i.human_score + 1)) for i in items]  # off by one without
    preds[3] = Prediction("i3", "", True, output="garbled", error="no rating found")
    report = build_report(items, preds, Settings(resamples=100))
    point = report["pointwise"]
    assert point["counts"] == {
        "predictions": 20,
        "parsed": 19,
        "used": 19,
        "unparsable_by_reason": {"no rating found": 1},
    }
    assert point["metrics"]["mae"]["value"] == 0 and point["metrics"]["agr"]["value"] == 1
    assert point["normalised"]["agr"] == pytest.approx(1.0) and report["overall"]["value"] == pytest.approx(1.0)
    assert point["human_human"]["annotators"] == 2 and point["human_human"]["mean"] == pytest.approx(1.0)
    effect = report["reference_effect"]
    assert set(effect) == {"close_qa/pointwise", "role_playing/pointwise"}
    assert all(row["effect"] > 0 for row in effect.values())
    assert "Reference effect" in markdown.render_report(report | _header())


def test_pairwise_both_orders_position_bias() -> None:
    items = [PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", ("A",)) for k in range(10)]
    # A judge that always prefers the first position: right in ab, wrong in ba.
    preds = [Prediction(i.item_id, o, False, winner="A") for i in items for o in ("ab", "ba")]
    report = build_report(items, preds, Settings(resamples=100))
    pair = report["pairwise"]
    assert pair["metrics"]["accuracy"]["value"] == 0.5
    assert pair["metrics"]["dual_order_consistency"]["value"] == 0.0
    assert pair["metrics"]["correct_both_orders"]["value"] == 0.0
    assert pair["position"]["judge"]["prefer_first"] == 1.0


def _header() -> dict:
    return {
        "judge": {"name": "j", "kind": "recorded"},
        "benchmark": {"name": "b", "source": "s", "items": 1, "sha256": "0" * 64},
    }


def test_compare_marks_differences_beyond_the_intervals() -> None:
    a = {
        "pairwise": {
            "metrics": {"accuracy": {"value": 0.9, "ci": [0.85, 0.95]}, "f1": {"value": 0.5, "ci": [0.4, 0.6]}}
        },
        "overall": {"value": 0.8},
    } | _header()
    b = {
        "pairwise": {
            "metrics": {"accuracy": {"value": 0.6, "ci": [0.55, 0.65]}, "f1": {"value": 0.48, "ci": [0.38, 0.58]}}
        },
        "overall": {"value": 0.3},
    } | _header()
    text = markdown.compare_reports(a, b, "ours", "theirs")
    assert "| pairwise/accuracy | 0.9000 |" in text and "0.3000 *" in text
    assert "0.0200 *" not in text and "Relative gap of ours over theirs" in text


def test_plots_are_png() -> None:
    items = [PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", ("A" if k % 2 else "B",)) for k in range(8)]
    preds = [Prediction(i.item_id, "ab", False, winner="A") for i in items]
    pngs = plots.render_plots(build_report(items, preds, Settings(resamples=50)))
    assert set(pngs) == {"pairwise_confusion", "pairwise_groups", "pairwise_distribution"}
    assert all(p.startswith(b"\x89PNG") for p in pngs.values())


@needs_shared
def test_hhh_and_mt_bench_adapters() -> None:
    hhh = benchmarks.load_hhh(SHARED_DATA)
    assert len(hhh) == 221 and all(i.human_winner == "A" and i.response_a != i.response_b for i in hhh)
    assert {c: sum(i.category == c for i in hhh) for c in ("harmless", "helpful", "honest", "other")} == {
        "harmless": 58,
        "helpful": 59,
        "honest": 61,
        "other": 43,
    }
    questions = benchmarks.mt_bench_instructions(SHARED_DATA / "mt_bench")
    assert len(questions) == 80 and sum(q["reference"] is not None for q in questions) == 30
    assert {q["scenario"] for q in questions} >= {"math_qa", "programming", "role_playing"}


def test_user_file_with_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"q": "Add 2 and 2", "ans": "4", "s": "math_qa", "r1": 5, "r2": "4", "id": "x1"},
        {"q": "Capital of Peru?", "ans": "Lima", "s": "close_qa", "r1": 5, "r2": 5, "id": "x2"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = benchmarks.load_file(
        path,
        "pointwise",
        {"instruction": "q", "response": "ans", "scenario": "s", "human": ["r1", "r2"], "item_id": "id"},
    ).items
    assert [(i.item_id, i.human, i.human_score) for i in items] == [("x1", (5, 4), 5), ("x2", (5, 5), 5)]


def test_malformed_rows_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = {"instruction": "q", "response_a": "a", "response_b": "b", "scenario": "open_qa", "human": "A"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"human": "maybe"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"pairs.jsonl: line 2: a human winner must be A, B or tie"):
        benchmarks.load_file(path, "pairwise")
    path.write_text(json.dumps(good) + "\n\n{oops\n")
    with pytest.raises(BenchmarkError, match=r"pairs.jsonl: line 3: not valid JSON"):
        benchmarks.load_file(path, "pairwise")
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "response_b"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"line 1: missing column 'response_b'"):
        benchmarks.load_file(path, "pairwise")
    with pytest.raises(BenchmarkError, match="not found"):
        benchmarks.load_file(tmp_path / "absent.jsonl", "pairwise")


def test_recorded_predictions_missing_ids_are_counted(tmp_path: Path) -> None:
    items = [PairwiseItem(f"{k}", "q", "a", "b", "open_qa", ("A",)) for k in range(4)]
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps({"idx": k, "v": v}) for k, v in [(0, "1"), (1, "2"), (9, "1")]) + "\n")
    judge = RecordedJudge(name="j", path=str(path), verdict_field="v", values={"1": "A", "2": "B"})
    recorded = judges.load_recorded(judge, items)
    preds, unmatched = recorded.predictions, recorded.unmatched_ids
    assert unmatched == ["9"] and len(preds) == 4
    assert recorded.match_share == 0.5 and "50.0% of the expected verdicts" in recorded.warnings[0]
    report = build_report(items, preds, Settings(unparsable="exclude", resamples=50))
    assert report["pairwise"]["counts"]["unparsable_by_reason"] == {"no recorded prediction": 2}
    assert report["pairwise"]["counts"]["used"] == 2


def test_engine_judge_calls_cover_both_orders_and_reference_modes() -> None:
    point = PointwiseItem("p", "q", "r", "close_qa", (4,), reference="ref")
    pair = PairwiseItem("x", "q", "a", "b", "open_qa", ("A",))
    calls = judges.item_calls([point, pair], both_orders=True, reference_modes=(True, False))
    shown = [(c.item_id, c.with_reference, c.call.kind, c.call.order, c.call.responses) for c in calls]
    assert shown == [
        ("p", True, "reference", "", ("r",)),
        ("p", False, "single", "", ("r",)),
        ("x", False, "pairwise", "ab", ("a", "b")),
        ("x", False, "pairwise", "ba", ("b", "a")),
    ]
    requests = judges.call_requests(calls, Sampling(max_tokens=5), seed=1)
    assert [r.prefix for r in requests] == ["Overall rating: [["] * 2 + ["Verdict: [["] * 2
    assert len(judges.item_calls([pair], both_orders=False, reference_modes=(True,))) == 1


def test_engine_outputs_become_scores_winners_or_reasons() -> None:
    (score_call,) = judges.item_calls([PointwiseItem("p", "q", "r", "close_qa", (4,))], True, (True,))
    _, ba = judges.item_calls([PairwiseItem("x", "q", "a", "b", "open_qa", ("A",))], True, (True,))
    assert judges.parse_call(score_call, GenerationResult("Overall rating: [[3]] ok")) == Prediction(
        "p", "", False, score=3, output="Overall rating: [[3]] ok"
    )
    # The winner is for the order shown; the report flips the humans' winner for a ba call.
    assert judges.parse_call(ba, GenerationResult("Verdict: [[A]]")).winner == "A"
    failed = judges.parse_call(ba, GenerationResult(error="timeout"))
    assert not failed.parsed and failed.error == "engine error: timeout" and failed.order == "ba"
    garbled = judges.parse_call(score_call, GenerationResult("fine"))
    assert (garbled.score, garbled.error) == (None, "unparsable: no rating found")
    assert isinstance(score_call, ItemCall)


def test_predictions_table_is_typed(tmp_path: Path) -> None:
    from themis.config import StorageConfig
    from themis.stages.evaluate import PREDICTION_SCHEMA, write_report
    from themis.storage import RunStore

    items = [PairwiseItem("x", "q", "a", "b", "open_qa", ("A",)), PointwiseItem("p", "q", "r", "close_qa", (4,))]
    preds = [
        Prediction("x", "ab", False, winner="tie"),
        Prediction("p", "", True, score=5),
        Prediction("x", "ba", False, error="e"),
    ]
    report = build_report(items, preds, Settings(resamples=20)) | _header()
    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    write_report(store, "j", report, preds, with_plots=False)
    table = store.read_table("reports/evaluation/j/predictions.parquet")
    assert table.schema == PREDICTION_SCHEMA
    assert table.column("score").to_pylist() == [None, 5, None]
    assert table.column("winner").to_pylist() == ["tie", None, None]
    assert table.column("with_reference").to_pylist() == [False, True, False]


def _recorded(name: str, file: str, field: str, values: dict) -> str:
    return json.dumps(
        {"kind": "recorded", "name": name, "path": str(PANDALM / file), "verdict_field": field, "values": values}
    )


@needs_shared
def test_evaluate_stage_from_the_shipped_config(tmp_path: Path, capsys) -> None:
    config = ROOT / "jobs" / "configs" / "eval_pandalm.yaml"
    overrides = [
        f"run.storage.root={tmp_path}",
        f"evaluate.benchmark.data_dir={SHARED_DATA}",
        f"evaluate.judges=[{_recorded('gpt', 'gpt-3.5-turbo-testset-v1.json', 'gpt_result', GPT)}, "
        f"{_recorded('p7b', 'pandalm-7b-testset-v1.json', 'pandalm_result', PANDALM_7B)}]",
        "evaluate.bootstrap.resamples=200",
    ]
    assert cli.main(["evaluate", str(config), *overrides]) == 0
    base = tmp_path / "eval-pandalm" / "reports" / "evaluation"
    report = json.loads((base / "gpt" / "report.json").read_text())
    assert pct(report, "accuracy") == 71.07 and report["versions"]["scikit-learn"]
    assert report["benchmark"]["items"] == 999 and len(report["benchmark"]["sha256"]) == 64
    assert len(report["predictions_file_sha256"]) == 64
    assert {p.name for p in (base / "gpt").iterdir()} >= {"report.md", "predictions.parquet", "pairwise_confusion.png"}
    capsys.readouterr()
    assert cli.main(["evaluate", "compare", str(base / "gpt"), str(base / "p7b" / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "| pairwise/accuracy | 0.7107 |" in out and "0.6677" in out
    assert cli.main(["evaluate", "compare", str(base / "gpt"), str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err


@needs_shared
def test_mt_bench_seeds_the_instructions_stage() -> None:
    from themis.stages.instructions import read_mt_bench

    rows = read_mt_bench(str(SHARED_DATA / "mt_bench"), 12)
    assert len(rows) == 12 and all(r["scenario_source"] == "given" and r["method"] == "mt_bench" for r in rows)
    assert rows[0]["instruction_id"] == "mt_bench-81" and rows[0]["scenario"] == "creative_writing"
