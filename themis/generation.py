"""Generation inside Ray Data: an engine actor pool over a stream of prompt rows.

A prompt row carries ``messages`` (JSON chat), ``prefix`` and ``choices`` (JSON list); the actor
adds ``output`` and ``error``. Rows never vanish: a failed call comes back with ``error`` set.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from themis.config import EngineConfig, OpenAIEngineConfig, Sampling
from themis.engines import GenerationRequest, build_engine
from themis.models import ModelSource, resolve_model
from themis.prompts import JudgePrompt


def prompt_row(
    messages: list[dict[str, str]], prefix: str = "", choices: tuple[str, ...] = (), closing: str = ""
) -> dict[str, Any]:
    """The columns generation needs, in the form Ray Data carries well (JSON strings)."""
    return {
        "messages": json.dumps(messages),
        "prefix": prefix,
        "choices": json.dumps(list(choices)),
        "closing": closing,
    }


def judge_prompt_row(prompt: JudgePrompt, constrain: bool) -> dict[str, Any]:
    """Prompt columns for a judge prompt, with the verdict forced or left free."""
    if not constrain:
        return prompt_row(prompt.messages)
    return prompt_row(prompt.messages, prompt.opening, prompt.choices, prompt.closing)


class EngineUnavailableError(RuntimeError):
    """Every row of a generation failed, so the engine (not the data) is at fault."""


class EngineActor:
    """Holds one engine (model weights load once per actor) and runs it batch by batch."""

    def __init__(self, engine_cfg: EngineConfig, sampling: Sampling, seed: int | None, model: ModelSource | None):
        # The actor fetches the model on its own node (an s3:// export is downloaded there).
        self.engine = build_engine(engine_cfg, model.fetch() if model else None)
        self.sampling = sampling
        self.seed = seed

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        requests = [self._request(row) for row in batch.itertuples(index=False)]
        results = self.engine.generate(requests)
        batch = batch.copy()
        batch["output"] = [r.text for r in results]
        batch["error"] = [r.error or "" for r in results]
        return batch

    def _request(self, row: Any) -> GenerationRequest:
        return GenerationRequest(
            messages=json.loads(row.messages),
            max_tokens=self.sampling.max_tokens,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            seed=self.seed,
            prefix=row.prefix,
            choices=tuple(json.loads(row.choices)),
            closing=row.closing,
        )


def generate(
    rows: list[dict[str, Any]],
    engine_cfg: EngineConfig,
    sampling: Sampling,
    *,
    seed: int | None = None,
    model: ModelSource | None = None,
) -> pd.DataFrame:
    """Run ``rows`` (each with prompt columns) through an engine actor pool; return them with outputs."""
    import ray

    if not rows:
        return pd.DataFrame(rows)
    if not isinstance(engine_cfg, OpenAIEngineConfig) and model is None:
        resolve_model(engine_cfg.model)  # fail here, clearly, rather than inside a Ray actor
    remote = isinstance(engine_cfg, OpenAIEngineConfig)
    batch_size = engine_cfg.concurrency * 2 if remote else engine_cfg.batch_size
    ds = ray.data.from_pandas(pd.DataFrame(rows))
    out = ds.map_batches(
        EngineActor,
        fn_constructor_kwargs={"engine_cfg": engine_cfg, "sampling": sampling, "seed": seed, "model": model},
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        # An HTTP engine only waits on the network; a local model gets the cores its torch threads use
        # (Ray also sets OMP_NUM_THREADS from this, so a 1-CPU actor would run torch on one core).
        num_cpus=0.25 if remote else (engine_cfg.num_threads or 1),
        num_gpus=_gpus_for(engine_cfg),
    )
    result = out.to_pandas()
    if (result["error"] != "").all():
        # Every call failed: the engine is down or misconfigured, not the data. Stop loudly.
        raise EngineUnavailableError(
            f"all {len(result)} calls to the engine failed; first error: {result['error'].iloc[0]}"
        )
    return result


def _gpus_for(engine_cfg: EngineConfig) -> float:
    if isinstance(engine_cfg, OpenAIEngineConfig):
        return 0
    return 1 if engine_cfg.device.startswith("cuda") else 0
