"""Stage 3, judgments: the teacher grades responses with scenario-dependent prompts.

Three kinds, as in the paper: single-answer grading, reference-guided grading (only in scenarios
with one right answer; the teacher writes the reference when the instruction has none), and
pairwise comparison with ties, judged in both orders (``ab`` and ``ba``). Prompts, requests and
parsing come from ``themis.judge.call``, the one judging core.

One Ray Data pipeline from ``responses/data.parquet``: group the responses by instruction, plan
the judge calls, run them through the teacher's actor pool, parse, write. A reference-guided
instruction without a reference sends the teacher a reference request instead, and its judge
calls (which quote the answer) are planned from that answer in the same actor: one teacher pool
per stage, its weights loaded once. The references go to ``judgments/references.parquet`` with
what they cost. A row whose call failed or whose output does not parse goes to
``rejects/judgments.parquet`` with the reason; the parse rate per kind is reported.

Self-consistency (``judgments.self_consistency.samples`` = k > 1): every judge call is made k
times with sampling (distinct seeds), the samples of an item are grouped, and the item is kept
only if they agree (``filters.self_consistent``): one row per item, so rows still reconcile. The
report gives the agreement rate per scenario, and a disagreeing item goes to rejects with its k
verdicts; engine usage counts every sample, the parse rate is over samples.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from themis.config import EngineConfig, JudgmentsConfig, PipelineConfig
from themis.curation.filters import DISAGREE, self_consistent
from themis.dataplane.call_cache import CacheSpec, compact
from themis.dataplane.generation import EnginePass, check_engine, generate
from themis.dataplane.ledger import (
    LIGHT,
    Part,
    StageTally,
    generation_fields,
    map_rows,
    planned_schema,
    publish_parts,
    read_rows,
    rows_schema,
    tally,
    write_rows,
)
from themis.dataplane.tables import MESSAGES, STRINGS, to_table, with_columns
from themis.engines import GenerationRequest, forced_format_note
from themis.engines.base import GenerationResult, request_to_row
from themis.judge import prompts
from themis.judge.call import JudgeCall, judge_request, pairwise_calls, read_verdict, single_call
from themis.judge.scenarios import get_scenario
from themis.stages import StageReport
from themis.storage import RunStore

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
# The teacher's reference answers ride the judgments' stream as rows of this kind (their judge calls
# are planned from them in the teacher's actor) and are published apart, with what they cost.
REFERENCE_KIND = "reference_answer"
REFERENCES = pa.schema(
    [
        SCHEMA.field(n)
        for n in (
            "instruction_id",
            "scenario",
            "instruction",
            "messages",
            "reference",
            "prompt_tokens",
            "completion_tokens",
        )
    ]
    + [REJECT_SCHEMA.field("reason")]
)
_is_judgment = pc.field("kind") != REFERENCE_KIND


def check(cfg: PipelineConfig) -> None:
    """The teacher can start (e.g. its model folder exists)."""
    check_engine(EnginePass(cfg.judgments.engine, cfg.engines[cfg.judgments.engine]))


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Plan, generate and parse every judgment; write judgments, rejects, references and the parse rate."""
    section = cfg.judgments
    if store.count_rows(INPUT) == 0:
        raise ValueError(f"no responses in {store.uri(INPUT)}: nothing to judge")
    cache = CacheSpec(store.storage, store.run_name, "judgments")
    teacher = EnginePass(section.engine, cfg.engines[section.engine], cache=cache)
    seed = cfg.run.seed
    unconstrained = constraint_not_applied(section, cfg.engines)
    for engine, note in unconstrained.items():
        print(f"[themis] judgments: warning: engine {engine!r} {note}", file=sys.stderr, flush=True)
    # Planned before the teacher's pool starts: the shuffle's workers and the engine actors never
    # compete for a small machine's CPUs. The plan waits in the object store, not in the driver.
    planned = (
        read_rows(store, INPUT)
        .groupby("instruction_id", num_partitions=partitions(store))
        .map_groups(lambda group: plan_group(group, section, seed), batch_format="pyarrow", **LIGHT)
        .materialize()
    )
    # One teacher pool: an instruction that needs a reference answer sends that request first, and
    # its judge calls follow from the answer in the same actor (the weights load once per stage).
    generated = generate(
        planned, teacher, followup=functools.partial(plan_after_references, section=section, seed=seed)
    )
    parsed = map_rows(generated, lambda row: [parse_judgment(row)], ROWS)
    path, counts, parse_rate = write_items(parsed, store, section)
    compact(cache)
    counts.check_engines()
    outputs = publish_parts(
        store,
        path,
        [
            Part("judgments/data.parquet", SCHEMA, _is_judgment & pc.field("reason").is_null()),
            Part("rejects/judgments.parquet", REJECT_SCHEMA, _is_judgment & pc.field("reason").is_valid()),
            Part("judgments/references.parquet", REFERENCES, ~_is_judgment),
        ],
    )
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
    if unconstrained:
        details["constraint_not_applied"] = unconstrained
    if section.self_consistency.samples > 1:
        details["self_consistency"] = agreement_report(store, path, section)
    return StageReport(inputs={"responses": store.uri(INPUT)}, outputs=outputs, counts=report, details=details)


def constraint_not_applied(section: JudgmentsConfig, engines: dict[str, EngineConfig]) -> dict[str, str]:
    """The teacher, with what it leaves out, when ``constrain_format`` asks for forced verdicts that
    its engine cannot apply (an OpenAI server that is not vLLM): said on stderr and in the manifest,
    never silently dropped."""
    if not section.constrain_format:
        return {}
    note = forced_format_note(engines[section.engine])
    return {section.engine: note} if note else {}


def write_items(parsed: Any, store: RunStore, section: JudgmentsConfig) -> tuple[str, StageTally, dict[str, float]]:
    """Write one row per judgment item; returns its path, the counts, and the parse rate per kind.

    With self-consistency the k samples are written first (their calls are the stage's usage,
    their parse rate its parse rate), then grouped by item into one agreeing or rejected row each.
    """
    if section.self_consistency.samples == 1:
        path = write_rows(parsed, store, "judgments", ROWS)
        counts = tally(store, path, "kind", calls_only=REFERENCE_KIND)
        return path, counts, parse_rates(counts)
    import ray

    samples_path = write_rows(parsed, store, "judgment-samples", ROWS)
    samples = tally(store, samples_path, "kind", calls_only=REFERENCE_KIND)
    tolerance = section.self_consistency.score_tolerance
    written = ray.data.read_parquet(samples_path, filesystem=store.fs, **LIGHT)
    items = (
        _where(written, _is_judgment)
        .groupby("judgment_id", num_partitions=partitions(store))
        .map_groups(
            lambda g: to_table([self_consistent(g.to_pylist(), tolerance)], ROWS), batch_format="pyarrow", **LIGHT
        )
    )
    references = _where(written, ~_is_judgment)
    path = write_rows(items.union(references), store, "judgments", ROWS)
    counts = tally(store, path, "kind", StageTally(), calls_only=REFERENCE_KIND)
    # Rows are items; calls, tokens and placement are the samples' (an item row repeats one of them).
    counts.calls, counts.tokens, counts.first_error = samples.calls, samples.tokens, samples.first_error
    counts.rows_by_node, counts.rows_by_actor = samples.rows_by_node, samples.rows_by_actor
    return path, counts, parse_rates(samples)


def _where(ds: Any, expr: pc.Expression) -> Any:
    return ds.map_batches(lambda batch: batch.filter(expr), batch_format="pyarrow", **LIGHT)


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


def plan_group(group: pa.Table, section: JudgmentsConfig, seed: int) -> pa.Table:
    """One instruction's planned rows: its judge calls, or, when it needs a reference answer that
    it lacks, the teacher's reference request (its judge calls follow the answer)."""
    responses = sorted(group.to_pylist(), key=lambda r: r["k"])
    first = responses[0]
    if not needs_reference(first["scenario"], section) or first["reference"]:
        return to_table(plan_judgments(responses, None, section, seed), PLANNED)
    request = GenerationRequest(
        messages=prompts.render_reference_answer_prompt(first["instruction"], first["passage"] or None),
        max_tokens=section.reference_sampling.max_tokens,
        temperature=section.reference_sampling.temperature,
        top_p=section.reference_sampling.top_p,
        seed=seed,
    )
    row = _row(REFERENCE_KIND, "", responses, None) | {
        "judgment_id": f"{REFERENCE_KIND}:{first['instruction_id']}",
        "messages": request.messages,
        "engine": section.engine,
        "request": request_to_row(request),
        "sample": 0,
    }
    return to_table([row], PLANNED)


def plan_after_references(answered: pa.Table, section: JudgmentsConfig, seed: int) -> pa.Table | None:
    """The judge calls of the instructions whose reference answers this batch holds (run in the
    teacher's actor, right after it answered them)."""
    kinds = answered.column("kind").to_pylist()
    if REFERENCE_KIND not in kinds:
        return None
    rows = []
    for ref in answered.filter(pc.equal(answered.column("kind"), REFERENCE_KIND)).to_pylist():
        carried = {c: ref[c] for c in ("instruction_id", "scenario", "instruction")} | {"reference": ""}
        responses = [
            carried | {"response_id": rid, "response": text} for rid, text in zip(ref["response_ids"], ref["responses"])
        ]
        rows += plan_judgments(responses, _generated_reference(ref), section, seed)
    return to_table(rows, PLANNED)


def _generated_reference(row: dict[str, Any]) -> dict[str, Any]:
    text = (row["output"] or "").strip()
    return {"ref_output": text or None, "ref_error": row["error"] or (None if text else "empty output")}


# --- planning and parsing -------------------------------------------------------------------------


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
    if row["kind"] == REFERENCE_KIND:  # the teacher's reference answer, kept for the record
        ref = _generated_reference(row)
        return out | {
            "reference": ref["ref_output"],
            "reason": ref["ref_error"] and f"no reference answer: {ref['ref_error']}",
        }
    result = GenerationResult(text=row["output"] or "", error=row["error"] or None)
    verdict = read_verdict(row["kind"], result)
    if not verdict.parsed:
        return out | {"reason": verdict.error}
    return out | {"score": verdict.score, "winner": verdict.winner, "rationale": verdict.rationale}
