"""Judges under test and what they predict. Pure: no Ray or torch.

A prediction is one verdict of one judge on one item, in one order (pairs: ``ab`` or ``ba``, the
verdict always for the order shown) and with or without the reference answer. Its ``verdict`` is
a score (1-5), "A", "B" or "tie", or None with ``error`` saying why there is none.

Three kinds of judge:
- recorded: a file of verdicts someone else produced (PandaLM's gpt-3.5-turbo and PandaLM-7B
  outputs), joined to the benchmark by item id; raw values are mapped through ``values``;
- an engine (any OpenAI-compatible endpoint, or a local checkpoint via transformers): the stage
  renders ``judge_calls``, generates, and turns outputs into predictions with ``parse_call``;
- this run's trained judge, which is an engine over the exported model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from themis import prompts
from themis.evaluation.benchmarks import BenchmarkError, Item, PairwiseItem
from themis.parsing import ParseError, parse_pairwise, parse_score
from themis.scenarios import get_scenario


@dataclass(frozen=True)
class Prediction:
    item_id: str
    order: str  # "ab" or "ba" for pairs, "" for pointwise items
    with_reference: bool
    verdict: int | str | None
    output: str = ""
    error: str | None = None


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
            predictions.append(Prediction(item.item_id, order, False, None, error="no recorded prediction"))
            continue
        raw = str(rec[verdict_field]).strip()
        verdict = values.get(raw)
        error = None if verdict is not None else f"unrecognised recorded verdict {raw!r}"
        predictions.append(Prediction(item.item_id, order, False, _typed(verdict, item), raw, error))
    return predictions, sorted(set(by_id) - wanted)


def _typed(verdict: str | int | None, item: Item) -> int | str | None:
    if verdict is None or isinstance(item, PairwiseItem):
        return verdict
    return int(verdict)


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


def judge_calls(items: Iterable[Item], both_orders: bool, reference_modes: Sequence[bool]) -> list[dict[str, Any]]:
    """Every prompt an engine judge must answer: pairs in one or both orders; items that have a
    reference once per mode in ``reference_modes`` (True = shown, False = hidden)."""
    calls = []
    for item in items:
        modes = reference_modes if item.reference else (False,)
        for with_ref in dict.fromkeys(modes):
            reference = item.reference if with_ref else None
            if isinstance(item, PairwiseItem):
                orders = ("ab", "ba") if both_orders else ("ab",)
                for order in orders:
                    a, b = (item.response_a, item.response_b) if order == "ab" else (item.response_b, item.response_a)
                    prompt = prompts.render_pairwise_prompt(
                        get_scenario(item.scenario), item.instruction, a, b, reference
                    )
                    calls.append(_call(item, order, with_ref, prompt))
            else:
                prompt = prompts.render_single_prompt(
                    get_scenario(item.scenario), item.instruction, item.response, reference
                )
                calls.append(_call(item, "", with_ref, prompt))
    return calls


def _call(item: Item, order: str, with_ref: bool, prompt: prompts.JudgePrompt) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "order": order,
        "with_reference": with_ref,
        "pairwise": isinstance(item, PairwiseItem),
        "prompt": prompt,
    }


def parse_call(call: Mapping[str, Any], output: str, error: str | None) -> Prediction:
    """The prediction for one answered judge call."""
    base = {
        "item_id": call["item_id"],
        "order": call["order"],
        "with_reference": call["with_reference"],
        "output": output,
    }
    if error:
        return Prediction(verdict=None, error=f"engine error: {error}", **base)
    try:
        judged = parse_pairwise(output) if call["pairwise"] else parse_score(output)
    except ParseError as exc:
        return Prediction(verdict=None, error=str(exc), **base)
    return Prediction(verdict=judged.verdict, **base)
