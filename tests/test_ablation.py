"""The ablation: arms from one config, and the CPU config end to end on a tiny model (random-N
against IFD-N, and IFD-N with augmentation, from the same judgments, compared on the same
validation items)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from themis.ablation import arm_configs
from themis.config import ConfigError, load_config

CPU = Path(__file__).parents[1] / "jobs" / "configs" / "ablation_cpu.yaml"


def test_ablation_arms_are_the_config_with_their_overrides() -> None:
    cfg = load_config(CPU)
    arms = arm_configs(cfg)
    assert list(arms) == ["random", "ifd", "ifd-aug"] and cfg.ablation.baseline_arm == "random"
    random, ifd = arms["random"], arms["ifd"]
    assert (random.run.name, ifd.run.name) == ("ablation-cpu-random", "ablation-cpu-ifd")
    assert random.stages == ifd.stages == ["dataset", "train", "evaluate"]
    assert (random.dataset.selection.strategy, random.dataset.selection.outlier_z) == ("random", None)
    assert (ifd.dataset.selection.strategy, ifd.dataset.selection.outlier_z) == ("highest_ifd", 3.0)
    assert random.dataset.validation_fraction == ifd.dataset.validation_fraction == cfg.dataset.validation_fraction
    assert cfg.dataset.selection.outlier_z == 3.0  # an arm's overrides never leak into the config or other arms


def test_ablation_augment_arm_only_adds_augmentation() -> None:
    cfg = load_config(CPU)
    arms = arm_configs(cfg)
    ifd, aug = arms["ifd"], arms["ifd-aug"]
    assert not cfg.dataset.augment.enabled and not ifd.dataset.augment.enabled and aug.dataset.augment.enabled
    assert aug.dataset.augment.scales.names == ["0-1", "1-10"] and aug.dataset.augment.paraphrase.enabled
    assert aug.dataset.selection == ifd.dataset.selection  # the same selection, with or without augmentation


def test_ablation_arms_cannot_change_what_they_share() -> None:
    with pytest.raises(ConfigError, match="cannot override 'judgments.sampling.max_tokens'"):
        load_config(CPU, ["ablation.arms=[{name: a, overrides: [judgments.sampling.max_tokens=3]}, {name: b}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(CPU, ["ablation.arms=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match="(?s)arm 'x'.*needs selection.target"):
        arm_configs(
            load_config(
                CPU,
                [
                    "ablation.baseline=y",
                    "ablation.arms=[{name: x, overrides: [dataset.selection.strategy=random]}, {name: y}]",
                ],
            )
        )


@pytest.mark.slow  # minutes on 2 cores: three arms each train and evaluate
@pytest.mark.integration
def test_ablation_cpu_config_end_to_end(ray_local, tiny_model_dir: Path, tmp_path: Path) -> None:
    from themis import cli

    overrides = [
        f"engines.local.model={tiny_model_dir}",
        f"train.base_model={tiny_model_dir}",
        f"run.storage.root={tmp_path}",
    ]
    assert cli.main(["ablation", str(CPU), *overrides]) == 0
    shared = tmp_path / "ablation-cpu"
    summary = json.loads((shared / "ablation/summary.json").read_text())
    random, ifd, aug = (summary["arms"][a] for a in ("random", "ifd", "ifd-aug"))
    assert random["validation_records"] == ifd["validation_records"] == aug["validation_records"] > 0  # same items
    assert random["train_records"] <= 6 and ifd["train_records"] <= 6
    assert random["augmentation"]["rows_added"] == ifd["augmentation"]["rows_added"] == 0
    added = aug["augmentation"]["rows_added"]
    assert aug["train_records"] == ifd["train_records"] + added  # the same selection, plus its augmented records
    assert added == sum(aug["augmentation"]["by_kind"].values())
    assert (random["selection"]["strategy"], ifd["selection"]["strategy"]) == ("random", "highest_ifd")
    report = (shared / "ablation/report.md").read_text()
    assert "## ifd vs random (trained)" in report and "paired bootstrap" in report
    for arm in ("random", "ifd", "ifd-aug"):
        manifest = json.loads((tmp_path / f"ablation-cpu-{arm}/manifest.json").read_text())
        assert manifest["stages"]["judgments"]["copied_from"].endswith("ablation-cpu/judgments/data.parquet")
        assert all(manifest["stages"][s]["status"] == "ok" for s in ("dataset", "train", "evaluate"))
    ifd_steps = json.loads((tmp_path / "ablation-cpu-ifd/dataset/filter_report.json").read_text())["steps"]
    assert [s["step"] for s in ifd_steps] == ["filters", "ifd_scoring", "ifd_outliers", "selection"]
    aug_report = json.loads((tmp_path / "ablation-cpu-ifd-aug/dataset/filter_report.json").read_text())
    assert [s["step"] for s in aug_report["steps"]] == [*(s["step"] for s in ifd_steps), "augmentation"]
    assert aug_report["augmentation"]["by_split"] == {"train": added, "validation": 0}
    assert "## ifd-aug vs random (trained)" in report
