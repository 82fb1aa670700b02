"""Stage 3, judgments: the teacher grades responses with scenario-dependent prompts.

Three kinds, as in the paper: single-answer grading, reference-guided grading (only in scenarios
with one right answer; the teacher writes the reference when the instruction has none), and
pairwise comparison with ties, judged in both orders (``ab`` and ``ba``). Prompts, requests and
parsing come from ``themis.judging``, the one judging core.

One Ray Data pipeline from ``responses/data.parquet``: group the responses by instruction, plan
the judge calls, run them through the teacher's actor pool, parse, write. When some reference-
guided instructions have no reference, a first pass has the teacher write those references (the
judge prompts need them). A row whose call failed or whose output does not parse goes to
``rejects/judgments.parquet`` with the reason; the parse rate per kind is reported.

Self-consistency (``judgments.self_consistency.samples`` = k > 1): every judge call is made k
times with sampling (distinct seeds), the samples of an item are grouped, and the item is kept
only if they agree (``filters.self_consistent``): one row per item, so rows still reconcile. The
report gives the agreement rate per scenario, and a disagreeing item goes to rejects with its k
verdicts; engine usage counts every sample, the parse rate is over samples.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pyarrow as pa

from themis import prompts
from themis.call_cache import CacheSpec
from themis.config import JudgmentsConfig, PipelineConfig
from themis.engines import GenerationRequest
from themis.engines.base import request_to_row
from themis.filters import DISAGREE, self_consistent
from themis.generation import (
    LIGHT,
    EnginePass,
    StageTally,
    check_engine,
    generate,
    generation_fields,
    map_rows,
    planned_schema,
    publish_split,
    read_rows,
    rows_schema,
    tally,
    write_rows,
)
from themis.judging import JudgeCall, judge_request, pairwise_calls, parse_verdict, single_call
from themis.parsing import ParseError
from themis.scenarios import get_scenario
from themis.stages import StageReport
from themis.stages.responses import SCHEMA as RESPONSES
from themis.storage import RunStore
from themis.tables import MESSAGES, STRINGS, to_table, with_columns

INPUT = "responses/data.parquet"
ROWS_PER_PARTITION = 50_000
SCHEMA = pa.schema(
    [
        ("judgment_id", pa.string()),
        ("kind", pa.string()),
        ("order", pa.string()),
        ("pair_id", pa.string()),
        ("instruction_id", pa.string()),
        ("scenario", pa.string()),
        ("instruction", pa.string()),
        ("reference", pa.string()),
        ("response_ids", STRINGS),
        ("responses", STRINGS),
        ("messages", MESSAGES),
        ("output", pa.string()),
        ("score", pa.int32()),
        ("winner", pa.string()),
        ("rationale", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)
# ``verdicts``: with self-consistency, the k samples' verdicts (a score or winner each; null = unparsed).
REJECT_SCHEMA = with_columns(SCHEMA, ("reason", pa.string()), ("verdicts", STRINGS))
_FROM_GENERATION = {"output", "prompt_tokens", "completion_tokens"}
# ``sample``: which of an item's k self-consistency samples a row is (0 when k = 1).
PLANNED = with_columns(
    planned_schema(pa.schema([f for f in SCHEMA if f.name not in _FROM_GENERATION])), ("sample", pa.int32())
)
ROWS = with_columns(rows_schema(REJECT_SCHEMA), ("sample", pa.int32()))
# A response row, or (is_reference) the teacher's reference answer for its instruction.
GROUP = rows_schema(
    with_columns(RESPONSES, ("is_reference", pa.bool_()), ("ref_output", pa.string()), ("ref_error", pa.string()))
)
REF_PLANNED = planned_schema(RESPONSES)
TRACE_COLUMNS = ["engine", "cached", "error", "prompt_tokens", "completion_tokens", "node", "actor"]


def check(cfg: PipelineConfig) -> None:
    """The teacher can start (e.g. its model folder exists)."""
    check_engine(EnginePass(cfg.judgments.engine, cfg.engines[cfg.judgments.engine]))


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Plan, generate and parse every judgment; write judgments, rejects and the parse rate."""
    import ray

    section = cfg.judgments
    if store.count_rows(INPUT) == 0:
        raise ValueError(f"no responses in {store.uri(INPUT)}: nothing to judge")
    teacher = EnginePass(
        section.engine, cfg.engines[section.engine], cache=CacheSpec(store.storage, store.run_name, "judgments")
    )
    responses = read_rows(store, INPUT)
    references = write_references(responses, teacher, section, store, cfg.run.seed)
    groups = responses.map_batches(_as_group_rows, batch_format="pyarrow", **LIGHT)
    if references is not None:
        groups = groups.union(ray.data.read_parquet(references, filesystem=store.fs, **LIGHT))
    # Planned before the teacher's pool starts: the shuffle's workers and the engine actors never
    # compete for a small machine's CPUs. The plan waits in the object store, not in the driver.
    planned = (
        groups.groupby("instruction_id", num_partitions=partitions(store))
        .map_groups(lambda group: _plan_group(group, section, cfg.run.seed), batch_format="pyarrow", **LIGHT)
        .materialize()
    )
    parsed = map_rows(generate(planned, teacher), lambda row: [parse_judgment(row)], ROWS)
    path, counts, parse_rate = write_items(parsed, store, section)
    if references is not None:
        for batch in store.scan_path(references, TRACE_COLUMNS):
            counts.add_calls(batch, placed=False)  # the reference calls cost tokens too, but are not rows of this stage
    counts.check_engines()
    outputs = publish_split(store, path, "judgments/data.parquet", SCHEMA, "rejects/judgments.parquet", REJECT_SCHEMA)
    report = {
        "rows_in": counts.rows_in,
        "rows_out": counts.rows_out,
        "rows_rejected": counts.rows_rejected,
        **counts.call_counts(),
        "parse_rate": parse_rate,
    }
    details = {
        "usage": counts.usage(cfg.engines),
        "rejected_by_reason": dict(counts.reasons),
        "rows_by_node": dict(counts.rows_by_node),
        "rows_by_actor": dict(counts.rows_by_actor),
    }
    if section.self_consistency.samples > 1:
        details["self_consistency"] = agreement_report(store, path, section)
    return StageReport(inputs={"responses": store.uri(INPUT)}, outputs=outputs, counts=report, details=details)


def write_items(parsed: Any, store: RunStore, section: JudgmentsConfig) -> tuple[str, StageTally, dict[str, float]]:
    """Write one row per judgment item; returns its path, the counts, and the parse rate per kind.

    With self-consistency the k samples are written first (their calls are the stage's usage,
    their parse rate its parse rate), then grouped by item into one agreeing or rejected row each.
    """
    if section.self_consistency.samples == 1:
        path = write_rows(parsed, store, "judgments", ROWS)
        counts = tally(store, path, "kind")
        return path, counts, parse_rates(counts)
    import ray

    samples_path = write_rows(parsed, store, "judgment-samples", ROWS)
    samples = tally(store, samples_path, "kind")
    tolerance = section.self_consistency.score_tolerance
    items = (
        ray.data.read_parquet(samples_path, filesystem=store.fs, **LIGHT)
        .groupby("judgment_id", num_partitions=partitions(store))
        .map_groups(
            lambda g: to_table([self_consistent(g.to_pylist(), tolerance)], ROWS), batch_format="pyarrow", **LIGHT
        )
    )
    path = write_rows(items, store, "judgments", ROWS)
    counts = tally(store, path, "kind", StageTally())
    # Rows are items; calls, tokens and placement are the samples' (an item row repeats one of them).
    counts.calls, counts.tokens, counts.first_error = samples.calls, samples.tokens, samples.first_error
    counts.rows_by_node, counts.rows_by_actor = samples.rows_by_node, samples.rows_by_actor
    return path, counts, parse_rates(samples)


def parse_rates(counts: StageTally) -> dict[str, float]:
    """Per kind, the share of rows that parsed (``per_kind``: kept, rejected)."""
    return {k: round(ok / (ok + bad), 4) for k, (ok, bad) in sorted(counts.per_kind.items()) if ok + bad}


def agreement_report(store: RunStore, path: str, section: JudgmentsConfig) -> dict[str, Any]:
    """Self-consistency per scenario: items whose k samples all parsed, and the share that agreed."""
    checked: Counter = Counter()
    agreed: Counter = Counter()
    for batch in store.scan_path(path, ["scenario", "reason"]):
        for scenario, reason in zip(batch.column("scenario").to_pylist(), batch.column("reason").to_pylist()):
            if reason is None or reason == DISAGREE:
                checked[scenario] += 1
                agreed[scenario] += reason is None
    return {
        "samples": section.self_consistency.samples,
        "temperature": section.self_consistency.temperature,
        "score_tolerance": section.self_consistency.score_tolerance,
        "items_checked": sum(checked.values()),
        "items_agreed": sum(agreed.values()),
        "agreement_rate": {s: round(agreed[s] / n, 4) for s, n in sorted(checked.items())},
    }


def partitions(store: RunStore) -> int:
    """Shuffle partitions for grouping responses: few on a small run (each costs a task), more as
    it grows, so that no partition outgrows a worker's memory."""
    return max(1, min(200, store.count_rows(INPUT) // ROWS_PER_PARTITION + 1))


def needs_reference(scenario_id: str, section: JudgmentsConfig) -> bool:
    """References help where there is one right answer and hurt open-ended scenarios (the paper)."""
    return section.reference_guided and get_scenario(scenario_id).reference_guided


# --- references ---------------------------------------------------------------------------------


def write_references(responses: Any, teacher: EnginePass, section: JudgmentsConfig, store: RunStore, seed: int):
    """The teacher's reference answers for reference-guided instructions that have none, written
    as group rows to a scratch folder; None when no instruction needs one (no engine starts)."""
    if not section.reference_guided:
        return None
    wanted = (
        responses.groupby("instruction_id", num_partitions=partitions(store))
        .map_groups(
            lambda group: _reference_request(group, section, teacher.name, seed), batch_format="pyarrow", **LIGHT
        )
        .materialize()  # in the object store, not the driver; counted before any engine starts
    )
    if wanted.count() == 0:
        return None
    answered = map_rows(generate(wanted, teacher), lambda row: [_reference_row(row)], GROUP)
    return write_rows(answered, store, "references", GROUP)


def _reference_request(group: pa.Table, section: JudgmentsConfig, engine: str, seed: int) -> pa.Table:
    """One reference request for an instruction's group of responses, or none."""
    first = group.slice(0, 1).to_pylist()[0]
    if not needs_reference(first["scenario"], section) or first["reference"]:
        return REF_PLANNED.empty_table()
    request = GenerationRequest(
        messages=prompts.render_reference_answer_prompt(first["instruction"], first["passage"] or None),
        max_tokens=section.reference_sampling.max_tokens,
        temperature=section.reference_sampling.temperature,
        top_p=section.reference_sampling.top_p,
        seed=seed,
    )
    row = {c: first[c] for c in RESPONSES.names} | {
        "reason": None,
        "engine": engine,
        "request": request_to_row(request),
    }
    return to_table([row], REF_PLANNED)


def _reference_row(row: dict[str, Any]) -> dict[str, Any]:
    """A generated reference as a group row of its instruction."""
    text = (row["output"] or "").strip()
    error = row["error"] or (None if text else "empty output")
    base = {c: row[c] for c in RESPONSES.names} | generation_fields(row)
    return base | {"is_reference": True, "ref_output": text or None, "ref_error": error}


def _as_group_rows(batch: pa.Table) -> pa.Table:
    """Response rows in the group schema (no reference columns, no generation)."""
    n = batch.num_rows
    fill = {"is_reference": False, "prompt_tokens": 0, "completion_tokens": 0, "cached": False}
    columns = {name: batch.column(name) if name in batch.column_names else None for name in GROUP.names}
    arrays = [
        columns[f.name] if columns[f.name] is not None else pa.array([fill.get(f.name)] * n, type=f.type) for f in GROUP
    ]
    return pa.Table.from_arrays(arrays, schema=GROUP)


# --- planning and parsing -------------------------------------------------------------------------


def _plan_group(group: pa.Table, section: JudgmentsConfig, seed: int) -> pa.Table:
    rows = group.to_pylist()
    responses = sorted((r for r in rows if not r["is_reference"]), key=lambda r: r["k"])
    generated = next((r for r in rows if r["is_reference"]), None)
    return to_table(plan_judgments(responses, generated, section, seed), PLANNED)


def plan_judgments(
    responses: list[dict[str, Any]], generated_ref: dict[str, Any] | None, section: JudgmentsConfig, seed: int
) -> list[dict[str, Any]]:
    """Every judge call for one instruction's responses; reference-guided calls that lack a
    reference become rows rejected before any call, with the reason."""
    if not responses:
        return []
    first = responses[0]
    scenario = first["scenario"]
    reference, missing = first["reference"] or None, "no reference"
    if generated_ref is not None:
        reference = generated_ref["ref_output"]
        missing = f"no reference answer: {generated_ref['ref_error']}"
    guided = needs_reference(scenario, section)
    rows = []
    for r in responses:
        if section.single:
            rows += _tasks(single_call(scenario, r["instruction"], r["response"]), [r], section, seed)
        if guided and reference:
            rows += _tasks(single_call(scenario, r["instruction"], r["response"], reference), [r], section, seed)
        elif guided:
            rows.append(_unplanned("reference", [r], missing))
    if section.pairwise:
        pairs = itertools.islice(itertools.combinations(responses, 2), section.pairs_per_instruction)
        for a, b in pairs:
            ref = reference if guided else None
            for call in pairwise_calls(scenario, a["instruction"], a["response"], b["response"], ref):
                shown = [a, b] if call.order == "ab" else [b, a]
                pair_id = f"{a['response_id']}~{b['response_id']}"
                rows += [task | {"pair_id": pair_id} for task in _tasks(call, shown, section, seed)]
    return rows


def _tasks(call: JudgeCall, shown: list[dict[str, Any]], section: JudgmentsConfig, seed: int) -> list[dict[str, Any]]:
    """The planned rows of one judge call: one, or k sampled ones (distinct seeds) with self-consistency."""
    k = section.self_consistency.samples
    sampling = section.sampling
    if k > 1:
        sampling = sampling.model_copy(update={"temperature": section.self_consistency.temperature})
    rows = []
    for sample in range(k):
        request = judge_request(call, sampling, constrain=section.constrain_format, seed=seed + sample)
        rows.append(
            _row(call.kind, call.order, shown, call.reference)
            | {
                "messages": request.messages,
                "engine": section.engine,
                "request": request_to_row(request),
                "sample": sample,
            }
        )
    return rows


def _unplanned(kind: str, shown: list[dict[str, Any]], reason: str) -> dict[str, Any]:
    row = _row(kind, "", shown, None)
    return row | {"messages": [], "engine": None, "request": None, "reason": reason, "sample": 0}


def _row(kind: str, order: str, shown: list[dict[str, Any]], reference: str | None) -> dict[str, Any]:
    ids = [s["response_id"] for s in shown]
    first = shown[0]
    return {
        "judgment_id": f"{kind}:{'|'.join(ids)}",
        "kind": kind,
        "order": order,
        "pair_id": "",
        "instruction_id": first["instruction_id"],
        "scenario": first["scenario"],
        "instruction": first["instruction"],
        "reference": reference,
        "response_ids": ids,
        "responses": [s["response"] for s in shown],
        "messages": [],
        "score": None,
        "winner": None,
        "rationale": None,
        "reason": None,
    }


def parse_judgment(row: dict[str, Any]) -> dict[str, Any]:
    """A generated judgment parsed into its score or winner and rationale, or the reason it is not."""
    out = {c: row.get(c) for c in REJECT_SCHEMA.names} | generation_fields(row) | {"sample": row["sample"]}
    if row["reason"] is not None:
        return out
    if row["error"]:
        return out | {"reason": f"engine error: {row['error']}"}
    try:
        verdict = parse_verdict(row["kind"], row["output"])
    except ParseError as exc:
        return out | {"reason": f"unparsable: {exc}"}
    return out | {"score": verdict.score, "winner": verdict.winner, "rationale": verdict.rationale}
