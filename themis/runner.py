"""Runs stages: checks inputs, opens an attempt, starts Ray, times the stage, publishes its outputs
and records it in the manifest.

Order matters for a user's time and money: config, the run root and the stages this one reads
from are checked first, then the stage's own inputs (``check(cfg)`` where a stage has one, e.g. a
missing ``user_file``), and only then does Ray start and an engine load. The manifest marks the
stage ``running`` while it runs, so a stage killed midway never looks finished to the next one.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

from themis.config import ConfigError, PipelineConfig
from themis.redact import redact_tree
from themis.runtime import init_ray, package_versions
from themis.stages import StageReport, get_stage
from themis.storage import RunStore

NEEDS_RAY = {"instructions", "responses", "judgments", "train", "serve"}  # evaluate starts Ray only for engine judges


def say(message: str) -> None:
    """Progress for the person watching, on stderr so stdout stays clean for data."""
    print(f"[themis] {message}", file=sys.stderr, flush=True)


def run_stage(name: str, cfg: PipelineConfig, **kwargs: Any) -> StageReport:
    """Run one stage and record it (or its failure) in the run's manifest."""
    stage = get_stage(name)
    try:
        cfg.check_stage(name)
    except ValueError as exc:
        raise ConfigError(f"cannot run {name}: {exc}") from None
    store = RunStore(cfg.run.storage, cfg.run.name)
    check_upstream(cfg, name, store)
    module = stage.load()
    if hasattr(module, "check"):
        module.check(cfg)  # inputs first: a bad file fails in seconds, before Ray or any engine
    attempt = store.begin_attempt(name)
    store.record_stage(
        name, _entry(cfg, name, 0.0) | {"status": "running", "attempt": attempt.uri("_attempts", attempt.attempt_id)}
    )
    if name in NEEDS_RAY:
        init_ray(cfg.ray)
    say(f"{name}: started (run root {store.uri_root})")
    start = time.monotonic()
    try:
        report = module.run(cfg, attempt, **kwargs)
        attempt.publish()
    except BaseException as exc:
        failed = {"status": "failed", "error": str(exc) or type(exc).__name__}
        store.record_stage(name, _entry(cfg, name, time.monotonic() - start) | failed)
        raise
    seconds = time.monotonic() - start
    entry = _entry(cfg, name, seconds) | {
        "status": "ok",
        "inputs": report.inputs,
        "outputs": report.outputs,
        "counts": report.counts,
        "details": redact_tree(report.details),
    }
    store.record_stage(name, entry)
    say(f"{name}: done in {seconds:.1f}s: {report.summary()}")
    return report


class StageOrderError(ValueError):
    """A stage asked to run before the stage it reads from ended ok."""


def check_upstream(cfg: PipelineConfig, name: str, store: RunStore) -> None:
    """Refuse to read another stage's outputs unless its last run in this run root ended ok."""
    for upstream in cfg.upstream_stages(name):
        status = store.stage_status(upstream)
        if status != "ok":
            state = "never ran here" if status is None else f"its last run is {status!r}"
            raise StageOrderError(
                f"cannot run {name}: it reads the outputs of {upstream}, and {upstream} {state} in "
                f"{store.uri_root}. Run it first: themis {upstream} CONFIG"
            )


def run_pipeline(cfg: PipelineConfig, config_args: list[str] | None = None) -> dict[str, StageReport]:
    """Every stage in ``cfg.stages``, in order; stops at the first failure. Ends with a summary of
    what each stage produced and the commands to serve and inspect the run (``config_args``, the
    config path and its overrides, go into the serve command; without them, the command line that
    ran is reused)."""
    from themis.ray_noise import hold_known_lines
    from themis.summary import render_summary

    reports = {}
    start = time.monotonic()
    # Ray's known harmless error-level lines are held back on a small machine (the demo's profile)
    # and printed if a stage fails; a cluster user sees Ray's output as Ray prints it.
    with hold_known_lines(enabled=cfg.ray.profile == "small_machine"):
        for i, name in enumerate(cfg.stages, 1):
            say(f"stage {i}/{len(cfg.stages)}: {name}")
            reports[name] = run_stage(name, cfg)
    store = RunStore(cfg.run.storage, cfg.run.name)
    say(f"pipeline finished in {time.monotonic() - start:.1f}s; manifest: {store.uri('manifest.json')}")
    summary = render_summary(store.manifest(), list(cfg.stages), serve_command(config_args), view_command(cfg, store))
    for line in summary.splitlines():
        say(line)
    return reports


def serve_command(config_args: list[str] | None) -> str:
    """``themis serve`` for this run's config: the given config and overrides, else those of the
    ``themis pipeline`` command that is running, else a placeholder."""
    prog = sys.argv[0] if os.path.basename(sys.argv[0]) == "themis" else "themis"
    if config_args is None and sys.argv[1:2] == ["pipeline"] and len(sys.argv) > 2:
        config_args = sys.argv[2:]
    return shlex.join([prog, "serve", *(config_args or ["CONFIG"])])


def view_command(cfg: PipelineConfig, store: RunStore) -> str:
    """The ``themis view`` command for this run, as the user can paste it (``.venv/bin/themis`` when
    that is what ran, as under ``make demo``)."""
    prog = sys.argv[0] if os.path.basename(sys.argv[0]) == "themis" else "themis"
    endpoint = f" --s3-endpoint {cfg.run.storage.s3_endpoint}" if cfg.run.storage.s3_endpoint else ""
    return f"{prog} view {store.uri_root}{endpoint}"


def _entry(cfg: PipelineConfig, name: str, seconds: float) -> dict[str, Any]:
    """The manifest entry's config part: the stage's section, the run, and only the engines it
    uses, with every credential redacted."""
    section = getattr(cfg, name)
    used = set(cfg.engine_names(name).values())
    config = {
        "stage": section.model_dump(mode="json") if section is not None else None,
        "run": cfg.run.model_dump(mode="json"),
        "engines": {k: v.model_dump(mode="json") for k, v in cfg.engines.items() if k in used},
    }
    return {
        "config": redact_tree(config),
        "duration_s": round(seconds, 2),
        "versions": package_versions(),
    }
