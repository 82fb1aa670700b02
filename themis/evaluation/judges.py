"""Judges under test and what they predict. Pure: no Ray or torch.

A prediction is one verdict of one judge on one item, in one order (pairs: ``ab`` or ``ba``, the
winner always for the order shown) and with or without the reference answer: a ``score`` (1-5)
for a pointwise item, a ``winner`` ("A", "B" or "tie") for a pair, or neither with ``error``
saying why there is none.

Three kinds of judge:
- recorded: a file of verdicts someone else produced (PandaLM's gpt-3.5-turbo and PandaLM-7B
  outputs), joined to the benchmark by item id; raw values are mapped through ``values``;
- an engine (any OpenAI-compatible endpoint, or a local checkpoint via transformers): the stage
  builds ``item_calls`` (``themis.judging`` calls, pairs in both orders), turns them into requests
  with ``judging.judge_request``, generates, and turns results into predictions with ``parse_call``;
- this run's trained judge, which is an engine over the exported model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from themis.config import Sampling
from themis.engines.base import GenerationRequest, GenerationResult
from themis.evaluation.benchmarks import BenchmarkError, Item, PairwiseItem
from themis.judging import JudgeCall, judge_request, pairwise_calls, parse_verdict, single_call
from themis.parsing import ParseError


@dataclass(frozen=True)
class Prediction:
    """One judge's verdict on one item: ``score`` for pointwise items, ``winner`` for pairs."""

    item_id: str
    order: str  # "ab" or "ba" for pairs, "" for pointwise items
    with_reference: bool
    score: int | None = None
    winner: str | None = None
    output: str = ""
    error: str | None = None

    @property
    def parsed(self) -> bool:
        """Whether there is a verdict at all."""
        return self.score is not None or self.winner is not None


# --- recorded predictions -------------------------------------------------------------------------


def load_recorded(
    path: str | Path, id_field: str, verdict_field: str, values: Mapping[str, str | int], items: Sequence[Item]
) -> tuple[list[Prediction], list[str]]:
    """Predictions from a JSON array, JSONL or Parquet file, in the ``ab`` order, without reference.

    Every benchmark item gets a prediction: one missing from the file gets an error, so it is
    counted rather than dropped. Returns the predictions and the file ids that match no item.
    """
    records = _read_records(Path(path))
    wanted = {i.item_id for i in items}
    by_id: dict[str, dict[str, Any]] = {}
    for n, rec in enumerate(records, 1):
        if id_field not in rec or verdict_field not in rec:
            raise BenchmarkError(f"{path}: record {n}: needs fields {id_field!r} and {verdict_field!r}")
        by_id[str(rec[id_field])] = rec
    predictions = []
    for item in items:
        rec = by_id.get(item.item_id)
        order = "ab" if isinstance(item, PairwiseItem) else ""
        if rec is None:
            predictions.append(Prediction(item.item_id, order, False, error="no recorded prediction"))
            continue
        raw = str(rec[verdict_field]).strip()
        value = values.get(raw)
        error = None if value is not None else f"unrecognised recorded verdict {raw!r}"
        predictions.append(_recorded(item, order, value, raw, error))
    return predictions, sorted(set(by_id) - wanted)


def _recorded(item: Item, order: str, value: str | int | None, raw: str, error: str | None) -> Prediction:
    """A recorded value as the item's verdict: a winner for a pair, else a score."""
    if value is None:
        return Prediction(item.item_id, order, False, output=raw, error=error)
    if isinstance(item, PairwiseItem):
        return Prediction(item.item_id, order, False, winner=str(value), output=raw)
    return Prediction(item.item_id, order, False, score=int(value), output=raw)


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BenchmarkError(f"recorded predictions not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
    return records


# --- engine judges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemCall:
    """A judge call made for a benchmark item, in one reference mode (pairs: one call per order)."""

    item_id: str
    with_reference: bool
    call: JudgeCall


def item_calls(items: Iterable[Item], both_orders: bool, reference_modes: Sequence[bool]) -> list[ItemCall]:
    """Every call an engine judge must answer: pairs in one or both orders; items that have a
    reference once per mode in ``reference_modes`` (True = shown, False = hidden)."""
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
                shown = [single_call(item.scenario, item.instruction, item.response, reference)]
            calls += [ItemCall(item.item_id, with_ref, call) for call in shown]
    return calls


def call_requests(calls: Sequence[ItemCall], sampling: Sampling, seed: int | None = None) -> list[GenerationRequest]:
    """The engine request of every call, the verdict sentence forced where the engine can."""
    return [judge_request(c.call, sampling, constrain=True, seed=seed) for c in calls]


def parse_call(call: ItemCall, result: GenerationResult) -> Prediction:
    """The prediction for one answered judge call."""
    where = (call.item_id, call.call.order, call.with_reference)
    if not result.ok:
        return Prediction(*where, output=result.text, error=f"engine error: {result.error}")
    try:
        verdict = parse_verdict(call.call.kind, result.text)
    except ParseError as exc:
        return Prediction(*where, output=result.text, error=str(exc))
    return Prediction(*where, score=verdict.score, winner=verdict.winner, output=result.text)
