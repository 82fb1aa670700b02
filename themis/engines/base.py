"""The engine interface: generate text from chat messages, in batches.

An engine is anything with ``generate(requests) -> results``, one result per request, in order.
A failed row never raises: it comes back with ``error`` set, so a stage can route it to rejects.
Pure: no Ray, torch or DeepSpeed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


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


@dataclass(frozen=True)
class GenerationResult:
    """The assistant reply (prefix and choice included), or the reason there is none."""

    text: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine(Protocol):
    """Generates one result per request, in the order given."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...
