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

The sections are built in ``run`` (with stale detection), ``curation`` (judgments, dataset),
``training`` and ``evaluation`` (evaluation, compare); the tables in ``tables``.
"""

from __future__ import annotations

import json
import posixpath
import threading
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from themis.config import StorageConfig
from themis.storage import RunStore, StorageError, build_filesystem
from themis.view.documents import Missing
from themis.view.tables import Table

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
# Errors that mean "this part of the run cannot be read": the section says so and the rest still shows.
READ_ERRORS = (StorageError, OSError, pa.ArrowInvalid, json.JSONDecodeError, KeyError, ValueError, TypeError)


class ViewError(ValueError):
    """A run root that cannot be viewed at all; the message says why and what to do."""


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
        from themis.view import curation, evaluation, run, training

        builders = {
            "run": run.run_section,
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
        from themis.view import curation, evaluation, run

        def listing() -> dict[str, Callable[[], Table]]:
            out: dict[str, Callable[[], Table]] = {}
            for stage, rel in REJECTS.items():
                if self.store.exists(rel):
                    out[f"rejects-{stage}"] = partial(run.rejects_table, self, stage, rel)
            if self.store.exists("judgments/data.parquet") or self.store.exists(REJECTS["judgments"]):
                out["judgments"] = lambda: curation.judgments_table(self)
            if self.store.exists("dataset/train.parquet"):
                out["dataset-records"] = lambda: curation.records_table(self)
            for n, report in enumerate(evaluation.find_reports(self)):
                out[f"eval-{n}"] = partial(evaluation.items_table, self, report)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
