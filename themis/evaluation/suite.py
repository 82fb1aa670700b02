"""One judge on a suite: each benchmark's numbers, the paper's aggregate over all of them, and the
mean over subsets. Pure: no Ray or torch.

- The paper's aggregate: every normalised metric (random = 0, perfect = 1; see ``stats``) of every
  judgment kind on every benchmark, averaged into one number. A benchmark counts once, on all its
  items, whether or not it is split into subsets.
- The mean over subsets: for a benchmark with ``subsets`` (an item field), each metric is computed
  on each subset's items and averaged with equal weight per subset (a macro average, as suites
  such as RewardBench report), beside the value on all items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from themis.evaluation import stats
from themis.evaluation.benchmarks import Item

FAMILIES = ("pointwise", "pairwise")
AGGREGATE = (
    "the mean of every normalised metric (random = 0, perfect = 1) over judgment kinds x benchmarks x "
    "metrics; a benchmark counts once, on all its items"
)
SUBSET_MEAN = "each metric on each subset's items, averaged with equal weight per subset"


def split_subsets(items: Sequence[Item], field: str) -> dict[str, list[Item]]:
    """Items grouped by ``field`` ("scenario" or "category"); an empty value is the "(none)" subset."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[getattr(item, field) or "(none)"].append(item)
    return dict(sorted(groups.items()))


def flat_metrics(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A report's metrics as ``family/metric`` -> {value, ci}."""
    return {
        f"{family}/{name}": cell
        for family in FAMILIES
        for name, cell in report.get(family, {}).get("metrics", {}).items()
    }


def benchmark_entry(
    report: Mapping[str, Any], folder: str, subsets: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """One benchmark's part of a suite report: where it came from, the folder of its report
    (relative to the suite report's, "" for the same), its metrics with intervals, its normalised
    metrics and overall, and per subset the same with their mean."""
    entry = {
        "benchmark": report["benchmark"],
        "folder": folder,
        "settings": report["settings"],
        "metrics": flat_metrics(report),
        "normalised": report["overall"]["normalised"],
        "overall": report["overall"]["value"],
        "warnings": report.get("warnings", []),
    }
    if subsets:
        entry["subsets"] = {
            name: {"items": sub["items_in"], "metrics": flat_metrics(sub), "overall": sub["overall"]["value"]}
            for name, sub in subsets.items()
        }
        entry["mean_over_subsets"] = mean_over_subsets(entry["subsets"])
    return entry


def mean_over_subsets(subsets: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Per metric (and overall), the unweighted mean of the subsets where it is defined."""
    values: dict[str, list[float]] = defaultdict(list)
    for sub in subsets.values():
        for key, cell in sub["metrics"].items():
            if cell["value"] is not None:
                values[key].append(cell["value"])
        if sub["overall"] is not None:
            values["overall"].append(sub["overall"])
    return {key: float(np.mean(v)) for key, v in values.items()}


def build_suite_report(judge: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A judge's suite report: every benchmark's entry and the paper's aggregate over all of them."""
    normalised = {f"{bench}/{key}": v for bench, entry in entries.items() for key, v in entry["normalised"].items()}
    return {
        "judge": dict(judge),
        "benchmarks": dict(entries),
        "aggregate": {"value": stats.overall(normalised), "normalised": normalised, "definition": AGGREGATE},
        "subset_mean": SUBSET_MEAN,
    }
