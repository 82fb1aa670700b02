"""The promotion gate: a model is served only if its evaluation report exists and meets the serve
config's thresholds (normalised overall, one named metric, dual-order consistency).

The thresholds ship with defaults (``PromotionConfig`` says which and why): without a word from the
user the gate still refuses a judge no better than chance or one that follows the position of the
responses. The report is the evaluate stage's ``<run>/reports/evaluation/<judge>/report.json`` (or
a path the config names). The decision lists every comparison (metric, value, threshold, pass or
fail); a refusal names them and the report's path; ``promotion.force`` (``--force``) serves anyway
and the decision goes into the manifest. Reading a report creates nothing in the run root. Pure
apart from storage reads: no Ray or torch, so callers can run it before Ray starts.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from themis.config import PromotionConfig, StorageConfig


class PromotionRefused(ValueError):
    """The gate refused the model; the message says which threshold and where the report is."""


def report_uri(cfg: PromotionConfig, storage: StorageConfig, run_name: str) -> str:
    """Where the gate looks for the report."""
    if cfg.report:
        return cfg.report
    return posixpath.join(storage.root.rstrip("/"), run_name, "reports", "evaluation", cfg.judge, "report.json")


def read_report(uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    """The report at ``uri``, or None if there is none (a read that creates no folders)."""
    from themis.storage import StorageError, read_text_at

    try:
        return json.loads(read_text_at(uri, storage))
    except StorageError:
        return None


def compare(report: dict[str, Any], cfg: PromotionConfig) -> list[dict[str, Any]]:
    """Every threshold that is set: the metric, the report's value (None if absent), the threshold
    and whether it passes (an absent value fails)."""
    checks = [
        ("overall", cfg.min_overall, (report.get("overall") or {}).get("value")),
        (cfg.metric or "", cfg.min_metric, metric_value(report, cfg.metric) if cfg.metric else None),
        (
            "pairwise/dual_order_consistency",
            cfg.min_dual_order_consistency,
            metric_value(report, "pairwise/dual_order_consistency"),
        ),
    ]
    return [
        {"metric": name, "value": value, "min": minimum, "passed": value is not None and value >= minimum}
        for name, minimum, value in checks
        if minimum is not None
    ]


def describe(check: dict[str, Any]) -> str:
    """One comparison as text: ``overall 0.31 < 0.5``, ``overall 0.31 >= 0.2`` or a missing value."""
    name, value, minimum = check["metric"], check["value"], check["min"]
    if value is None:
        return f"{name} is missing from the report (needs >= {minimum})"
    return f"{name} {value:.4g} {'>=' if check['passed'] else '<'} {minimum}"


def failed_thresholds(report: dict[str, Any], cfg: PromotionConfig) -> list[str]:
    """Each threshold the report misses, as ``name value < min`` (an absent value fails too)."""
    return [describe(c) for c in compare(report, cfg) if not c["passed"]]


def compared_text(checks: list[dict[str, Any]]) -> str:
    """Every comparison with its outcome, for messages: ``overall 0.31 >= 0.2 (pass); ...``."""
    if not checks:
        return "no thresholds set (any report passes)"
    return "; ".join(f"{describe(c)} ({'pass' if c['passed'] else 'FAIL'})" for c in checks)


def metric_value(report: dict[str, Any], name: str) -> float | None:
    """``section/metric`` from a report's metrics, e.g. pairwise/accuracy; None if absent."""
    section, _, metric = name.partition("/")
    entry = (report.get(section) or {}).get("metrics", {}).get(metric)
    value = entry.get("value") if isinstance(entry, dict) else entry
    return float(value) if isinstance(value, int | float) else None


def check_promotion(cfg: PromotionConfig, storage: StorageConfig, run_name: str) -> dict[str, Any]:
    """Pass, or raise PromotionRefused; with ``force`` never raise. Returns the decision for the
    manifest: the report path, what failed, and whether the gate was forced."""
    uri = report_uri(cfg, storage, run_name)
    report = read_report(uri, storage)
    checks = [] if report is None else compare(report, cfg)
    failed = ["no evaluation report (run the evaluate stage)"] if report is None else failed_thresholds(report, cfg)
    decision = {
        "report": uri,
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "compared": compared_text(checks) if report is not None else "nothing (no report)",
        "forced": bool(failed and cfg.force),
    }
    if failed and not cfg.force:
        raise PromotionRefused(
            f"promotion gate refused the model: {'; '.join(failed)} (report: {uri}; compared: "
            f"{decision['compared']}); fix the model, or the thresholds in serve.promotion (null turns one "
            "off), or serve anyway with --force (serve.promotion.force=true), which the manifest records"
        )
    return decision


def force_rayservice(manifests: str) -> str:
    """``themis promote force-rayservice`` (``make deploy-judge FORCE=1``): rendered manifests with
    every RayService application's ``args.force`` set and the override recorded as an annotation on
    the RayService."""
    import yaml

    docs = [d for d in yaml.safe_load_all(manifests) if d]
    for doc in docs:
        if doc.get("kind") != "RayService":
            continue
        serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        for app in serve_config.get("applications", []):
            app.setdefault("args", {})["force"] = True
        doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config, sort_keys=False)
        doc["metadata"].setdefault("annotations", {})["themis.dev/promotion-forced"] = "true"
    return yaml.safe_dump_all(docs, sort_keys=False)
