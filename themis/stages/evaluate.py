"""Stage 6, evaluate: run a judge over a labelled set and report its agreement.

The judge is this run's trained model or any engine (an OpenAI-compatible endpoint included).
The labels are this run's validation split, the PandaLM human-labelled pairs, or a user file.
Metrics: MAE and Agr(2,2) for scores; accuracy and dual-order consistency for pairs. An output
that does not parse counts as wrong for pairs and is left out of score metrics; the report says
so and gives the counts. Writes ``reports/evaluation.json`` and ``reports/evaluation.md``.
"""

from __future__ import annotations

import json
from typing import Any

from themis import benchmarks, metrics
from themis.config import EngineConfig, PipelineConfig, TransformersEngineConfig
from themis.generation import generate, prompt_row
from themis.parsing import ParseError, parse_pairwise, parse_score
from themis.prompts import PAIR_CHOICES, PAIR_OPENING, SCORE_CHOICES, SCORE_OPENING
from themis.stages import StageReport
from themis.storage import RunStore

UNPARSABLE_POLICY = "pairs: an unparsable verdict counts as wrong; scores: unparsable items are excluded"


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Judge every labelled item, compute metrics, write the JSON and Markdown reports."""
    section = cfg.evaluate
    items, source = load_items(cfg, store)
    if section.limit:
        items = items[: section.limit]
    if not items:
        raise ValueError(f"no labelled items in {source}")
    engine_cfg, model_path = judge_engine(cfg, store)
    out = generate([_prompt(i) for i in items], engine_cfg, section.sampling, seed=cfg.run.seed, model_path=model_path)
    predictions = [predict(row) for row in out.to_dict("records")]
    report = build_report(items, predictions, judge=section.judge, labels=source)
    outputs = {
        "report_json": store.write_json("reports/evaluation.json", report),
        "report_md": store.write_text("reports/evaluation.md", render_markdown(report)),
    }
    counts = {"items": len(items), "parsed": sum(p["parsed"] for p in predictions)}
    return StageReport(inputs={"labels": source}, outputs=outputs, counts=counts, details=report["metrics"])


def load_items(cfg: PipelineConfig, store: RunStore) -> tuple[list[dict[str, Any]], str]:
    """The labelled items named by ``evaluate.labels`` and where they came from."""
    labels = cfg.evaluate.labels
    if labels == "validation":
        return benchmarks.from_validation(store.read_table("dataset/validation.parquet").to_pylist()), store.uri(
            "dataset/validation.parquet"
        )
    if labels == "pandalm":
        return benchmarks.from_pandalm(cfg.evaluate.shared_data_dir), f"{cfg.evaluate.shared_data_dir}/pandalm"
    return benchmarks.from_file(labels), labels


def judge_engine(cfg: PipelineConfig, store: RunStore) -> tuple[EngineConfig, str | None]:
    """The engine to judge with, and the model folder for the trained judge."""
    if cfg.evaluate.judge != "trained":
        return cfg.engines[cfg.evaluate.judge], None
    engine = cfg.evaluate.engine or TransformersEngineConfig(model="trained")
    return engine, str(store.local_dir("model"))


def _prompt(item: dict[str, Any]) -> dict[str, Any]:
    messages = json.loads(item["messages"])
    if item["kind"] == "pairwise":
        return item | prompt_row(messages, PAIR_OPENING, PAIR_CHOICES, "]]")
    return item | prompt_row(messages, SCORE_OPENING, SCORE_CHOICES, "]]")


def predict(row: dict[str, Any]) -> dict[str, Any]:
    """The judge's parsed verdict for one item, or why there is none."""
    base = {"item_id": row["item_id"], "output": row["output"], "parsed": False, "prediction": None}
    if row["error"]:
        return base | {"error": f"engine error: {row['error']}"}
    try:
        judged = parse_pairwise(row["output"]) if row["kind"] == "pairwise" else parse_score(row["output"])
    except ParseError as exc:
        return base | {"error": str(exc)}
    return base | {"parsed": True, "prediction": str(judged.verdict), "error": None}


def build_report(items: list[dict], predictions: list[dict], judge: str, labels: str) -> dict[str, Any]:
    """Every number, with the counts in and used and the unparsable policy."""
    by_id = {p["item_id"]: p for p in predictions}
    scored = [i for i in items if i["kind"] != "pairwise"]
    pairs = [i for i in items if i["kind"] == "pairwise"]
    result: dict[str, Any] = {"judge": judge, "labels": labels, "policy": UNPARSABLE_POLICY, "metrics": {}}
    if scored:
        result["metrics"]["scores"] = score_metrics(scored, by_id)
    if pairs:
        result["metrics"]["pairs"] = pair_metrics(pairs, by_id)
    result["predictions"] = [{**by_id[i["item_id"]], "label": i["label"], "kind": i["kind"]} for i in items]
    return result


def score_metrics(items: list[dict], by_id: dict[str, dict]) -> dict[str, Any]:
    used = [i for i in items if by_id[i["item_id"]]["parsed"]]
    out: dict[str, Any] = {"items_in": len(items), "items_used": len(used), "parse_rate": len(used) / len(items)}
    if used:
        pred = [int(by_id[i["item_id"]]["prediction"]) for i in used]
        gold = [int(i["label"]) for i in used]
        out |= {"mae": metrics.mae(pred, gold), "agr_2_2": metrics.agreement(pred, gold, 2, 2),
                "exact": metrics.agreement(pred, gold, 1, 0)}
    return out


def pair_metrics(items: list[dict], by_id: dict[str, dict]) -> dict[str, Any]:
    pred = [by_id[i["item_id"]]["prediction"] or "unparsable" for i in items]
    gold = [i["label"] for i in items]
    out: dict[str, Any] = {"items_in": len(items), "items_used": len(items),
                           "parse_rate": sum(p != "unparsable" for p in pred) / len(items),
                           "accuracy": metrics.accuracy(pred, gold)}
    orders = {(i["pair_id"], i["order"]): by_id[i["item_id"]]["prediction"] for i in items}
    both = [pid for pid, order in orders if order == "ab" and orders.get((pid, "ba"))]
    both = [pid for pid in both if orders[(pid, "ab")]]
    if both:
        out["dual_order_consistency"] = metrics.dual_order_consistency(
            [orders[(p, "ab")] for p in both], [orders[(p, "ba")] for p in both])
        out["pairs_with_both_orders"] = len(both)
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """A short human-readable report: one table per judgment family."""
    lines = [f"# Evaluation: judge `{report['judge']}` on `{report['labels']}`", "", f"Policy: {report['policy']}", ""]
    for family, values in report["metrics"].items():
        lines += [f"## {family}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
