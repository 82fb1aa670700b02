"""Engines: generate text from chat messages, in batches (see ``base.Engine``).

``build_engine`` imports the heavy implementation only when it is asked for, so importing this
package stays light.
"""

from __future__ import annotations

from pathlib import Path

from themis.config import EngineConfig, OpenAIEngineConfig, TransformersEngineConfig, VLLMEngineConfig
from themis.engines.base import AsyncEngine, Engine, GenerationRequest, GenerationResult

__all__ = ["AsyncEngine", "Engine", "GenerationRequest", "GenerationResult", "build_engine", "forced_format_note"]


def build_engine(cfg: EngineConfig, model_path: str | Path | None = None, limits: str | None = None) -> Engine:
    """Make the engine a config describes; ``model_path`` overrides a transformers model spec;
    ``limits`` names the shared rate limiter of an HTTP engine's pool (``limits.start_shared_limits``)."""
    if isinstance(cfg, TransformersEngineConfig):
        from themis.engines.hf import TransformersEngine

        return TransformersEngine(cfg, model_path)
    if isinstance(cfg, OpenAIEngineConfig):
        from themis.engines.openai_http import OpenAIEngine

        return OpenAIEngine(cfg, limits)
    if isinstance(cfg, VLLMEngineConfig):
        from themis.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, model_path)
    raise TypeError(f"unknown engine config {type(cfg).__name__}")


def forced_format_note(cfg: EngineConfig) -> str | None:
    """None when the engine applies a request's forced verdict (its opening and the allowed verdict
    tokens); else a sentence saying what it leaves out, for a stage's manifest. Pure: decided by
    the config, so the driver can ask without starting the engine."""
    if not isinstance(cfg, OpenAIEngineConfig) or cfg.server == "vllm":
        return None
    opening = "forces the verdict opening" if cfg.continue_final_message else "cannot force the verdict opening"
    return (
        f"kind: openai with server: openai {opening} and cannot constrain the verdict token, so "
        "constrain_format was not fully applied; for a vLLM server set server: vllm"
    )
