"""Labelled sets a judge is measured on, in one canonical format. Pure: no Ray or torch.

- ``PointwiseItem``: instruction, response, optional reference, scenario, and one human score
  (1-5) per annotator in ``human``; ``human_score`` is the gold score.
- ``PairwiseItem``: instruction, responses A and B, optional reference, scenario, and one human
  winner ("A", "B" or "tie") per annotator in ``human``; ``human_winner`` is the gold winner.

The gold score or winner is the annotators' majority, as in the paper; without a majority it is the
rounded mean score, or a tie for pairs. Adapters: the PandaLM test set and HHH alignment (human-labelled
pairs from ``../shared/data``), this run's validation split (the teacher is the one annotator),
and any JSONL or Parquet with a column mapping. ``mt_bench_instructions`` reads the MT-bench
questions with GPT-4 references as an unlabelled instruction source.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINNER_ALIASES = {"a": "A", "b": "B", "tie": "tie", "1": "A", "2": "B", "0": "tie"}
PANDALM_WINNERS = {0: "tie", 1: "A", 2: "B"}
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


class BenchmarkError(ValueError):
    """A labelled set that cannot be read; the message names the file and, where it can, the line."""


@dataclass(frozen=True)
class PointwiseItem:
    item_id: str
    instruction: str
    response: str
    scenario: str
    human: tuple[int, ...]
    reference: str | None = None
    category: str = ""
    kind = "pointwise"

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


def load_pandalm(shared_dir: str | Path) -> list[PairwiseItem]:
    """The PandaLM test set: 999 pairs, three annotators each; category = the motivating app."""
    path = Path(shared_dir) / "pandalm" / "testset-v1.json"
    items = []
    for n, row in _json_records(path):
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


def load_hhh(shared_dir: str | Path) -> list[PairwiseItem]:
    """HHH alignment as preference pairs: the human-chosen response is A; category = its subset."""
    path = Path(shared_dir) / "hhh_alignment" / "hhh_alignment_eval.json"
    items = []
    for n, row in _json_records(path):
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
    """MT-bench first-turn questions (from its folder, e.g. ../shared/data/mt_bench) as unlabelled
    instructions, with GPT-4 references where given."""
    folder = Path(folder)
    refs = {r["question_id"]: r["choices"][0]["turns"][0] for _, r in _jsonl(folder / "reference_answer_gpt-4.jsonl")}
    rows = []
    for n, q in _jsonl(folder / "question.jsonl"):
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
            items.append(
                PointwiseItem(
                    r["example_id"],
                    r["instruction"],
                    responses[0],
                    r["scenario"],
                    (int(r["score"]),),
                    reference,
                    r["kind"],
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
OPTIONAL_FIELDS = ("item_id", "reference", "category")


def load_file(path: str | Path, kind: str, columns: Mapping[str, str | list[str]] | None = None) -> list[Item]:
    """A JSONL or Parquet of labelled items. ``columns`` maps a canonical field to the file's column
    (``human`` may map to a list of annotator columns); unmapped fields use their canonical names.
    A bad row fails with the file and line (Parquet: row) number."""
    file = Path(path)
    mapping = dict(columns or {})
    required = PAIRWISE_FIELDS if kind == "pairwise" else POINTWISE_FIELDS
    unknown = set(mapping) - set(required) - set(OPTIONAL_FIELDS)
    if unknown:
        raise BenchmarkError(f"unknown canonical field(s) in the column mapping: {sorted(unknown)}")
    records = _parquet_records(file) if file.suffix == ".parquet" else _jsonl(file)
    items = []
    for n, record in records:
        try:
            items.append(_file_item(record, kind, mapping, f"{file.stem}-{n}"))
        except (KeyError, ValueError, TypeError) as exc:
            unit = "row" if file.suffix == ".parquet" else "line"
            raise BenchmarkError(f"{file}: {unit} {n}: {_reason(exc)}") from None
    return items


def _file_item(record: Mapping[str, Any], kind: str, mapping: Mapping[str, Any], default_id: str) -> Item:
    def get(field: str, default: Any = KeyError) -> Any:
        column = mapping.get(field, field)
        if isinstance(column, list):
            return [record[c] for c in column]
        if column not in record:
            if default is KeyError:
                raise KeyError(f"missing column {column!r} (canonical field {field!r})")
            return default
        return record[column]

    human = get("human")
    votes = human if isinstance(human, list) else [human]
    if not votes:
        raise ValueError("no human score or winner")
    common = {
        "item_id": str(get("item_id", default_id)),
        "instruction": _text(get("instruction"), "instruction"),
        "scenario": _text(get("scenario"), "scenario"),
        "reference": get("reference", None) or None,
        "category": str(get("category", "") or ""),
    }
    if kind == "pairwise":
        return PairwiseItem(
            response_a=_text(get("response_a"), "response_a"),
            response_b=_text(get("response_b"), "response_b"),
            human=tuple(parse_human_winner(v) for v in votes),
            **common,
        )
    return PointwiseItem(
        response=_text(get("response"), "response"), human=tuple(parse_human_score(v) for v in votes), **common
    )


def parse_human_winner(value: Any) -> str:
    """A human's pairwise winner: A, B or tie (also 1, 2, 0 as PandaLM writes them)."""
    winner = WINNER_ALIASES.get(str(value).strip().lower())
    if winner is None:
        raise ValueError(f"a human winner must be A, B or tie, got {value!r}")
    return winner


def parse_human_score(value: Any) -> int:
    """A human's score: an integer 1-5 (given as a number or a string)."""
    try:
        score = int(str(value).strip())
    except ValueError:
        score = 0
    if score not in (1, 2, 3, 4, 5) or str(value).strip() not in {str(score), f"{score}.0"}:
        raise ValueError(f"a human score must be an integer 1-5, got {value!r}")
    return score


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _reason(exc: Exception) -> str:
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)


# --- reading files ---------------------------------------------------------------------------------


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSON array file, numbered from 1."""
    if not path.is_file():
        raise BenchmarkError(f"labelled set not found: {path} (set evaluate.benchmark.shared_data_dir)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON array of records")
    return ((n, row) for n, row in enumerate(data, 1))


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSONL file with their line numbers; blank lines are skipped."""
    if not path.is_file():
        raise BenchmarkError(f"labelled set not found: {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise BenchmarkError(f"{path}: line {n}: expected a JSON object")
        yield n, record


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise BenchmarkError(f"labelled set not found: {path}")
    return ((n, row) for n, row in enumerate(pq.read_table(path).to_pylist(), 1))
