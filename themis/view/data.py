"""The workbench's data layer: one run root in, JSON-able documents out. Pure: no Ray or torch.

``open_run(RUN_ROOT)`` checks that the folder (local or ``s3://``, through ``themis.storage``) is a
run root, i.e. holds a ``manifest.json``, and returns a ``RunView``. The view never writes:
``RunStore``'s constructor makes the run's folder (on S3 it writes folder markers even where the
run exists), so the view builds its store without it (``read_only_store``).

Documents, by key (the server answers ``/api/<key>``, the static export writes ``data/<key>.js``):

- ``section/<name>`` for the six sections: ``run`` (each stage as the manifest records it, with
  stale detection), ``judgments``, ``dataset``, ``training``, ``evaluation``, ``compare``. A section
  that cannot be shown (its stage never ran, a file is missing or unreadable, the latest attempt
  was killed before it published) is ``{"status": "missing", "reason": ...}``, never an exception:
  the page shows the reason where the section would be.
- tables (``themis.view.tables``): every judgment, each stage's rejects, the dataset's records, each
  evaluation report's items; paged and filtered here for the server, pre-chunked by the export.
- ``compare/<a>-<b>``: two evaluation reports side by side, as ``themis evaluate compare`` does.

Stale outputs: a stage's outputs are stale when a stage it reads from ended ok *after* it did (its
inputs were replaced since), or when such an upstream stage is itself stale. A failed or killed
rerun of an upstream stage publishes nothing (``RunStore`` attempts), so it does not make the
stages after it stale; the page says that its latest run did not finish.
"""

from __future__ import annotations

import json
import math
import posixpath
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from themis.config import STAGES, StorageConfig
from themis.storage import RunStore, StorageError, build_filesystem
from themis.view.tables import Table, snippet

SECTIONS = {
    "run": "Run",
    "judgments": "Judgments",
    "dataset": "Dataset",
    "training": "Training",
    "evaluation": "Evaluation",
    "compare": "Compare",
}
REJECTS = {
    "instructions": "rejects/instructions.parquet",
    "responses": "rejects/responses.parquet",
    "judgments": "rejects/judgments.parquet",
    "dataset": "rejects/dataset.parquet",
    "train": "rejects/train/examples.parquet",
    "evaluate": "rejects/evaluate",
}
# Columns a rejects table shows beside the reason, where the stage's rows have them.
REJECT_COLUMNS = ("scenario", "kind", "order", "instruction", "response", "source", "record")
PREVIOUS = {"responses": "instructions", "judgments": "responses", "dataset": "judgments", "train": "dataset"}
# Errors that mean "this part of the run cannot be read": the section says so and the rest still shows.
READ_ERRORS = (StorageError, OSError, pa.ArrowInvalid, json.JSONDecodeError, KeyError, ValueError, TypeError)


class ViewError(ValueError):
    """A run root that cannot be viewed at all; the message says why and what to do."""


class Missing(Exception):
    """A section (or part of one) that this run root cannot show; the message says why."""


def read_only_store(storage: StorageConfig, run_name: str) -> RunStore:
    """A ``RunStore`` for reading an existing run, made without its constructor, which creates the
    run's folder (the same construction ``RunStore.begin_attempt`` uses)."""
    store = object.__new__(RunStore)
    fs, base = build_filesystem(storage)
    root = posixpath.join(base, run_name)
    is_s3 = storage.root.startswith("s3://")
    store.__dict__.update(
        storage=storage,
        run_name=run_name,
        fs=fs,
        root=root,
        uri_root=storage.root.rstrip("/") + "/" + run_name if is_s3 else root,
        write_root=root,
        written=[],
    )
    return store


def split_run_root(run_root: str) -> tuple[str, str]:
    """(storage root, run name) of a run root: its parent folder and its own name."""
    text = run_root.rstrip("/")
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.path.strip("/"):
            raise ViewError(
                f"{run_root} is a bucket, not a run root: name the run's folder, e.g. s3://bucket/runs/demo"
            )
        parent, name = posixpath.split(text)
        return parent, name
    if parsed.scheme not in ("", "file"):
        raise ViewError(f"unsupported run root {run_root!r}: use a local folder or s3://bucket/prefix/run")
    fs, path = build_filesystem(StorageConfig(root=text))
    return posixpath.dirname(path), posixpath.basename(path)


def open_run(run_root: str, s3_endpoint: str | None = None, s3_region: str = "us-east-1") -> RunView:
    """The run at ``run_root``; ``ViewError`` when it does not exist or is not a run root."""
    parent, name = split_run_root(run_root)
    storage = StorageConfig(root=parent, s3_endpoint=s3_endpoint, s3_region=s3_region)
    try:
        store = read_only_store(storage, name)
        kind = store.fs.get_file_info(store.root).type
    except (OSError, StorageError) as exc:
        raise ViewError(f"cannot read {run_root}: {str(exc).splitlines()[0]}") from None
    if kind == pafs.FileType.NotFound:
        raise ViewError(f"not found: {run_root}")
    if kind != pafs.FileType.Directory or not store.exists("manifest.json"):
        raise ViewError(f"not a run root: {run_root} has no manifest.json{_hint(store)}")
    return RunView(store)


def _hint(store: RunStore) -> str:
    """Run roots just inside a folder that is not one (the user named the storage root)."""
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(store.root, allow_not_found=True))
    except OSError:
        return ""
    runs = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory
        and store.fs.get_file_info(posixpath.join(i.path, "manifest.json")).type == pafs.FileType.File
    )
    if not runs:
        return " (a run root is <run.storage.root>/<run.name>, e.g. runs/demo, made by `themis pipeline CONFIG`)"
    shown = ", ".join(posixpath.join(store.uri_root, r) for r in runs[:5])
    return f"; it holds run roots: {shown}{' ...' if len(runs) > 5 else ''}"


class RunView:
    """Every document of one run root, computed when first asked for and kept until the run's
    manifest changes (a stage that finishes while the server runs shows on the next reload)."""

    def __init__(self, store: RunStore):
        self.store = store
        self.uri = store.uri_root
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()  # one build at a time: the page asks for a table twice at once
        self._stamp = self._manifest_stamp()

    def refresh(self) -> None:
        """Forget what was computed if manifest.json changed since."""
        stamp = self._manifest_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._cache.clear()
                self._stamp = stamp

    def _manifest_stamp(self) -> tuple:
        info = self.store.fs.get_file_info(self.store.path("manifest.json"))
        return (info.size, info.mtime_ns)

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per key (until the manifest changes)."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    @property
    def manifest(self) -> dict[str, Any]:
        return self.cached("manifest", self.store.manifest)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest entry, or None if it never ran here."""
        return self.manifest.get("stages", {}).get(name)

    # --- documents ---------------------------------------------------------------------------------

    def section(self, name: str) -> dict[str, Any]:
        """One section's document; a section that cannot be shown says why (``status: missing``)."""
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
        return self.cached(f"section/{name}", lambda: self._build_section(name))

    def _build_section(self, name: str) -> dict[str, Any]:
        from themis.view import curation, evaluation, training

        builders = {
            "run": run_section,
            "judgments": curation.judgments_section,
            "dataset": curation.dataset_section,
            "training": training.training_section,
            "evaluation": evaluation.evaluation_section,
            "compare": evaluation.compare_section,
        }
        head = {"name": name, "title": SECTIONS[name], "run_root": self.uri}
        try:
            return head | {"status": "ok", "warnings": []} | builders[name](self)
        except Missing as exc:
            return head | {"status": "missing", "reason": str(exc)}
        except READ_ERRORS as exc:
            return head | {"status": "missing", "reason": f"cannot read this run's {name}: {_first_line(exc)}"}

    def table(self, table_id: str) -> Table:
        """A table by id; ValueError names the tables this run has."""
        tables = self.tables()
        if table_id not in tables:
            raise ValueError(f"no table {table_id!r} in this run; tables: {', '.join(sorted(tables)) or 'none'}")
        return self.cached(f"table/{table_id}", tables[table_id])

    def tables(self) -> dict[str, Callable[[], Table]]:
        """Every table this run can show, by id, as builders (a table is read when first asked for)."""
        from themis.view import curation, evaluation

        def listing() -> dict[str, Callable[[], Table]]:
            out: dict[str, Callable[[], Table]] = {}
            for stage, rel in REJECTS.items():
                if self.store.exists(rel):
                    out[f"rejects-{stage}"] = lambda stage=stage, rel=rel: rejects_table(self, stage, rel)
            if self.store.exists("judgments/data.parquet") or self.store.exists(REJECTS["judgments"]):
                out["judgments"] = lambda: curation.judgments_table(self)
            if self.store.exists("dataset/train.parquet"):
                out["dataset-records"] = lambda: curation.records_table(self)
            for n, report in enumerate(evaluation.find_reports(self)):
                out[f"eval-{n}"] = lambda report=report: evaluation.items_table(self, report)
            return out

        return self.cached("tables", listing)

    def compare(self, a: int, b: int) -> dict[str, Any]:
        """Evaluation reports ``a`` and ``b`` (indexes in the evaluation section) side by side."""
        from themis.view import evaluation

        return self.cached(f"compare/{a}-{b}", lambda: evaluation.compare(self, a, b))

    def files(self) -> set[str]:
        """Run files the page may show (plots), relative to the run root: nothing else is served."""
        out: set[str] = set()
        for name in SECTIONS:
            section = self.section(name)
            out.update(section.get("images", []))
            for report in section.get("reports", []):
                out.update(report.get("images", []))
        return out

    def read_bytes(self, rel: str) -> bytes:
        """One of ``files()``; ValueError for anything else."""
        if rel not in self.files():
            raise ValueError(f"not a file the workbench shows: {rel}")
        with self.store.fs.open_input_stream(self.store.path(rel)) as src:
            return src.read()

    def read_columns(self, rel: str, columns: list[str]) -> pa.Table:
        """Some columns of a Parquet file or folder of the run (the others are never read); a column
        the file lacks is an error naming it."""
        if not self.store.exists(rel):
            raise StorageError(f"not found: {self.store.uri(rel)}")
        dataset = pads.dataset(self.store.read_path(rel), filesystem=self.store.fs, format="parquet")
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise ValueError(f"{self.store.uri(rel)} has no column {', '.join(missing)}")
        return dataset.to_table(columns=columns)

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Files directly in a folder of the run (relative to the run root), sorted; [] if absent."""
        selector = pafs.FileSelector(self.store.path(rel), allow_not_found=True)
        infos = self.store.fs.get_file_info(selector)
        return sorted(
            posixpath.join(rel, i.base_name)
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
        )


# --- the run ---------------------------------------------------------------------------------------


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


def reason_head(reason: str) -> str:
    """A reject reason's kind, without the row's own detail (as ``generation`` counts them)."""
    return reason.split(":", 1)[0]


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return snippet(value)
    if isinstance(value, list):
        return snippet(" | ".join(map(str, value)))
    return value


def jsonable(value: Any) -> Any:
    """A value JSON can carry: NaN and infinities become null, bytes their size, the rest as is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
