"""A fake judge engine for serving tests: no model, a byte tokenizer, verdicts by rule.

It has what the serving deployment uses from a real engine: ``generate``, ``render_prompt``, a
``tokenizer`` with ``encode`` and a context length (``max_model_len``). Its replies follow the forced
verdict format of the judge prompts (prefix + first allowed choice + closing + a rationale), so the
real parsers read them. Switches, set per engine:

* ``prefer``: the pairwise verdict letter; "A" is a judge that always prefers the first position
  (order-biased: both orders then disagree).
* ``seconds_per_batch`` / ``seconds_per_row``: simulated compute, for load and benchmark tests.
* A message containing ``POISON`` makes the whole engine call raise (as a tokenizer error would),
  so the deployment must isolate it; ``HANG`` makes it sleep ``hang_s`` (a stuck engine); ``SLOW``
  makes it sleep ``slow_s`` (a busy engine, to fill the queue).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from themis.engines.base import GenerationRequest, GenerationResult


class ByteTokenizer:
    """One token per UTF-8 byte."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


class FakeJudgeEngine:
    """Deterministic verdicts, a context of ``max_model_len`` bytes."""

    def __init__(
        self,
        prefer: str = "B",
        seconds_per_batch: float = 0.0,
        seconds_per_row: float = 0.0,
        max_model_len: int = 200_000,
        hang_s: float = 30.0,
        slow_s: float = 1.0,
    ):
        self.prefer, self.max_model_len, self.hang_s, self.slow_s = prefer, max_model_len, hang_s, slow_s
        self.seconds_per_batch, self.seconds_per_row = seconds_per_batch, seconds_per_row
        self.tokenizer = ByteTokenizer()
        self.batch_sizes: list[int] = []

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batch_sizes.append(len(requests))
        texts = [m["content"] for r in requests for m in r.messages]
        if any("POISON" in t for t in texts):
            raise TypeError("the fake tokenizer cannot take this text")
        if any("HANG" in t for t in texts):
            time.sleep(self.hang_s)
        if any("SLOW" in t for t in texts):
            time.sleep(self.slow_s)
        time.sleep(self.seconds_per_batch + self.seconds_per_row * len(requests))
        return [self._reply(r) for r in requests]

    def _reply(self, req: GenerationRequest) -> GenerationResult:
        if not req.choices:
            return GenerationResult(text=req.prefix + "hello", prompt_tokens=3, completion_tokens=1)
        choice = self.prefer if self.prefer in req.choices else req.choices[-1]
        text = f"{req.prefix}{choice}{req.closing} The fake judge's reasons."
        return GenerationResult(text=text, prompt_tokens=10, completion_tokens=5)


def build_fake_engine(serve_cfg: Any, model: Any, **kwargs: Any) -> FakeJudgeEngine:
    """The serving engine hook's signature: ``(serve config, model source) -> engine``."""
    return FakeJudgeEngine(**kwargs)


class FakeEngineFactory:
    """An engine hook with settings: ``FakeEngineFactory(prefer="A")`` (picklable for Serve)."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs

    def __call__(self, serve_cfg: Any, model: Any) -> FakeJudgeEngine:
        return FakeJudgeEngine(**self.kwargs)
