"""Stage 6, evaluate: measure judges against labelled items and write one report per judge.

The benchmark (``evaluate.benchmark``): this run's validation split, the PandaLM or HHH human-
labelled pairs, or a user's JSONL/Parquet. The judges (``evaluate.judges``): this run's trained
model, any engine (an OpenAI-compatible endpoint or a local checkpoint), or a file of recorded
verdicts. Engine judges see pairs in both orders and, with ``reference_effect``, items that have a
reference both with and without it: every call is a ``themis.judging`` call, answered through
``generation.generate_requests`` and parsed by ``judging.parse_verdict``.

Writes, per judge, under ``reports/evaluation/<judge>/``: ``report.json`` (every number, the
config, data hashes, package versions), ``report.md``, ``predictions.parquet`` (every score or
winner, or why there is none) and PNG plots. ``themis evaluate compare A B`` sets two reports
side by side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from themis.config import (
    BenchmarkConfig,
    EngineJudge,
    PipelineConfig,
    RecordedJudge,
    TrainedJudge,
    TransformersEngineConfig,
)
from themis.evaluation import benchmarks, judges, markdown, plots, sources
from themis.evaluation.benchmarks import Item
from themis.evaluation.judges import Prediction
from themis.evaluation.report import Settings, build_report
from themis.generation import EnginePass, generate_requests
from themis.models import ModelSource
from themis.runtime import init_ray, package_versions
from themis.stages import StageReport
from themis.storage import RunStore
from themis.tables import to_table

# One row per judge call: ``score`` for pointwise items, ``winner`` (for the order shown) for pairs,
# neither when ``error`` says why there is no verdict.
PREDICTION_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("order", pa.string()),
        ("with_reference", pa.bool_()),
        ("score", pa.int32()),
        ("winner", pa.string()),
        ("output", pa.string()),
        ("error", pa.string()),
    ]
)


def run(cfg: PipelineConfig, store: RunStore) -> StageReport:
    """Judge the benchmark with every configured judge; write a report per judge."""
    section = cfg.evaluate
    needs_texts = not all(isinstance(j, RecordedJudge) for j in section.judges)
    loaded = load_benchmark(section.benchmark, store, needs_texts)
    items, source, data_dir = loaded.items, loaded.source, section.benchmark.data_dir
    settings = Settings(
        section.unparsable,
        section.agr_p,
        section.agr_q,
        section.bootstrap.resamples,
        section.bootstrap.confidence,
        cfg.run.seed,
        section.breakdown,
    )
    outputs, details = {}, {}
    fingerprint = items_hash(items)
    for judge in section.judges:
        predictions, unmatched, _warnings = predict(judge, items, cfg, store, data_dir)
        report = build_report(items, predictions, settings) | {
            "judge": judge.model_dump(mode="json"),
            "unmatched_prediction_ids": unmatched[:50],
            "benchmark": {
                "name": section.benchmark.name,
                "source": source,
                "items": len(items),
                "sha256": fingerprint,
            },
            "predictions_file_sha256": file_hash(str(sources.resolve(judge.path, data_dir)))
            if isinstance(judge, RecordedJudge)
            else None,
            "config": section.model_dump(mode="json"),
            "versions": package_versions(),
        }
        outputs |= write_report(store, judge.name, report, predictions, section.plots)
        details[judge.name] = headline(report)
    counts = {"items": len(items), "judges": len(section.judges)}
    return StageReport(inputs={"benchmark": source}, outputs=outputs, counts=counts, details=details)


def load_benchmark(cfg: BenchmarkConfig, store: RunStore, needs_texts: bool) -> benchmarks.Loaded:
    """The labelled items, the rows rejected on the way, and where they came from. ``needs_texts``:
    whether some judge reads the texts (anything but recorded verdicts), so that rows without them
    are rejected rather than judged blind."""
    if cfg.name == "validation":
        path = "dataset/validation.parquet"
        if not store.exists(path):
            raise FileNotFoundError(f"no validation split at {store.uri(path)}: run the dataset stage first")
        loaded = benchmarks.Loaded(benchmarks.from_validation(store.read_table(path).to_pylist()), [], store.uri(path))
    elif cfg.name == "pandalm":
        root = sources.data_root("pandalm", "testset-v1.json", cfg.data_dir)
        loaded = benchmarks.Loaded(benchmarks.load_pandalm(root), [], sources.describe("pandalm", "testset-v1.json"))
    elif cfg.name == "hhh":
        root = sources.data_root("hhh_alignment", "hhh_alignment_eval.json", cfg.data_dir)
        source = sources.describe("hhh_alignment", "hhh_alignment_eval.json")
        loaded = benchmarks.Loaded(benchmarks.load_hhh(root), [], source)
    else:
        assert cfg.path is not None  # the config requires it for name=file
        loaded = benchmarks.load_file(cfg.path, cfg.kind, cfg.columns, cfg.values, needs_texts)
    items = loaded.items[: cfg.limit] if cfg.limit else loaded.items
    if not items:
        raise ValueError(f"no labelled items in {loaded.source}")
    return benchmarks.Loaded(items, loaded.rejects, loaded.source)


def predict(
    judge: Any, items: list[Item], cfg: PipelineConfig, store: RunStore, data_dir: str | None = None
) -> tuple[list[Prediction], list[str], list[str]]:
    """One judge's predictions, the recorded ids that matched no item, and warnings (both: recorded
    judges only). ``data_dir``: the offline data folder for ``shipped:`` verdict files."""
    if isinstance(judge, RecordedJudge):
        recorded = judges.load_recorded(judge, items, data_dir)
        return recorded.predictions, recorded.unmatched_ids, recorded.warnings
    section = cfg.evaluate
    modes = (True, False) if section.reference_effect else (True,)
    calls = judges.item_calls(items, section.both_orders, modes)
    requests = judges.call_requests(calls, section.sampling, seed=cfg.run.seed)
    engine = judge_engine(judge, cfg, store)
    init_ray(cfg.ray)
    results = generate_requests(requests, engine)
    return [judges.parse_call(c, r) for c, r in zip(calls, results)], [], []


def judge_engine(judge: TrainedJudge | EngineJudge, cfg: PipelineConfig, store: RunStore) -> EnginePass:
    """The engine to judge with; for this run's trained judge, where its actors fetch the model."""
    if isinstance(judge, EngineJudge):
        return EnginePass(name=judge.engine, cfg=cfg.engines[judge.engine])
    if not store.exists("model", "config.json"):
        raise FileNotFoundError(f"no trained judge at {store.uri('model')}: run the train stage first")
    engine = judge.engine or TransformersEngineConfig(model="trained")
    return EnginePass(name="trained", cfg=engine, model=ModelSource(storage=store.storage, run_name=cfg.run.name))


def items_hash(items: list[Item]) -> str:
    """A fingerprint of the labelled items, so two reports can be checked to share a benchmark."""
    blob = json.dumps([asdict(i) | {"kind": i.kind} for i in items], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def file_hash(path: str) -> str:
    """SHA-256 of a recorded-verdicts file, so a report names exactly what it scored."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_report(
    store: RunStore, name: str, report: dict[str, Any], predictions: list[Prediction], with_plots: bool
) -> dict[str, str]:
    """report.json, report.md, predictions.parquet and the plots, under reports/evaluation/<name>/."""
    base = f"reports/evaluation/{name}"
    rows = [asdict(p) for p in predictions]
    outputs = {
        f"{name}/report_json": store.write_json(f"{base}/report.json", report),
        f"{name}/report_md": store.write_text(f"{base}/report.md", markdown.render_report(report)),
        f"{name}/predictions": store.write_table(f"{base}/predictions.parquet", to_table(rows, PREDICTION_SCHEMA)),
    }
    if with_plots:
        for plot, png in plots.render_plots(report).items():
            outputs[f"{name}/{plot}"] = store.write_bytes(f"{base}/{plot}.png", png)
    return outputs


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the manifest and the console show."""
    out: dict[str, Any] = {"overall": report["overall"]["value"]}
    for family in ("pointwise", "pairwise"):
        if family in report:
            out[family] = {k: v["value"] for k, v in report[family]["metrics"].items()} | {
                "counts": report[family]["counts"]
            }
    return out
