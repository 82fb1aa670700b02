"""Stage 4, dataset: filter and balance teacher judgments into a chat-format SFT set.

Reads the typed judgments table (the judge prompt as a list of messages, the responses as a list,
the verdict as ``score`` or ``winner``) and writes typed SFT splits. Order of filters: drop
duplicate prompts; keep pairs whose two orders agree (the ``ba`` judgment becomes the pair's
swapped-order copy); balance scores and winners; split by instruction into train and validation.
The filter report counts rows per reason, and they reconcile: rows in = rows kept + rows rejected.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from themis.config import PipelineConfig
from themis.filters import balance, balance_key, drop_duplicates, pair_consistency, split_by_instruction, to_sft_example
from themis.stages import StageReport
from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
from themis.storage import RunStore
from themis.tables import MESSAGES, STRINGS, to_table, with_columns

# Every judgment this stage drops, as the judgments stage wrote it, with the reason.
REJECT_SCHEMA = with_columns(JUDGMENTS_SCHEMA, ("reason", pa.string()))
# One chat per row; ``score`` (single, reference) or ``winner`` (pairwise, for the order shown) is
# the teacher's verdict, and the prompt's parts let evaluation re-render it.
SFT_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("kind", pa.string()),
        ("order", pa.string()),
        ("pair_id", pa.string()),
        ("scenario", pa.string()),
        ("instruction_id", pa.string()),
        ("score", pa.int32()),
        ("winner", pa.string()),
        ("messages", MESSAGES),
        ("instruction", pa.string()),
        ("responses", STRINGS),
        ("reference", pa.string()),
    ]
)


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Build train/validation SFT sets from parsed judgments; write them, rejects and a filter report."""
    section = cfg.dataset
    judgments = store.read_table("judgments/data.parquet").to_pylist()
    if not judgments:
        raise ValueError(f"no parsed judgments in {store.uri('judgments/data.parquet')}: nothing to train on")
    unique, dupes = drop_duplicates(judgments)
    singles = [r for r in unique if r["kind"] != "pairwise"]
    records, copies, inconsistent = pair_consistency([r for r in unique if r["kind"] == "pairwise"], section.swap_pairs)
    records = singles + records
    unbalanced = []
    if section.balance:
        records, unbalanced = balance(records, section.balance_floor, cfg.run.seed)
    kept_pairs = {r["pair_id"] for r in records if r["kind"] == "pairwise"}
    unbalanced += [c | {"reason": "balancing: its pair was dropped"} for c in copies if c["pair_id"] not in kept_pairs]
    copies = [c for c in copies if c["pair_id"] in kept_pairs]
    kept = records + copies
    rejected = dupes + inconsistent + unbalanced
    if len(kept) + len(rejected) != len(judgments):  # the promise of this stage: nothing is lost
        raise AssertionError(
            f"filter counts do not reconcile: {len(judgments)} in, {len(kept)} kept, {len(rejected)} rejected"
        )
    train, val = split_by_instruction(kept, section.validation_fraction, cfg.run.seed)
    report = filter_report(judgments, kept, rejected, train, val)
    outputs = {
        "train": store.write_table("dataset/train.parquet", to_table([to_sft_example(r) for r in train], SFT_SCHEMA)),
        "validation": store.write_table(
            "dataset/validation.parquet", to_table([to_sft_example(r) for r in val], SFT_SCHEMA)
        ),
        "rejects": store.write_table("rejects/dataset.parquet", to_table(rejected, REJECT_SCHEMA)),
        "report": store.write_json("dataset/filter_report.json", report),
    }
    counts = {
        "rows_in": len(judgments),
        "rows_out": len(kept),
        "rows_rejected": len(rejected),
        "train": len(train),
        "validation": len(val),
    }
    return StageReport(
        inputs={"judgments": store.uri("judgments/data.parquet")}, outputs=outputs, counts=counts, details=report
    )


def filter_report(judgments: list, kept: list, rejected: list, train: list, val: list) -> dict:
    """Counts per reason, kind, verdict and scenario, reconciled against the rows that came in.
    Pairs are counted by their winner in the ``ab`` order."""
    return {
        "rows_in": len(judgments),
        "rows_kept": len(kept),
        "rows_rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "kept_by_kind": dict(Counter(r["kind"] for r in kept)),
        "kept_by_verdict": {
            f"{kind}:{verdict}": n
            for (kind, verdict), n in sorted(Counter((r["kind"], balance_key(r)[1]) for r in kept).items())
        },
        "kept_by_scenario": dict(Counter(r["scenario"] for r in kept)),
        "train": len(train),
        "validation": len(val),
    }
