"""The dataset stage's section: the split, IFD selection, the scenario mix and augmentation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from themis.config.base import DEVICE_HELP, DTYPE_HELP, NUM_THREADS_HELP, ActorPool, Dtype, Sampling, Strict


class IFDScorerConfig(Strict):
    """The model that scores IFD, and the Ray Data actor pool it runs in (forward passes only)."""

    model: str | None = Field(
        None, description="A Hugging Face folder or 'builtin:smollm2-135m-instruct'; None = train.base_model."
    )
    device: str = Field("auto", description=DEVICE_HELP)
    dtype: Dtype = Field("auto", description=DTYPE_HELP)
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass (a record is two: A given Q, A alone).")
    num_threads: int | None = Field(None, ge=1, description=NUM_THREADS_HELP)
    max_seq_len: int | None = Field(None, ge=32, description="Tokens of Q + A; None = train.max_seq_len.")
    pool: ActorPool = Field(
        ActorPool(),
        description="Actors (min, max), CPUs/GPUs each, records per actor call (default 4 x batch_size; a "
        "resumed stage re-scores at most this many per actor).",
    )


class SelectionConfig(Strict):
    """IFD selection of the training split (the paper's data selection)."""

    strategy: Literal["off", "all", "highest_ifd", "stratified", "random"] = Field(
        "off",
        description="off: no selection, no IFD. all: drop IFD outliers, keep the rest. highest_ifd: the paper's "
        "rule, the `target` records of highest IFD. stratified: `target` records spread over (scenario, label) "
        "in proportion to the pool, highest IFD within each. random: `target` records at random (the baseline).",
    )
    target: int | None = Field(
        None, ge=1, description="Training records to keep; None = all that remain (only with strategy=all)."
    )
    outlier_z: float | None = Field(
        3.0,
        gt=0,
        description="Drop records whose IFD lies more than this many standard deviations from their "
        "scenario's mean (the paper: 3); None = no outlier removal (then random needs no IFD at all).",
    )
    scorer: IFDScorerConfig = Field(IFDScorerConfig(), description="The model that scores IFD and its actor pool.")

    @field_validator("strategy", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _target_fits_strategy(self) -> SelectionConfig:
        if self.strategy in ("highest_ifd", "stratified", "random") and self.target is None:
            raise ValueError(f"selection.strategy={self.strategy} needs selection.target (records to keep)")
        if self.strategy in ("off", "all") and self.target is not None:
            raise ValueError(f"selection.target applies to highest_ifd, stratified and random, not {self.strategy}")
        return self

    @property
    def needs_ifd(self) -> bool:
        """Whether the stage scores IFD: every strategy but off, except random without outlier removal."""
        if self.strategy == "off":
            return False
        return self.strategy != "random" or self.outlier_z is not None


class ScenarioMix(Strict):
    """How much of each scenario the training split keeps, applied after selection."""

    weights: dict[str, float] | None = Field(
        None,
        description="Scenario id -> share of the training split (normalised); the split is trimmed to the "
        "largest size that meets every share. Unlisted scenarios get weight 0 (dropped).",
    )
    quotas: dict[str, int] | None = Field(
        None, description="Scenario id -> most training records of that scenario; unlisted scenarios are not capped."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ScenarioMix:
        if (self.weights is None) == (self.quotas is None):
            raise ValueError("dataset.mix takes weights or quotas, exactly one")
        given = self.weights or self.quotas or {}
        if any(v < 0 for v in given.values()):
            raise ValueError("dataset.mix: weights and quotas cannot be negative")
        if self.weights is not None and not any(v > 0 for v in self.weights.values()):
            raise ValueError("dataset.mix.weights: at least one scenario needs a positive weight")
        # Imported here, not at the top: themis.judge imports themis.config (scenarios is pure data).
        from themis.judge.scenarios import load_scenarios

        unknown = sorted(set(given) - set(load_scenarios()))
        if unknown:
            raise ValueError(f"dataset.mix: unknown scenario id(s) {unknown}; known: {sorted(load_scenarios())}")
        return self


class ParaphraseConfig(Strict):
    """The teacher rewrites each scenario's criteria (names and descriptions) into ``variants``."""

    enabled: bool = Field(False, description="Paraphrase the criteria (teacher calls, cached in the run).")
    variants: int = Field(2, ge=1, description="Paraphrases per scenario (one teacher call each).")
    per_record: int = Field(
        1, ge=1, description="Paraphrases each training record is re-rendered with (at most `variants`)."
    )
    sampling: Sampling = Field(
        Sampling(max_tokens=768, temperature=0.9),
        description="The paraphrase calls' sampling; variants differ by seed, so keep a temperature above 0.",
    )

    @model_validator(mode="after")
    def _per_record_fits(self) -> ParaphraseConfig:
        if self.per_record > self.variants:
            raise ValueError(f"paraphrase.per_record ({self.per_record}) cannot exceed variants ({self.variants})")
        return self


class SubsetsConfig(Strict):
    """Random subsets of a record's scored criteria, the overall score re-predicted by a regression."""

    enabled: bool = Field(False, description="Add criteria-subset records (single and reference grading).")
    per_record: int = Field(1, ge=1, description="Distinct subsets drawn per training record.")
    min_criteria: int = Field(2, ge=1, description="Fewest criteria in a subset.")
    min_fit_rows: int = Field(
        5, ge=2, description="Fewest teacher judgments (with every subset criterion scored) to fit a regression on."
    )


class ScalesAugmentConfig(Strict):
    """Records re-rendered on other score scales, targets converted by ``scales.convert_score``."""

    names: list[str] = Field(
        default_factory=list, description='Scales to add, e.g. ["0-1", "1-3", "1-10"]; empty = none.'
    )
    per_scale: int = Field(8, ge=1, description="Training records (single/reference) drawn for each scale.")

    @field_validator("names")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        # Imported here, not at the top: themis.judge imports themis.config (scales is a pure table).
        from themis.judge.scales import SCALES, TEACHER_SCALE

        unknown = [n for n in names if n not in SCALES]
        if unknown:
            raise ValueError(f"unknown scale(s) {unknown}; known: {', '.join(SCALES)}")
        if TEACHER_SCALE in names:
            raise ValueError(f"{TEACHER_SCALE} is the teacher's own scale: nothing to convert")
        if len(set(names)) != len(names):
            raise ValueError(f"scales listed twice: {names}")
        return names


class AugmentConfig(Strict):
    """Custom-prompt augmentation of the training split (after selection; validation is never augmented)."""

    paraphrase: ParaphraseConfig = Field(ParaphraseConfig(), description="Criteria reworded by the teacher.")
    subsets: SubsetsConfig = Field(SubsetsConfig(), description="Records graded on a subset of their criteria.")
    scales: ScalesAugmentConfig = Field(ScalesAugmentConfig(), description="Records re-scored on other scales.")
    seed: int | None = Field(None, description="Seed of every augmentation choice; None = run.seed.")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self.paraphrase.enabled or self.subsets.enabled or bool(self.scales.names)


class DatasetConfig(Strict):
    """The dataset stage: the teacher's judgments turned into training and validation splits."""

    balance: bool = Field(True, description="Sub-sample so every score / verdict is equally common.")
    balance_floor: int = Field(
        2, ge=1, description="When balancing, keep at least this many per class even if a class is rarer."
    )
    swap_pairs: bool = Field(True, description="Add a copy of every pair with responses swapped.")
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of instructions held out for validation (split by instruction)."
    )
    selection: SelectionConfig = Field(
        SelectionConfig(), description="IFD selection of the training split (after the split: validation is untouched)."
    )
    mix: ScenarioMix | None = Field(None, description="Per-scenario weights or quotas, applied after selection.")
    augment: AugmentConfig = Field(
        AugmentConfig(),
        description="Custom-prompt augmentation (paraphrased criteria, criteria subsets, other scales) of the "
        "selected training records; off by default.",
    )
