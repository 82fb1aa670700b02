"""The engine inside a judge replica: how it is built, where it runs, the facts its limits need
(context length, a tokenizer to count prompts), its deadline, and the isolation that keeps one bad
request from failing the others in its batch. Imports Ray only inside the functions that ask it.
"""

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from themis.config import ServeConfig, ServeLimits, TransformersEngineConfig
from themis.engines import Engine, build_engine
from themis.engines.base import GenerationRequest, GenerationResult
from themis.engines.process import EngineProcess
from themis.models import ModelSource
from themis.serving.options import serve_engine_config

EngineFactory = Callable[[ServeConfig, ModelSource], Engine]
FORCED_TOKENS = 8  # room for a forced verdict choice and its closing after the prompt
logger = logging.getLogger("ray.serve")  # Serve's replica logs carry each request's id


def replica_device() -> str:
    """Where this replica's transformers engine runs: the GPU Ray gave the replica, else the CPU
    (Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a replica given no GPU, and the engine's child
    process is no Ray worker, so it is told, not left to find a GPU nobody reserved)."""
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"


def connected_cluster_gpus() -> float | None:
    """GPUs the connected Ray cluster has or may add (``generation.cluster_gpus``); None when no
    Ray is connected yet."""
    import ray

    from themis.dataplane.generation import cluster_gpus

    return cluster_gpus() if ray.is_initialized() else None


def build_serve_engine(serve_cfg: ServeConfig, model: ModelSource) -> Engine:
    """The default engine hook: fetch the model on this node, build the configured engine (a
    transformers engine in a child process unless ``serve.engine_process`` is off)."""
    path = str(model.fetch())
    engine_cfg = serve_engine_config(serve_cfg, path, replica_device())
    if isinstance(engine_cfg, TransformersEngineConfig) and serve_cfg.engine_process:
        return EngineProcess(engine_cfg, path)
    return build_engine(engine_cfg)


# --- engine facts the limits need --------------------------------------------------------------


def context_length(engine: Engine) -> int | None:
    """The model's context in tokens, where the engine says (vLLM's max_model_len, the HF config)."""
    max_model_len = getattr(engine, "max_model_len", None)
    if max_model_len:
        return int(max_model_len)
    config = getattr(getattr(engine, "model", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


def prompt_token_limit(limits: ServeLimits, context: int | None, max_tokens: int) -> int:
    """The most prompt tokens a request may have: the configured limit, and never more than the
    context leaves once the reply and a forced verdict fit."""
    if context is None:
        return limits.max_prompt_tokens
    return max(1, min(limits.max_prompt_tokens, context - max_tokens - FORCED_TOKENS))


def counting_tokenizer(engine: Engine) -> Any:
    """A tokenizer for counting prompts on the event loop: a copy of the engine's, so counting never
    touches the one the engine's thread is using (fast tokenizers refuse concurrent use)."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None or not hasattr(engine, "render_prompt"):
        return None
    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # a tokenizer that cannot be copied is used as it is
        return tokenizer


def set_generation_deadline(engine: Engine, seconds: float) -> None:
    """Make an engine that can stop itself stop after ``seconds`` (transformers' ``max_time``; an
    engine process also kills a call that overruns it); vLLM bounds a request by its max_tokens
    and the prompt checks instead."""
    set_deadline = getattr(engine, "set_deadline", None)
    if set_deadline is not None:
        set_deadline(seconds)


class EngineWatch:
    """When the current engine call started, so a health check can see one that never ends."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.started: float | None = None

    def stuck(self) -> bool:
        started = self.started
        return started is not None and time.monotonic() - started > self.limit_s


def generate_isolated(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    """``engine.generate(requests)``, where one bad request fails no other: with several requests,
    each that failed (or all, if the call raised) is retried alone. An engine may fail more rows
    than the one at fault (a transformers engine fails a whole sub-batch of rows), so a success
    elsewhere in the call proves nothing about the failed rows. A row past the deadline is not
    retried: its request has already been answered 504."""
    results = _try_generate(engine, requests)
    if len(requests) == 1:
        return results or [GenerationResult(error="generation failed")]
    retried: list[GenerationResult | None] = list(results) if results else [None] * len(requests)
    for i, result in enumerate(retried):
        if result is None or not (result.ok or (result.error or "").startswith("deadline")):
            alone = _try_generate(engine, [requests[i]])
            retried[i] = alone[0] if alone else GenerationResult(error="generation failed")
    return retried  # type: ignore[return-value]  # every None was replaced


def _try_generate(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult] | None:
    try:
        results = engine.generate(requests)
    except Exception as exc:  # the engine's own handling missed it; logged, never sent raw
        logger.warning("engine call of %d request(s) failed: %s", len(requests), type(exc).__name__)
        return None
    if len(results) != len(requests):
        logger.warning("engine returned %d results for %d requests", len(results), len(requests))
        return None
    return list(results)
