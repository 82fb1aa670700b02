"""What meta-evaluation reports: perfect judges score 1, both orders resampled by pair, decisive-only
agreement, suites with the paper's aggregate, paired comparisons, readable plots and the console."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, needs_shared
from themis import cli
from themis.config import ConfigError, load_config
from themis.evaluation import markdown, plots, sources
from themis.evaluation.benchmarks import PairwiseItem, PointwiseItem
from themis.evaluation.judges import Prediction
from themis.evaluation.paired import paired_differences, scored_units
from themis.evaluation.report import Settings, build_report
from themis.judge.call import flip_winner

EVERY_PAIR_METRIC = ("accuracy", "precision", "recall", "f1", "kappa")


def pair_items(golds: list[str], category: str = "") -> list[PairwiseItem]:
    return [PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", (g,), category=category) for k, g in enumerate(golds)]


def copy_gold(items: list[PairwiseItem], orders: tuple[str, ...] = ("ab",)) -> list[Prediction]:
    """A judge that copies the human label, for the order shown."""
    return [
        Prediction(i.item_id, o, False, winner=flip_winner(i.human_winner) if o == "ba" else i.human_winner)
        for i in items
        for o in orders
    ]


# --- a perfect judge scores 1 ------------------------------------------------------------------------


@pytest.mark.parametrize("golds", [["A", "B"] * 10, ["A", "B", "tie", "A", "B"] * 4], ids=["no_ties", "ties"])
@pytest.mark.parametrize("orders", [("ab",), ("ab", "ba")], ids=["one_order", "both_orders"])
def test_perfect_judge_scores_one_on_pairs(golds: list[str], orders: tuple[str, ...]) -> None:
    items = pair_items(golds)
    report = build_report(items, copy_gold(items, orders), Settings(resamples=50))
    metrics = report["pairwise"]["metrics"]
    assert [metrics[k]["value"] for k in EVERY_PAIR_METRIC] == [1.0] * 5
    assert all(metrics[k]["ci"] == [1.0, 1.0] for k in ("accuracy", "f1"))
    assert report["pairwise"]["normalised"] == {"accuracy": 1.0, "f1": 1.0}
    assert report["overall"]["value"] == 1.0
    if len(orders) == 2:
        assert metrics["dual_order_consistency"]["value"] == metrics["correct_both_orders"]["value"] == 1.0


def test_perfect_judge_scores_one_on_scores() -> None:
    items = [PointwiseItem(f"i{k}", "q", "r", "close_qa", (1 + k % 5,)) for k in range(20)]
    preds = [Prediction(i.item_id, "", False, score=i.human_score) for i in items]
    report = build_report(items, preds, Settings(resamples=50))
    metrics = report["pointwise"]["metrics"]
    assert metrics["mae"]["value"] == 0 and all(metrics[k]["value"] == 1.0 for k in ("agr", "exact", "qwk"))
    assert report["overall"]["value"] == 1.0


def test_perfect_judge_macro_over_all_classes_is_stated() -> None:
    items = pair_items(["A", "B"] * 10)
    occurring = build_report(items, copy_gold(items), Settings(resamples=0))
    every = build_report(items, copy_gold(items), Settings(resamples=0, macro_classes="all"))
    assert occurring["pairwise"]["macro_classes"] == ["A", "B"] and "classes that occur" in occurring["policy"]["macro"]
    assert every["pairwise"]["macro_classes"] == ["tie", "A", "B"] and "all three" in every["policy"]["macro"]
    assert every["pairwise"]["metrics"]["f1"]["value"] == pytest.approx(2 / 3)
    assert "classes that occur" in markdown.render_report(occurring | _header())


# --- both orders --------------------------------------------------------------------------------------


def test_recorded_judge_in_both_orders_gives_consistency_and_a_pair_interval() -> None:
    """A recorded judge with both orders: 30 pairs right in both orders, 10 that always pick the
    first response shown (right in ab, wrong in ba)."""
    items = pair_items(["A"] * 40)
    preds = [Prediction(i.item_id, "ab", False, winner="A") for i in items]
    preds += [Prediction(i.item_id, "ba", False, winner="B" if k < 30 else "A") for k, i in enumerate(items)]
    report = build_report(items, preds, Settings(resamples=1000))
    pair = report["pairwise"]
    assert pair["metrics"]["accuracy"]["value"] == pytest.approx(70 / 80)
    assert pair["metrics"]["dual_order_consistency"]["value"] == pytest.approx(0.75)
    assert pair["metrics"]["correct_both_orders"]["value"] == pytest.approx(0.75)
    assert pair["position"]["judge"]["prefer_first"] == pytest.approx(50 / 80)
    assert pair["counts"]["pairs"] == pair["counts"]["pairs_in_both_orders"] == 40
    low, high = pair["metrics"]["dual_order_consistency"]["ci"]
    assert low < 0.75 < high and {round(x * 40) / 40 for x in (low, high)} == {low, high}  # steps of one pair


def test_both_orders_bootstrap_resamples_pairs_not_orders() -> None:
    """30 pairs right in both orders, 10 wrong in both: the two orders of a pair move together, so
    the interval must be as wide as 40 units give (about sqrt(2) wider than 80 independent rows)."""
    items = pair_items(["A"] * 40)
    wrong = [Prediction(i.item_id, o, False, winner=w) for i in items[30:] for o, w in (("ab", "B"), ("ba", "A"))]
    preds = copy_gold(items[:30], ("ab", "ba")) + wrong
    pair = build_report(items, preds, Settings(resamples=2000))["pairwise"]["metrics"]
    assert pair["accuracy"]["value"] == 0.75 and pair["dual_order_consistency"]["value"] == 1.0
    # The same 80 verdicts as 80 one-order items: what a bootstrap over orders would give.
    rows = pair_items(["A"] * 80)
    flat = [Prediction(i.item_id, "ab", False, winner="A" if k < 60 else "B") for k, i in enumerate(rows)]
    independent = build_report(rows, flat, Settings(resamples=2000))["pairwise"]["metrics"]["accuracy"]
    assert independent["value"] == 0.75
    by_pair, by_row = (np.diff(c["ci"])[0] for c in (pair["accuracy"], independent))
    assert by_pair > 1.25 * by_row


# --- decisive only --------------------------------------------------------------------------------------


def test_decisive_only_scores_pairs_where_both_pick_a_winner() -> None:
    items = pair_items(["A", "A", "tie", "B", "B"])
    preds = [Prediction(i.item_id, "ab", False, winner=w) for i, w in zip(items, ["A", "tie", "A", "A", "B"])]
    report = build_report(items, preds, Settings(resamples=50, decisive_only=True))
    pair = report["pairwise"]
    assert pair["counts"]["decisive"] == 3  # p0 (A/A), p3 (B/A), p4 (B/B)
    assert pair["metrics"]["decisive_accuracy"]["value"] == pytest.approx(2 / 3)
    assert "no tie" in report["policy"]["decisive"]
    assert "decisive_accuracy" not in build_report(items, preds, Settings(resamples=0))["pairwise"]["metrics"]


# --- paired comparison ------------------------------------------------------------------------------------


def test_paired_bootstrap_of_two_judges_on_the_same_items() -> None:
    rng = np.random.default_rng(0)
    items = pair_items(list(rng.choice(["A", "B", "tie"], size=200)))
    ours = copy_gold(items)
    theirs = [p if k % 10 else Prediction(p.item_id, "ab", False, winner="tie") for k, p in enumerate(ours)]
    s = Settings(resamples=500)
    units = [scored_units(items, preds, s) for preds in (ours, theirs)]
    diff = paired_differences(*units, s)["pairwise/accuracy"]
    assert diff["n"] == 200 and diff["difference"] == pytest.approx(
        1 - np.mean([p.winner == i.human_winner for p, i in zip(theirs, items)])
    )
    assert diff["ci"][0] > 0  # the unpaired intervals of 1.0 and ~0.93 would overlap less clearly
    reports = [build_report(items, preds, s) | _header() for preds in (ours, theirs)]
    text = markdown.compare_reports(*reports, "ours", "theirs", paired=paired_differences(*units, s))
    assert "Test: paired bootstrap over the 200 shared items" in text and "paired 95% CI" in text


# --- plots ------------------------------------------------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


def test_group_plot_stays_readable_at_60_groups() -> None:
    sizes = {}
    for n_groups in (3, 60):
        items = [
            PairwiseItem(f"p{k}", "q", "a", "b", "open_qa", ("A",), category=f"app {k % n_groups}") for k in range(240)
        ]
        preds = [Prediction(i.item_id, "ab", False, winner="A" if k % 3 else "B") for k, i in enumerate(items)]
        report = build_report(items, preds, Settings(resamples=20, breakdown="category"))
        sizes[n_groups] = png_size(plots.render_plots(report)["pairwise_groups"])
    (w3, h3), (w60, h60) = sizes[3], sizes[60]
    assert w3 == w60 <= 1000 and h60 > 4 * h3  # fixed width; one horizontal bar per group, grows down


# --- suites, through the stage ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def suite_config(tmp_path: Path) -> Path:
    """Two file benchmarks (one with ties, split into subsets by category; one without ties, with a
    row that has no label) and two recorded judges: one that copies the gold labels, one that
    always says A."""
    rng = np.random.default_rng(1)
    ties = [{"item_id": f"t{k}", "human": str(rng.choice(["A", "B", "tie"])), "app": f"app{k % 3}"} for k in range(30)]
    no_ties = [{"item_id": f"n{k}", "human": str(rng.choice(["A", "B"]))} for k in range(20)]
    write_jsonl(tmp_path / "ties.jsonl", ties)
    write_jsonl(tmp_path / "no_ties.jsonl", [*no_ties, {"item_id": "n-blank", "human": None}])
    write_jsonl(tmp_path / "perfect.jsonl", [{"idx": r["item_id"], "v": r["human"]} for r in ties + no_ties])
    write_jsonl(tmp_path / "always_a.jsonl", [{"idx": r["item_id"], "v": "A"} for r in ties + no_ties])
    columns = {"scenario": {"const": "open_qa"}, "category": "app"}
    config = {
        "run": {"name": "suite", "storage": {"root": str(tmp_path / "runs")}},
        "evaluate": {
            "bootstrap": {"resamples": 100},
            "benchmarks": [
                {
                    "name": "file",
                    "path": str(tmp_path / "ties.jsonl"),
                    "kind": "pairwise",
                    "columns": columns,
                    "subsets": "category",
                },
                {
                    "name": "file",
                    "path": str(tmp_path / "no_ties.jsonl"),
                    "kind": "pairwise",
                    "columns": {"scenario": {"const": "open_qa"}},
                },
            ],
            "judges": [
                {
                    "kind": "recorded",
                    "name": name,
                    "path": str(tmp_path / f"{name}.jsonl"),
                    "verdict_field": "v",
                    "values": {"A": "A", "B": "B", "tie": "tie"},
                }
                for name in ("perfect", "always_a")
            ],
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML; no `stages:` line
    return path


def test_suite_stage_writes_each_report_the_aggregate_and_subset_means(tmp_path: Path, capsys) -> None:
    assert cli.main(["evaluate", str(suite_config(tmp_path))]) == 0
    root = tmp_path / "runs" / "suite"
    base = root / "reports" / "evaluation"
    for judge in ("perfect", "always_a"):
        assert {p.name for p in (base / judge).iterdir()} == {"ties", "no_ties", "suite.json", "suite.md"}
        assert (base / judge / "no_ties" / "report.json").is_file() and (
            base / judge / "ties" / "units.parquet"
        ).is_file()
    perfect = json.loads((base / "perfect" / "suite.json").read_text())
    assert perfect["aggregate"]["value"] == 1.0 and len(perfect["aggregate"]["normalised"]) == 4
    assert perfect["benchmarks"]["ties"]["mean_over_subsets"]["pairwise/f1"] == 1.0
    assert set(perfect["benchmarks"]["ties"]["subsets"]) == {"app0", "app1", "app2"}
    always_a = json.loads((base / "always_a" / "suite.json").read_text())
    normalised = [v for v in always_a["aggregate"]["normalised"].values() if v is not None]
    assert always_a["aggregate"]["value"] == pytest.approx(np.mean(normalised)) and always_a["aggregate"]["value"] < 0.5
    subsets = always_a["benchmarks"]["ties"]["subsets"]
    mean_acc = np.mean([s["metrics"]["pairwise/accuracy"]["value"] for s in subsets.values()])
    assert always_a["benchmarks"]["ties"]["mean_over_subsets"]["pairwise/accuracy"] == pytest.approx(mean_acc)
    assert "aggregate (the paper's)" in (base / "always_a" / "suite.md").read_text()
    # The unlabelled row went to the rejects, counted in the report and the manifest.
    assert (root / "rejects" / "evaluate" / "no_ties.parquet").is_file()
    report = json.loads((base / "perfect" / "no_ties" / "report.json").read_text())
    assert report["benchmark"]["rows_rejected"] == 1 and report["benchmark"]["id"] == "no_ties"
    counts = json.loads((root / "manifest.json").read_text())["stages"]["evaluate"]["counts"]
    assert counts["rows_rejected"] == 1 and counts["benchmarks"] == 2
    err = capsys.readouterr().err
    assert "evaluate: perfect/ties on 30 items: accuracy 1.0000 [1.0000, 1.0000], f1 1.0000" in err
    assert "evaluate: always_a: suite aggregate" in err
    # compare: two suites; two reports on the same items (paired).
    assert cli.main(["evaluate", "compare", str(base / "perfect"), str(base / "always_a" / "suite.json")]) == 0
    out = capsys.readouterr().out
    assert "(suites)" in out and "| ties | pairwise/accuracy | 1.0000 |" in out
    assert "| ties | pairwise/accuracy (mean over subsets) | 1.0000 |" in out
    assert out.count("| paired |") >= 4 and "Tests: `paired`: a paired bootstrap" in out
    assert cli.main(["evaluate", "compare", str(base / "perfect" / "ties"), str(base / "always_a" / "ties")]) == 0
    assert "Test: paired bootstrap over the 30 shared items" in capsys.readouterr().out
    assert cli.main(["evaluate", "compare", str(base / "perfect"), str(base / "always_a" / "ties")]) == 1


def test_suite_config_takes_one_benchmark_or_a_list_with_unique_ids(tmp_path: Path) -> None:
    path = suite_config(tmp_path)
    cfg = load_config(path)
    assert [b.report_id for b in cfg.evaluate.suite] == ["ties", "no_ties"] and cfg.stages_to_check() == ["evaluate"]
    with pytest.raises(ConfigError, match="not both"):
        load_config(path, ["evaluate.benchmark.name=hhh"])
    with pytest.raises(ConfigError, match=r"unique in a suite.*'x'"):
        load_config(path, ["evaluate.benchmarks=[{name: hhh, id: x}, {name: pandalm, id: x}]"])


def test_evaluate_only_config_needs_no_stages_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("evaluate:\n  benchmark: {name: hhh}\n")
    cfg = load_config(path)  # the default stages list every stage, but none of their unused engines is checked
    assert cfg.stages_to_check() == ["evaluate"]
    with pytest.raises(ConfigError, match="judgments.engine='gpt9'"):
        load_config(path, ["judgments.engine=gpt9"])  # a section it writes is checked


def test_compare_shows_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "themis evaluate compare A B" in capsys.readouterr().out


def _header() -> dict:
    return {
        "judge": {"name": "j", "kind": "recorded"},
        "benchmark": {"name": "b", "source": "s", "items": 1, "sha256": "0" * 64},
    }


@needs_shared
def test_shipped_suite_config_runs_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    config = Path(__file__).parents[1] / "jobs" / "configs" / "eval_suite.yaml"
    overrides = [f"run.storage.root={tmp_path}", "evaluate.bootstrap.resamples=20", "evaluate.plots=false"]
    assert cli.main(["evaluate", str(config), *overrides]) == 0
    base = tmp_path / "eval-suite" / "reports" / "evaluation" / "gpt-3.5-turbo"
    report = json.loads((base / "pandalm" / "report.json").read_text())
    assert round(report["pairwise"]["metrics"]["accuracy"]["value"] * 100, 2) == 71.07
    suite = json.loads((base / "suite.json").read_text())
    entry = suite["benchmarks"]["pandalm"]
    assert suite["aggregate"]["value"] == pytest.approx(entry["overall"]) and len(entry["subsets"]) > 10
    assert entry["mean_over_subsets"]["pairwise/accuracy"] != pytest.approx(0.7107, abs=1e-4)
