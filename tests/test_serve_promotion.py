"""The promotion gate: a model is served only with an evaluation report that meets the thresholds,
which ship with defaults, and the gate refuses before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from themis.config import PromotionConfig, StorageConfig, load_config
from themis.serving.promotion import PromotionRefused, check_promotion, failed_thresholds, metric_value

ROOT = Path(__file__).parents[1]

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
    assert {k: forced[k] for k in ("report", "passed", "failed", "forced")} == {
        "report": str(path),
        "passed": False,
        "failed": ["overall 0.31 < 0.5"],
        "forced": True,
    }
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


def test_serve_stage_run_checks_the_gate_itself(tmp_path: Path, tiny_model_dir: Path):
    """``run`` checks the gate again before Serve starts (a caller that skips the runner's check);
    that the runner refuses before Ray starts is ``test_promotion_before_ray_...`` below."""
    from themis.config import PipelineConfig
    from themis.stages.serve import run
    from themis.storage import RunStore

    _write_report(tmp_path)
    serve = {"model": str(tiny_model_dir), "promotion": {"min_overall": 0.5}}
    cfg = PipelineConfig.model_validate({"run": {"name": "r", "storage": {"root": str(tmp_path)}}, "serve": serve})
    with pytest.raises(PromotionRefused, match="overall 0.31 < 0.5"):
        run(cfg, RunStore(cfg.run.storage, "r"))


# --- shipped thresholds ---------------------------------------------------------------------------

AT_CHANCE = {"overall": {"value": 0.02}, "pairwise": {"metrics": {"dual_order_consistency": {"value": 0.5}}}}
GOOD = {"overall": {"value": 0.41}, "pairwise": {"metrics": {"dual_order_consistency": {"value": 0.72}}}}


def test_promotion_defaults_refuse_a_judge_at_chance_and_say_what_they_compared(tmp_path: Path):
    """Without a promotion section the gate used to pass any report; the shipped thresholds refuse a
    judge at chance, and the decision and message list each metric, value, threshold and outcome."""
    cfg = PromotionConfig()
    assert (cfg.min_overall, cfg.min_dual_order_consistency, cfg.metric) == (0.2, 0.6, None)
    storage = StorageConfig(root=str(tmp_path))
    path = _write_report(tmp_path, report=AT_CHANCE)
    with pytest.raises(PromotionRefused) as refused:
        check_promotion(cfg, storage, "r")
    message = str(refused.value)
    assert "overall 0.02 < 0.2; pairwise/dual_order_consistency 0.5 < 0.6" in message
    assert (
        f"report: {path}; compared: overall 0.02 < 0.2 (FAIL); pairwise/dual_order_consistency 0.5 < 0.6 (FAIL)"
        in message
    )
    forced = check_promotion(cfg.model_copy(update={"force": True}), storage, "r")
    assert forced["checks"] == [
        {"metric": "overall", "value": 0.02, "min": 0.2, "passed": False},
        {"metric": "pairwise/dual_order_consistency", "value": 0.5, "min": 0.6, "passed": False},
    ]
    assert forced["forced"] and not forced["passed"]
    path.write_text(json.dumps(GOOD))
    passed = check_promotion(cfg, storage, "r")
    assert passed["passed"] and [c["passed"] for c in passed["checks"]] == [True, True]
    assert passed["compared"] == "overall 0.41 >= 0.2 (pass); pairwise/dual_order_consistency 0.72 >= 0.6 (pass)"
    # A report without pairs in both orders fails the default consistency check, which says how to skip it.
    path.write_text(json.dumps({"overall": {"value": 0.41}}))
    with pytest.raises(PromotionRefused, match=r"dual_order_consistency is missing .*null turns one off"):
        check_promotion(cfg, storage, "r")
    off = cfg.model_copy(update={"min_dual_order_consistency": None})
    assert check_promotion(off, storage, "r")["compared"] == "overall 0.41 >= 0.2 (pass)"
    none = cfg.model_copy(update={"min_overall": None, "min_dual_order_consistency": None})
    assert check_promotion(none, storage, "r")["compared"] == "no thresholds set (any report passes)"


def test_promotion_defaults_from_a_config_without_a_promotion_section(tmp_path: Path, capsys):
    """``themis promote check`` (make deploy-judge) on a config that names no thresholds."""
    from themis.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "r", "storage": {"root": str(tmp_path)}}}))
    assert load_config(config).serve.promotion == PromotionConfig()
    path = _write_report(tmp_path, report=AT_CHANCE)
    assert main(["promote", "check", str(config)]) == 1
    assert "overall 0.02 < 0.2 (FAIL)" in capsys.readouterr().err
    path.write_text(json.dumps(GOOD))
    assert main(["promote", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "promotion: passed: overall 0.41 >= 0.2 (pass); pairwise/dual_order_consistency 0.72 >= 0.6 (pass)" in out
    # Shipped job configs: the cluster ones state the defaults, tiny and demo force past them.
    for name in ("cluster.yaml", "cluster-local.yaml"):
        promotion = load_config(ROOT / "jobs" / "configs" / name).serve.promotion
        assert (promotion.min_overall, promotion.min_dual_order_consistency) == (0.2, 0.6)


# --- before Ray --------------------------------------------------------------------------------------

GATE_IN_A_FRESH_PROCESS = """
import json, sys
import psutil
from themis import cli
command, config = sys.argv[1], sys.argv[2]
rc = cli.main(["promote", "check", config]) if command == "check" else cli.main([command, config])
ray = sys.modules.get("ray")
print(json.dumps({
    "rc": rc,
    "ray_initialized": bool(ray is not None and ray.is_initialized()),
    "children": [p.name() for p in psutil.Process().children(recursive=True)],
}))
"""


def _gate_in_a_fresh_process(command: str, config: Path) -> dict:
    env = os.environ | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", GATE_IN_A_FRESH_PROCESS, command, str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


def test_promotion_before_ray_themis_serve_refuses_without_starting_ray(tmp_path: Path, tiny_model_dir: Path):
    """``themis serve`` on a model below the thresholds: refused before Ray starts (no Ray in the
    process, no child process, no attempt recorded), as ``make deploy-judge``'s check is."""
    _write_report(tmp_path, report=AT_CHANCE)
    config = tmp_path / "job.yaml"
    job = {
        "run": {"name": "r", "storage": {"root": str(tmp_path)}},
        "ray": {"num_cpus": 1, "object_store_memory_mb": 200, "profile": "small_machine"},
        "serve": {"model": str(tiny_model_dir), "port": 0},
    }
    config.write_text(yaml.safe_dump(job))
    served = _gate_in_a_fresh_process("serve", config)
    assert served["rc"] == 1 and "promotion gate refused the model: overall 0.02 < 0.2" in served["stderr"]
    assert served["ray_initialized"] is False and served["children"] == []
    assert not (tmp_path / "r" / "manifest.json").exists()  # no attempt opened, nothing recorded
    checked = _gate_in_a_fresh_process("check", config)
    assert checked["rc"] == 1 and checked["ray_initialized"] is False and checked["children"] == []
