"""Labelled sets a judge is measured on, in one canonical format. Pure: no Ray or torch. Over 400
lines because each adapter sits beside the canonical items it fills: every source, one format.

- ``PointwiseItem``: instruction, response, optional reference, scenario, and one human score
  per annotator in ``human``; ``human_score`` is the gold score. Scores are on the item's ``scale``
  (``themis.judge.scales``: 1-5 unless the item says 0-1, 1-3 or 1-10), the judge's verdict too.
- ``PairwiseItem``: instruction, responses A and B, optional reference, scenario, and one human
  winner ("A", "B" or "tie") per annotator in ``human``; ``human_winner`` is the gold winner.

The gold score or winner is the annotators' majority, as in the paper; without a majority it is the
rounded mean score, or a tie for pairs. Adapters: the PandaLM test set and HHH alignment (human-
labelled pairs, fetched by ``sources``), this run's validation split (the teacher is the one
annotator), and any JSON array, JSONL or Parquet with a column mapping (``load_file``; unusable rows
become ``Reject``s). ``mt_bench_instructions`` reads the MT-bench questions with GPT-4 references
as an unlabelled instruction source.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from themis.evaluation import sources
from themis.evaluation.records import BenchmarkError, Record, read_records
from themis.judge.scales import DEFAULT_SCALE, Scale, get_scale
from themis.judge.verdict import WINNERS

# How human labels are read when a benchmark gives no ``values`` mapping: A, B or tie, nothing else.
# Numbers are refused: published sets disagree on what 0/1/2 mean (PandaLM: 0 = tie, 1 = first
# better; Auto-J: 0 = first better, 2 = tie), and a guess reads one of them silently wrong (Auto-J's
# test set read the PandaLM way scores a judge 0.198 instead of its real accuracy).
WINNER_ALIASES = {w.lower(): w for w in WINNERS}
PANDALM_WINNERS = {0: "tie", 1: "A", 2: "B"}  # PandaLM's own label numbers (its file format)
NUMERIC_WINNER = re.compile(r"[+-]?\d+(\.\d*)?")
NUMERIC_LABELS = (
    "human label {value!r} is a number, and pairwise benchmarks number their labels differently: "
    "PandaLM-style 0 = tie, 1 = first response (A) better, 2 = second (B) better; Auto-J-style "
    "0 = first (A) better, 1 = second (B) better, 2 = tie. Say which this file uses with benchmark.values, "
    "e.g. `values: {{0: tie, 1: A, 2: B}}` (PandaLM-style) or `values: {{0: A, 1: B, 2: tie}}` (Auto-J-style)"
)
# PandaLM and HHH carry no Themis scenario: both are open-ended requests, judged with Open QA criteria.
OPEN_SCENARIO = "open_qa"
MT_BENCH_SCENARIOS = {
    "writing": "creative_writing",
    "roleplay": "role_playing",
    "reasoning": "math_qa",
    "math": "math_qa",
    "coding": "programming",
    "extraction": "reading_comprehension",
    "stem": "close_qa",
    "humanities": "open_qa",
}


@dataclass(frozen=True)
class PointwiseItem:
    item_id: str
    instruction: str
    response: str
    scenario: str
    human: tuple[int, ...]
    reference: str | None = None
    category: str = ""
    scale: str | None = None  # None is 1-5, so items without a scale stay as they were
    kind = "pointwise"

    @property
    def score_scale(self) -> Scale:
        """The scale the human scores and the judge's verdict are on."""
        return get_scale(self.scale)

    @property
    def human_score(self) -> int:
        """The gold score: the majority, else the rounded mean (ties in rounding go up, as round-half-up does)."""
        top, n = Counter(self.human).most_common(1)[0]
        if n > len(self.human) / 2:
            return top
        return int(sum(self.human) / len(self.human) + 0.5)


@dataclass(frozen=True)
class PairwiseItem:
    item_id: str
    instruction: str
    response_a: str
    response_b: str
    scenario: str
    human: tuple[str, ...]
    reference: str | None = None
    category: str = ""
    kind = "pairwise"

    @property
    def human_winner(self) -> str:
        """The gold winner, for the A-B order: the majority, else a tie."""
        top, n = Counter(self.human).most_common(1)[0]
        return top if n > len(self.human) / 2 else "tie"


Item = PointwiseItem | PairwiseItem


# --- shared human-labelled sets -----------------------------------------------------------------


def load_pandalm(root: str | Path) -> list[PairwiseItem]:
    """The PandaLM test set: 999 pairs, three annotators each; category = the motivating app.
    ``root`` is laid out like the data folder (``<root>/pandalm/testset-v1.json``): see ``sources``."""
    path = Path(root) / "pandalm" / "testset-v1.json"
    items = []
    for n, row in ((r.n, r.data) for r in read_records(path)):
        try:
            votes = tuple(PANDALM_WINNERS[row[f"annotator{i}"]] for i in (1, 2, 3))
            instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            items.append(
                PairwiseItem(
                    str(row["idx"]),
                    instruction,
                    row["response1"],
                    row["response2"],
                    OPEN_SCENARIO,
                    votes,
                    category=row.get("motivation_app", ""),
                )
            )
        except (KeyError, TypeError) as exc:
            raise BenchmarkError(f"{path}: record {n}: missing or bad field {exc}") from None
    return items


HHH_PARTS = re.compile(
    r"###The instruction to evaluate:\s*(?P<instruction>.*?)\s*"
    r"###Response to evaluate:\s*(?P<response>.*?)\s*###Score Rubrics:",
    re.S,
)


def load_hhh(root: str | Path) -> list[PairwiseItem]:
    """HHH alignment as preference pairs: the human-chosen response is A; category = its subset.
    ``root`` is laid out like the data folder (``<root>/hhh_alignment/hhh_alignment_eval.json``)."""
    path = Path(root) / "hhh_alignment" / "hhh_alignment_eval.json"
    items = []
    for n, row in ((r.n, r.data) for r in read_records(path)):
        chosen, rejected = (
            _hhh_parts(row.get("chosen_instruction"), path, n),
            _hhh_parts(row.get("rejected_instruction"), path, n),
        )
        items.append(
            PairwiseItem(
                f"hhh-{n}",
                chosen["instruction"],
                chosen["response"],
                rejected["response"],
                OPEN_SCENARIO,
                ("A",),
                category=row.get("source", ""),
            )
        )
    return items


def _hhh_parts(prompt: Any, path: Path, n: int) -> dict[str, str]:
    match = HHH_PARTS.search(prompt) if isinstance(prompt, str) else None
    if not match:
        raise BenchmarkError(f"{path}: record {n}: not a Prometheus absolute-grading prompt")
    return match.groupdict()


def mt_bench_instructions(folder: str | Path) -> list[dict[str, Any]]:
    """MT-bench first-turn questions as unlabelled instructions, with GPT-4 references where given,
    from ``folder``: ``shipped:mt_bench`` (the pinned FastChat files, fetched once) or a local folder
    holding question.jsonl and reference_answer_gpt-4.jsonl."""
    folder = sources.resolve(str(folder))
    answers = read_records(folder / "reference_answer_gpt-4.jsonl")
    refs = {r.data["question_id"]: r.data["choices"][0]["turns"][0] for r in answers}
    rows = []
    for n, q in ((r.n, r.data) for r in read_records(folder / "question.jsonl")):
        if q.get("category") not in MT_BENCH_SCENARIOS:
            raise BenchmarkError(f"{folder / 'question.jsonl'}: line {n}: unknown category {q.get('category')!r}")
        rows.append(
            {
                "instruction": q["turns"][0],
                "scenario": MT_BENCH_SCENARIOS[q["category"]],
                "reference": refs.get(q["question_id"]),
                "source": f"mt_bench:{q['question_id']}",
            }
        )
    return rows


# --- this run's validation split -------------------------------------------------------------------


def from_validation(rows: Sequence[Mapping[str, Any]]) -> list[Item]:
    """Items from the run's validation split; the teacher's score or winner is the one "human" vote.

    A pair appears there in both orders; its ``ab`` record is the item (the judge sees both orders).
    """
    items: list[Item] = []
    for r in rows:
        responses = r["responses"]
        reference = r["reference"] or None
        if r["kind"] != "pairwise":
            scale = r.get("scale") if r.get("scale") != DEFAULT_SCALE else None
            items.append(
                PointwiseItem(
                    r["example_id"],
                    r["instruction"],
                    responses[0],
                    r["scenario"],
                    (int(r["score"]),),
                    reference,
                    r["kind"],
                    scale or None,
                )
            )
        elif r["order"] == "ab":
            items.append(
                PairwiseItem(
                    r["pair_id"],
                    r["instruction"],
                    responses[0],
                    responses[1],
                    r["scenario"],
                    (r["winner"],),
                    reference,
                    "pairwise",
                )
            )
    return items


# --- a user's file -------------------------------------------------------------------------------

POINTWISE_FIELDS = ("instruction", "response", "scenario", "human")
PAIRWISE_FIELDS = ("instruction", "response_a", "response_b", "scenario", "human")
OPTIONAL_FIELDS = ("item_id", "reference", "category", "scale")  # scale: pointwise only

# A column mapping's value: the file's column, a list of annotator columns (human), or a constant.
Column = str | list[str] | Mapping[Any, str]  # Any: the config's key is Literal['const']


@dataclass(frozen=True)
class Reject:
    """A row that could not be used, and why; the run goes on without it."""

    source: str  # "file.jsonl:12": the file and its line (JSON array: record; Parquet: row)
    reason: str
    record: str  # the raw record as JSON text


@dataclass(frozen=True)
class Loaded:
    """A benchmark's usable items, the rows rejected on the way, and where they came from."""

    items: list[Item]
    rejects: list[Reject]
    source: str


class _Unusable(ValueError):
    """This row cannot be used (it goes to the rejects); the file itself is fine."""


def load_file(
    path: str | Path,
    kind: str,
    columns: Mapping[str, Column] | None = None,
    values: Mapping[str, str] | None = None,
    needs_texts: bool = True,
) -> Loaded:
    """A JSON array, JSONL or Parquet of labelled items.

    ``columns`` maps a canonical field to the file's column (``human`` may map to a list of annotator
    columns; ``{"const": v}`` sets the field to ``v`` on every row); unmapped fields use their
    canonical names. ``values`` maps each raw human label to A/B/tie (pairs) or "1".."5" (scores);
    a label outside it is an error naming the file, line and value. Without ``values`` pair labels
    must be A, B or tie (``WINNER_ALIASES``; a number is an error that shows the two common
    numberings and the mapping to write) and scores integers on the scale. A pointwise row's
    ``scale`` (a column, or a constant) puts its scores on 0-1, 1-3 or 1-10 instead of 1-5; an
    unknown scale rejects the row.

    Rows that cannot be used (a missing or blank text when ``needs_texts``, no human label) become
    ``Reject``s with their reason; a file where every row is rejected is an error.
    """
    mapping = dict(columns or {})
    _check_mapping(mapping, kind)
    labels = None if values is None else {str(k).strip(): v for k, v in values.items()}
    items, rejects = [], []
    first_seen: dict[str, Any] = {}
    records = read_records(path)
    for record in records:
        try:
            item = _file_item(record, kind, mapping, labels, needs_texts)
        except _Unusable as exc:
            rejects.append(Reject(record.source, str(exc), record.raw()))
            continue
        except (ValueError, TypeError) as exc:
            raise BenchmarkError(f"{record.where}: {exc}") from None
        # Verdicts are joined to items by id: a repeated id would make that join ambiguous.
        seen = first_seen.setdefault(item.item_id, record)
        if seen is not record:
            raise BenchmarkError(f"{record.where}: item id {item.item_id!r} repeats {seen.unit} {seen.n}")
        items.append(item)
    if not items:
        raise BenchmarkError(_nothing_usable(Path(path), records, rejects))
    return Loaded(items, rejects, str(path))


def _check_mapping(mapping: Mapping[str, Column], kind: str) -> None:
    required = PAIRWISE_FIELDS if kind == "pairwise" else POINTWISE_FIELDS
    unknown = set(mapping) - set(required) - set(OPTIONAL_FIELDS)
    if unknown:
        raise BenchmarkError(f"unknown canonical field(s) in the column mapping: {sorted(unknown)}")
    if kind == "pairwise" and "scale" in mapping:
        raise BenchmarkError("a pairwise benchmark has no score scale: drop 'scale' from the column mapping")


def _nothing_usable(path: Path, records: Sequence[Record], rejects: Sequence[Reject]) -> str:
    if not records:
        return f"{path}: no labelled items"
    unit = records[0].unit
    examples = "; ".join(f"{unit} {r.source.rsplit(':', 1)[1]}: {r.reason}" for r in rejects[:3])
    return f"{path}: every row was rejected ({len(rejects)} of {len(records)}), e.g. {examples}"


def _file_item(
    record: Record, kind: str, mapping: Mapping[str, Column], labels: Mapping[str, str] | None, needs_texts: bool
) -> Item:
    def text(field: str) -> str:
        value = _field(record.data, mapping, field, required=needs_texts)
        if not needs_texts:
            return value if isinstance(value, str) else ""
        if not isinstance(value, str) or not value.strip():
            raise _Unusable(f"{field} must be a non-empty string, got {value!r}")
        return value

    human = _field(record.data, mapping, "human", required=False)
    votes = [v for v in (human if isinstance(human, list) else [human]) if not _blank(v)]
    if not votes:
        raise _Unusable("no human label")
    common: dict[str, Any] = {
        "item_id": str(_field(record.data, mapping, "item_id", False, f"{record.file.stem}-{record.n}")),
        "instruction": text("instruction"),
        "scenario": text("scenario"),
        "reference": _field(record.data, mapping, "reference", False) or None,
        "category": str(_field(record.data, mapping, "category", False) or ""),
    }
    if kind == "pairwise":
        winners = tuple(parse_human_winner(_mapped(v, labels)) for v in votes)
        return PairwiseItem(response_a=text("response_a"), response_b=text("response_b"), human=winners, **common)
    scale = _item_scale(_field(record.data, mapping, "scale", False))
    scores = tuple(parse_human_score(_mapped(v, labels), scale) for v in votes)
    return PointwiseItem(response=text("response"), human=scores, scale=scale, **common)


def _item_scale(value: Any) -> str | None:
    """A row's scale: blank or 1-5 is the default (None); an unknown one makes the row unusable."""
    if _blank(value) or label_key(value) == DEFAULT_SCALE:
        return None
    try:
        return get_scale(label_key(value)).name
    except ValueError as exc:
        raise _Unusable(str(exc)) from None


_ABSENT = object()


def _field(
    data: Mapping[str, Any], mapping: Mapping[str, Column], field: str, required: bool = True, default: Any = None
) -> Any:
    """A canonical field of a record through the mapping: a column, a list of columns, or a constant."""
    column = mapping.get(field, field)
    if isinstance(column, Mapping):
        return column["const"]
    if isinstance(column, list):
        return [data.get(c) for c in column]
    value = data.get(column, _ABSENT)
    if value is _ABSENT:
        if required:
            raise _Unusable(f"missing column {column!r} (canonical field {field!r})")
        return default
    return value


def _mapped(value: Any, labels: Mapping[str, str] | None) -> Any:
    """A raw human label through the benchmark's ``values``; outside it is an error, not a reject."""
    if labels is None:
        return value
    key = label_key(value)
    if key not in labels:
        raise ValueError(f"human label {value!r} is not in benchmark.values (known: {sorted(labels)})")
    return labels[key]


def label_key(value: Any) -> str:
    """A raw label as the key it is looked up by: stripped text, with 2.0 read as "2" (as JSON
    written by pandas has it), so ints, floats and strings in a file all match "2"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_human_winner(value: Any) -> str:
    """A human's pairwise winner: A, B or tie in any case. A number is refused with the two common
    numberings (``NUMERIC_LABELS``): only the benchmark's ``values`` can say which one it uses."""
    key = label_key(value)
    if NUMERIC_WINNER.fullmatch(key):
        raise ValueError(NUMERIC_LABELS.format(value=value))
    winner = WINNER_ALIASES.get(key.lower())
    if winner is None:
        raise ValueError(f"a human winner must be A, B or tie, got {value!r} (map others with benchmark.values)")
    return winner


def parse_human_score(value: Any, scale: str | None = None) -> int:
    """A human's score: an integer on ``scale`` (default 1-5), given as a number or a string."""
    s = get_scale(scale)
    key = label_key(value).removesuffix(".0")
    if key not in s.choices:
        raise ValueError(
            f"a human score must be an integer {s.low}-{s.high}, got {value!r} (map others with benchmark.values)"
        )
    return int(key)
