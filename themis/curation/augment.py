"""Custom-prompt augmentation of training records: paraphrased criteria, criteria subsets, other scales.

The paper trains on judge prompts a user might write differently: criteria reworded, only some of
them, another score scale. Each augmented record is a teacher judgment re-rendered through the one
judging core (``themis.judge.call.render_call`` with ``criteria=`` or ``scale=``) with a target derived from
the teacher's own output:

* **paraphrase**: the prompt lists a teacher-written rewording of the scenario's criteria (same
  count, same order). The verdict and rationale stay; the ``Criteria:`` lines are renamed to the
  reworded names by position, because the prompt asks for lines naming *its* criteria.
* **subset**: the prompt lists a random subset of the criteria the teacher scored. The overall
  score is predicted from the subset's scores by an ordinary least-squares fit (scikit-learn) of the
  teacher's overall on those criteria, over the teacher's training-side judgments of the scenario
  that score every one of them (complete cases: no imputing a score the teacher never gave),
  rounded half up and clipped to 1-5. The target keeps only the subset's criterion lines.
* **scale:<name>**: the prompt asks for another scale; the verdict and every ``[[n]]`` of the
  rationale are converted by ``scales.convert_score``.

Pairwise records have no score and no criterion lines: only paraphrase applies to them.

A record that cannot be augmented one way (no ``Criteria:`` block, too few judgments to fit, a
``[[x]]`` that is not a 1-5 score) is left as it is and counted under a reason; it is never a
reject. Augmented records carry ``augmentation`` (the kind) and ``source_example_id`` (the
judgment they come from) and inherit everything else, the instruction id included, from it.
Pure: no Ray or torch.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from themis.config import AugmentConfig, Sampling, SubsetsConfig
from themis.engines.base import GenerationRequest
from themis.judge.call import JudgeCall, escape_data, render_call
from themis.judge.parsing import ParseError, parse_criterion_scores
from themis.judge.prompts import CRITERIA_HEADER, render_criteria
from themis.judge.scales import TEACHER_SCALE, convert_score, get_scale
from themis.judge.scenarios import Criterion, Scenario, get_scenario
from themis.judge.verdict import POINTWISE_KINDS

Row = dict[str, Any]
PARAPHRASE, SUBSET = "paraphrase", "subset"


def scale_kind(scale: str) -> str:
    """The ``augmentation`` marker of a record re-rendered on ``scale``."""
    return f"scale:{scale}"


@dataclass
class Augmentation:
    """What augmenting a set of records gave: the new rows and, per reason, what could not be done."""

    rows: list[Row] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(r["augmentation"] for r in self.rows).items()))


# --- the shared parts: a record's judge call, its Criteria: block --------------------------------


def call_of(row: Row, criteria: tuple[Criterion, ...] | None = None, scale: str | None = None) -> JudgeCall:
    """The judge call a judgment row answered, optionally with other criteria or another scale."""
    return JudgeCall(
        row["kind"],
        row["scenario"],
        row["instruction"],
        tuple(row["responses"]),
        row["reference"] or None,
        row["order"] or "",
        scale,
        criteria,
    )


def derive(row: Row, kind: str, suffix: str, call: JudgeCall, **changes: Any) -> Row:
    """An augmented copy of ``row``: its prompt re-rendered from ``call``, ``changes`` applied, marked."""
    return (
        row
        | changes
        | {
            "judgment_id": f"{row['judgment_id']}#{kind}{suffix}",
            "messages": render_call(call).messages,
            "augmentation": kind,
            "source_example_id": row["judgment_id"],
        }
    )


@dataclass(frozen=True)
class CriteriaBlock:
    """The ``Criteria:`` block of a rationale: lines ``[start, end)`` and each line's (criterion, score)."""

    lines: list[str]
    start: int
    end: int
    scored: list[tuple[int, str, int]]  # (line index, criterion name, score), first line of a name wins

    @property
    def scores(self) -> dict[str, int]:
        return {name: score for _, name, score in self.scored}


def criteria_block(rationale: str | None, names: list[str]) -> CriteriaBlock | None:
    """The rationale's ``Criteria:`` block, read line by line with the judge's own parser; it ends at
    the first line that scores no known criterion. None when there is no block or no score in it."""
    lines = (rationale or "").split("\n")
    head = next((i for i, line in enumerate(lines) if line.strip() == CRITERIA_HEADER), None)
    if head is None:
        return None
    scored, end, seen = [], head + 1, set()
    while end < len(lines):
        line = lines[end]
        try:
            ((name, score),) = parse_criterion_scores(f"{CRITERIA_HEADER}\n{line}", names).items()
        except ParseError:
            if line.strip():
                break
        else:
            if name not in seen:
                scored.append((end, name, score))
                seen.add(name)
        end += 1
    return CriteriaBlock(lines, head, end, scored) if scored else None


def rewrite_block(block: CriteriaBlock, keep: dict[str, str]) -> str:
    """The rationale with its criterion lines re-rendered canonically: a criterion in ``keep`` under its
    new name (``keep[name]``), every other one dropped; the text around the block is unchanged."""
    new = [f"{keep[name]}: [[{score}]]" for _, name, score in block.scored if name in keep]
    lines = block.lines[: block.start + 1] + new + block.lines[block.end :]
    return "\n".join(lines)


# --- paraphrased criteria -------------------------------------------------------------------------

PARAPHRASE_SYSTEM = "You reword grading criteria without changing what they mean."
_LINE = re.compile(r"^\s*(\d+)[.)]\s+(.+?)\s*:\s+(.+?)\s*$")


def render_paraphrase_prompt(scenario: Scenario, variant: int) -> list[dict[str, str]]:
    """Ask for one rewording of a scenario's criteria (``variant`` makes each request distinct)."""
    n = len(scenario.criteria)
    body = (
        f'These are the grading criteria of the scenario "{scenario.name}", most important first:\n'
        f"{render_criteria(scenario)}\n\n"
        f"Write rewording number {variant + 1}: give every criterion a new name and a new description in "
        "your own words, with the same meaning, in the same order. Reply with exactly "
        f'{n} lines and nothing else, line k being "k. <new name>: <new description>". A name is a few '
        "words with no colon or brackets; do not use square brackets or asterisks anywhere."
    )
    return [{"role": "system", "content": PARAPHRASE_SYSTEM}, {"role": "user", "content": body}]


def paraphrase_request(scenario: Scenario, variant: int, sampling: Sampling, seed: int) -> GenerationRequest:
    """The teacher request for one paraphrase (no forced format: the reply is free text)."""
    return GenerationRequest(
        messages=render_paraphrase_prompt(scenario, variant),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=seed + variant,
    )


def parse_paraphrase(text: str | None, scenario: Scenario) -> tuple[Criterion, ...]:
    """The reworded criteria, strictly: one ``k. name: description`` line per criterion, numbered in
    order, distinct plain names, nothing that could pass for prompt structure. Raises ``ParseError``."""
    lines = [line for line in (text or "").strip().split("\n") if line.strip()]
    if len(lines) != len(scenario.criteria):
        raise ParseError("paraphrase: not one line per criterion")  # a reason to count: no numbers in it
    criteria = []
    for k, line in enumerate(lines, 1):
        match = _LINE.match(line)
        if not match or int(match.group(1)) != k:
            raise ParseError("paraphrase: a line is not 'k. name: description' in order")
        name, description = match.group(2).strip(), match.group(3).strip()
        if escape_data(line) != line or any(c in name for c in "[]*:"):
            raise ParseError("paraphrase: prompt markers, [[ ]] or formatting in the text")
        if not 2 <= len(name) <= 60 or not name[0].isalpha() or len(description) < 8:
            raise ParseError("paraphrase: a name or description out of length")
        criteria.append(Criterion(name, description))
    if len({c.name.lower() for c in criteria}) != len(criteria):
        raise ParseError("paraphrase: two criteria share a name")
    if tuple(criteria) == scenario.criteria:
        raise ParseError("paraphrase: the criteria are unchanged")
    return tuple(criteria)


def paraphrase_record(row: Row, criteria: tuple[Criterion, ...], suffix: str) -> Row:
    """``row`` prompted with reworded criteria; its criterion lines renamed to them by position."""
    original = get_scenario(row["scenario"]).criteria
    names = [c.name for c in original]
    block = criteria_block(row["rationale"], names) if row["kind"] in POINTWISE_KINDS else None
    rationale = row["rationale"]
    if block is not None:
        rationale = rewrite_block(block, {old.name: new.name for old, new in zip(original, criteria, strict=True)})
    return derive(row, PARAPHRASE, suffix, call_of(row, criteria=criteria), rationale=rationale)


def add_paraphrases(
    rows: list[Row], variants: dict[str, list[tuple[Criterion, ...]]], per_record: int, rng: random.Random
) -> Augmentation:
    """Every record re-rendered with ``per_record`` of its scenario's paraphrases, drawn at random."""
    out = Augmentation()
    for row in rows:
        mine = variants.get(row["scenario"], [])
        if not mine:
            out.skipped["paraphrase: no valid paraphrase of the scenario's criteria"] += 1
            continue
        for v in sorted(rng.sample(range(len(mine)), min(per_record, len(mine)))):
            out.rows.append(paraphrase_record(row, mine[v], str(v)))
    return out


# --- criteria subsets, the overall score re-predicted by a regression -----------------------------


class NotFittable(ValueError):
    """Too few complete judgments, or a design matrix without full rank; the message is the reason."""


@dataclass(frozen=True)
class OverallFit:
    """The teacher's overall score as a linear function of some criteria's scores."""

    criteria: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    rows: int

    def predict(self, scores: dict[str, int]) -> int:
        """The overall score for these criterion scores: rounded half up, clipped to the teacher's 1-5."""
        raw = self.intercept + sum(c * scores[n] for c, n in zip(self.coef, self.criteria))
        s = get_scale(TEACHER_SCALE)
        return min(s.high, max(s.low, math.floor(raw + 0.5)))


def fit_overall(data: list[tuple[dict[str, int], int]], criteria: tuple[str, ...], min_rows: int) -> OverallFit:
    """Least squares of the overall score on ``criteria``'s scores, over the (scores, overall) pairs
    that score every one of them. Raises ``NotFittable`` with fewer than ``min_rows`` of them (or
    fewer than the coefficients) or when a score is constant or collinear (no unique fit)."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    complete = [(s, y) for s, y in data if all(c in s for c in criteria)]
    if len(complete) < max(min_rows, len(criteria) + 1):
        raise NotFittable("subset: too few teacher judgments scoring the subset to fit")
    x = np.array([[s[c] for c in criteria] for s, _ in complete], dtype=float)
    y = np.array([overall for _, overall in complete], dtype=float)
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(x)), x])) < len(criteria) + 1:
        raise NotFittable("subset: singular fit (a criterion score constant or collinear)")
    model = LinearRegression().fit(x, y)
    return OverallFit(criteria, tuple(float(c) for c in model.coef_), float(model.intercept_), len(complete))


def fit_data(rows: list[Row]) -> dict[str, list[tuple[dict[str, int], int]]]:
    """Per scenario, the (criterion scores, overall score) of every graded judgment with a Criteria block."""
    data: dict[str, list[tuple[dict[str, int], int]]] = defaultdict(list)
    for row in rows:
        if row["kind"] not in POINTWISE_KINDS or row["score"] is None:
            continue
        block = criteria_block(row["rationale"], [c.name for c in get_scenario(row["scenario"]).criteria])
        if block is not None:
            data[row["scenario"]].append((block.scores, row["score"]))
    return data


def draw_subsets(scored: list[str], total: int, count: int, min_size: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Up to ``count`` distinct random subsets of the ``scored`` criteria (kept in their order), each of
    at least ``min_size`` and fewer than all ``total`` criteria of the scenario."""
    largest = min(len(scored), total - 1)
    if largest < min_size:
        return []
    subsets: list[tuple[str, ...]] = []
    for _ in range(8 * count):  # a few tries: small sets have few distinct subsets
        picked = set(rng.sample(scored, rng.randint(min_size, largest)))
        subset = tuple(n for n in scored if n in picked)
        if subset not in subsets:
            subsets.append(subset)
        if len(subsets) == count:
            break
    return subsets


def subset_record(row: Row, block: CriteriaBlock, subset: tuple[str, ...], fit: OverallFit, suffix: str) -> Row:
    """``row`` prompted with only ``subset``'s criteria; the overall re-predicted, other lines dropped."""
    criteria = tuple(c for c in get_scenario(row["scenario"]).criteria if c.name in subset)
    rationale = rewrite_block(block, {n: n for n in subset})
    score = fit.predict(block.scores)
    return derive(row, SUBSET, suffix, call_of(row, criteria=criteria), score=score, rationale=rationale)


def add_subsets(rows: list[Row], fit_rows: list[Row], cfg: SubsetsConfig, rng: random.Random) -> Augmentation:
    """Every graded record with ``cfg.per_record`` criteria subsets; the
    regressions fit on ``fit_rows`` (the teacher's judgments on the training side)."""
    out, data = Augmentation(), fit_data(fit_rows)
    fits: dict[
        tuple[str, tuple[str, ...]], OverallFit | str
    ] = {}  # one fit per (scenario, subset); a string is why none
    for row in rows:
        if row["kind"] not in POINTWISE_KINDS:
            out.skipped["subset: pairwise (only paraphrase applies)"] += 1
            continue
        criteria = get_scenario(row["scenario"]).criteria
        block = criteria_block(row["rationale"], [c.name for c in criteria])
        if block is None:
            out.skipped["subset: no per-criterion scores in the rationale"] += 1
            continue
        subsets = draw_subsets(list(block.scores), len(criteria), cfg.per_record, cfg.min_criteria, rng)
        if not subsets:
            out.skipped["subset: fewer scored criteria than min_criteria"] += 1
        for k, subset in enumerate(subsets):
            key = (row["scenario"], subset)
            if key not in fits:
                try:
                    fits[key] = fit_overall(data[row["scenario"]], subset, cfg.min_fit_rows)
                except NotFittable as exc:
                    fits[key] = str(exc)
            fit = fits[key]
            if isinstance(fit, str):
                out.skipped[fit] += 1
            else:
                out.rows.append(subset_record(row, block, subset, fit, str(k)))
    return out


# --- other scales ---------------------------------------------------------------------------------

# Any text in double brackets on one line ("[[4]]" quoted in a rationale), to convert if it is a score.
_DOUBLE_BRACKETED = re.compile(r"\[\[\s*([^\[\]\n]*?)\s*\]\]")


def convert_rationale(rationale: str | None, scale: str) -> str:
    """Every ``[[n]]`` of a rationale on ``scale``; raises ``ValueError`` on one that is not a 1-5 score."""

    def convert(match: re.Match[str]) -> str:
        text = match.group(1)
        if not text.isdigit() or not get_scale(TEACHER_SCALE).contains(int(text)):
            raise ValueError(f"[[{text}]] is not a 1-5 score")
        return f"[[{convert_score(int(text), scale)}]]"

    return _DOUBLE_BRACKETED.sub(convert, rationale or "")


def scale_record(row: Row, scale: str) -> Row:
    """``row`` asked on ``scale``: the verdict and every score of the rationale converted."""
    rationale = convert_rationale(row["rationale"], scale)
    score = convert_score(row["score"], scale)
    return derive(row, scale_kind(scale), "", call_of(row, scale=scale), score=score, rationale=rationale, scale=scale)


def add_scales(rows: list[Row], scales: list[str], per_scale: int, rng: random.Random) -> Augmentation:
    """For each scale, ``per_scale`` graded records drawn at random, re-rendered on it."""
    out = Augmentation()
    graded = [r for r in rows if r["kind"] in POINTWISE_KINDS and r["score"] is not None]
    for scale in scales:
        for row in rng.sample(graded, min(per_scale, len(graded))):
            try:
                out.rows.append(scale_record(row, scale))
            except ValueError:
                out.skipped[f"{scale_kind(scale)}: a [[ ]] in the rationale is not a 1-5 score"] += 1
    return out


# --- all of it ------------------------------------------------------------------------------------


def augment_records(
    rows: list[Row],
    cfg: AugmentConfig,
    seed: int,
    paraphrases: dict[str, list[tuple[Criterion, ...]]],
    fit_rows: list[Row],
) -> Augmentation:
    """Every configured augmentation of ``rows`` (the selected training records). Each kind draws from
    its own seeded generator, so turning one on or off leaves the others' choices as they were."""
    total = Augmentation()
    parts = []
    if cfg.paraphrase.enabled:
        parts.append(add_paraphrases(rows, paraphrases, cfg.paraphrase.per_record, random.Random(f"{seed}:paraphrase")))
    if cfg.subsets.enabled:
        parts.append(add_subsets(rows, fit_rows, cfg.subsets, random.Random(f"{seed}:subset")))
    if cfg.scales.names:
        parts.append(add_scales(rows, cfg.scales.names, cfg.scales.per_scale, random.Random(f"{seed}:scale")))
    for part in parts:
        total.rows += part.rows
        total.skipped += part.skipped
    return total


def check_sides(added: list[Row], train: list[Row], validation: list[Row]) -> None:
    """Raise unless every augmented record comes from a training record and shares no instruction with
    validation (the split is by instruction: a record must stay on its source's side)."""
    sources = {r["judgment_id"] for r in train}
    held_out = {r["instruction_id"] for r in validation}
    stray = [r["judgment_id"] for r in added if r["source_example_id"] not in sources]
    crossing = [r["judgment_id"] for r in added if r["instruction_id"] in held_out]
    if stray or crossing:
        raise AssertionError(f"augmented records off their source's side: {(stray + crossing)[:5]}")
