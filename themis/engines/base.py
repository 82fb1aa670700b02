"""The engine interface: generate text from chat messages, in batches.

An engine is anything with ``generate(requests) -> results``, one result per request, in order.
A failed row never raises: it comes back with ``error`` set, so a stage can route it to rejects.
Pure: no Ray, torch or DeepSpeed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """One chat to continue.

    ``prefix`` is forced as the start of the assistant reply (e.g. the verdict sentence's opening),
    and ``choices``, when given, constrain what comes right after the prefix to one of a few strings
    (e.g. the score digits), followed by ``closing``. Engines that cannot force either ignore them;
    parsing copes either way.
    """

    messages: list[dict[str, str]]
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    prefix: str = ""
    choices: tuple[str, ...] = field(default_factory=tuple)
    closing: str = ""  # forced right after the chosen choice, e.g. "]]"

    @property
    def text_chars(self) -> int:
        """Characters of the messages and the forced prefix (a cheap measure of prompt length)."""
        return sum(len(m["content"]) for m in self.messages) + len(self.prefix)


@dataclass(frozen=True)
class GenerationResult:
    """The assistant reply (prefix and choice included), or the reason there is none."""

    text: str = ""
    error: str | None = None
    prompt_tokens: int = 0  # as the engine counted them; 0 when it does not say
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The tokenizer's chat template applied, ready for the assistant's reply: what every local
    engine generates from, what the endpoint counts, and the prompt the train stage learns from."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Engine(Protocol):
    """Generates one result per request, in the order given."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


class AsyncEngine(Engine, Protocol):
    """An engine that waits on the network: ``agenerate`` lets many batches share one window of
    requests in flight (Ray Data runs several batches at once in one actor)."""

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


def request_to_row(req: GenerationRequest) -> dict[str, Any]:
    """A request as the ``request`` struct column of a generation row (see ``tables.REQUEST_TYPE``)."""
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in req.messages],
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "prefix": req.prefix,
        "choices": list(req.choices),
        "closing": req.closing,
    }


def request_from_row(row: dict[str, Any]) -> GenerationRequest:
    """The request a ``request`` struct column holds."""
    return GenerationRequest(
        messages=[{"role": m["role"], "content": m["content"]} for m in row["messages"]],
        max_tokens=int(row["max_tokens"]),
        temperature=float(row["temperature"]),
        top_p=float(row["top_p"]),
        seed=None if row["seed"] is None else int(row["seed"]),
        prefix=row["prefix"] or "",
        choices=tuple(row["choices"] or ()),
        closing=row["closing"] or "",
    )
