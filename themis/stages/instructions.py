"""Stage 1, instructions: scenario-controlled instruction generation.

Reference-based questioning writes instructions grounded in reference passages (7 scenarios);
role-playing quizzing has the model play a quiz writer with drawn attributes (math, programming,
reading comprehension). A user's own JSONL is accepted too; rows without a scenario label are
labelled by the LLM scenario classifier. Output: ``instructions/data.parquet``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from themis.config import InstructionsConfig, PipelineConfig
from themis.dataplane.call_cache import CacheSpec, compact
from themis.dataplane.generation import EnginePass, check_engine, generate_by_engine
from themis.dataplane.ledger import (
    generation_fields,
    map_rows,
    planned_schema,
    publish_split,
    rows_schema,
    tally,
    write_rows,
)
from themis.dataplane.tables import string_schema, to_table, with_columns
from themis.engines import GenerationRequest
from themis.engines.base import request_to_row
from themis.evaluation import sources
from themis.judge import prompts
from themis.judge.call import classifier_request, parse_classification
from themis.judge.parsing import ParseError, parse_instruction
from themis.judge.scenarios import Scenario, load_passages, load_quiz_attributes, load_scenarios, select_scenarios
from themis.stages import StageReport
from themis.storage import RunStore

COLUMNS = ["instruction_id", "instruction", "scenario", "method", "source", "passage", "reference", "scenario_source"]
SCHEMA = string_schema(COLUMNS)
REJECT_SCHEMA = with_columns(SCHEMA, ("output", pa.string()), ("reason", pa.string()))
PLANNED = planned_schema(with_columns(SCHEMA, ("task", pa.string())))
ROWS = rows_schema(with_columns(REJECT_SCHEMA, ("task", pa.string())))


def check(cfg: PipelineConfig) -> None:
    """Inputs that can be checked before any engine starts: the user file, passages, models."""
    section = cfg.instructions
    if section.user_file:
        read_user_file(section.user_file)
    load_passages(section.reference_based.passages_dir)
    # shipped:mt_bench is fetched here (once, into the cache), so a failed download stops the stage early.
    if section.mt_bench_dir and not sources.resolve(section.mt_bench_dir).is_dir():
        raise FileNotFoundError(f"instructions.mt_bench_dir not found: {section.mt_bench_dir}")
    for name in {section.engine, section.classifier_engine}:
        check_engine(EnginePass(name, cfg.engines[name]))


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Generate, read and label instructions in one Ray Data pass per engine; write them and rejects."""
    import ray

    section = cfg.instructions
    planned = plan_rows(cfg)
    cache = CacheSpec(store.storage, store.run_name, "instructions")
    engines = {
        name: EnginePass(name, cfg.engines[name], cache=cache) for name in {section.engine, section.classifier_engine}
    }
    generated = generate_by_engine(ray.data.from_arrow(to_table(planned, PLANNED)), engines)
    parsed = map_rows(generated, lambda row: [parse_row(row, section.min_chars)], ROWS)
    path = write_rows(parsed, store, "instructions", ROWS)
    compact(cache)
    counts = tally(store, path, "task")
    counts.check_engines()
    outputs = publish_split(
        store, path, "instructions/data.parquet", SCHEMA, "rejects/instructions.parquet", REJECT_SCHEMA
    )
    per_scenario: dict[str, int] = {}
    for batch in store.scan("instructions/data.parquet", ["scenario"], written=True):
        for scenario in batch.column("scenario").to_pylist():
            per_scenario[scenario] = per_scenario.get(scenario, 0) + 1
    report = {
        "rows_in": counts.rows_in,
        "rows_out": counts.rows_out,
        "rows_rejected": counts.rows_rejected,
        **counts.call_counts(),
        "per_scenario": per_scenario,
    }
    details = {"usage": counts.usage(cfg.engines), "rejected_by_reason": dict(counts.reasons)}
    inputs = {"user_file": section.user_file} if section.user_file else {}
    return StageReport(inputs=inputs, outputs=outputs, counts=report, details=details)


def plan_rows(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every row the stage starts from: instructions to write, user rows (labelled, to classify,
    or rejected) and MT-bench seeds. Their number follows the config, not the data's size."""
    section = cfg.instructions
    seed = cfg.run.seed
    rows = []
    for plan in plan_generation(section, seed):
        messages = plan.pop("messages")
        request = GenerationRequest(
            messages=messages,
            max_tokens=section.sampling.max_tokens,
            temperature=section.sampling.temperature,
            top_p=section.sampling.top_p,
            seed=seed,
        )
        rows.append(_planned(plan, "write", section.engine, request))
    user_rows, user_rejects = read_user_file(section.user_file) if section.user_file else ([], [])
    for row in user_rows:
        if row["scenario"]:
            rows.append(_planned(row, "given"))
        else:
            request = classifier_request(row["instruction"], seed=seed)
            rows.append(_planned(row, "classify", section.classifier_engine, request))
    rows += [_planned(r, "given", reason=r["reason"]) for r in user_rejects]
    if section.mt_bench_dir:
        rows += [_planned(r, "given") for r in read_mt_bench(section.mt_bench_dir, section.mt_bench_limit)]
    return rows


def _planned(
    row: dict[str, Any],
    task: str,
    engine: str | None = None,
    request: GenerationRequest | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    base = {c: row.get(c) or "" for c in COLUMNS}
    return base | {
        "task": task,
        "reason": reason,
        "engine": engine,
        "request": request_to_row(request) if request else None,
    }


def parse_row(row: dict[str, Any], min_chars: int) -> dict[str, Any]:
    """A planned row with its engine output turned into an instruction or a scenario, or a reason."""
    out = {c: row[c] for c in COLUMNS} | generation_fields(row) | {"reason": row["reason"], "task": row["task"]}
    out["output"] = row["output"] or ""
    if row["reason"] is not None or row["task"] == "given":
        return out
    if row["error"]:
        return out | {"reason": f"engine error: {row['error']}"}
    try:
        if row["task"] == "write":
            return out | {"instruction": parse_instruction(row["output"], min_chars), "scenario_source": "generated"}
        return out | {"scenario": parse_classification(row["output"]), "scenario_source": "classified"}
    except ParseError as exc:
        prefix = "classifier: " if row["task"] == "classify" else ""
        return out | {"reason": f"{prefix}{exc}"}


def plan_generation(section: InstructionsConfig, seed: int) -> list[dict[str, Any]]:
    """One row per instruction to write: its scenario, method, source and prompt."""
    rng = random.Random(seed)
    passages = load_passages(section.reference_based.passages_dir)
    quiz = load_quiz_attributes()
    plans = []
    for scenario in select_scenarios(section.scenarios):
        if scenario.generation == "reference":
            n = section.reference_based.per_scenario
            plans += [_reference_plan(scenario, rng.choice(passages)) for _ in range(n)]
        else:
            plans += [_quiz_plan(scenario, quiz, rng) for _ in range(section.role_play.per_scenario)]
    for i, plan in enumerate(plans):
        plan["instruction_id"] = f"gen-{i:05d}"
    return plans


def _reference_plan(scenario: Scenario, passage: tuple[str, str]) -> dict[str, Any]:
    title, text = passage
    messages = prompts.render_reference_question_prompt(scenario, title, text)
    return {"scenario": scenario.id, "method": "reference", "source": title, "passage": text, "messages": messages}


def _quiz_plan(scenario: Scenario, quiz: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    spec = quiz["scenarios"].get(scenario.id)
    if spec is None:
        raise ValueError(f"quiz.yaml has no attributes for role-play scenario {scenario.id!r}")
    subject = rng.choice(spec["subjects"])
    attrs = {
        "difficulty": rng.choice(quiz["difficulties"]),
        "audience": rng.choice(quiz["audiences"]),
        "subject": subject["subject"],
        "topic": rng.choice(subject["topics"]),
        "task": rng.choice(spec["tasks"]),
    }
    messages = prompts.render_quiz_prompt(scenario, **attrs)
    return {
        "scenario": scenario.id,
        "method": "role_play",
        # Provenance for a reader; nothing parses it back.
        "source": "quiz: " + " / ".join(attrs.values()),
        "passage": "",
        "messages": messages,
    }


def read_user_file(path: str) -> tuple[list[dict], list[dict]]:
    """A user's JSONL of instructions; a line that is not a usable object is rejected with its line number."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"instructions.user_file not found: {path}")
    known = set(load_scenarios())
    rows, rejects = [], []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row, reason = _user_row(line, known)
        row |= {"instruction_id": f"user-{n:05d}", "method": "user", "source": f"{file.name}:{n}", "passage": ""}
        if reason:
            rejects.append(row | {"output": line, "reason": f"{file.name} line {n}: {reason}"})
        else:
            rows.append(row)
    return rows, rejects


def read_mt_bench(folder: str, limit: int | None) -> list[dict]:
    """MT-bench's questions as labelled instructions (an unlabelled benchmark, used as seed data)."""
    from themis.evaluation.benchmarks import mt_bench_instructions

    rows = mt_bench_instructions(folder)[:limit]
    return [
        {
            "instruction_id": r["source"].replace(":", "-"),
            "instruction": r["instruction"],
            "scenario": r["scenario"],
            "method": "mt_bench",
            "source": r["source"],
            "passage": "",
            "reference": r["reference"] or "",
            "scenario_source": "given",
        }
        for r in rows
    ]


def _user_row(line: str, known: set[str]) -> tuple[dict[str, Any], str | None]:
    empty = {"instruction": "", "scenario": "", "reference": "", "scenario_source": ""}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return empty, f"not valid JSON ({exc.msg})"
    if not isinstance(obj, dict) or not str(obj.get("instruction") or "").strip():
        return empty, "needs an object with a non-empty 'instruction'"
    scenario = str(obj.get("scenario") or "")
    if scenario and scenario not in known:
        return empty, f"unknown scenario {scenario!r}"
    row = {
        "instruction": str(obj["instruction"]).strip(),
        "scenario": scenario,
        "reference": str(obj.get("reference") or ""),
    }
    return row | {"scenario_source": "given" if scenario else ""}, None
