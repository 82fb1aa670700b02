"""Runs stages: opens the run's store, starts Ray, times the stage and records it in the manifest."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any

from themis.config import STAGES, ConfigError, PipelineConfig
from themis.runtime import init_ray, package_versions
from themis.stages import StageReport
from themis.storage import RunStore

NEEDS_RAY = {"instructions", "responses", "judgments", "train", "serve"}  # evaluate starts Ray only for engine judges


def say(message: str) -> None:
    """Progress for the person watching, on stderr so stdout stays clean for data."""
    print(f"[themis] {message}", file=sys.stderr, flush=True)


def run_stage(name: str, cfg: PipelineConfig, **kwargs: Any) -> StageReport:
    """Run one stage and record it (or its failure) in the run's manifest."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    try:
        cfg.check_stage(name)
    except ValueError as exc:
        raise ConfigError(f"cannot run {name}: {exc}") from None
    store = RunStore(cfg.run.storage, cfg.run.name)
    if name in NEEDS_RAY:
        init_ray(cfg.ray)
    module = importlib.import_module(f"themis.stages.{name}")
    say(f"{name}: started (run root {store.uri_root})")
    start = time.monotonic()
    try:
        report = module.run(cfg, store, **kwargs)
    except Exception as exc:
        store.record_stage(name, _entry(cfg, name, time.monotonic() - start) | {"status": "failed", "error": str(exc)})
        raise
    seconds = time.monotonic() - start
    entry = _entry(cfg, name, seconds) | {
        "status": "ok",
        "inputs": report.inputs,
        "outputs": report.outputs,
        "counts": report.counts,
        "details": report.details,
    }
    store.record_stage(name, entry)
    say(f"{name}: done in {seconds:.1f}s: {report.summary()}")
    return report


def run_pipeline(cfg: PipelineConfig) -> dict[str, StageReport]:
    """Every stage in ``cfg.stages``, in order; stops at the first failure."""
    reports = {}
    start = time.monotonic()
    for i, name in enumerate(cfg.stages, 1):
        say(f"stage {i}/{len(cfg.stages)}: {name}")
        reports[name] = run_stage(name, cfg)
    manifest = RunStore(cfg.run.storage, cfg.run.name).uri("manifest.json")
    say(f"pipeline finished in {time.monotonic() - start:.1f}s; manifest: {manifest}")
    return reports


def _entry(cfg: PipelineConfig, name: str, seconds: float) -> dict[str, Any]:
    section = getattr(cfg, name)
    return {
        "config": {
            "stage": section.model_dump(mode="json"),
            "run": cfg.run.model_dump(mode="json"),
            "engines": {k: v.model_dump(mode="json") for k, v in cfg.engines.items()},
        },
        "duration_s": round(seconds, 2),
        "versions": package_versions(),
    }
