"""The one judging core: render a judge call, turn it into an engine request, read the verdict.

Every place that judges uses this module: the judgments stage (the teacher), evaluate's engine
judges and the served judge. ``read_verdict`` turns an engine result into the one verdict record
(``themis.judge.verdict.Verdict``), with the one set of reject reasons; ``flip_winner`` is the one
way to see a pairwise verdict from the other presentation order. The scenario classifier lives
here too, with its one request, one parser and one set of settings. Pure: no Ray, torch or
DeepSpeed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from themis.config import Sampling
from themis.engines.base import GenerationRequest, GenerationResult
from themis.judge.parsing import ParseError, parse_pairwise, parse_scenario, parse_score
from themis.judge.prompts import JudgePrompt, render_classifier_prompt, render_pairwise_prompt, render_single_prompt
from themis.judge.scales import get_scale
from themis.judge.scenarios import Criterion, get_scenario, load_scenarios
from themis.judge.verdict import (
    KINDS,
    WINNERS,
    Kind,
    Verdict,
    Winner,
    engine_error_reason,
    family_of,
    unparsable_reason,
)

Order = Literal["ab", "ba", ""]

# The classifier answers with one forced letter; two tokens leave room for a closing bracket on
# engines that cannot force the format.
CLASSIFIER_SAMPLING = Sampling(max_tokens=2, temperature=0.0)


@dataclass(frozen=True)
class JudgeCall:
    """One thing to judge, as the judge will see it.

    ``responses`` holds one response (single, reference) or two in the order shown (pairwise);
    ``order`` says which order that is for a pair ("ab" as planned, "ba" swapped), "" otherwise.
    ``scale`` (single and reference grading) is the score scale asked for (``themis.judge.scales``; None
    is 1-5), and ``criteria``, when given, replace the scenario's own criteria in the prompt:
    custom-prompt augmentation uses both (paraphrased criteria, criteria subsets, other scales).
    """

    kind: Kind
    scenario: str
    instruction: str
    responses: tuple[str, ...]
    reference: str | None = None
    order: Order = ""
    scale: str | None = None
    criteria: tuple[Criterion, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown judgment kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        wanted = 2 if self.kind == "pairwise" else 1
        if len(self.responses) != wanted:
            raise ValueError(f"a {self.kind} call shows {wanted} response(s), got {len(self.responses)}")
        if self.kind == "reference" and not self.reference:
            raise ValueError("a reference call needs a non-empty reference")
        if self.kind == "single" and self.reference:
            raise ValueError("a single call shows no reference; use kind 'reference'")
        if (self.kind == "pairwise") != (self.order in ("ab", "ba")):
            raise ValueError(f"order {self.order!r} does not fit kind {self.kind!r} (pairs: 'ab' or 'ba')")
        if self.scale is not None:
            get_scale(self.scale)  # a clear error for an unknown scale
            if self.kind == "pairwise":
                raise ValueError("a pairwise call has no score scale")
        if self.criteria is not None and not self.criteria:
            raise ValueError("criteria, when given, cannot be empty")

    def swapped(self) -> JudgeCall:
        """The same pair shown the other way round."""
        if self.kind != "pairwise":
            raise ValueError("only a pairwise call can be swapped")
        order: Order = "ba" if self.order == "ab" else "ab"
        return replace(self, responses=self.responses[::-1], order=order)


def single_call(scenario: str, instruction: str, response: str, reference: str | None = None) -> JudgeCall:
    """Grade one response, reference-guided when a reference is given."""
    kind: Kind = "reference" if reference else "single"
    return JudgeCall(kind, scenario, instruction, (response,), reference or None)


def pairwise_calls(
    scenario: str, instruction: str, first: str, second: str, reference: str | None = None, both_orders: bool = True
) -> list[JudgeCall]:
    """A pair in the ``ab`` order and, with ``both_orders``, the ``ba`` order too (position bias)."""
    call = JudgeCall("pairwise", scenario, instruction, (first, second), reference or None, "ab")
    return [call, call.swapped()] if both_orders else [call]


# What inside the data block could pass for the prompt's own structure: a block or section marker
# ("[Data End]", "[Response B]"), the *** separator on a line of its own, or a verdict in double
# brackets ("Overall rating: [[5]]"). Judged text is data, so each is defused before rendering.
_MARKER = re.compile(
    r"\[\s*(data|criteria|scale)\s+(begin|end)\s*\]|\[\s*(user instruction|reference answer|response(\s+[ab])?)\s*\]",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^\s*\*{3,}\s*$", re.MULTILINE)


def escape_data(text: str) -> str:
    """``text`` as it may appear inside a judge prompt's data block: markers become ``(Data End)``
    and the like, a *** line becomes ``* * *``, and ``[[``/``]]`` become ``[ [``/``] ]``, so a response
    can neither close the block nor show a verdict in the format the parser reads. Other text is
    unchanged."""
    text = _MARKER.sub(lambda m: "(" + m.group(0)[1:-1].strip() + ")", text)
    text = _SEPARATOR.sub("* * *", text)
    return text.replace("[[", "[ [").replace("]]", "] ]")


def render_call(call: JudgeCall) -> JudgePrompt:
    """The scenario-dependent judge prompt of a call, with every judged text escaped (``escape_data``)."""
    scenario = get_scenario(call.scenario)
    if call.criteria is not None:
        scenario = replace(scenario, criteria=call.criteria)
    instruction = escape_data(call.instruction)
    reference = escape_data(call.reference) if call.reference else call.reference
    responses = [escape_data(r) for r in call.responses]
    if call.kind == "pairwise":
        first, second = responses
        return render_pairwise_prompt(scenario, instruction, first, second, reference)
    return render_single_prompt(scenario, instruction, responses[0], reference, call.scale)


def prompt_request(
    prompt: JudgePrompt, sampling: Sampling, *, constrain: bool = True, seed: int | None = None
) -> GenerationRequest:
    """An engine request for a judge-style prompt; ``constrain`` forces the verdict sentence
    (its opening, one of the allowed tokens, its closing) on engines that can."""
    return GenerationRequest(
        messages=prompt.messages,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=seed,
        prefix=prompt.opening if constrain else "",
        choices=prompt.choices if constrain else (),
        closing=prompt.closing if constrain else "",
    )


def judge_request(
    call: JudgeCall, sampling: Sampling, *, constrain: bool = True, seed: int | None = None
) -> GenerationRequest:
    """The engine request for a judge call."""
    return prompt_request(render_call(call), sampling, constrain=constrain, seed=seed)


def parse_verdict(kind: Kind, text: str, scale: str | None = None) -> Verdict:
    """The verdict in a judge's output (a score on ``scale``, or a winner); raises ``ParseError``
    (its message says what is missing)."""
    return parse_pairwise(text) if family_of(kind) == "pairwise" else parse_score(text, scale)


def read_verdict(kind: Kind, result: GenerationResult, scale: str | None = None) -> Verdict:
    """The verdict of an answered judge call, never raising: the score (on ``scale``) or winner
    and rationale read from the engine's output, or no verdict and the reject reason in ``error``
    (``engine error: ...`` when the generation failed, ``unparsable: ...`` when the output holds
    no verdict). The output is kept either way."""
    if not result.ok:
        return Verdict(output=result.text, error=engine_error_reason(result.error))
    try:
        verdict = parse_verdict(kind, result.text, scale)
    except ParseError as exc:
        return Verdict(output=result.text, error=unparsable_reason(exc))
    return replace(verdict, output=result.text)


def flip_winner(winner: str) -> Winner:
    """The same pairwise verdict seen with the two responses swapped ("tie" stays "tie")."""
    flipped: dict[str, Winner] = {"A": "B", "B": "A", "tie": "tie"}
    if winner not in flipped:
        raise ValueError(f"winner must be one of {WINNERS}, got {winner!r}")
    return flipped[winner]


def winner_in_ab_order(winner: str, order: Order) -> str:
    """A pairwise verdict expressed in the pair's planned (``ab``) order."""
    return flip_winner(winner) if order == "ba" else winner


# --- scenario classification --------------------------------------------------------------------


def classifier_request(instruction: str, seed: int | None = None) -> GenerationRequest:
    """Ask which scenario an instruction belongs to, forced into ``Scenario: [[X]]``."""
    return prompt_request(render_classifier_prompt(instruction), CLASSIFIER_SAMPLING, seed=seed)


def parse_classification(text: str) -> str:
    """The scenario id the classifier picked; raises ``ParseError``."""
    return parse_scenario(text, list(load_scenarios()))
