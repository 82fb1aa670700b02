"""Engines: generate text from chat messages, in batches (see ``base.Engine``).

``build_engine`` imports the heavy implementation only when it is asked for, so importing this
package stays light.
"""

from __future__ import annotations

from pathlib import Path

from themis.config import EngineConfig, OpenAIEngineConfig, TransformersEngineConfig, VLLMEngineConfig
from themis.engines.base import AsyncEngine, Engine, GenerationRequest, GenerationResult

__all__ = ["AsyncEngine", "Engine", "GenerationRequest", "GenerationResult", "build_engine"]


def build_engine(cfg: EngineConfig, model_path: str | Path | None = None) -> Engine:
    """Make the engine a config describes; ``model_path`` overrides a transformers model spec."""
    if isinstance(cfg, TransformersEngineConfig):
        from themis.engines.hf import TransformersEngine

        return TransformersEngine(cfg, model_path)
    if isinstance(cfg, OpenAIEngineConfig):
        from themis.engines.openai_http import OpenAIEngine

        return OpenAIEngine(cfg)
    if isinstance(cfg, VLLMEngineConfig):
        from themis.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, model_path)
    raise TypeError(f"unknown engine config {type(cfg).__name__}")
