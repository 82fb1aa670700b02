"""The whole job: the shared parts plus one section per stage, and the checks that span sections
(which stages a config must be complete for, which engines each stage names)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from themis.config.ablation import AblationConfig
from themis.config.base import Strict
from themis.config.dataset import DatasetConfig
from themis.config.engines import EngineConfig
from themis.config.evaluate import EngineJudge, EvaluateConfig
from themis.config.generation import InstructionsConfig, JudgmentsConfig, ResponsesConfig
from themis.config.run import RayConfig, RunConfig
from themis.config.serve import ServeConfig
from themis.config.train import TrainConfig

STAGES = ("instructions", "responses", "judgments", "dataset", "train", "evaluate", "serve")


class PipelineConfig(Strict):
    """The whole job: shared parts plus one section per stage."""

    run: RunConfig = Field(RunConfig(), description="The run: its name, seed and storage.")
    ray: RayConfig = Field(RayConfig(), description="The Ray the stages run on.")
    engines: dict[str, EngineConfig] = Field(default_factory=dict, description="Named engines the stages refer to.")
    stages: list[Literal[STAGES]] = Field(list(STAGES), description="Stages `pipeline` runs, in order.")  # type: ignore[valid-type]
    instructions: InstructionsConfig = Field(InstructionsConfig(), description="The instructions stage.")
    responses: ResponsesConfig | None = Field(None, description="Needed by the responses stage.")
    judgments: JudgmentsConfig = Field(JudgmentsConfig(), description="The judgments stage (the teacher).")
    dataset: DatasetConfig = Field(DatasetConfig(), description="The dataset stage (split, selection, augmentation).")
    train: TrainConfig = Field(TrainConfig(), description="The train stage.")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="The evaluate stage.")
    serve: ServeConfig = Field(ServeConfig(), description="The serve stage.")
    ablation: AblationConfig | None = Field(None, description="For `themis ablation`: arms from the same judgments.")

    @model_validator(mode="after")
    def _stages_are_complete(self) -> PipelineConfig:
        for stage in self.stages_to_check():
            self.check_stage(stage)
        return self

    def stages_to_check(self) -> list[str]:
        """The stages a config must be complete for when it loads: the ones its `stages:` line lists;
        without that line, the ones whose sections it writes. So an evaluate-only config needs no
        `stages:` line and no engines it does not use; the runner checks each stage again before it runs."""
        if "stages" in self.model_fields_set:
            return list(self.stages)
        return [s for s in self.stages if s in self.model_fields_set]

    def check_stage(self, stage: str) -> None:
        """Raise if ``stage`` cannot run with this config: a missing section or an unknown engine name."""
        if stage == "responses" and self.responses is None:
            raise ValueError("the responses stage needs a `responses:` section with a pool of answer models")
        missing = {k: v for k, v in self.engine_names(stage).items() if v not in self.engines}
        if missing:
            known = ", ".join(sorted(self.engines)) or "none"
            lines = "; ".join(f"{k}={v!r}" for k, v in missing.items())
            raise ValueError(f"unknown engine name(s): {lines} (defined engines: {known})")

    def upstream_stages(self, stage: str) -> list[str]:
        """The stages whose outputs ``stage`` reads with this config (they must have ended ok)."""
        if stage == "evaluate":
            reads = ["dataset"] if any(b.name == "validation" for b in self.evaluate.suite) else []
            return reads + (["train"] if any(j.kind == "trained" for j in self.evaluate.judges) else [])
        if stage == "serve":
            return ["train"] if self.serve.model == "trained" else []
        previous = {"responses": "instructions", "judgments": "responses", "dataset": "judgments", "train": "dataset"}
        return [previous[stage]] if stage in previous else []

    def engine_names(self, stage: str) -> dict[str, str]:
        """The engine names a stage refers to, keyed by where they are set."""
        if stage == "instructions":
            return {
                "instructions.engine": self.instructions.engine,
                "instructions.classifier_engine": self.instructions.classifier_engine,
            }
        if stage == "responses" and self.responses:
            return {f"responses.pool[{i}].engine": m.engine for i, m in enumerate(self.responses.pool)}
        if stage == "judgments":
            return {"judgments.engine": self.judgments.engine}
        if stage == "dataset" and self.dataset.augment.paraphrase.enabled:
            return {"dataset.augment.paraphrase (judgments.engine)": self.judgments.engine}  # the teacher rewords
        if stage == "evaluate":
            return {
                f"evaluate.judges[{i}].engine": j.engine
                for i, j in enumerate(self.evaluate.judges)
                if isinstance(j, EngineJudge)
            }
        return {}
