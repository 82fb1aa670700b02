"""Engines: the named models the stages call (`engines:` in a job config), one kind each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from themis.config.base import DEVICE_HELP, DTYPE_HELP, NUM_THREADS_HELP, ActorPool, Dtype, Strict

MODEL_HELP = "A Hugging Face folder, 'builtin:smollm2-135m-instruct', or 'trained'."
POOL_HELP = "The Ray Data actor pool that runs this engine in the stages."


class TransformersEngineConfig(Strict):
    """A Hugging Face model run in-process by transformers (CPU or one GPU)."""

    kind: Literal["transformers"] = Field("transformers", description="Engine type: a local transformers model.")
    model: str = Field(description=MODEL_HELP)
    device: str = Field("auto", description=DEVICE_HELP)
    dtype: Dtype = Field("auto", description=DTYPE_HELP)
    batch_size: int = Field(4, ge=1, description="Prompts per forward pass.")
    num_threads: int | None = Field(None, ge=1, description=NUM_THREADS_HELP)
    pool: ActorPool = Field(ActorPool(), description=POOL_HELP)


class OpenAIEngineConfig(Strict):
    """A model behind an OpenAI-compatible HTTP endpoint (OpenAI, vLLM's server, Themis' own)."""

    kind: Literal["openai"] = Field("openai", description="Engine type: an OpenAI-compatible endpoint.")
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
    timeout_s: float = Field(60.0, gt=0, description="Longest wait for one response before it counts as a timeout.")
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
    pool: ActorPool = Field(ActorPool(), description=POOL_HELP)


class VLLMSettings(Strict):
    """How vLLM holds a model on GPUs: shared by a stage's vLLM engine and a serving replica's."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine (or replica) shards the model over.")
    max_model_len: int | None = Field(None, ge=16, description="Context length; None = the model's.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory vLLM takes for weights and KV cache."
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower steps).")


class VLLMEngineConfig(VLLMSettings):
    """A model run by vLLM's offline engine inside the actor (GPUs)."""

    kind: Literal["vllm"] = Field("vllm", description="Engine type: vLLM's offline engine.")
    model: str = Field(description=MODEL_HELP)
    dtype: Dtype = Field("auto", description=DTYPE_HELP)
    batch_size: int = Field(64, ge=1, description="Rows handed to vLLM at once (it schedules them itself).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vllm.LLM keyword arguments.")
    pool: ActorPool = Field(ActorPool(), description=POOL_HELP)


EngineConfig = Annotated[TransformersEngineConfig | OpenAIEngineConfig | VLLMEngineConfig, Field(discriminator="kind")]
