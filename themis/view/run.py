"""The run section: each stage as the manifest records it, which outputs are stale, the attempts a
killed or failed stage left, and each stage's rejected rows. Pure: no Ray or torch.

A stage's outputs are stale when a stage it reads from ended ok *after* it did (its inputs were
replaced since), or when such an upstream stage is itself stale. Which stages a stage read is
taken from its manifest entry (``upstream_of``: the pipeline's order, and for evaluate and serve
what their recorded config and inputs say), as ``PipelineConfig.upstream_stages`` decides it at
run time. A failed or killed rerun publishes nothing (``RunStore`` attempts), so it does not make
the stages after it stale; the stage's line says that its latest run did not finish.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from themis.config import STAGES
from themis.view.documents import jsonable, reason_head
from themis.view.tables import Table, snippet

if TYPE_CHECKING:
    from themis.view.data import RunView

# Columns a rejects table shows beside the reason, where the stage's rows have them.
REJECT_COLUMNS = ("scenario", "kind", "order", "instruction", "response", "source", "record")
PREVIOUS = {"responses": "instructions", "judgments": "responses", "dataset": "judgments", "train": "dataset"}


def run_section(view: RunView) -> dict[str, Any]:
    """Each stage as the manifest records it, which outputs are stale, and leftover attempts."""
    stages = view.manifest.get("stages", {})
    stale = stale_stages(stages)
    leftovers = leftover_attempts(view)
    tables = view.tables()
    rows = []
    for name in [*STAGES, *(s for s in stages if s not in STAGES)]:
        entry = stages.get(name)
        if entry is None:
            rows.append({"name": name, "status": "not run"})
            continue
        rows.append(stage_row(view, name, entry, stale.get(name, []), leftovers.get(name, []), tables))
    return {
        "stages": rows,
        "stale": sorted(stale),
        "versions": next((e.get("versions") for e in stages.values() if e.get("versions")), {}),
    }


def stage_row(
    view: RunView, name: str, entry: dict[str, Any], stale: list[str], leftovers: list[str], tables: dict
) -> dict[str, Any]:
    """One stage's line in the run section."""
    counts = entry.get("counts") or {}
    details = entry.get("details") or {}
    usage = details.get("usage") or {}
    notes = []
    if entry.get("status") == "running":
        notes.append(
            "running, or killed while running: its attempt "
            f"{entry.get('attempt', '(not recorded)')} was never published; the outputs shown are "
            "those of its last successful run, if any"
        )
    elif entry.get("status") == "failed":
        notes.append(f"its latest run failed ({entry.get('error', 'no error recorded')}); it published nothing")
    rejects_id = f"rejects-{name}" if f"rejects-{name}" in tables else None
    reasons = view.table(rejects_id).values("reason") if rejects_id else _reasons(counts, details)
    return {
        "name": name,
        "status": entry.get("status", "unknown"),
        "finished_at": entry.get("finished_at"),
        "duration_s": entry.get("duration_s"),
        "counts": {k: v for k, v in counts.items() if isinstance(v, int | float | str) or v is None},
        "parse_rate": counts.get("parse_rate"),
        "rejected_by_reason": reasons,
        "rejects_table": rejects_id,
        "usage": usage,
        "reused_calls": sum(u.get("reused", 0) for u in usage.values()) if usage else counts.get("reused_calls"),
        "cost_usd": _cost(usage),
        "stale": stale,
        "notes": notes,
        "leftover_attempts": leftovers,
        "outputs": entry.get("outputs") or {},
    }


def _reasons(counts: dict[str, Any], details: dict[str, Any]) -> list[dict[str, Any]]:
    """Rejects by reason as the manifest records them (for a stage without a rejects file)."""
    by_reason = details.get("rejected_by_reason") or counts.get("rejected_by_reason") or {}
    return [{"value": k, "count": v} for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])]


def _cost(usage: dict[str, Any]) -> float | None:
    costs = [u["cost_usd"] for u in usage.values() if u.get("cost_usd") is not None]
    return round(sum(costs), 6) if costs else None


def upstream_of(stage: str, entry: dict[str, Any]) -> list[str]:
    """The stages whose outputs ``stage`` read in the run its entry records (as
    ``PipelineConfig.upstream_stages`` decides, from what the entry kept of its config and inputs)."""
    if stage == "evaluate":
        inputs = (entry.get("inputs") or {}).values()
        judges = ((entry.get("config") or {}).get("stage") or {}).get("judges") or []
        reads = ["dataset"] if any(str(i).endswith("dataset/validation.parquet") for i in inputs) else []
        return reads + (["train"] if any(j.get("kind") == "trained" for j in judges) else [])
    if stage == "serve":
        model = ((entry.get("config") or {}).get("stage") or {}).get("model")
        return ["train"] if model == "trained" else []
    return [PREVIOUS[stage]] if stage in PREVIOUS else []


def stale_stages(stages: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Stage -> why its outputs are stale, for every stage whose outputs are."""
    stale: dict[str, list[str]] = {}
    for name in [*STAGES, *(s for s in stages if s not in STAGES)]:  # pipeline order: upstream first
        entry = stages.get(name)
        if entry is None or entry.get("status") != "ok":
            continue
        why = []
        for up in upstream_of(name, entry):
            up_entry = stages.get(up)
            if up_entry is None:
                continue
            if up_entry.get("status") == "ok" and _time(up_entry) > _time(entry):
                why.append(
                    f"{up} ran again ({up_entry.get('finished_at')}) after {name} finished "
                    f"({entry.get('finished_at')}): {name}'s outputs come from {up}'s earlier outputs"
                )
            elif up in stale:
                why.append(f"it was made from {up}'s outputs, which are stale")
        if why:
            stale[name] = why
    return stale


def _time(entry: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime(entry.get("finished_at") or "", "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return datetime.min.replace(tzinfo=datetime.now().astimezone().tzinfo)


def leftover_attempts(view: RunView) -> dict[str, list[str]]:
    """Per stage, attempt folders still in ``_attempts/``: a running stage's, or what a killed or
    failed one left (never published)."""
    selector = pafs.FileSelector(view.store.path("_attempts"), allow_not_found=True)
    out: dict[str, list[str]] = {}
    for info in view.store.fs.get_file_info(selector):
        stage = info.base_name.split("-", 1)[0]
        out.setdefault(stage, []).append(info.base_name)
    return {k: sorted(v) for k, v in out.items()}


def rejects_table(view: RunView, stage: str, rel: str) -> Table:
    """A stage's rejected rows, filterable by the kind of reason (the part before its first colon,
    as the manifest counts them)."""
    table = view.store.read_table(rel)
    columns = [c for c in REJECT_COLUMNS if c in table.column_names]
    shown = {c: table.column(c).to_pylist() for c in ["reason", *columns] if c in table.column_names}
    reasons = [r or "(no reason)" for r in shown.get("reason", [None] * table.num_rows)]
    rows = [
        {"reason": snippet(reasons[n], 100), **{c: _cell(shown[c][n]) for c in columns}} for n in range(table.num_rows)
    ]
    return Table(
        id=f"rejects-{stage}",
        title=f"Rows the {stage} stage rejected",
        columns=[("reason", "reason"), *((c, c) for c in columns)],
        filters=[("reason", "reason")],
        rows=rows,
        attrs={"reason": [reason_head(r) for r in reasons]},
        detail=lambda n: jsonable(table.slice(n, 1).to_pylist()[0]),
        note=f"from {view.store.uri(rel)}",
    )


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return snippet(value)
    if isinstance(value, list):
        return snippet(" | ".join(map(str, value)))
    return value
