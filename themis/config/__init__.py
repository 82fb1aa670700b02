"""Job configuration: one pydantic model for the pipeline, loaded from YAML with key=value overrides.

Every stage reads its own section (``cfg.judgments``, ``cfg.train`` ...) plus the shared parts
(``run``, ``ray``, ``engines``). Unknown keys are rejected so that a typo never silently falls
back to a default. One module per section; every public name is importable from here.

May import: pydantic, yaml, and (for the names a section validates) ``themis.judge.scales`` and
``themis.judge.scenarios``. Pure: no Ray, torch, DeepSpeed or vLLM.
"""

from themis.config.ablation import ABLATION_SHARED, AblationArm, AblationConfig
from themis.config.base import ActorPool, ConfigError, Dtype, Sampling, Strict, plain_name
from themis.config.dataset import (
    AugmentConfig,
    DatasetConfig,
    IFDScorerConfig,
    ParaphraseConfig,
    ScalesAugmentConfig,
    ScenarioMix,
    SelectionConfig,
    SubsetsConfig,
)
from themis.config.engines import (
    EngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
    VLLMSettings,
)
from themis.config.evaluate import (
    PAIRWISE_LABELS,
    SCORE_LABELS,
    BenchmarkConfig,
    BootstrapConfig,
    EngineJudge,
    EvaluateConfig,
    JudgeConfig,
    RecordedJudge,
    TrainedJudge,
)
from themis.config.generation import (
    AnswerModel,
    InstructionsConfig,
    JudgmentsConfig,
    ReferenceBasedConfig,
    ResponsesConfig,
    RolePlayConfig,
    SelfConsistencyConfig,
)
from themis.config.loading import apply_override, format_validation_error, load_config, parse_override
from themis.config.pipeline import STAGES, PipelineConfig
from themis.config.run import RayConfig, RunConfig, StorageConfig
from themis.config.serve import (
    AutoscalingConfig,
    PromotionConfig,
    ServeAuthConfig,
    ServeConfig,
    ServeLimits,
    ServeVLLMConfig,
)
from themis.config.train import LoraSettings, LossConfig, TrainConfig

__all__ = [
    "ABLATION_SHARED",
    "PAIRWISE_LABELS",
    "SCORE_LABELS",
    "STAGES",
    "AblationArm",
    "AblationConfig",
    "ActorPool",
    "AnswerModel",
    "AugmentConfig",
    "AutoscalingConfig",
    "BenchmarkConfig",
    "BootstrapConfig",
    "ConfigError",
    "DatasetConfig",
    "Dtype",
    "EngineConfig",
    "EngineJudge",
    "EvaluateConfig",
    "IFDScorerConfig",
    "InstructionsConfig",
    "JudgeConfig",
    "JudgmentsConfig",
    "LoraSettings",
    "LossConfig",
    "OpenAIEngineConfig",
    "ParaphraseConfig",
    "PipelineConfig",
    "PromotionConfig",
    "RayConfig",
    "RecordedJudge",
    "ReferenceBasedConfig",
    "ResponsesConfig",
    "RolePlayConfig",
    "RunConfig",
    "Sampling",
    "ScalesAugmentConfig",
    "ScenarioMix",
    "SelectionConfig",
    "SelfConsistencyConfig",
    "ServeAuthConfig",
    "ServeConfig",
    "ServeLimits",
    "ServeVLLMConfig",
    "StorageConfig",
    "Strict",
    "SubsetsConfig",
    "TrainConfig",
    "TrainedJudge",
    "TransformersEngineConfig",
    "VLLMEngineConfig",
    "VLLMSettings",
    "apply_override",
    "format_validation_error",
    "load_config",
    "parse_override",
    "plain_name",
]
