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

import pandas as pd

from themis import prompts
from themis.config import InstructionsConfig, PipelineConfig, Sampling
from themis.generation import generate, judge_prompt_row, prompt_row
from themis.parsing import ParseError, parse_instruction, parse_scenario
from themis.scenarios import Scenario, load_passages, load_quiz_attributes, load_scenarios, select_scenarios
from themis.stages import StageReport
from themis.storage import RunStore
from themis.tables import string_schema, to_table

COLUMNS = ["instruction_id", "instruction", "scenario", "method", "source", "passage", "reference", "scenario_source"]
SCHEMA = string_schema(COLUMNS)
REJECT_SCHEMA = string_schema(COLUMNS + ["output", "reason"])


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Generate, read and label instructions; write them and their rejects."""
    section = cfg.instructions
    plans = plan_generation(section, cfg.run.seed)
    generated, rejected = write_instructions(plans, cfg)
    user_rows, user_rejects = read_user_file(section.user_file) if section.user_file else ([], [])
    labelled, unlabelled_rejects = classify_missing(user_rows, cfg)
    seeded = read_mt_bench(section.mt_bench_dir, section.mt_bench_limit) if section.mt_bench_dir else []
    rows = generated + labelled + seeded
    rejects = rejected + user_rejects + unlabelled_rejects
    outputs = {"instructions": store.write_table("instructions/data.parquet", to_table(rows, SCHEMA))}
    outputs["rejects"] = store.write_table("rejects/instructions.parquet", to_table(rejects, REJECT_SCHEMA))
    rows_in = len(plans) + len(user_rows) + len(user_rejects) + len(seeded)
    counts = {"rows_in": rows_in, "rows_out": len(rows), "rows_rejected": len(rejects)}
    counts["per_scenario"] = pd.Series([r["scenario"] for r in rows], dtype=str).value_counts().to_dict()
    inputs = {"user_file": section.user_file} if section.user_file else {}
    return StageReport(inputs=inputs, outputs=outputs, counts=counts)


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
    return {"scenario": scenario.id, "method": "reference", "source": title, "passage": text, **prompt_row(messages)}


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
        "source": json.dumps(attrs),
        "passage": "",
        **prompt_row(messages),
    }


def write_instructions(plans: list[dict[str, Any]], cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """Have the engine write every planned instruction; split parsed ones from rejects."""
    section = cfg.instructions
    out = generate(plans, cfg.engines[section.engine], section.sampling, seed=cfg.run.seed)
    kept, rejected = [], []
    for row in out.to_dict("records"):
        base = {k: row[k] for k in ("instruction_id", "scenario", "method", "source", "passage")}
        base |= {"reference": "", "scenario_source": "generated"}
        if row["error"]:
            rejected.append(base | {"instruction": "", "output": "", "reason": f"engine error: {row['error']}"})
            continue
        try:
            kept.append(base | {"instruction": parse_instruction(row["output"], section.min_chars)})
        except ParseError as exc:
            rejected.append(base | {"instruction": "", "output": row["output"], "reason": str(exc)})
    return kept, rejected


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


def classify_missing(rows: list[dict], cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """Label rows without a scenario with the LLM classifier; unparseable labels are rejected."""
    todo = [r for r in rows if not r["scenario"]]
    done = [r for r in rows if r["scenario"]]
    if not todo:
        return done, []
    prompt_rows = [r | judge_prompt_row(prompts.render_classifier_prompt(r["instruction"]), True) for r in todo]
    # The classifier needs only the letter: greedy, a couple of tokens.
    sampling = Sampling(max_tokens=2, temperature=0.0)
    out = generate(prompt_rows, cfg.engines[cfg.instructions.classifier_engine], sampling, seed=cfg.run.seed)
    ids = list(load_scenarios())
    rejected = []
    for row in out.to_dict("records"):
        clean = {k: row[k] for k in COLUMNS}
        try:
            done.append(clean | {"scenario": parse_scenario(row["output"], ids), "scenario_source": "classified"})
        except ParseError as exc:
            reason = f"engine error: {row['error']}" if row["error"] else f"classifier: {exc}"
            rejected.append(clean | {"output": row["output"], "reason": reason})
    return done, rejected
