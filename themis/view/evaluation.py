"""The evaluation and compare sections: each report's metrics with their intervals and plots, an item
table of human vs judge, and two reports side by side. Pure: no Ray or torch.

A report folder (``reports/evaluation/<judge>[/<benchmark>]/``) holds ``report.json``, the judge's
``predictions.parquet`` and ``units.parquet``, and PNG plots, but not the human labels: those are
the benchmark's items. The item table reloads them as the evaluate stage did, from what the
report recorded (its benchmark config): this run's validation split, a user's file, or PandaLM /
HHH from the offline data folder or the download cache. The view never downloads, and shows
the labels only when the reloaded items hash to the report's ``benchmark.sha256`` (else the items
changed since, and the table says so and shows the judge's side alone).

Item rows: one per pointwise item, one per pair and order shown (so a pair's table can be
filtered to one order); ``position`` says whether the judge named the same response in both
orders (position bias, per pair). ``agreement`` compares the verdict the report scored (with
the reference when the item has one: ``report.primary``) with the humans' for the order shown.
The comparison follows ``themis evaluate compare``: a paired bootstrap on both reports'
``units.parquet`` when they were computed on the same items, else whether intervals overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from themis.evaluation import benchmarks, markdown, sources, stats
from themis.evaluation.judges import Prediction
from themis.evaluation.paired import paired_differences
from themis.evaluation.report import AGGREGATED, Settings, group_of, index_predictions, primary
from themis.judge.call import flip_winner, winner_in_ab_order
from themis.view.documents import Missing, jsonable
from themis.view.tables import Table, snippet

if TYPE_CHECKING:
    from themis.view.data import RunView

REPORTS = "reports/evaluation"
FAMILIES = ("pointwise", "pairwise")
COMPARE_CAP = 8  # the static export precomputes every ordered pair of up to this many reports


def find_reports(view: RunView) -> list[dict[str, str]]:
    """Every report of the run: its id (the folder under reports/evaluation) and its files, sorted."""

    def listing() -> list[dict[str, str]]:
        selector = pafs.FileSelector(view.store.path(REPORTS), recursive=True, allow_not_found=True)
        base = view.store.path(REPORTS)
        found = sorted(
            (
                posixpath.relpath(posixpath.dirname(i.path), base)
                for i in view.store.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and i.base_name == "report.json"
            ),
            key=lambda folder: (folder.split("/")[0] != "trained", folder),  # this run's judge first
        )
        return [{"id": f, "folder": posixpath.join(REPORTS, f)} for f in found]

    return view.cached("reports", listing)


def load_report(view: RunView, n: int) -> dict[str, Any]:
    reports = find_reports(view)
    if not 0 <= n < len(reports):
        raise ValueError(f"no evaluation report {n}; this run has {len(reports)}")
    folder = reports[n]["folder"]
    return view.cached(f"report/{n}", lambda: view.store.read_json(f"{folder}/report.json"))


def evaluation_section(view: RunView) -> dict[str, Any]:
    """Each report's headline, metrics with intervals, groups, position rates and plots."""
    from themis.view.curation import _not_there, _stage_warnings

    reports = find_reports(view)
    if not reports:
        raise Missing(_not_there(view, "evaluate", f"{REPORTS}/<judge>/report.json"))
    out = [summarise(view, n, ref) for n, ref in enumerate(reports)]
    suites = [
        {"id": ref["id"], "aggregate": view.store.read_json(f"{ref['folder']}/suite.json").get("aggregate")}
        for ref in reports
        if view.store.exists(f"{ref['folder']}/suite.json")
    ]
    return {"warnings": _stage_warnings(view, "evaluate"), "reports": out, "suites": suites}


def summarise(view: RunView, n: int, ref: dict[str, str]) -> dict[str, Any]:
    """One report as the page shows it."""
    report = load_report(view, n)
    families = {}
    for family in FAMILIES:
        section = report.get(family)
        if not section:
            continue
        families[family] = {
            "metrics": section.get("metrics", {}),
            "counts": section.get("counts", {}),
            "chance": section.get("chance"),
            "position": section.get("position"),
            "groups": section.get("groups", {}),
        }
    return {
        "index": n,
        "id": ref["id"],
        "judge": report.get("judge", {}).get("name", ref["id"]),
        "benchmark": report.get("benchmark", {}),
        "overall": report.get("overall", {}).get("value"),
        "families": families,
        "reference_effect": report.get("reference_effect"),
        "warnings": report.get("warnings", []),
        "policy": report.get("policy", {}),
        "images": view.list_files(ref["folder"], ".png"),
        "table": f"eval-{n}",
    }


# --- the item table ------------------------------------------------------------------------------------


def items_table(view: RunView, ref: dict[str, str]) -> Table:
    """Human vs judge per item (and per order for pairs), filterable by agreement, group, family,
    order and position consistency."""
    n = find_reports(view).index(ref)
    report = load_report(view, n)
    predictions = [Prediction(**r) for r in view.store.read_table(f"{ref['folder']}/predictions.parquet").to_pylist()]
    items, note = load_items(view, report)
    breakdown = report.get("settings", {}).get("breakdown", "scenario")
    rows, details = item_rows(items, predictions, breakdown) if items is not None else judge_rows(predictions)
    return Table(
        id=f"eval-{n}",
        title=f"{ref['id']}: items, human vs judge",
        columns=[
            ("item_id", "item"),
            ("group", "group"),
            ("order", "order"),
            ("human", "human"),
            ("judge", "judge"),
            ("agreement", "agreement"),
            ("position", "position"),
            ("instruction", "instruction"),
        ],
        filters=[
            ("agreement", "agreement"),
            ("group", "group"),
            ("family", "family"),
            ("order", "order"),
            ("position", "position"),
        ],
        rows=[{k: v for k, v in r.items() if k != "family"} for r in rows],
        attrs={k: [r[k] or "—" for r in rows] for k in ("agreement", "group", "family", "order", "position")},
        detail=lambda i: jsonable(details[i]),
        note=note,
    )


def item_rows(items: list[Any], predictions: list[Prediction], breakdown: str) -> tuple[list[dict], list[dict]]:
    """Table rows and whole records, human and judge side by side."""
    preds = index_predictions(predictions)
    rows, details = [], []
    for item in items:
        group = group_of(item, breakdown)
        base = {"item_id": item.item_id, "group": group, "instruction": snippet(item.instruction)}
        record = asdict(item) | {"kind": item.kind, "group": group}
        if item.kind == "pointwise":
            p = primary(item, "", preds)
            judge = None if p is None or p.score is None else p.score
            agreement = "unparsed" if judge is None else "agree" if judge == item.human_score else "disagree"
            rows.append(
                base
                | {"family": "pointwise", "order": "", "human": str(item.human_score), "judge": _shown(judge, p)}
                | {"agreement": agreement, "position": ""}
            )
            details.append(record | {"human_score": item.human_score, "judge": _pred(p)})
            continue
        shown = {o: primary(item, o, preds) for o in ("ab", "ba")}
        position = _position(shown["ab"], shown["ba"])
        for order, p in shown.items():
            if p is None:
                continue
            human = flip_winner(item.human_winner) if order == "ba" else item.human_winner
            winner = p.winner
            agreement = "unparsed" if winner is None else "agree" if winner == human else "disagree"
            rows.append(
                base
                | {"family": "pairwise", "order": order, "human": human, "judge": _shown(winner, p)}
                | {"agreement": agreement, "position": position}
            )
            other = shown["ba" if order == "ab" else "ab"]
            details.append(
                record
                | {"order": order, "human_winner_shown": human, "position": position}
                | {"judge": _pred(p), "other_order": _pred(other)}
            )
    return rows, details


def _shown(verdict: Any, p: Prediction | None) -> str:
    if p is None:
        return "not judged"
    return "unparsed" if verdict is None else str(verdict)


def _pred(p: Prediction | None) -> dict[str, Any] | None:
    return None if p is None else asdict(p)


def _position(ab: Prediction | None, ba: Prediction | None) -> str:
    """Whether the judge picked the same response in both orders: its position bias on this pair."""
    if ab is None or ba is None:
        return "one order"
    if ab.winner is None or ba.winner is None:
        return "unparsed order"
    return "consistent" if ab.winner == winner_in_ab_order(ba.winner, "ba") else "flips with order"


def judge_rows(predictions: list[Prediction]) -> tuple[list[dict], list[dict]]:
    """The judge's side alone, when the items (and so the human labels) cannot be loaded."""
    rows = [
        {
            "item_id": p.item_id,
            "group": "",
            "family": "pointwise" if p.score is not None or not p.order else "pairwise",
            "order": p.order,
            "human": "?",
            "judge": _shown(p.score if p.score is not None else p.winner, p),
            "agreement": "human labels unavailable",
            "position": "",
            "instruction": "",
        }
        for p in predictions
    ]
    return rows, [asdict(p) for p in predictions]


def load_items(view: RunView, report: dict[str, Any]) -> tuple[list[Any] | None, str]:
    """The report's items as the evaluate stage loaded them, and a note; None (with the reason as
    the note) when they cannot be loaded offline or are not the items the report scored."""
    bench = report.get("benchmark", {})
    try:
        items, source = _reload(view, report)
    except (Missing, benchmarks.BenchmarkError, OSError, ValueError, KeyError) as exc:
        return None, f"human labels not shown: {exc}"
    if items_hash(items) != bench.get("sha256"):
        return None, (
            f"human labels not shown: the items at {source} no longer hash to the report's "
            f"benchmark.sha256 ({str(bench.get('sha256'))[:12]}…): they changed after this report was written"
        )
    return items, f"items from {source}, checked against the report's benchmark.sha256"


def _reload(view: RunView, report: dict[str, Any]) -> tuple[list[Any], str]:
    config = report.get("config") or {}
    bench_id = report["benchmark"]["id"]
    configured = config.get("benchmarks") or [config.get("benchmark") or {}]
    bench = next((b for b in configured if report_id(b) == bench_id), None)
    if bench is None:
        raise Missing(f"the report's config names no benchmark {bench_id!r}")
    name = bench.get("name")
    items: list[Any]
    if name == "validation":
        rel = "dataset/validation.parquet"
        items = benchmarks.from_validation(view.store.read_table(rel).to_pylist())
        source = view.store.uri(rel)
    elif name in ("pandalm", "hhh"):
        dataset, file = (
            ("pandalm", "testset-v1.json") if name == "pandalm" else ("hhh_alignment", "hhh_alignment_eval.json")
        )
        root = offline_root(dataset, file, bench.get("data_dir"))
        items = benchmarks.load_pandalm(root) if name == "pandalm" else benchmarks.load_hhh(root)
        source = str(root / dataset / file)
    else:
        recorded_only = all(j.get("kind") == "recorded" for j in config.get("judges", []))
        loaded = benchmarks.load_file(
            bench["path"], bench["kind"], bench.get("columns"), bench.get("values"), not recorded_only
        )
        items, source = loaded.items, bench["path"]
    limit = bench.get("limit")
    return (items[:limit] if limit else items), source


def report_id(bench: dict[str, Any]) -> str:
    """A benchmark config's name in reports (``BenchmarkConfig.report_id``, on its dumped form)."""
    if bench.get("id"):
        return bench["id"]
    if bench.get("name") == "file" and bench.get("path"):
        return Path(bench["path"]).stem
    return bench.get("name", "")


def offline_root(dataset: str, file: str, data_dir: str | None) -> Path:
    """A shipped set's folder if it is on this machine (the data folder, else the download cache),
    checked against its pinned hash; never a download."""
    override = data_dir or os.environ.get(sources.DATA_DIR_ENV)
    if override:
        return sources.data_root(dataset, file, override)
    import pooch

    cached = Path(os.environ.get(sources.CACHE_DIR_ENV) or pooch.os_cache("themis")) / dataset / file
    if not cached.is_file():
        raise Missing(
            f"{dataset}/{file} is not on this machine (the workbench never downloads): "
            f"set {sources.DATA_DIR_ENV} to a folder holding it"
        )
    expected = sources.SOURCES[dataset].files[file][1]
    if hashlib.sha256(cached.read_bytes()).hexdigest() != expected:
        raise Missing(f"{cached} is not the pinned {dataset}/{file}")
    return cached.parents[1]


def items_hash(items: list[Any]) -> str:
    """``themis.stages.evaluate.items_hash`` (that module starts Ray); a test checks they agree."""

    def hashed(item: Any) -> dict[str, Any]:
        out = asdict(item) | {"kind": item.kind}
        if out.get("scale") is None:
            out.pop("scale", None)
        return out

    return hashlib.sha256(json.dumps([hashed(i) for i in items], sort_keys=True).encode()).hexdigest()


# --- two reports side by side ----------------------------------------------------------------------------


def compare_section(view: RunView) -> dict[str, Any]:
    """The reports one can compare, which pairs share their items, and a default pair."""
    reports = find_reports(view)
    listed = []
    for n, ref in enumerate(reports):
        report = load_report(view, n)
        bench = report.get("benchmark", {})
        listed.append(
            {"index": n, "id": ref["id"], "judge": report.get("judge", {}).get("name", ref["id"])}
            | {"benchmark": bench.get("id"), "sha256": bench.get("sha256"), "items": bench.get("items")}
        )
    if len(listed) < 2:
        have = "no evaluation report" if not listed else f"one evaluation report ({listed[0]['id']})"
        raise Missing(
            f"this run has {have}: a comparison needs two. Add judges to evaluate.judges (e.g. a recorded "
            "or engine judge beside the trained one), or compare across runs: themis evaluate compare A B"
        )
    return {"reports": listed, "default": [0, 1], "precomputed": min(len(listed), COMPARE_CAP)}


def compare(view: RunView, a: int, b: int) -> dict[str, Any]:
    """Reports ``a`` and ``b``: each metric of both with intervals, the difference and whether it is
    significant, the relative gap, and ``themis evaluate compare``'s Markdown."""
    if a == b:
        raise ValueError("pick two different reports")
    refs = find_reports(view)
    ra, rb = load_report(view, a), load_report(view, b)
    names = [r.get("judge", {}).get("name", ref["id"]) for r, ref in ((ra, refs[a]), (rb, refs[b]))]
    if names[0] == names[1]:
        names = [refs[a]["id"], refs[b]["id"]]
    same = ra["benchmark"]["sha256"] == rb["benchmark"]["sha256"]
    paired = _paired(view, refs[a]["folder"], refs[b]["folder"], ra) if same else None
    rows, ours, base = [], {}, {}
    for family in FAMILIES:
        for metric, cell_a in ra.get(family, {}).get("metrics", {}).items():
            cell_b = rb.get(family, {}).get("metrics", {}).get(metric)
            if cell_b is None:
                continue
            diff = None if cell_a["value"] is None or cell_b["value"] is None else cell_a["value"] - cell_b["value"]
            test = (paired or {}).get(f"{family}/{metric}")
            if paired is not None:
                significant = bool(test and test["ci"] and not test["ci"][0] <= 0 <= test["ci"][1])
            else:
                significant = _separated(cell_a["ci"], cell_b["ci"])
            rows.append(
                {"metric": f"{family}/{metric}", "a": cell_a, "b": cell_b, "difference": diff}
                | {"paired_ci": test["ci"] if test else None, "significant": significant}
            )
            if metric in AGGREGATED[family] and diff is not None:
                ours[f"{family}/{metric}"], base[f"{family}/{metric}"] = cell_a["value"], cell_b["value"]
    return {
        "a": {"index": a, "id": refs[a]["id"], "name": names[0], "overall": ra.get("overall", {}).get("value")},
        "b": {"index": b, "id": refs[b]["id"], "name": names[1], "overall": rb.get("overall", {}).get("value")},
        "same_items": same,
        "test": "paired bootstrap on the same items" if paired is not None else markdown.NON_OVERLAP,
        "rows": rows,
        "relative_gap": stats.relative_gap(ours, base) if ours else None,
        "markdown": markdown.compare_reports(ra, rb, names[0], names[1], paired=paired),
    }


def _paired(view: RunView, folder_a: str, folder_b: str, report_a: dict[str, Any]) -> dict | None:
    units = [f"{f}/units.parquet" for f in (folder_a, folder_b)]
    if not all(view.store.exists(u) for u in units):
        return None
    known = {f.name for f in fields(Settings)}
    settings = Settings(**{k: v for k, v in report_a.get("settings", {}).items() if k in known})
    ua, ub = (view.store.read_table(u).to_pydict() for u in units)
    return paired_differences(ua, ub, settings)


def _separated(ci_a: list[float] | None, ci_b: list[float] | None) -> bool:
    """The two intervals do not overlap (``markdown``'s conservative test)."""
    return bool(ci_a and ci_b and (ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0]))
