"""The ablation section: arms trained from the same judgments, measured on the same items."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from themis.config.base import Strict, plain_name_check

# The sections every arm shares: an arm may change what happens after the judgments, never them,
# the run or the split, or the arms would not be measured on the same validation items.
ABLATION_SHARED = ("run", "ray", "stages", "ablation", "instructions", "responses", "judgments")


class AblationArm(Strict):
    """One variant: this config with a few overrides of the downstream sections."""

    name: Annotated[str, plain_name_check("ablation arm name")] = Field(
        description="The arm's name: its run is <run.name>-<name> (a plain name)."
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="key=value overrides of this config for the arm, e.g. dataset.selection.strategy=random.",
    )

    @field_validator("overrides")
    @classmethod
    def _downstream_only(cls, overrides: list[str]) -> list[str]:
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key.split(".")[0] in ABLATION_SHARED or key == "dataset.validation_fraction":
                raise ValueError(f"an arm cannot override {key!r}: every arm shares it (judgments, run, split)")
        return overrides


class AblationConfig(Strict):
    """Arms trained from the same judgments and measured on the same validation items
    (`themis ablation CONFIG`): e.g. random-N against IFD-selected-N."""

    arms: list[AblationArm] = Field(min_length=2, description="The variants; each runs dataset, train, evaluate.")
    baseline: str | None = Field(None, description="The arm every other is compared with; None = the first.")

    @model_validator(mode="after")
    def _names(self) -> AblationConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"ablation arm names must be unique: {names}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"ablation.baseline {self.baseline!r} is not an arm ({', '.join(names)})")
        return self

    @property
    def baseline_arm(self) -> str:
        """The baseline arm's name."""
        return self.baseline or self.arms[0].name
