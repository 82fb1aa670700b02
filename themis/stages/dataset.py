"""Stage 4, dataset: filter and balance teacher judgments into a chat-format SFT set.

Order of filters: drop duplicate prompts; keep pairs whose two orders agree (the ``ba`` judgment
becomes the pair's swapped-order copy); balance scores and verdicts; split by instruction into
train and validation. The filter report counts rows per reason, and they reconcile:
rows in = rows kept + rows rejected.
"""

from __future__ import annotations

from collections import Counter

from themis.config import PipelineConfig
from themis.filters import balance, drop_duplicates, label_of, pair_consistency, split_by_instruction, to_sft_example
from themis.stages import StageReport
from themis.stages.judgments import REJECT_SCHEMA
from themis.storage import RunStore
from themis.tables import string_schema, to_table

SFT_SCHEMA = string_schema(
    [
        "example_id",
        "kind",
        "order",
        "pair_id",
        "scenario",
        "instruction_id",
        "label",
        "messages",
        "instruction",
        "responses",
        "reference",
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
    """Counts per reason and per label, reconciled against the rows that came in."""
    return {
        "rows_in": len(judgments),
        "rows_kept": len(kept),
        "rows_rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "kept_by_kind": dict(Counter(r["kind"] for r in kept)),
        "kept_by_label": {
            f"{k}:{label}": n for (k, label), n in sorted(Counter((r["kind"], label_of(r)) for r in kept).items())
        },
        "kept_by_scenario": dict(Counter(r["scenario"] for r in kept)),
        "train": len(train),
        "validation": len(val),
    }
