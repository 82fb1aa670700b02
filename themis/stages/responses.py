"""Stage 2, responses: K answers per instruction from a pool of answer models.

Answer k of every instruction comes from pool model ``k mod len(pool)`` with seed ``run.seed + k``,
so a pool of models of spread-out strength gives the judge good and bad answers to see. One Ray
Data pipeline, streamed from ``instructions/data.parquet``: every row carries its own sampling, so
each engine of the pool gets one pass (one actor pool) for all the answer models that use it.
Output: ``responses/data.parquet``; failed calls go to ``rejects/responses.parquet``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from themis.config import PipelineConfig, ResponsesConfig
from themis.dataplane.call_cache import CacheSpec, compact
from themis.dataplane.generation import EnginePass, check_engine, generate_by_engine
from themis.dataplane.ledger import (
    generation_fields,
    map_rows,
    planned_schema,
    publish_split,
    read_rows,
    rows_schema,
    tally,
    write_rows,
)
from themis.dataplane.tables import string_schema, with_columns
from themis.engines import GenerationRequest
from themis.engines.base import request_to_row
from themis.judge import prompts
from themis.stages import StageReport
from themis.storage import RunStore

CARRIED = ["instruction_id", "instruction", "scenario", "passage", "reference"]
COLUMNS = ["response_id", *CARRIED, "model", "k", "response"]
# What each answer's call cost, as the server reported it (a call reused from the cache keeps the
# figures of the call that paid for it).
ANSWER = string_schema(COLUMNS, k=pa.int32())
SCHEMA = with_columns(ANSWER, ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()))
REJECT_SCHEMA = with_columns(SCHEMA, ("reason", pa.string()))
PLANNED = planned_schema(ANSWER)
ROWS = rows_schema(REJECT_SCHEMA)
INPUT = "instructions/data.parquet"


def check(cfg: PipelineConfig) -> None:
    """Every answer model's engine can start (e.g. its model folder exists)."""
    assert cfg.responses is not None  # PipelineConfig.check_stage guarantees it
    for model in cfg.responses.pool:
        check_engine(EnginePass(model.engine, cfg.engines[model.engine]))


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Answer every instruction K times; write responses and rejects."""

    section = cfg.responses
    assert section is not None
    instructions = read_rows(store, INPUT)
    planned = map_rows(instructions, lambda row: plan_answers(row, section, cfg.run.seed), PLANNED)
    cache = CacheSpec(store.storage, store.run_name, "responses")
    engines = {m.engine: EnginePass(m.engine, cfg.engines[m.engine], cache=cache) for m in section.pool}
    parsed = map_rows(generate_by_engine(planned, engines), lambda row: [parse_answer(row)], ROWS)
    path = write_rows(parsed, store, "responses", ROWS)
    compact(cache)
    counts = tally(store, path)
    counts.check_engines()
    outputs = publish_split(store, path, "responses/data.parquet", SCHEMA, "rejects/responses.parquet", REJECT_SCHEMA)
    report = {
        "instructions": store.count_rows(INPUT),
        "rows_in": counts.rows_in,
        "rows_out": counts.rows_out,
        "rows_rejected": counts.rows_rejected,
        **counts.call_counts(),
    }
    details = {"usage": counts.usage(cfg.engines), "rows_by_node": dict(counts.rows_by_node)}
    return StageReport(inputs={"instructions": store.uri(INPUT)}, outputs=outputs, counts=report, details=details)


def plan_answers(instruction: dict[str, Any], section: ResponsesConfig, seed: int) -> list[dict[str, Any]]:
    """The K answer rows of one instruction, each with its pool model's engine and sampling."""
    rows = []
    for k in range(section.per_instruction):
        model = section.pool[k % len(section.pool)]
        request = GenerationRequest(
            messages=prompts.render_answer_prompt(instruction["instruction"]),
            max_tokens=model.sampling.max_tokens,
            temperature=model.sampling.temperature,
            top_p=model.sampling.top_p,
            seed=seed + k,
        )
        row = {c: instruction[c] for c in CARRIED} | {
            "response_id": f"{instruction['instruction_id']}-r{k}",
            "model": model.name,
            "k": k,
            "response": "",
        }
        rows.append(row | {"reason": None, "engine": model.engine, "request": request_to_row(request)})
    return rows


def parse_answer(row: dict[str, Any]) -> dict[str, Any]:
    """A generated answer, or the reason there is none."""
    out = {c: row[c] for c in COLUMNS} | generation_fields(row)
    out["response"] = (row["output"] or "").strip()
    if row["error"]:
        return out | {"reason": f"engine error: {row['error']}"}
    if not out["response"]:
        return out | {"reason": "empty response"}
    return out | {"reason": None}
