"""The pipeline run twice on one run root, as a user runs ``make demo`` twice in a row: the second
run succeeds, every teacher call comes from the first run's cache and training resumes from its
last checkpoint instead of training again (issue 24: the rerun's train stage failed copying the
first run's TensorBoard events)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_pipeline import tiny_config
from themis import runner

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rerun_finished_pipeline_succeeds_reusing_every_teacher_call(ray_local, tiny_model_dir: Path, tmp_path: Path):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    first = runner.run_pipeline(cfg)
    again = runner.run_pipeline(cfg)
    manifest = runner.RunStore(cfg.run.storage, cfg.run.name).manifest()
    assert [(name, e["status"]) for name, e in manifest["stages"].items()] == [(n, "ok") for n in cfg.stages]
    for stage in ("instructions", "responses", "judgments"):
        usage = again[stage].details["usage"]
        assert usage and all(u["reused"] == u["calls"] > 0 for u in usage.values()), (stage, usage)
    train = again["train"]
    assert train.counts["resumed_from_step"] == train.counts["steps"] == first["train"].counts["steps"]
    assert train.details["train_loss"] == first["train"].details["train_loss"]  # not trained again
    assert (tmp_path / cfg.run.name / "model" / "model.safetensors").is_file()
    events = list((tmp_path / cfg.run.name / "train" / "tensorboard").glob("events.out.tfevents*"))
    assert len(events) == 2  # the first run's curve kept, the rerun's file beside it
