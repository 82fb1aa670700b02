"""A realistic run root without running the pipeline, for the workbench's tests and its bench.

Every file is what the stage writes, made by the project's own code wherever it is pure: judge
prompts by ``judging.render_call``, tables with the stages' schemas through ``RunStore``, the
dataset by ``filters`` (duplicates, pair orders, balance, split) and ``stages.dataset``'s report,
IFD selection with ``selection``'s distributions and plot, TensorBoard events by the train stage's
``TensorBoardLog``, evaluation reports by ``build_report`` and the evaluate stage's own writers
(report.json, report.md, predictions, units, plots), and the manifest by ``RunStore.record_stage``.
Only the teacher and the judges are made up: seeded random verdicts, with some parse failures,
some pairs whose two orders disagree, and a judge with a first-position bias.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from themis.config import EvaluateConfig, StorageConfig
from themis.curation.filters import balance, drop_duplicates, pair_consistency, split_by_instruction, to_sft_example
from themis.dataplane.tables import to_table
from themis.evaluation import benchmarks
from themis.evaluation.judges import Prediction
from themis.evaluation.paired import scored_units
from themis.evaluation.report import Settings, build_report
from themis.judge.call import flip_winner, pairwise_calls, render_call, single_call
from themis.stages import dataset as dataset_stage
from themis.stages import evaluate as evaluate_stage
from themis.stages import judgments as judgments_stage
from themis.storage import RunStore

SCENARIOS = ["close_qa", "open_qa", "math_qa", "creative_writing", "programming"]
GUIDED = {"close_qa", "math_qa"}  # reference-guided grading where there is one right answer
WORDS = (
    "the answer explains each step clearly and cites the passage but misses one edge case while the "
    "tone stays helpful and the code compiles though a variable name is unclear and the proof skips"
).split()


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def build_run_root(root: Path, name: str = "view", judgments: int = 120, seed: int = 0, plots: bool = True) -> Path:
    """Write a run root with all six sections under ``root/name`` and return its path."""
    rng = random.Random(seed)
    store = RunStore(StorageConfig(root=str(root)), name)
    parsed, rejected = teacher_judgments(rng, judgments)
    store.write_table("judgments/data.parquet", to_table(parsed, judgments_stage.SCHEMA))
    store.write_table("rejects/judgments.parquet", to_table(rejected, judgments_stage.REJECT_SCHEMA))
    n_instructions = len({r["instruction_id"] for r in parsed + rejected})
    record(store, "instructions", {"rows_in": n_instructions, "rows_out": n_instructions, "rows_rejected": 0}, 12.5)
    record(store, "responses", {"rows_in": n_instructions, "rows_out": 2 * n_instructions, "rows_rejected": 0}, 20.1)
    record(
        store,
        "judgments",
        {"rows_in": len(parsed) + len(rejected), "rows_out": len(parsed), "rows_rejected": len(rejected)}
        | {"parse_rate": {"pairwise": 0.97, "single": 0.98}},
        83.2,
        usage=len(parsed) + len(rejected),
        inputs={"responses": store.uri("responses/data.parquet")},
    )
    train, val = write_dataset(store, rng, parsed, plots)
    write_training(store, rng, plots)
    write_evaluation(store, rng, val, plots)
    return Path(store.root)


def record(store: RunStore, stage: str, counts: dict, seconds: float, usage: int = 0, **entry: Any) -> None:
    """A manifest entry shaped like the runner's (``runner.run_stage``)."""
    details = entry.pop("details", {})
    if usage:
        details["usage"] = {
            "teacher": {"calls": usage, "reused": usage // 4, "failed": 0}
            | {"prompt_tokens": 612 * usage, "completion_tokens": 48 * usage, "cost_usd": round(usage * 0.0011, 6)}
        }
    store.record_stage(
        stage,
        {"config": entry.pop("config", {"stage": {}}), "duration_s": seconds, "versions": {"ray": "2.60.0"}}
        | {"status": "ok", "inputs": entry.pop("inputs", {}), "outputs": {}, "counts": counts, "details": details},
    )


def teacher_judgments(rng: random.Random, target: int) -> tuple[list[dict], list[dict]]:
    """Single, reference-guided and pairwise judgments (both orders) of two responses per instruction;
    about 3% do not parse and about one pair in five disagrees with itself across orders."""
    parsed, rejected = [], []
    n = 0
    while len(parsed) + len(rejected) < target:
        scenario = SCENARIOS[n % len(SCENARIOS)]
        instruction = text(rng, rng.randint(12, 40))
        reference = text(rng, 20) if scenario in GUIDED else None
        responses = [(f"r{n}-{k}", text(rng, rng.randint(30, 120))) for k in range(2)]
        calls = [single_call(scenario, instruction, r) for _, r in responses]
        calls += [single_call(scenario, instruction, r, reference) for _, r in responses if reference]
        calls += pairwise_calls(scenario, instruction, responses[0][1], responses[1][1], reference)
        ab_winner = rng.choice(["A", "B", "tie"])
        pair_id = f"{responses[0][0]}~{responses[1][0]}"
        for call in calls:
            if call.kind == "pairwise":
                shown = responses if call.order == "ab" else responses[::-1]
            else:
                shown = [next(r for r in responses if r[1] == call.responses[0])]
            row = judgment_row(n, call, shown, instruction, pair_id if call.kind == "pairwise" else "")
            if rng.random() < 0.03:
                output = "I think it is fine."
                rejected.append(
                    row | {"output": output, "rationale": None, "reason": "unparsable: no verdict in the output"}
                )
                rejected[-1]["verdicts"] = None
                continue
            if call.kind == "pairwise":
                winner = ab_winner if call.order == "ab" else flip_winner(ab_winner)
                if call.order == "ba" and rng.random() < 0.2:
                    winner = rng.choice([w for w in ("A", "B", "tie") if w != winner])
                row |= {"winner": winner, "output": f"Verdict: [[{winner}]]\n{row['rationale']}"}
            else:
                score = min(5, max(1, round(rng.gauss(3.6, 1.1))))
                row |= {"score": score, "output": f"Overall rating: [[{score}]]\n{row['rationale']}"}
            parsed.append(row)
        n += 1
    return parsed[: max(0, target - len(rejected))], rejected


def judgment_row(n: int, call: Any, shown: list[tuple[str, str]], instruction: str, pair_id: str) -> dict:
    """One row of judgments/data.parquet before its verdict (as ``stages.judgments._row`` plans it)."""
    ids = [i for i, _ in shown]
    return {
        "judgment_id": f"{call.kind}:{'|'.join(ids)}",
        "kind": call.kind,
        "order": call.order,
        "pair_id": pair_id,
        "instruction_id": f"i{n}",
        "scenario": call.scenario,
        "instruction": instruction,
        "reference": call.reference,
        "response_ids": ids,
        "responses": [r for _, r in shown],
        "messages": [{"role": m["role"], "content": m["content"]} for m in render_call(call).messages],
        "output": "",
        "score": None,
        "winner": None,
        "rationale": f"Strengths: {text(random.Random(n), 14)}\nShortcomings: {text(random.Random(n + 1), 10)}",
        "prompt_tokens": 600 + len(instruction) // 4,
        "completion_tokens": 48,
    }


def write_dataset(store: RunStore, rng: random.Random, judgments: list[dict], plots: bool) -> tuple[list, list]:
    """The dataset stage's filters, split, an IFD selection and a few augmented records; the filter
    report has the stage's keys (``stages.dataset.filter_report``) and steps."""
    from themis.curation import selection

    unique, dupes = drop_duplicates(judgments)
    pairs = [r for r in unique if r["kind"] == "pairwise"]
    records, copies, inconsistent = pair_consistency(pairs, keep_swapped=True)
    kept, unbalanced = balance([r for r in unique if r["kind"] != "pairwise"] + records, 3, 0)
    kept_pairs = {r["pair_id"] for r in kept if r["kind"] == "pairwise"}
    unbalanced += [c | {"reason": "balancing: its pair was dropped"} for c in copies if c["pair_id"] not in kept_pairs]
    kept += [c for c in copies if c["pair_id"] in kept_pairs]
    rejected = dupes + inconsistent + unbalanced
    steps = [step("filters", len(judgments), kept, rejected)]
    pool, val = split_by_instruction(kept, 0.2, 0)
    for row in pool:
        row["ifd"] = round(rng.lognormvariate(-0.2, 0.25), 4)
    outliers = [r | {"reason": selection.OUTLIER} for r in pool if r["ifd"] > 1.35]
    train = [r for r in pool if r["ifd"] <= 1.35]
    steps.append(step("ifd_outliers", len(pool), train, outliers))
    rejected += outliers
    singles = [r for r in train if r["kind"] == "single"][:8]
    augmented = [
        to_sft_example(r)
        | {"example_id": f"{r['judgment_id']}~scale:1-10", "scale": "1-10", "score": 2 * r["score"] - 1}
        | {"augmentation": "scale:1-10", "source_example_id": r["judgment_id"]}
        for r in singles
    ]
    added = {"rows_added": len(augmented), "rows_out": len(train) + len(augmented), "rows_rejected": 0}
    steps.append({"step": "augmentation", "rows_in": len(train)} | added)
    report = {
        "rows_in": len(judgments),
        "rows_kept": len(train) + len(val),
        "rows_augmented": len(augmented),
        "rows_rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "kept_by_kind": dict(Counter(r["kind"] for r in train + val)),
        "kept_by_scenario": dict(Counter(r["scenario"] for r in train + val)),
        "train": len(train) + len(augmented),
        "validation": len(val),
        "steps": steps,
    }
    every, chosen = selection.ifd_by_scenario(pool), selection.ifd_by_scenario(train)
    report["selection"] = {"strategy": "all", "target": None, "outlier_z": 3.0}
    report["selection"]["ifd_by_scenario"] = {s: selection.distribution(v) for s, v in every.items()}
    report["augmentation"] = {"rows_added": len(augmented), "by_kind": {"scale:1-10": len(augmented)}}
    sft = dataset_stage.SFT_SCHEMA
    store.write_table("dataset/train.parquet", to_table([to_sft_example(r) for r in train] + augmented, sft))
    store.write_table("dataset/validation.parquet", to_table([to_sft_example(r) for r in val], sft))
    store.write_table(
        "rejects/dataset.parquet", to_table(map(dataset_stage.as_reject, rejected), dataset_stage.REJECT_SCHEMA)
    )
    ifd_rows = [
        {"example_id": r["judgment_id"], "scenario": r["scenario"], "label": "score", "s_a_given_q": 1.0, "s_a": 1.0}
        | {
            "ifd": r["ifd"],
            "answer_tokens": 40,
            "kept": r["ifd"] <= 1.35,
            "reason": None if r["ifd"] <= 1.35 else selection.OUTLIER,
        }
        for r in pool
    ]
    store.write_table("dataset/ifd.parquet", to_table(ifd_rows, dataset_stage.IFD_SCHEMA))
    if plots:
        store.write_bytes("dataset/ifd_by_scenario.png", selection.render_ifd_plot(every, chosen))
    store.write_json("dataset/filter_report.json", report)
    counts = {
        "rows_in": len(judgments),
        "rows_augmented": len(augmented),
        "rows_out": len(train) + len(augmented) + len(val),
    }
    record(
        store,
        "dataset",
        counts | {"rows_rejected": len(rejected)},
        1.4,
        inputs={"judgments": store.uri("judgments/data.parquet")},
    )
    return train, val


def step(name: str, rows_in: int, kept: list, rejected: list) -> dict[str, Any]:
    """One step's counts, as the dataset stage's filter report has them."""
    assert rows_in == len(kept) + len(rejected), name
    return {"step": name, "rows_in": rows_in, "rows_out": len(kept), "rows_rejected": len(rejected)}


def write_training(store: RunStore, rng: random.Random, plots: bool, steps: int = 24) -> None:
    """train/summary.json, TensorBoard events (by the training loop's own writer) and the loss curve."""
    from themis.training.metrics import TensorBoardLog, render_loss_curve

    log = TensorBoardLog(True, store, 0)
    summary: dict[str, Any] = {"step": steps, "val_loss": [], "train_loss": [], "score_loss": [], "rationale_loss": []}
    summary["step_seconds"] = []
    for step in range(1, steps + 1):
        score, rationale = 2.5 / step**0.5 + rng.random() * 0.1, 1.8 / step**0.3 + rng.random() * 0.1
        total = score + rationale
        val = total + 0.2 if step % 8 == 0 else None
        summary["train_loss"].append(total)
        summary["score_loss"].append(score)
        summary["rationale_loss"].append(rationale)
        summary["step_seconds"].append(0.5 + rng.random() * 0.1)
        if val is not None:
            summary["val_loss"].append({"step": step, "loss": val})
        log.scalars(
            step,
            {"loss/total": total, "loss/score_ce": score, "loss/rationale": rationale, "loss/validation_ce": val}
            | {"lr": 2e-5 * min(1.0, step / 4), "throughput/tokens_per_s": 900 + 50 * rng.random()},
        )
    log.close()
    summary |= {"resumed_from_step": 0, "loss_kind": "cosine", "peak_rss_mb": [1024.5], "peak_rss_growth_mb": [310.2]}
    store.write_json("train/summary.json", summary)
    if plots:
        store.write_bytes("train/loss_curve.png", render_loss_curve(summary))
    inputs = {"train": store.uri("dataset/train.parquet"), "validation": store.uri("dataset/validation.parquet")}
    record(store, "train", {"steps": steps, "resumed_from_step": 0}, 79.0, inputs=inputs, details={"zero_stage": 2})


def write_evaluation(store: RunStore, rng: random.Random, val: list[dict], plots: bool) -> None:
    """Two judges on the validation split: the trained one, and a baseline that always picks the first
    response shown; each report written by the evaluate stage's writers."""
    section = EvaluateConfig(judges=[{"kind": "trained"}, {"kind": "engine", "name": "baseline", "engine": "teacher"}])
    items = benchmarks.from_validation([to_sft_example(r) for r in val])
    settings = Settings(resamples=100, seed=0)
    for judge in section.judges:
        predictions = [p for item in items for p in predict(item, judge.name, rng)]
        report = build_report(items, predictions, settings) | {
            "judge": judge.model_dump(mode="json"),
            "benchmark": {"id": "validation", "name": "validation", "source": store.uri("dataset/validation.parquet")}
            | {"items": len(items), "sha256": evaluate_stage.items_hash(items), "rows_rejected": 0},
            "warnings": [],
            "config": section.model_dump(mode="json"),
        }
        evaluate_stage.write_report(store, judge.name, report, predictions, plots)
        evaluate_stage.write_units(store, judge.name, scored_units(items, predictions, settings))
    record(
        store,
        "evaluate",
        {"benchmarks": 1, "items": len(items), "judges": 2},
        14.0,
        inputs={"validation": store.uri("dataset/validation.parquet")},
        config={"stage": section.model_dump(mode="json")},
    )


def predict(item: Any, judge: str, rng: random.Random) -> list[Prediction]:
    """A judge's verdicts: the trained one is right about two times in three; the baseline always
    names the first response shown (a pure position bias) and scores 4."""
    with_ref = item.reference is not None
    if item.kind == "pointwise":
        score = 4 if judge == "baseline" else item.human_score if rng.random() < 0.66 else rng.randint(1, 5)
        return [Prediction(item.item_id, "", with_ref, score=score, output=f"Overall rating: [[{score}]]\nFine.")]
    out = []
    for order in ("ab", "ba"):
        human = flip_winner(item.human_winner) if order == "ba" else item.human_winner
        winner = "A" if judge == "baseline" else human if rng.random() < 0.66 else rng.choice(["A", "B", "tie"])
        if rng.random() < 0.04:
            out.append(
                Prediction(item.item_id, order, with_ref, output="Both are good.", error="unparsable: no verdict")
            )
        else:
            out.append(
                Prediction(item.item_id, order, with_ref, winner=winner, output=f"Verdict: [[{winner}]]\nBecause.")
            )
    return out
