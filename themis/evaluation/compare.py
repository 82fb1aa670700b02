"""Two evaluation reports (or two suite reports) side by side, as Markdown.

Reports on the same items (equal benchmark hashes, with ``units.parquet`` beside them) are compared
by a paired bootstrap; otherwise by whether their intervals overlap; the text says which test it
used. ``themis evaluate compare`` prints it and the ablation writes it per arm. Pure apart from
storage reads: no Ray or torch.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from themis.config import StorageConfig
from themis.evaluation import markdown
from themis.evaluation.paired import paired_differences
from themis.evaluation.report import Settings
from themis.storage import StorageError, build_filesystem, read_text_at


def compare_text(a: str, b: str, storage: StorageConfig, names: tuple[str, str] | None = None) -> str:
    """The Markdown comparison of two reports (or two suites) at these paths; ``names`` label the
    two sides (default: the judges' names, which an ablation's arms share)."""
    (path_a, report_a), (path_b, report_b) = (read_report(p, storage) for p in (a, b))
    names = names or (report_a["judge"]["name"], report_b["judge"]["name"])
    if "aggregate" in report_a or "aggregate" in report_b:
        if not ("aggregate" in report_a and "aggregate" in report_b):
            raise ValueError("compare two reports or two suite reports, not one of each")
        return markdown.compare_suites(
            report_a, report_b, *names, paired=_paired_suite(path_a, path_b, report_a, report_b, storage)
        )
    paired = None
    if report_a["benchmark"]["sha256"] == report_b["benchmark"]["sha256"]:
        paired = _paired(path_a, path_b, report_a, storage)
    return markdown.compare_reports(report_a, report_b, *names, paired=paired)


def read_report(path: str, storage: StorageConfig) -> tuple[str, dict]:
    """A report's path and contents: the file itself, or a folder's report.json, else its suite.json."""
    if path.endswith(".json"):
        return path, json.loads(read_text_at(path, storage))
    folder = path.rstrip("/")
    try:
        return f"{folder}/report.json", json.loads(read_text_at(f"{folder}/report.json", storage))
    except StorageError:
        try:
            return f"{folder}/suite.json", json.loads(read_text_at(f"{folder}/suite.json", storage))
        except StorageError:
            raise StorageError(f"not found: {folder}/report.json (nor suite.json)") from None


def _paired(path_a: str, path_b: str, report_a: dict, storage: StorageConfig) -> dict | None:
    """Paired bootstrap differences from both reports' units.parquet; None if either is missing."""
    try:
        units_a, units_b = (_read_units(p.rsplit("/", 1)[0] + "/units.parquet", storage) for p in (path_a, path_b))
    except StorageError:
        return None
    return paired_differences(units_a, units_b, Settings(**report_a["settings"]))


def _paired_suite(path_a: str, path_b: str, a: dict, b: dict, storage: StorageConfig) -> dict[str, dict]:
    """Per shared benchmark with the same items in both suites, paired bootstrap differences."""
    out = {}
    for bench, entry_a in a["benchmarks"].items():
        entry_b = b["benchmarks"].get(bench)
        if entry_b is None or entry_a["benchmark"]["sha256"] != entry_b["benchmark"]["sha256"]:
            continue
        report_a, report_b = (
            _join(p.rsplit("/", 1)[0], e["folder"]) + "/report.json" for p, e in ((path_a, entry_a), (path_b, entry_b))
        )
        paired = _paired(report_a, report_b, {"settings": entry_a["settings"]}, storage)
        if paired is not None:
            out[bench] = paired
    return out


def _join(folder: str, sub: str) -> str:
    return f"{folder}/{sub}" if sub else folder


def _read_units(uri: str, storage: StorageConfig) -> dict[str, list]:
    fs, path = build_filesystem(storage.model_copy(update={"root": uri}))
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise StorageError(f"not found: {uri}")
    return pq.read_table(path, filesystem=fs).to_pydict()
