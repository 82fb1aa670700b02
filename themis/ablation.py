"""An ablation a user can run: arms trained from the same judgments, compared on the same items.

``themis ablation CONFIG`` runs the config's shared stages (instructions, responses, judgments)
once, in ``<run.name>``. Each arm of ``ablation.arms`` is the same config with its overrides (e.g.
``dataset.selection.strategy=random``), run as ``<run.name>-<arm>``: the shared judgments are
copied in, then its dataset, train and evaluate stages run. The dataset stage splits before it
selects, so every arm's validation split holds the same items, and ``themis evaluate compare``
pairs them (a paired bootstrap). The comparison lands in ``<run.name>/ablation/``: ``report.md``
(every arm against the baseline), ``summary.json``.

An arm runs with or without custom-prompt augmentation by its overrides (``dataset.augment.*``,
e.g. ``dataset.augment.subsets.enabled=true``). Augmentation only adds training records after
selection, so augmented and plain arms still share their validation items, and the selection's
``target`` still counts teacher judgments; the table shows the records augmentation added.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from themis.config import (
    AblationConfig,
    ConfigError,
    PipelineConfig,
    TrainedJudge,
    apply_override,
    format_validation_error,
    parse_override,
)
from themis.evaluation.compare import compare_text
from themis.storage import RunStore

SHARED_STAGES = ("instructions", "responses", "judgments")
ARM_STAGES = ("dataset", "train", "evaluate")


def arm_configs(cfg: PipelineConfig) -> dict[str, PipelineConfig]:
    """Every arm's config (validated before anything runs): this one with the arm's overrides,
    its own run name, and the stages after the judgments."""
    ablation = require_ablation(cfg)
    # Only what the config sets: defaults stay defaults (and one-of-two fields stay one).
    base = cfg.model_dump(mode="json", exclude={"ablation"}, exclude_unset=True)
    arms = {}
    for arm in ablation.arms:
        data = copy.deepcopy(base)  # overrides write into nested sections
        data.setdefault("run", {})["name"] = f"{cfg.run.name}-{arm.name}"
        data["stages"] = [s for s in cfg.stages if s in ARM_STAGES]
        for text in arm.overrides:
            apply_override(data, *parse_override(text))
        try:
            arms[arm.name] = PipelineConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"ablation arm {arm.name!r}:\n{format_validation_error(exc)}") from None
    return arms


def require_ablation(cfg: PipelineConfig) -> AblationConfig:
    if cfg.ablation is None:
        raise ConfigError("this config has no `ablation:` section (arms with their overrides)")
    if "evaluate" not in cfg.stages or "train" not in cfg.stages:
        raise ConfigError("an ablation compares trained judges: its stages must include train and evaluate")
    return cfg.ablation


def run_ablation(cfg: PipelineConfig) -> dict[str, Any]:
    """Shared stages once, then every arm; returns the summary written to ``ablation/summary.json``."""
    from themis import runner

    arms = arm_configs(cfg)
    for stage in (s for s in cfg.stages if s in SHARED_STAGES):
        runner.run_stage(stage, cfg)
    source = RunStore(cfg.run.storage, cfg.run.name)
    for name, arm in arms.items():
        runner.say(f"ablation: arm {name} (run {arm.run.name})")
        share_judgments(source, RunStore(arm.run.storage, arm.run.name))
        for stage in arm.stages:
            runner.run_stage(stage, arm)
    return write_comparison(cfg, arms, source)


def share_judgments(source: RunStore, arm: RunStore) -> None:
    """The shared run's judgments as the arm's own, recorded in its manifest as copied."""
    if source.stage_status("judgments") != "ok":
        raise ConfigError(
            f"no finished judgments in {source.uri_root}: list judgments (and the stages before) in stages"
        )
    rel = "judgments/data.parquet"
    arm.write_table(rel, source.read_table(rel))
    entry = source.manifest()["stages"]["judgments"]
    arm.record_stage("judgments", entry | {"copied_from": source.uri(rel)})


def write_comparison(cfg: PipelineConfig, arms: dict[str, PipelineConfig], source: RunStore) -> dict[str, Any]:
    """Every arm against the baseline, per trained judge: ``ablation/report.md`` and ``summary.json``."""
    baseline = require_ablation(cfg).baseline_arm
    judges = [j.name for j in cfg.evaluate.judges if isinstance(j, TrainedJudge)]
    summary: dict[str, Any] = {"baseline": baseline, "arms": {}}
    sections = [f"# Ablation {cfg.run.name}: every arm against {baseline}", ""]
    for name, arm in arms.items():
        summary["arms"][name] = arm_summary(arm, judges)
    sections += [arm_table(summary), ""]
    for name in arms:
        if name == baseline:
            continue
        for judge in judges:
            a, b = (report_folder(arms[n], judge) for n in (name, baseline))
            text = compare_text(a, b, cfg.run.storage, names=(name, baseline))
            sections += [f"## {name} vs {baseline} ({judge})", "", text, ""]
    source.write_json("ablation/summary.json", summary)
    source.write_text("ablation/report.md", "\n".join(sections))
    summary["report"] = source.uri("ablation/report.md")
    return summary


def report_folder(arm: PipelineConfig, judge: str) -> str:
    return RunStore(arm.run.storage, arm.run.name).uri("reports", "evaluation", judge)


def arm_summary(arm: PipelineConfig, judges: list[str]) -> dict[str, Any]:
    """What an arm trained on and how its judges scored (from its manifest)."""
    stages = RunStore(arm.run.storage, arm.run.name).manifest()["stages"]
    dataset = stages.get("dataset", {})
    evaluate = stages.get("evaluate", {}).get("details", {})
    selection = dataset.get("details", {}).get("selection", {})
    augmentation = dataset.get("details", {}).get("augmentation", {})
    return {
        "run": arm.run.name,
        "train_records": dataset.get("counts", {}).get("train"),
        "validation_records": dataset.get("counts", {}).get("validation"),
        "selection": {k: selection.get(k) for k in ("strategy", "target", "outlier_z")},
        "selected_by_scenario_label": selection.get("selected_by_scenario_label"),
        # Records augmentation added to the training split (0 without it), per kind.
        "augmentation": {"rows_added": augmentation.get("rows_added", 0), "by_kind": augmentation.get("by_kind", {})},
        "judges": {j: evaluate.get(j) for j in judges},
    }


def arm_table(summary: dict[str, Any]) -> str:
    """One line per arm: its selection, its training set (of which augmented), and each judge's overall score."""
    lines = [
        "| arm | strategy | target | train records | augmented | judge | overall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, arm in summary["arms"].items():
        for judge, headline in arm["judges"].items():
            overall = (headline or {}).get("overall")
            shown = "n/a" if overall is None else f"{overall:.4f}"
            sel = arm["selection"]
            lines.append(
                f"| {name} | {sel['strategy'] or 'off'} | {sel['target'] or ''} | {arm['train_records']} "
                f"| {arm['augmentation']['rows_added']} | {judge} | {shown} |"
            )
    return "\n".join(lines)
