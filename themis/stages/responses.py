"""Stage 2, responses: K answers per instruction from a pool of answer models.

Answer k of every instruction comes from pool model ``k mod len(pool)`` with seed ``run.seed + k``,
so a pool of models of spread-out strength gives the judge good and bad answers to see.
Output: ``responses/data.parquet``; failed calls go to ``rejects/responses.parquet``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from themis import prompts
from themis.config import PipelineConfig
from themis.generation import generate, prompt_row
from themis.stages import StageReport
from themis.storage import RunStore
from themis.tables import string_schema, to_table

CARRIED = ["instruction_id", "instruction", "scenario", "passage", "reference"]
COLUMNS = ["response_id", *CARRIED, "model", "k", "response"]
SCHEMA = string_schema(COLUMNS, k=pa.int32())
REJECT_SCHEMA = string_schema(COLUMNS + ["reason"], k=pa.int32())


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Answer every instruction K times; write responses and rejects."""
    instructions = store.read_table("instructions/data.parquet").to_pylist()
    if not instructions:
        raise ValueError(f"no instructions in {store.uri('instructions/data.parquet')}: nothing to answer")
    kept, rejected = [], []
    for k in range(cfg.responses.per_instruction):
        ok, bad = answer_round(instructions, k, cfg)
        kept += ok
        rejected += bad
    outputs = {
        "responses": store.write_table("responses/data.parquet", to_table(kept, SCHEMA)),
        "rejects": store.write_table("rejects/responses.parquet", to_table(rejected, REJECT_SCHEMA)),
    }
    planned = len(instructions) * cfg.responses.per_instruction
    counts = {
        "instructions": len(instructions),
        "rows_in": planned,
        "rows_out": len(kept),
        "rows_rejected": len(rejected),
    }
    return StageReport(inputs={"instructions": store.uri("instructions/data.parquet")}, outputs=outputs, counts=counts)


def answer_round(instructions: list[dict[str, Any]], k: int, cfg: PipelineConfig) -> tuple[list[dict], list[dict]]:
    """The k-th answer to every instruction, from the k-th pool model (cycling)."""
    model = cfg.responses.pool[k % len(cfg.responses.pool)]
    rows = [
        {**{c: inst[c] for c in CARRIED}, **prompt_row(prompts.render_answer_prompt(inst["instruction"]))}
        for inst in instructions
    ]
    out = generate(rows, cfg.engines[model.engine], model.sampling, seed=cfg.run.seed + k)
    kept, rejected = [], []
    for row in out.to_dict("records"):
        record = {c: row[c] for c in CARRIED} | {"model": model.name, "k": k}
        record["response_id"] = f"{row['instruction_id']}-r{k}"
        record["response"] = row["output"].strip()
        if row["error"]:
            rejected.append(record | {"reason": f"engine error: {row['error']}"})
        elif not record["response"]:
            rejected.append(record | {"reason": "empty response"})
        else:
            kept.append(record)
    return kept, rejected
