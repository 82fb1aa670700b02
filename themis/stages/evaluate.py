"""Stage 6, evaluate: measure judges against labelled items and write one report per judge and benchmark.

The benchmarks (``evaluate.benchmark``, or a suite in ``evaluate.benchmarks``): this run's
validation split, the PandaLM or HHH human-labelled pairs, or a user's file. The judges
(``evaluate.judges``): this run's trained model, any engine (an OpenAI-compatible endpoint or a
local checkpoint), or a file of recorded verdicts (in one or both orders). Engine judges see pairs
in both orders and, with ``reference_effect``, items that have a reference both with and without
it: every call is a ``themis.judge.call`` call, answered through ``generation.generate_requests`` and
parsed by ``judges.parse_call`` (``themis.judge.call.read_verdict``).

Writes, per judge, under ``reports/evaluation/<judge>/`` (a suite: ``<judge>/<benchmark id>/``):
``report.json`` (every number, the config, data hashes, package versions, join warnings),
``report.md``, ``predictions.parquet`` (every score or winner, or why there is none) and PNG plots.
A suite, or a benchmark split into ``subsets``, adds ``<judge>/suite.json`` and ``suite.md``: each
benchmark's numbers, the paper's aggregate and the mean over subsets. Unusable benchmark rows go to
``rejects/evaluate/<benchmark id>.parquet`` and are counted. The console shows each report's
headline metrics with intervals. ``themis evaluate compare A B`` sets two reports (or suites) side
by side.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from themis.config import (
    BenchmarkConfig,
    EngineJudge,
    EvaluateConfig,
    PipelineConfig,
    RecordedJudge,
    TrainedJudge,
    TransformersEngineConfig,
)
from themis.dataplane.generation import EnginePass, generate_requests
from themis.dataplane.tables import to_table
from themis.evaluation import benchmarks, judges, markdown, plots, sources
from themis.evaluation.benchmarks import Item
from themis.evaluation.judges import Prediction
from themis.evaluation.paired import scored_units
from themis.evaluation.report import Settings, build_report
from themis.evaluation.suite import benchmark_entry, build_suite_report, split_subsets
from themis.models import EXPORT_MARKERS, ModelSource
from themis.runner import say
from themis.runtime import init_ray, package_versions
from themis.stages import StageReport
from themis.storage import RunStore

# Per scored unit (a pair, or a pointwise item), what a paired comparison resamples (evaluation.paired).
UNITS_SCHEMA = pa.schema([("item_id", pa.string()), ("family", pa.string()), ("features", pa.list_(pa.float64()))])

# A benchmark row that cannot be used: where it was, why, and the raw record.
REJECT_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string()), ("record", pa.string())])

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
    """Judge every benchmark with every configured judge; write a report per judge per benchmark,
    and a suite report per judge when there are several benchmarks or subsets."""
    section = cfg.evaluate
    done = StageReport(counts={"benchmarks": len(section.suite), "items": 0, "judges": len(section.judges)})
    rejected: Counter[str] = Counter()
    entries: dict[str, dict[str, Any]] = {j.name: {} for j in section.judges}
    for bench in section.suite:
        for judge_name, entry in measure_benchmark(bench, cfg, store, done, rejected).items():
            entries[judge_name][bench.report_id] = entry
    done.counts["rows_rejected"] = sum(rejected.values())
    if rejected:
        done.counts["rejected_by_reason"] = dict(rejected)
    if section.benchmarks is not None or any(b.subsets for b in section.suite):
        for judge in section.judges:
            suite_report = build_suite_report(judge.model_dump(mode="json"), entries[judge.name])
            done.outputs |= write_suite_report(store, judge.name, suite_report)
            done.details[f"{judge.name}/suite"] = {"aggregate": suite_report["aggregate"]["value"]}
            say(f"evaluate: {judge.name}: suite aggregate {markdown.fmt(suite_report['aggregate']['value'])}")
    return done


def measure_benchmark(
    bench: BenchmarkConfig, cfg: PipelineConfig, store: RunStore, done: StageReport, rejected: Counter[str]
) -> dict[str, dict[str, Any]]:
    """Every judge on one benchmark: reports written (recorded in ``done``), rejects written and
    counted (in ``rejected``); returns each judge's suite entry for this benchmark."""
    section = cfg.evaluate
    needs_texts = not all(isinstance(j, RecordedJudge) for j in section.judges)
    settings = build_settings(section, cfg.run.seed)
    loaded = load_benchmark(bench, store, needs_texts)
    fingerprint = items_hash(loaded.items)  # once per benchmark, not per judge
    done.inputs[bench.report_id] = loaded.source
    done.outputs |= write_rejects(store, bench.report_id, loaded.rejects)
    done.counts["items"] += len(loaded.items)
    rejected.update(r.reason for r in loaded.rejects)
    entries = {}
    for judge in section.judges:
        folder = f"{judge.name}/{bench.report_id}" if section.benchmarks is not None else judge.name
        report, predictions = judge_report(judge, bench, loaded, fingerprint, cfg, store, settings)
        done.outputs |= write_report(store, folder, report, predictions, section.plots)
        done.outputs |= write_units(store, folder, scored_units(loaded.items, predictions, settings))
        done.details[folder] = headline(report)
        say(f"evaluate: {folder} on {len(loaded.items)} items: {markdown.headline_line(report)}")
        subfolder = bench.report_id if section.benchmarks is not None else ""
        entries[judge.name] = suite_entry(report, subfolder, loaded.items, predictions, bench, settings)
    return entries


def build_settings(section: EvaluateConfig, seed: int) -> Settings:
    """How reports score, from the evaluate section."""
    return Settings(
        unparsable=section.unparsable,
        p=section.agr_p,
        q=section.agr_q,
        resamples=section.bootstrap.resamples,
        confidence=section.bootstrap.confidence,
        seed=seed,
        breakdown=section.breakdown,
        macro_classes=section.macro_classes,
        decisive_only=section.decisive_only,
    )


def judge_report(
    judge: Any,
    bench: BenchmarkConfig,
    loaded: benchmarks.Loaded,
    fingerprint: str,
    cfg: PipelineConfig,
    store: RunStore,
    settings: Settings,
) -> tuple[dict[str, Any], list[Prediction]]:
    """One judge's report on one benchmark, with what it was computed from, and its predictions."""
    predictions, unmatched, warnings = predict(judge, loaded.items, cfg, store, bench.data_dir)
    for warning in warnings:
        say(f"evaluate: warning: {judge.name} on {bench.report_id}: {warning}")
    report = build_report(loaded.items, predictions, settings) | {
        "judge": judge.model_dump(mode="json"),
        "unmatched_prediction_ids": unmatched[:50],
        "warnings": warnings,
        "benchmark": {
            "id": bench.report_id,
            "name": bench.name,
            "source": loaded.source,
            "items": len(loaded.items),
            "sha256": fingerprint,
            "rows_rejected": len(loaded.rejects),
            "rejected_by_reason": dict(Counter(r.reason for r in loaded.rejects)),
        },
        "predictions_file_sha256": file_hash(str(sources.resolve(judge.path, bench.data_dir)))
        if isinstance(judge, RecordedJudge)
        else None,
        "config": cfg.evaluate.model_dump(mode="json"),
        "versions": package_versions(),
    }
    return report, predictions


def suite_entry(
    report: dict[str, Any],
    folder: str,
    items: list[Item],
    predictions: list[Prediction],
    bench: BenchmarkConfig,
    s: Settings,
) -> dict[str, Any]:
    """A benchmark's entry in a suite report; with ``subsets``, a report per subset too (only
    computed when the benchmark has subsets: otherwise the entry reuses the report)."""
    if not bench.subsets:
        return benchmark_entry(report, folder)
    subsets = {}
    for name, members in split_subsets(items, bench.subsets).items():
        ids = {i.item_id for i in members}
        subsets[name] = build_report(members, [p for p in predictions if p.item_id in ids], s)
    return benchmark_entry(report, folder, subsets)


def load_benchmark(cfg: BenchmarkConfig, store: RunStore, needs_texts: bool) -> benchmarks.Loaded:
    """The labelled items, the rows rejected on the way, and where they came from. ``needs_texts``:
    whether some judge reads the texts (anything but recorded verdicts), so that rows without them
    are rejected rather than judged blind."""
    if cfg.name == "validation":
        path = "dataset/validation.parquet"
        if not store.exists(path):
            raise FileNotFoundError(f"no validation split at {store.uri(path)}: run the dataset stage first")
        loaded = benchmarks.Loaded(
            list[benchmarks.Item](benchmarks.from_validation(store.read_table(path).to_pylist())), [], store.uri(path)
        )
    elif cfg.name == "pandalm":
        root = sources.data_root("pandalm", "testset-v1.json", cfg.data_dir)
        loaded = benchmarks.Loaded(
            list[benchmarks.Item](benchmarks.load_pandalm(root)), [], sources.describe("pandalm", "testset-v1.json")
        )
    elif cfg.name == "hhh":
        root = sources.data_root("hhh_alignment", "hhh_alignment_eval.json", cfg.data_dir)
        source = sources.describe("hhh_alignment", "hhh_alignment_eval.json")
        loaded = benchmarks.Loaded(list[benchmarks.Item](benchmarks.load_hhh(root)), [], source)
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
    if not any(store.exists("model", marker) for marker in EXPORT_MARKERS):  # merged or adapter-only export
        raise FileNotFoundError(f"no trained judge at {store.uri('model')}: run the train stage first")
    engine = judge.engine or TransformersEngineConfig(model="trained")
    return EnginePass(name="trained", cfg=engine, model=ModelSource(storage=store.storage, run_name=cfg.run.name))


def items_hash(items: list[Item]) -> str:
    """A fingerprint of the labelled items, so two reports can be checked to share a benchmark."""
    blob = json.dumps([_hashed_fields(i) for i in items], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _hashed_fields(item: Item) -> dict[str, Any]:
    """An item's fields for its hash; a default (1-5) ``scale`` is left out, so reports written
    before items had a scale still match."""
    fields = asdict(item) | {"kind": item.kind}
    if fields.get("scale") is None:
        fields.pop("scale", None)
    return fields


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


def write_units(store: RunStore, name: str, units: dict[str, list]) -> dict[str, str]:
    """units.parquet: the scored units ``themis evaluate compare`` resamples for a paired test."""
    table = pa.table(units, schema=UNITS_SCHEMA)
    return {f"{name}/units": store.write_table(f"reports/evaluation/{name}/units.parquet", table)}


def write_rejects(store: RunStore, bench_id: str, rejects: list[benchmarks.Reject]) -> dict[str, str]:
    """The benchmark's unusable rows, with their reasons, under rejects/evaluate/<benchmark id>.parquet."""
    if not rejects:
        return {}
    table = to_table([asdict(r) for r in rejects], REJECT_SCHEMA)
    return {f"rejects/{bench_id}": store.write_table(f"rejects/evaluate/{bench_id}.parquet", table)}


def write_suite_report(store: RunStore, judge: str, report: dict[str, Any]) -> dict[str, str]:
    """suite.json and suite.md under reports/evaluation/<judge>/."""
    base = f"reports/evaluation/{judge}"
    return {
        f"{judge}/suite_json": store.write_json(f"{base}/suite.json", report),
        f"{judge}/suite_md": store.write_text(f"{base}/suite.md", markdown.render_suite(report)),
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the manifest and the console show."""
    out: dict[str, Any] = {"overall": report["overall"]["value"]}
    for family in ("pointwise", "pairwise"):
        if family in report:
            out[family] = {k: v["value"] for k, v in report[family]["metrics"].items()} | {
                "counts": report[family]["counts"]
            }
    return out
