"""Stage 3, judgments: the teacher grades responses with scenario-dependent prompts.

Three kinds, as in the paper: single-answer grading, reference-guided grading (only in scenarios
with one right answer; the teacher writes the reference when the instruction has none), and
pairwise comparison with ties, judged in both orders (``ab`` and ``ba``). Each output is parsed
into a score or verdict plus its rationale; a row whose call failed or whose output does not parse
goes to ``rejects/judgments.parquet`` with the reason. The parse rate per kind is reported.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa

from themis import prompts
from themis.config import JudgmentsConfig, PipelineConfig
from themis.generation import generate, judge_prompt_row, prompt_row
from themis.parsing import ParseError, parse_pairwise, parse_score
from themis.scenarios import get_scenario
from themis.stages import StageReport
from themis.storage import RunStore
from themis.tables import string_schema, to_table

COLUMNS = [
    "judgment_id",
    "kind",
    "order",
    "pair_id",
    "instruction_id",
    "scenario",
    "instruction",
    "reference",
    "response_ids",
    "responses",
    "messages",
    "output",
    "score",
    "winner",
    "rationale",
]
SCHEMA = string_schema(COLUMNS, score=pa.int32())
REJECT_SCHEMA = string_schema(COLUMNS + ["reason"], score=pa.int32())


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Plan, generate and parse every judgment; write judgments, rejects and the parse rate."""
    section = cfg.judgments
    responses = store.read_table("responses/data.parquet").to_pylist()
    if not responses:
        raise ValueError(f"no responses in {store.uri('responses/data.parquet')}: nothing to judge")
    by_instruction = group_responses(responses)
    references, ref_failures = collect_references(by_instruction, cfg)
    tasks, unplanned = plan_judgments(by_instruction, references, ref_failures, section)
    out = generate(tasks, cfg.engines[section.engine], section.sampling, seed=cfg.run.seed)
    kept, rejected = parse_judgments(out.to_dict("records"))
    rejected += unplanned
    outputs = {
        "judgments": store.write_table("judgments/data.parquet", to_table(kept, SCHEMA)),
        "rejects": store.write_table("rejects/judgments.parquet", to_table(rejected, REJECT_SCHEMA)),
    }
    counts = {"rows_in": len(tasks) + len(unplanned), "rows_out": len(kept), "rows_rejected": len(rejected)}
    counts["parse_rate"] = parse_rates(kept, rejected)
    return StageReport(inputs={"responses": store.uri("responses/data.parquet")}, outputs=outputs, counts=counts)


def group_responses(responses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Responses per instruction, in answer order."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(responses, key=lambda r: (r["instruction_id"], r["k"])):
        grouped[r["instruction_id"]].append(r)
    return dict(grouped)


def needs_reference(scenario_id: str, section: JudgmentsConfig) -> bool:
    """References help where there is one right answer and hurt open-ended scenarios (the paper)."""
    return section.reference_guided and get_scenario(scenario_id).reference_guided


def collect_references(
    by_instruction: dict[str, list[dict]], cfg: PipelineConfig
) -> tuple[dict[str, str], dict[str, str]]:
    """Reference answers for reference-guided instructions: given ones, else written by the teacher."""
    refs, todo = {}, []
    for iid, group in by_instruction.items():
        first = group[0]
        if not needs_reference(first["scenario"], cfg.judgments):
            continue
        if first["reference"]:
            refs[iid] = first["reference"]
        else:
            messages = prompts.render_reference_answer_prompt(first["instruction"], first["passage"] or None)
            todo.append({"instruction_id": iid, **prompt_row(messages)})
    failures = {}
    if todo:
        engine = cfg.engines[cfg.judgments.engine]
        for row in generate(todo, engine, cfg.judgments.reference_sampling, seed=cfg.run.seed).to_dict("records"):
            text = row["output"].strip()
            if row["error"] or not text:
                failures[row["instruction_id"]] = f"no reference answer: {row['error'] or 'empty output'}"
            else:
                refs[row["instruction_id"]] = text
    return refs, failures


def plan_judgments(
    by_instruction: dict[str, list[dict]], refs: dict[str, str], ref_failures: dict[str, str], section: JudgmentsConfig
) -> tuple[list[dict], list[dict]]:
    """Every judgment to ask for, with its prompt; reference-guided ones that lack a reference are rejected."""
    tasks, unplanned = [], []
    for iid, group in by_instruction.items():
        scenario = get_scenario(group[0]["scenario"])
        ref = refs.get(iid)
        for r in group:
            if section.single:
                tasks.append(_single_task(scenario, r, None, section))
            if needs_reference(scenario.id, section) and ref:
                tasks.append(_single_task(scenario, r, ref, section))
            elif needs_reference(scenario.id, section):
                reason = ref_failures.get(iid, "no reference")
                unplanned.append(_row(r, "reference", [r], None) | {"reason": reason})
        if section.pairwise:
            for first, second in itertools.islice(itertools.combinations(group, 2), section.pairs_per_instruction):
                tasks += _pair_tasks(scenario, first, second, ref, section)
    return tasks, unplanned


def _single_task(scenario, r: dict, ref: str | None, section: JudgmentsConfig) -> dict[str, Any]:
    prompt = prompts.render_single_prompt(scenario, r["instruction"], r["response"], ref)
    kind = "reference" if ref else "single"
    return _row(r, kind, [r], ref) | judge_prompt_row(prompt, section.constrain_format)


def _pair_tasks(scenario, first: dict, second: dict, ref: str | None, section: JudgmentsConfig) -> list[dict]:
    pair_id = f"{first['response_id']}~{second['response_id']}"
    tasks = []
    for order, (a, b) in (("ab", (first, second)), ("ba", (second, first))):
        prompt = prompts.render_pairwise_prompt(scenario, a["instruction"], a["response"], b["response"], ref)
        row = _row(a, "pairwise", [a, b], ref) | {"order": order, "pair_id": pair_id}
        tasks.append(row | judge_prompt_row(prompt, section.constrain_format))
    return tasks


def _row(r: dict, kind: str, shown: list[dict], ref: str | None) -> dict[str, Any]:
    ids = [s["response_id"] for s in shown]
    return {
        "judgment_id": f"{kind}:{'|'.join(ids)}",
        "kind": kind,
        "order": "",
        "pair_id": "",
        "instruction_id": r["instruction_id"],
        "scenario": r["scenario"],
        "instruction": r["instruction"],
        "reference": ref or "",
        "response_ids": json.dumps(ids),
        "responses": json.dumps([s["response"] for s in shown]),
    }


def parse_judgments(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Split generated rows into parsed judgments and rejects with reasons."""
    kept, rejected = [], []
    for row in rows:
        if row["error"]:
            rejected.append(row | {"reason": f"engine error: {row['error']}"})
            continue
        try:
            judgment = parse_pairwise(row["output"]) if row["kind"] == "pairwise" else parse_score(row["output"])
        except ParseError as exc:
            rejected.append(row | {"reason": f"unparsable: {exc}"})
            continue
        verdict = judgment.verdict
        fields = {"winner": verdict} if row["kind"] == "pairwise" else {"score": verdict}
        kept.append(row | fields | {"rationale": judgment.rationale})
    return kept, rejected


def parse_rates(kept: list[dict], rejected: list[dict]) -> dict[str, float]:
    """Share of outputs that parsed, per judgment kind (engine failures count as not parsed)."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in kept:
        totals[row["kind"]][0] += 1
    for row in rejected:
        totals[row["kind"]][1] += 1
    return {kind: round(ok / (ok + bad), 4) for kind, (ok, bad) in sorted(totals.items())}
