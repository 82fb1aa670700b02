"""Judges under test and what they predict. Pure: no Ray or torch.

A prediction is one verdict (``themis.judge.verdict.Verdict``) of one judge placed on one item,
in one order (pairs: ``ab`` or ``ba``, the winner always for the order shown) and with or without
the reference answer: a ``score`` (on the item's scale, 1-5 by default) for a pointwise item, a
``winner`` ("A", "B" or "tie") for a pair, or neither with ``error`` saying why there is none.

Three kinds of judge:
- recorded: a file of verdicts someone else produced (PandaLM's gpt-3.5-turbo and PandaLM-7B
  outputs), joined to the benchmark by item id, in one order or both; raw values are mapped
  through ``values``; the join is checked (``load_recorded``);
- an engine (any OpenAI-compatible endpoint, or a local checkpoint via transformers): the stage
  builds ``item_calls`` (``themis.judge.call`` calls, pairs in both orders), turns them into requests
  with ``themis.judge.call.judge_request``, generates, and turns results into predictions with
  ``parse_call`` (``themis.judge.call.read_verdict``, the reject reasons every judge gives);
- this run's trained judge, which is an engine over the exported model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from themis.config import RecordedJudge, Sampling
from themis.engines.base import GenerationRequest, GenerationResult
from themis.evaluation import sources
from themis.evaluation.benchmarks import BenchmarkError, Item, PairwiseItem, label_key
from themis.evaluation.records import Record, read_records
from themis.judge.call import JudgeCall, judge_request, pairwise_calls, read_verdict, single_call
from themis.judge.verdict import WINNERS, Verdict, Winner


@dataclass(frozen=True)
class Prediction:
    """One judge's verdict placed on one item, as a row of ``predictions.parquet``: where it was
    given (item, order, reference shown or not) and the verdict's fields, checked as a ``Verdict``
    is. The rationale is not kept: reports score verdicts, and ``output`` holds the whole text."""

    item_id: str
    order: str  # "ab" or "ba" for pairs, "" for pointwise items
    with_reference: bool
    score: int | None = None
    winner: str | None = None
    output: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        _ = self.verdict  # a Verdict's checks: a score or a winner, a known winner, no error beside them

    @classmethod
    def of(cls, item_id: str, order: str, with_reference: bool, verdict: Verdict) -> Prediction:
        """The prediction holding ``verdict``, given on ``item_id`` in ``order``."""
        return cls(
            item_id,
            order,
            with_reference,
            score=verdict.score,
            winner=verdict.winner,
            output=verdict.output,
            error=verdict.error,
        )

    @property
    def verdict(self) -> Verdict:
        """The verdict itself (without its rationale)."""
        winner = cast(Winner | None, self.winner)  # checked by Verdict
        return Verdict(score=self.score, winner=winner, output=self.output, error=self.error)

    @property
    def parsed(self) -> bool:
        """Whether there is a verdict at all."""
        return self.verdict.parsed


# --- recorded predictions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A recorded judge's predictions, joined to the benchmark, and how well the join went."""

    predictions: list[Prediction]
    unmatched_ids: list[str]  # ids in the file that match no item
    match_share: float  # share of the expected verdicts found (items, times two orders if both are recorded)
    warnings: list[str]


def load_recorded(judge: RecordedJudge, items: Sequence[Item], data_dir: str | None = None) -> Recorded:
    """Predictions from a JSON array, JSONL or Parquet file of verdicts, without reference.

    Pairs get a prediction in the ``ab`` order, and in the ``ba`` order too when the judge records
    the swapped run (``swapped_verdict_field`` or ``order_field``); scores come from the ``ab``
    verdict. Every expected verdict missing from the file becomes a prediction with an error, so it
    is counted rather than dropped. A join that matches no item, or an id recorded twice (unless
    ``on_duplicate`` says which to keep), is an error; below ``min_match`` the result carries a warning.
    ``data_dir`` is the offline folder for ``shipped:`` paths.
    """
    path = sources.resolve(judge.path, data_dir)
    verdicts = _recorded_verdicts(judge, read_records(path, "recorded predictions"))
    wanted = {i.item_id for i in items}
    found = {item_id for _, item_id in verdicts}
    if not found & wanted:
        raise BenchmarkError(_no_match(path, judge.id_field, found, wanted))
    both = judge.swapped_verdict_field is not None or judge.order_field is not None
    labels = {str(k).strip(): v for k, v in judge.values.items()}
    predictions = []
    for item in items:
        orders = ("ab", "ba") if both and isinstance(item, PairwiseItem) else ("ab",)
        for order in orders:
            raw = verdicts.get((order, item.item_id))
            shown = order if isinstance(item, PairwiseItem) else ""
            if raw is None:
                predictions.append(Prediction(item.item_id, shown, False, error="no recorded prediction"))
            else:
                predictions.append(_recorded(item, shown, raw, labels))
    share = sum(p.error != "no recorded prediction" for p in predictions) / len(predictions)
    warnings = []
    if share < judge.min_match:
        warnings.append(
            f"judge {judge.name}: {path} has {share:.1%} of the expected verdicts (min_match {judge.min_match:.0%}); "
            "the missing ones count as unparsable"
        )
    return Recorded(predictions, sorted(found - wanted), share, warnings)


def _recorded_verdicts(judge: RecordedJudge, records: Sequence[Record]) -> dict[tuple[str, str], Any]:
    """(order, item id) -> raw verdict, with duplicates handled as ``on_duplicate`` says."""
    verdicts: dict[tuple[str, str], Any] = {}
    seen: dict[tuple[str, str], Record] = {}
    for record, order, item_id, raw in _verdict_rows(judge, records):
        key = (order, item_id)
        if key in seen:
            if judge.on_duplicate == "error":
                raise BenchmarkError(
                    f"{record.where}: id {item_id!r} recorded again (first at {seen[key].unit} {seen[key].n}"
                    f"{', order ' + order if judge.order_field else ''}); set on_duplicate: first or last to keep one"
                )
            if judge.on_duplicate == "first":
                continue
        seen[key] = record
        verdicts[key] = raw
    return verdicts


def _verdict_rows(judge: RecordedJudge, records: Sequence[Record]) -> Iterator[tuple[Record, str, str, Any]]:
    """(record, order, item id, raw verdict) for every verdict a file holds."""
    fields = [judge.id_field, judge.verdict_field, judge.swapped_verdict_field, judge.order_field]
    needed = [f for f in fields if f]
    order_values = {str(k).strip(): v for k, v in (judge.order_values or {}).items()}
    for record in records:
        missing = [f for f in needed if f not in record.data]
        if missing:
            raise BenchmarkError(f"{record.where}: needs fields {needed}, missing {missing}")
        item_id, data = str(record.data[judge.id_field]), record.data
        if judge.order_field:
            order = order_values.get(label_key(data[judge.order_field]))
            if order is None:
                raise BenchmarkError(
                    f"{record.where}: order {data[judge.order_field]!r} is not in order_values {sorted(order_values)}"
                )
            yield record, order, item_id, data[judge.verdict_field]
            continue
        yield record, "ab", item_id, data[judge.verdict_field]
        if judge.swapped_verdict_field:
            yield record, "ba", item_id, data[judge.swapped_verdict_field]


def _no_match(path: Path, id_field: str, found: set[str], wanted: set[str]) -> str:
    def some(ids: set[str]) -> list[str]:
        return sorted(ids)[:5]

    return (
        f"{path}: no recorded verdict matches a benchmark item by {id_field!r}: the file has ids {some(found)}"
        f"{' ...' if len(found) > 5 else ''}, the benchmark {some(wanted)}{' ...' if len(wanted) > 5 else ''} "
        "(wrong id_field, or another benchmark's verdicts?)"
    )


def _recorded(item: Item, order: str, raw: Any, labels: Mapping[str, str]) -> Prediction:
    """A recorded value as the item's verdict: a winner for a pair (for the order shown), else a score."""
    text = label_key(raw)
    value = labels.get(text)
    if value is None:
        return Prediction(item.item_id, order, False, output=text, error=f"unrecognised recorded verdict {text!r}")
    if isinstance(item, PairwiseItem):
        if value not in WINNERS:
            error = f"recorded verdict {text!r} maps to {value!r}, not a winner ({', '.join(WINNERS)})"
            return Prediction(item.item_id, order, False, output=text, error=error)
        return Prediction(item.item_id, order, False, winner=value, output=text)
    scale = item.score_scale
    if not scale.contains(float(value)):
        error = f"recorded score {value!r} is off the item's scale {scale.name}"
        return Prediction(item.item_id, order, False, output=text, error=error)
    return Prediction(item.item_id, order, False, score=int(value), output=text)


# --- engine judges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemCall:
    """A judge call made for a benchmark item, in one reference mode (pairs: one call per order)."""

    item_id: str
    with_reference: bool
    call: JudgeCall


def item_calls(items: Iterable[Item], both_orders: bool, reference_modes: Sequence[bool]) -> list[ItemCall]:
    """Every call an engine judge must answer: pairs in one or both orders; items that have a
    reference once per mode in ``reference_modes`` (True = shown, False = hidden). A pointwise
    item's call carries its scale, so the prompt asks for it and the parser reads it."""
    calls = []
    for item in items:
        modes = reference_modes if item.reference else (False,)
        for with_ref in dict.fromkeys(modes):
            reference = item.reference if with_ref else None
            if isinstance(item, PairwiseItem):
                shown = pairwise_calls(
                    item.scenario, item.instruction, item.response_a, item.response_b, reference, both_orders
                )
            else:
                call = single_call(item.scenario, item.instruction, item.response, reference)
                shown = [replace(call, scale=item.scale)]
            calls += [ItemCall(item.item_id, with_ref, call) for call in shown]
    return calls


def call_requests(calls: Sequence[ItemCall], sampling: Sampling, seed: int | None = None) -> list[GenerationRequest]:
    """The engine request of every call, the verdict sentence forced where the engine can."""
    return [judge_request(c.call, sampling, constrain=True, seed=seed) for c in calls]


def parse_call(call: ItemCall, result: GenerationResult) -> Prediction:
    """The prediction for one answered judge call: its verdict, or the reject reason."""
    verdict = read_verdict(call.call.kind, result, call.call.scale)
    return Prediction.of(call.item_id, call.call.order, call.with_reference, verdict)
