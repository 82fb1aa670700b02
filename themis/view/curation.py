"""The judgments and dataset sections: what the teacher said and what the filters kept. Pure: no Ray
or torch.

The judgments table holds every teacher judgment the stage wrote: the parsed ones
(``judgments/data.parquet``) and, after them, the rejected ones (``rejects/judgments.parquet``),
so a parse failure is one filter away. Per row it is filterable by scenario, kind, order, parse
status (``parsed``, else the kind of reject reason: ``unparsable``, ``engine error``, ...) and,
for pairwise judgments, whether the pair's two orders agree: both parsed and naming the same
response once the ``ba`` verdict is put back in ``ab`` order (``judging.winner_in_ab_order``,
the rule the dataset stage's dual-order filter applies).

Only the columns the table shows are read for it; a row's whole record (the prompt, both
responses, the rationale) is read when first asked for.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from themis.curation.filters import DISAGREE
from themis.judge.call import winner_in_ab_order
from themis.view.documents import Missing, jsonable, reason_head
from themis.view.tables import SNIPPET, Once, Rows, Table, snippet

if TYPE_CHECKING:
    from themis.view.data import RunView

JUDGMENTS = "judgments/data.parquet"
JUDGMENT_REJECTS = "rejects/judgments.parquet"
SHOWN = ["judgment_id", "kind", "order", "pair_id", "scenario", "instruction", "score", "winner"]
NOT_A_PAIR = "not a pair"
AGREE, DISAGREES, ONE_ORDER = "orders agree", "orders disagree", "one order missing"
SCORED_KINDS = ("single", "reference")


def _columns(view: RunView, rel: str, extra: list[str]) -> dict[str, list]:
    if not view.store.exists(rel):
        return {c: [] for c in SHOWN + extra}
    table = view.read_columns(rel, SHOWN + extra)
    # Only a table cell's worth of each instruction is kept: the whole text is in the record.
    cut = pc.utf8_slice_codeunits(table.column("instruction"), 0, 2 * SNIPPET)
    return {c: (cut if c == "instruction" else table.column(c)).to_pylist() for c in table.column_names}


def judgments_table(view: RunView) -> Table:
    """Every teacher judgment, parsed first, then rejected, with the filters of the module doc."""
    parsed = _columns(view, JUDGMENTS, [])
    rejected = _columns(view, JUDGMENT_REJECTS, ["reason"])
    n_parsed = len(parsed["kind"])
    cols = {c: parsed[c] + rejected[c] for c in SHOWN}
    status = ["parsed"] * n_parsed + [reason_head(r or "(no reason)") for r in rejected["reason"]]
    orders, partner = pair_agreement(cols, status)
    rows = Rows(
        {
            "scenario": cols["scenario"],
            "kind": cols["kind"],
            "order": [o or "" for o in cols["order"]],
            "verdict": [verdict(s, w) for s, w in zip(cols["score"], cols["winner"])],
            "status": status,
            "orders": [o if o != NOT_A_PAIR else "" for o in orders],
            "instruction": cols["instruction"],
        },
        shorten=["instruction"],
    )
    verdicts = rows.columns["verdict"]
    full = {rel: Once(partial(view.store.read_table, rel)) for rel in (JUDGMENTS, JUDGMENT_REJECTS)}

    def detail(n: int) -> dict[str, Any]:
        source, i = (JUDGMENTS, n) if n < n_parsed else (JUDGMENT_REJECTS, n - n_parsed)
        record = jsonable(full[source]().slice(i, 1).to_pylist()[0])
        other = partner.get(n)
        pair = None if other is None else {"row": other, "order": cols["order"][other], "verdict": verdicts[other]}
        return record | {
            "status": status[n],
            "orders": orders[n],
            "other_order": pair,
            "source": view.store.uri(source),
        }

    return Table(
        id="judgments",
        title="Teacher judgments",
        columns=[
            ("scenario", "scenario"),
            ("kind", "kind"),
            ("order", "order"),
            ("verdict", "verdict"),
            ("status", "parse status"),
            ("orders", "pair orders"),
            ("instruction", "instruction"),
        ],
        filters=[("scenario", "scenario"), ("kind", "kind"), ("status", "parse status"), ("orders", "pair orders")],
        rows=rows,
        attrs={
            "scenario": cols["scenario"],
            "kind": cols["kind"],
            "status": status,
            "orders": orders,
        },
        detail=detail,
        note=f"{n_parsed} parsed ({view.store.uri(JUDGMENTS)}), then {len(status) - n_parsed} rejected "
        f"({view.store.uri(JUDGMENT_REJECTS)})",
        warm=lambda: [load() for rel, load in full.items() if view.store.exists(rel)],
    )


def verdict(score: int | None, winner: str | None) -> str:
    """A judgment's verdict as the table shows it: its score, its winner, or a dash."""
    if score is not None:
        return str(score)
    return winner or "—"


def pair_agreement(cols: dict[str, list], status: list[str]) -> tuple[list[str], dict[int, int]]:
    """Per row, whether its pair's two orders agree (``NOT_A_PAIR`` for other kinds), and each
    pairwise row's partner row (the same pair in the other order)."""
    by_pair: dict[str, dict[str, int]] = defaultdict(dict)
    for n, (kind, pair, order) in enumerate(zip(cols["kind"], cols["pair_id"], cols["order"])):
        if kind == "pairwise" and pair:
            by_pair[pair][order] = n
    out = [NOT_A_PAIR] * len(status)
    partner: dict[int, int] = {}
    for rows in by_pair.values():
        ab, ba = rows.get("ab"), rows.get("ba")
        if ab is not None and ba is not None:
            partner[ab], partner[ba] = ba, ab
        if ab is None or ba is None or not status[ab] == status[ba] == "parsed":
            state = ONE_ORDER
        elif cols["winner"][ab] == winner_in_ab_order(cols["winner"][ba], "ba"):
            state = AGREE
        else:
            state = DISAGREES
        for n in rows.values():
            out[n] = state
    return out, partner


def judgments_section(view: RunView) -> dict[str, Any]:
    """Counts, parse rates, per-scenario score and winner distributions, and the table."""
    entry = view.stage("judgments")
    if "judgments" not in view.tables():
        raise Missing(_not_there(view, "judgments", JUDGMENTS))
    table = view.table("judgments")
    kinds, scenarios, verdicts = (np.asarray(table.attrs[k], dtype=object) for k in ("kind", "scenario", "status"))
    scores: dict[str, Counter] = defaultdict(Counter)
    winners: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    columns = table.rows.columns if isinstance(table.rows, Rows) else {}
    shown = zip(*(columns[k] for k in ("status", "kind", "scenario", "order", "verdict")))
    for status, kind, scenario, order, given in shown:
        if status != "parsed":
            continue
        if kind in SCORED_KINDS:
            scores[scenario][given] += 1
        elif kind == "pairwise":
            winners[scenario][order or "ab"][given] += 1
    counts = (entry or {}).get("counts", {})
    return {
        "warnings": _stage_warnings(view, "judgments"),
        "total": len(table.rows),
        "by_status": table.values("status"),
        "by_kind": table.values("kind"),
        "by_scenario": table.values("scenario"),
        "orders": [v for v in table.values("orders") if v["value"] != NOT_A_PAIR],
        "parse_rate": counts.get("parse_rate"),
        "scores": {s: dict(sorted(c.items())) for s, c in sorted(scores.items())},
        "winners": {s: {o: dict(c) for o, c in sorted(w.items())} for s, w in sorted(winners.items())},
        "self_consistency": ((entry or {}).get("details") or {}).get("self_consistency"),
        "parsed": int((verdicts == "parsed").sum()),
        "kinds": sorted(set(kinds.tolist())),
        "scenarios": sorted(set(scenarios.tolist())),
        "tables": ["judgments"],
    }


def _not_there(view: RunView, stage: str, rel: str) -> str:
    """Why a stage's outputs are absent, from its manifest entry."""
    entry = view.stage(stage)
    if entry is None:
        return f"the {stage} stage has not run in this run root (no entry in manifest.json): themis {stage} CONFIG"
    status = entry.get("status")
    if status == "running":
        return (
            f"the {stage} stage is running, or was killed while running, and has never finished here: its "
            f"attempt {entry.get('attempt', '(not recorded)')} holds unpublished outputs; no {view.store.uri(rel)}"
        )
    if status == "failed":
        return f"the {stage} stage failed ({entry.get('error', 'no error recorded')}) and has no published outputs"
    return f"not found: {view.store.uri(rel)} (the manifest says {stage} ended {status!r})"


def _stage_warnings(view: RunView, stage: str) -> list[str]:
    """What the reader should know before trusting a stage's outputs: stale, or a newer run unfinished."""
    from themis.view.run import stale_stages

    entry = view.stage(stage) or {}
    out = [f"stale: {why}" for why in stale_stages(view.manifest.get("stages", {})).get(stage, [])]
    if entry.get("status") in ("running", "failed"):
        out.append(
            f"{stage}'s latest run is {entry['status']!r} and published nothing: what is shown comes from "
            "its last successful run"
        )
    return out


# --- the dataset -------------------------------------------------------------------------------------

SPLITS = {"train": "dataset/train.parquet", "validation": "dataset/validation.parquet"}
RECORD_COLUMNS = ["example_id", "kind", "order", "scenario", "score", "winner", "instruction", "augmentation"]


def dataset_section(view: RunView) -> dict[str, Any]:
    """The filter report (steps, reasons, kept counts), the rejects, the IFD distribution per scenario
    and the records (augmented ones marked)."""
    if not view.store.exists("dataset/filter_report.json"):
        raise Missing(_not_there(view, "dataset", "dataset/filter_report.json"))
    report = view.store.read_json("dataset/filter_report.json")
    judgments_rejects = view.table("rejects-judgments").values("reason") if "rejects-judgments" in view.tables() else []
    out: dict[str, Any] = {
        "warnings": _stage_warnings(view, "dataset"),
        "report": {k: v for k, v in report.items() if k not in ("selection", "usage")},
        "steps": report.get("steps", []),
        "rejected_by_reason": sorted(
            ({"value": k, "count": v} for k, v in report.get("rejected_by_reason", {}).items()),
            key=lambda r: -r["count"],
        ),
        "before_dataset": judgments_rejects,
        "self_consistency_rejects": sum(r["count"] for r in judgments_rejects if r["value"] == reason_head(DISAGREE)),
        "selection": _selection(report.get("selection")),
        "augmentation": report.get("augmentation"),
        "ifd": ifd_histograms(view),
        "images": [rel for rel in ("dataset/ifd_by_scenario.png",) if view.store.exists(rel)],
        "tables": [t for t in ("rejects-dataset", "dataset-records") if t in view.tables()],
    }
    if "dataset-records" in view.tables():
        out["records_by_augmentation"] = view.table("dataset-records").values("augmentation")
    return out


def _selection(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    if not selection:
        return None
    keep = ("strategy", "target", "outlier_z", "ifd_by_scenario", "ifd_selected_by_scenario", "scoring", "mix")
    return {k: selection[k] for k in keep if k in selection}


def ifd_histograms(view: RunView, bins: int = 20) -> dict[str, Any] | None:
    """Per scenario, a histogram of IFD (kept and dropped by selection) on shared bin edges."""
    rel = "dataset/ifd.parquet"
    if not view.store.exists(rel):
        return None
    table = view.read_columns(rel, ["scenario", "ifd", "kept"])
    scenario, ifd, kept = (table.column(c).to_pylist() for c in ("scenario", "ifd", "kept"))
    scored = [(s, v, k) for s, v, k in zip(scenario, ifd, kept) if v is not None and np.isfinite(v)]
    if not scored:
        return {"edges": [], "scenarios": {}, "unscored": len(ifd)}
    values = np.array([v for _, v, _ in scored])
    edges = np.histogram_bin_edges(values, bins=bins)
    out: dict[str, dict[str, list[int]]] = {}
    for name in sorted({s for s, _, _ in scored}):
        for state in ("kept", "dropped"):
            mine = [v for s, v, k in scored if s == name and bool(k) == (state == "kept")]
            out.setdefault(name, {})[state] = np.histogram(mine, bins=edges)[0].tolist()
    return {"edges": [round(float(e), 4) for e in edges], "scenarios": out, "unscored": len(ifd) - len(scored)}


def records_table(view: RunView) -> Table:
    """The SFT records of both splits, filterable by split, scenario, kind and augmentation (a
    teacher judgment, or how it was augmented)."""
    parts = {s: view.read_columns(rel, RECORD_COLUMNS) for s, rel in SPLITS.items() if view.store.exists(rel)}
    cols: dict[str, list] = {c: [] for c in RECORD_COLUMNS}
    split: list[str] = []
    for name, table in parts.items():
        for c in RECORD_COLUMNS:
            cols[c] += table.column(c).to_pylist()
        split += [name] * table.num_rows
    augmentation = [a or "teacher judgment" for a in cols["augmentation"]]
    rows = [
        {
            "split": split[n],
            "scenario": cols["scenario"][n],
            "kind": cols["kind"][n],
            "verdict": verdict(cols["score"][n], cols["winner"][n]),
            "augmentation": augmentation[n],
            "instruction": snippet(cols["instruction"][n]),
        }
        for n in range(len(split))
    ]
    starts = {name: sum(t.num_rows for t in list(parts.values())[:i]) for i, name in enumerate(parts)}

    full = {name: Once(partial(view.store.read_table, SPLITS[name])) for name in parts}

    def detail(n: int) -> dict[str, Any]:
        name = split[n]
        return jsonable(full[name]().slice(n - starts[name], 1).to_pylist()[0]) | {"split": name}

    return Table(
        id="dataset-records",
        title="Training records (both splits; augmented ones marked)",
        columns=[(k, k) for k in ("split", "scenario", "kind", "verdict", "augmentation", "instruction")],
        filters=[("split", "split"), ("augmentation", "augmentation"), ("scenario", "scenario"), ("kind", "kind")],
        rows=rows,
        attrs={"split": split, "augmentation": augmentation, "scenario": cols["scenario"], "kind": cols["kind"]},
        detail=detail,
        note="validation is never augmented: it stays the teacher's own judgments",
        warm=lambda: [load() for load in full.values()],
    )
