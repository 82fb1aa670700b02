"""The promotion gate: a model is served only with an evaluation report that meets the thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from themis.config import PromotionConfig, StorageConfig
from themis.promotion import PromotionRefused, check_promotion, failed_thresholds, metric_value

REPORT = {
    "overall": {"value": 0.31},
    "pairwise": {"metrics": {"accuracy": {"value": 0.62, "ci": [0.5, 0.7]}, "dual_order_consistency": {"value": 0.7}}},
    "pointwise": {"metrics": {"agr": {"value": 0.4}}},
}


def _write_report(root: Path, run: str = "r", judge: str = "trained", report: dict = REPORT) -> Path:
    path = root / run / "reports" / "evaluation" / judge / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    return path


def test_promotion_thresholds_name_what_failed():
    cfg = PromotionConfig(min_overall=0.5, metric="pairwise/accuracy", min_metric=0.6, min_dual_order_consistency=0.8)
    assert failed_thresholds(REPORT, cfg) == ["overall 0.31 < 0.5", "pairwise/dual_order_consistency 0.7 < 0.8"]
    assert failed_thresholds(REPORT, PromotionConfig(metric="pointwise/kendall", min_metric=0.1)) == [
        "pointwise/kendall is missing from the report (needs >= 0.1)"
    ]
    assert metric_value(REPORT, "pointwise/agr") == 0.4 and metric_value(REPORT, "nope/x") is None


def test_promotion_refuses_a_missing_report_and_names_where_it_looked(tmp_path: Path):
    storage = StorageConfig(root=str(tmp_path))
    with pytest.raises(PromotionRefused, match=f"no evaluation report.*{tmp_path}/r/reports/evaluation/trained"):
        check_promotion(PromotionConfig(), storage, "r")
    assert list(tmp_path.iterdir()) == []  # looking creates no folders


def test_promotion_refuses_below_threshold_then_force_records_the_override(tmp_path: Path):
    path = _write_report(tmp_path)
    storage = StorageConfig(root=str(tmp_path))
    with pytest.raises(PromotionRefused, match=f"overall 0.31 < 0.5.*report: {path}.*--force"):
        check_promotion(PromotionConfig(min_overall=0.5), storage, "r")
    forced = check_promotion(PromotionConfig(min_overall=0.5, force=True), storage, "r")
    assert forced == {"report": str(path), "passed": False, "failed": ["overall 0.31 < 0.5"], "forced": True}
    passed = check_promotion(PromotionConfig(min_overall=0.3, min_dual_order_consistency=0.7), storage, "r")
    assert passed["passed"] and not passed["forced"]


def test_promotion_reads_a_named_report(tmp_path: Path):
    path = _write_report(tmp_path, run="elsewhere", judge="mine")
    cfg = PromotionConfig(report=str(path), min_overall=0.0)
    assert check_promotion(cfg, StorageConfig(root=str(tmp_path)), "r")["report"] == str(path)


@pytest.mark.parametrize(
    "fields",
    [{"metric": "pairwise/accuracy"}, {"min_metric": 0.5}, {"metric": "accuracy", "min_metric": 0.5}],
)
def test_promotion_config_is_checked(fields):
    with pytest.raises(ValueError):
        PromotionConfig(**fields)


def test_promotion_gate_in_the_serve_stage_refuses_before_anything_starts(tmp_path: Path, tiny_model_dir: Path):
    """The stage checks the gate before Ray or Serve start; the forced path, with its manifest
    details, runs in tests/test_serve_stage.py (it deploys)."""
    from themis.config import PipelineConfig
    from themis.stages.serve import run
    from themis.storage import RunStore

    _write_report(tmp_path)
    serve = {"model": str(tiny_model_dir), "promotion": {"min_overall": 0.5}}
    cfg = PipelineConfig.model_validate({"run": {"name": "r", "storage": {"root": str(tmp_path)}}, "serve": serve})
    with pytest.raises(PromotionRefused, match="overall 0.31 < 0.5"):
        run(cfg, RunStore(cfg.run.storage, "r"))
