"""What a judge decides about one judged item, and the words for it, declared once.

``Verdict`` is the one record of a judged item: the judgments stage writes its fields as row
columns, evaluation's predictions are verdicts placed on a benchmark item
(``themis.evaluation.judges.Prediction``), and the endpoint builds its JSON answer from one. A
verdict is a ``score`` (pointwise kinds) or a ``winner`` (pairwise, for the order shown), with
the rationale and the raw output it was read from; or, when there is none, the reject reason in
``error``. ``themis.judge.call.read_verdict`` is the one way from an engine result to a verdict.

The vocabulary: the judgment kinds and the two families they fall in, the winners and the letters
the prompt shows the model for them, and the two reject reasons a judge call can end in. Pure:
imports nothing of the project, so every other judge module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

Kind = Literal["single", "reference", "pairwise"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# A pointwise kind grades one response with a score (on a scale, 1-5 by default); the pairwise kind
# picks a winner. "single" and "reference" are kinds (what the prompt shows), never family names.
Family = Literal["pointwise", "pairwise"]
POINTWISE_KINDS: tuple[Kind, ...] = ("single", "reference")

Winner = Literal["A", "B", "tie"]
WINNERS: tuple[Winner, ...] = get_args(Winner)  # in this order wherever winners are listed
TIE: Winner = "tie"
# The prompt shows MT-bench's letters ([[A]], [[B]], [[C]] for a tie): models know them, and a
# one-letter choice is what engines can force. Data, reports and the API always say "tie".
PROMPT_LETTERS: dict[Winner, str] = {"A": "A", "B": "B", "tie": "C"}
WINNER_OF_LETTER: dict[str, Winner] = {letter: winner for winner, letter in PROMPT_LETTERS.items()}

# The reject reasons of a judge call: each is "<kind>: <detail>", and tools group by the kind.
ENGINE_ERROR = "engine error"
UNPARSABLE = "unparsable"


def family_of(kind: str) -> Family:
    """The family of a judgment kind: ``pairwise``, or ``pointwise`` for single and reference."""
    if kind not in KINDS:
        raise ValueError(f"unknown judgment kind {kind!r}; kinds: {', '.join(KINDS)}")
    return "pairwise" if kind == "pairwise" else "pointwise"


def engine_error_reason(detail: object) -> str:
    """The reject reason of a call whose generation failed."""
    return f"{ENGINE_ERROR}: {detail}"


def unparsable_reason(detail: object) -> str:
    """The reject reason of an output that holds no verdict (``detail``: what the parser missed)."""
    return f"{UNPARSABLE}: {detail}"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One judged item's verdict: a ``score`` or a ``winner`` ("A", "B" or "tie", for the order
    shown) and the ``rationale`` after it, read from ``output``; or no verdict and ``error``
    saying why (``engine_error_reason``, ``unparsable_reason``, or a caller's own reason).

    The rationale is left out of equality: it is a part of ``output``, which is compared.
    """

    score: int | None = None
    winner: Winner | None = None
    rationale: str = field(default="", compare=False)
    output: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        if self.score is not None and self.winner is not None:
            raise ValueError(f"a verdict is a score or a winner, not both (score {self.score}, winner {self.winner!r})")
        if self.winner is not None and self.winner not in WINNERS:
            raise ValueError(f"winner must be one of {', '.join(WINNERS)}, got {self.winner!r}")
        if self.error is not None and (self.score is not None or self.winner is not None):
            raise ValueError(f"a verdict with a score or winner has no error, got {self.error!r}")

    @property
    def parsed(self) -> bool:
        """Whether there is a verdict at all."""
        return self.score is not None or self.winner is not None
