"""Turn model outputs back into data: scores, pairwise winners, scenario ids, instructions.

Every parser returns a value or raises ``ParseError`` whose message says what is missing; a judge
output's reject reason is that message behind ``unparsable:`` (``themis.judge.call.read_verdict``),
and other stages store it as they say. Small models drift from the format, so the parsers accept the common near-misses
(a missing closing bracket, "Rating: 4/5") but never guess. Pure: no Ray, torch or DeepSpeed.
"""

from __future__ import annotations

import re

from themis.judge.prompts import CRITERIA_HEADER, SCENARIO_LETTERS
from themis.judge.scales import get_scale
from themis.judge.verdict import PROMPT_LETTERS, TIE, WINNER_OF_LETTER, Verdict


class ParseError(ValueError):
    """An output that does not contain what was asked for; the message says what is missing."""


# The token in a verdict's double brackets ("[[4]]", "[[ A ]]"), also when the model left out the
# closing brackets ("[[4] Good", "[[4 Good").
_VERDICT_TOKEN = re.compile(r"\[\[\s*([^\[\]\n]{1,12}?)\s*(?:\]\]|\]|(?=\s|$))")
_LOOSE_SCORE = re.compile(r"(?:rating|score)\s*(?:is|:|=)?\s*\**\s*([0-9]+(?:\.[0-9]+)?(?:\s*/\s*5)?)", re.I)


def parse_score(text: str, scale: str | None = None) -> Verdict:
    """The overall score on ``scale`` (default 1-5): the first ``[[N]]`` (or ``Rating: N``), and the
    text after it."""
    text = _nonempty(text)
    s = get_scale(scale)
    match = _VERDICT_TOKEN.search(text) or _LOOSE_SCORE.search(text)
    if not match:
        raise ParseError("no rating found")
    raw = match.group(1).split("/")[0].strip()  # "4/5" -> "4"
    try:
        value = float(raw)
    except ValueError:
        raise ParseError(f"rating is not a number: {raw!r}") from None
    if not s.contains(value):
        raise ParseError(f"rating out of range {s.low}-{s.high}: {raw}")
    return Verdict(score=int(value), rationale=_rest(text, match.end()))


_CRITERION_LINE = re.compile(r"^[\s*\-•\d.]*([^\n:\[\]]{2,80}?)\s*\**\s*:\s*\**\s*\[\[\s*(\d{1,2})\s*\]\]", re.M)


def parse_criterion_scores(text: str, criteria: list[str], scale: str | None = None) -> dict[str, int]:
    """Per-criterion scores from the ``Criteria:`` block: ``{name: n}`` for every line
    ``<criterion name>: [[n]]`` whose name is one of ``criteria`` (case and spacing ignored) and whose
    score is on ``scale``. Criteria the judge did not score are absent; lines naming something else
    are ignored. Raises ``ParseError`` when there is no Criteria block or no criterion in it."""
    s = get_scale(scale)
    start = text.find(CRITERIA_HEADER) if text else -1
    if start < 0:
        raise ParseError("no per-criterion scores (no Criteria: block)")
    block = text[start + len(CRITERIA_HEADER) :]
    known = {_name_key(c): c for c in criteria}
    scores: dict[str, int] = {}
    for match in _CRITERION_LINE.finditer(block):
        name, value = known.get(_name_key(match.group(1))), int(match.group(2))
        if name and name not in scores and s.contains(value):
            scores[name] = value
    if not scores:
        raise ParseError("no per-criterion scores (no known criterion with a score in the Criteria: block)")
    return scores


def _name_key(name: str) -> str:
    return " ".join(name.lower().replace("*", " ").split())


*_FIRST_LETTERS, _LAST_LETTER = PROMPT_LETTERS.values()
_LETTERS = f"{', '.join(_FIRST_LETTERS)} or {_LAST_LETTER}"  # "A, B or C"


def parse_pairwise(text: str) -> Verdict:
    """The winner in ``[[A]]``/``[[B]]``/``[[C]]`` (the prompt's letters; C or 'tie' = tie) and the
    text after it."""
    text = _nonempty(text)
    match = _VERDICT_TOKEN.search(text)
    if not match:
        raise ParseError("no verdict found")
    token = match.group(1).strip().upper()
    winner = TIE if token == TIE.upper() else WINNER_OF_LETTER.get(token)
    if winner is None:
        raise ParseError(f"verdict is not {_LETTERS}: {match.group(1)!r}")
    return Verdict(winner=winner, rationale=_rest(text, match.end()))


def parse_scenario(text: str, scenario_ids: list[str]) -> str:
    """The scenario id picked by the classifier's ``[[X]]`` letter."""
    text = _nonempty(text)
    match = _VERDICT_TOKEN.search(text)
    if not match:
        raise ParseError("no scenario letter found")
    letter = match.group(1).strip().upper()
    index = SCENARIO_LETTERS.find(letter) if len(letter) == 1 else -1
    if not 0 <= index < len(scenario_ids):
        raise ParseError(f"scenario letter out of range: {match.group(1)!r}")
    return scenario_ids[index]


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:instruction|question|quiz question|task)\s*\d*\s*[:.]\s*(?:\*\*)?\s*", re.I)


def parse_instruction(text: str, min_chars: int) -> str:
    """A generated instruction: drop a leading label and surrounding quotes; reject if too short."""
    text = _nonempty(text)
    text = _LABEL.sub("", text, count=1).strip().strip('"').strip()
    if len(text) < min_chars:
        raise ParseError(f"instruction too short ({len(text)} < {min_chars} characters)")
    return text


def _nonempty(text: str | None) -> str:
    if text is None or not text.strip():
        raise ParseError("empty output")
    return text.strip()


def _rest(text: str, start: int) -> str:
    """The rationale: what follows the verdict, without leftover brackets and punctuation."""
    return text[start:].lstrip(" ].:-\n").strip()  # a set of characters to drop, not a prefix
