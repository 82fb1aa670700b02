"""Every prompt Themis sends: instruction writing, scenario classification, answers, judgments.

Judge prompts follow the paper's five blocks: the task with the scenario's ordered criteria, the
tier scale (1-5 unless another from ``themis.judge.scales`` is asked for), the data, the steps, and the
output format (verdict sentence first, reasons after). Each judge prompt comes with the fixed
opening of its verdict sentence (``*_OPENING``) and the allowed verdict tokens, so local engines
can force the format. Pure: no Ray, torch or DeepSpeed."""

from __future__ import annotations

from dataclasses import dataclass

from themis.judge.scales import DEFAULT_SCALE, convert_score, get_scale, render_scale
from themis.judge.scenarios import Scenario, load_scenarios
from themis.judge.verdict import PROMPT_LETTERS, WINNERS

Messages = list[dict[str, str]]

SCORE_OPENING = "Overall rating: [["
SCORE_CHOICES = get_scale(DEFAULT_SCALE).choices
PAIR_OPENING = "Verdict: [["
PAIR_CHOICES = tuple(PROMPT_LETTERS[w] for w in WINNERS)  # ("A", "B", "C"): C is a tie, as in MT-bench
SCENARIO_OPENING = "Scenario: [["
SCENARIO_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

JUDGE_SYSTEM = "You are Themis, a careful and impartial judge of AI assistant responses."

CRITERIA_HEADER = "Criteria:"


def reference_scale_note(scale: str | None = None) -> str:
    """How a reference answer anchors the scale: as good as it is a 4 on 1-5, better is a 5."""
    as_good, better = convert_score(4, scale or DEFAULT_SCALE), convert_score(5, scale or DEFAULT_SCALE)
    return (
        f"A reference answer is given: a response as good as the reference deserves {as_good}, one better "
        f"than the reference {better}; judge correctness against the reference."
    )


def single_steps(scale: str | None = None) -> str:
    s = get_scale(scale)
    return (
        "Steps: (1) recall the criteria; (2) pick those that matter for this instruction and add any "
        f"that are missing; (3) score the response on each, {s.low}-{s.high}; (4) weight them, most "
        "important first, into one overall score."
    )


def single_format(scale: str | None = None) -> str:
    """The output format: the verdict sentence first, then one ``name: [[n]]`` line per criterion
    scored (``parsing.parse_criterion_scores`` reads them), then strengths and shortcomings."""
    s = get_scale(scale)
    return (
        f'Output format: first one sentence giving the overall rating, exactly "{SCORE_OPENING}N]]" with N '
        f'from {s.low} to {s.high}. Then "{CRITERIA_HEADER}" and one line per criterion you scored, exactly '
        f'"<criterion name>: [[n]]". Then "Strengths:" and "Shortcomings:", each as short points ending in '
        "their own [[score]]."
    )


PAIR_FORMAT = f"""Output format: first one sentence giving the verdict, exactly "{PAIR_OPENING}A]]" \
if Response A is better, "{PAIR_OPENING}B]]" if Response B is better, or "{PAIR_OPENING}C]]" for a \
tie. Then explain the decisive differences in a few points. The order of the responses must not \
influence you."""


@dataclass(frozen=True)
class JudgePrompt:
    """Chat messages plus the forced verdict opening, the tokens allowed right after it, and the
    closing forced after the chosen token."""

    messages: Messages
    opening: str
    choices: tuple[str, ...]
    closing: str = "]]"


def render_criteria(scenario: Scenario) -> str:
    """The scenario's criteria, most important first, between the paper's markers."""
    lines = [f"{i}. {c.name}: {c.description}" for i, c in enumerate(scenario.criteria, 1)]
    return "[Criteria Begin]\n" + "\n".join(lines) + "\n[Criteria End]"


def render_task(scenario: Scenario, what: str) -> str:
    return (
        f'{what} in the scenario "{scenario.name}" ({scenario.definition}) '
        f"Use these criteria, listed in descending order of importance:\n{render_criteria(scenario)}"
    )


def render_data(instruction: str, responses: list[tuple[str, str]], reference: str | None) -> str:
    """The data block: instruction, optional reference, and labelled responses, separated by ***."""
    parts = [f"[User Instruction]\n{instruction}"]
    if reference:
        parts.append(f"[Reference Answer]\n{reference}")
    parts += [f"[{label}]\n{text}" for label, text in responses]
    return "[Data Begin]\n***\n" + "\n***\n".join(parts) + "\n***\n[Data End]"


def render_single_prompt(
    scenario: Scenario, instruction: str, response: str, reference: str | None = None, scale: str | None = None
) -> JudgePrompt:
    """Single-answer grading, or reference-guided grading when ``reference`` is given, on ``scale``
    (default 1-5; see ``themis.judge.scales``)."""
    tiers = render_scale(scale) + ("\n" + reference_scale_note(scale) if reference else "")
    body = "\n\n".join(
        [
            render_task(scenario, "Grade one AI response to a user instruction"),
            tiers,
            render_data(instruction, [("Response", response)], reference),
            single_steps(scale),
            single_format(scale),
        ]
    )
    return JudgePrompt(_chat(JUDGE_SYSTEM, body), SCORE_OPENING, get_scale(scale).choices)


def render_pairwise_prompt(
    scenario: Scenario, instruction: str, response_a: str, response_b: str, reference: str | None = None
) -> JudgePrompt:
    """Pairwise comparison of two responses, tie allowed."""
    data = render_data(instruction, [("Response A", response_a), ("Response B", response_b)], reference)
    body = "\n\n".join([render_task(scenario, "Compare two AI responses to a user instruction"), data, PAIR_FORMAT])
    return JudgePrompt(_chat(JUDGE_SYSTEM, body), PAIR_OPENING, PAIR_CHOICES)


def render_classifier_prompt(instruction: str) -> JudgePrompt:
    """Ask which scenario an instruction belongs to; the answer is one letter in [[ ]]."""
    scenarios = list(load_scenarios().values())
    options = "\n".join(f"{SCENARIO_LETTERS[i]}. {s.name}: {s.definition}" for i, s in enumerate(scenarios))
    body = (
        f"Which scenario does this user instruction belong to?\n\n{options}\n\n"
        f"[User Instruction]\n{instruction}\n\n"
        f'Answer with one letter, exactly "{SCENARIO_OPENING}X]]".'
    )
    letters = tuple(SCENARIO_LETTERS[: len(scenarios)])
    return JudgePrompt(_chat("You sort user requests into scenarios.", body), SCENARIO_OPENING, letters)


def render_reference_question_prompt(scenario: Scenario, passage_title: str, passage: str) -> Messages:
    """Reference-based questioning: one instruction grounded in a passage, for one scenario."""
    body = (
        f'Write one instruction that a real user might give an AI assistant in the scenario "{scenario.name}" '
        f"({scenario.definition})\n\nBase it on this reference passage:\n[Passage: {passage_title}]\n{passage}\n\n"
        "Requirements: the instruction is self-contained (quote any material it needs), answerable, "
        "specific, and does not contain its answer. Reply with the instruction only."
    )
    return _chat("You write realistic user instructions for testing AI assistants.", body)


def render_quiz_prompt(
    scenario: Scenario, difficulty: str, audience: str, subject: str, topic: str, task: str
) -> Messages:
    """Role-playing quizzing: the model plays a quiz writer with fixed attributes."""
    body = (
        f"You are a quiz writer. Write one {difficulty} question for {audience}.\n"
        f"Scenario: {scenario.name} ({scenario.definition})\nSubject: {subject}\nTopic: {topic}\n"
        f"Task type: {task}\nInclude everything needed to answer it. Reply with the question only."
    )
    return _chat("You write quiz questions.", body)


def render_answer_prompt(instruction: str) -> Messages:
    """What an answer model sees: the user's instruction, as a user would send it."""
    return [{"role": "user", "content": instruction}]


def render_reference_answer_prompt(instruction: str, passage: str | None) -> Messages:
    """Ask the teacher for a correct, concise reference answer (grounded in the passage if any)."""
    grounding = f"\n\nUse this source material:\n{passage}" if passage else ""
    body = (
        f"Answer correctly and concisely; your answer is the reference for grading others.{grounding}\n\n{instruction}"
    )
    return _chat("You are an expert who writes model answers.", body)


def render_score_verdict(score: int) -> str:
    """The canonical verdict sentence for a score, as the student is trained to write it."""
    return f"{SCORE_OPENING}{score}]]"


def render_pair_verdict(winner: str) -> str:
    """The canonical verdict sentence for 'A', 'B' or 'tie' (in the prompt's letters)."""
    if winner not in PROMPT_LETTERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)}, got {winner!r}")
    return f"{PAIR_OPENING}{PROMPT_LETTERS[winner]}]]"


def _chat(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
