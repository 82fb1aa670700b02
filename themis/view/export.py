"""``themis view RUN_ROOT --out DIR``: the workbench as static files that open from disk, no server.

A page opened from ``file://`` may not ``fetch`` files beside it nor load ES modules (Chromium and
Firefox treat every local file as its own origin), but it may load classic ``<script>`` files. So
each document the server would answer is written as ``data/<key>.js``: one line,
``Themis.receive("<key>", <the document's JSON>);``, which the page loads by adding a script tag
when it needs the document (``static/data.js``). ``config.js`` tells the page it is static.

Tables are pre-chunked (``themis.view.tables``): ``table/<id>/index`` holds every row's filter
values, dictionary-coded (15,000 judgments: about 100 KB), so the page filters in memory by the
same equality the server applies; ``table/<id>/rows/<k>`` holds 1,000 rows' summaries and
``table/<id>/detail/<k>`` 50 whole records, loaded only for the page shown or the row opened.
Comparisons are precomputed for every ordered pair of the first ``COMPARE_CAP`` reports. The
run's plots are copied under ``files/``. DIR may be local or ``s3://`` (through ``themis.storage``),
e.g. beside the run itself; it must be empty or an earlier export, which is replaced. A table that
cannot be read is written as its error, which the page shows where the table would be.
"""

from __future__ import annotations

import itertools
import json
import posixpath
from typing import Any

import pyarrow.fs as pafs

from themis.config import StorageConfig
from themis.storage import build_filesystem
from themis.view.assets import ASSETS, asset, config_js
from themis.view.data import READ_ERRORS, SECTIONS, RunView, ViewError
from themis.view.documents import jsonable
from themis.view.evaluation import COMPARE_CAP, find_reports

MARKER = ".themis-view"  # names a folder this module wrote, so a second export may replace it


def export(view: RunView, out: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Write the page and every document under ``out``; returns counts and the page's path."""
    fs, root = build_filesystem(StorageConfig(root=out, s3_endpoint=s3_endpoint))
    _prepare(fs, root, out)
    writer = _Writer(fs, root)
    for name in ASSETS:
        writer.write(name, asset(name))
    writer.write("config.js", config_js("static"))
    for name in SECTIONS:
        writer.document(f"section/{name}", view.section(name))
    skipped = {}
    for table_id in view.tables():
        try:
            table = view.table(table_id)
        except READ_ERRORS as exc:  # its section already says it cannot be read; the table says why too
            skipped[table_id] = f"cannot read table {table_id}: {str(exc).splitlines()[0]}"
            writer.document(f"table/{table_id}/index", {"error": skipped[table_id]})
            continue
        writer.document(f"table/{table_id}/index", table.index())
        rows, details = table.chunks()
        for k in range(rows):
            writer.document(f"table/{table_id}/rows/{k}", table.rows_chunk(k))
        for k in range(details):
            writer.document(f"table/{table_id}/detail/{k}", table.detail_chunk(k))
    n_reports = min(len(find_reports(view)), COMPARE_CAP)
    for a, b in itertools.permutations(range(n_reports), 2):
        writer.document(f"compare/{a}-{b}", view.compare(a, b))
    for rel in sorted(view.files()):
        writer.write(f"files/{rel}", view.read_bytes(rel))
    writer.write(MARKER, f"a themis view export of {view.uri}\n".encode())
    index = posixpath.join(out.rstrip("/"), "index.html") if "://" in out else posixpath.join(root, "index.html")
    return {"files": writer.files, "bytes": writer.bytes, "index": index, "skipped": skipped}


def _prepare(fs: pafs.FileSystem, root: str, out: str) -> None:
    """Refuse a folder that holds anything but an earlier export; clear an earlier export."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ViewError(f"--out {out} is a file, not a folder")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if entries and fs.get_file_info(posixpath.join(root, MARKER)).type != pafs.FileType.File:
            raise ViewError(f"--out {out} is not empty and holds no earlier export ({MARKER}): pick an empty folder")
        if entries:
            fs.delete_dir_contents(root)
    fs.create_dir(root, recursive=True)


class _Writer:
    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root
        self.files = self.bytes = 0
        self._made: set[str] = set()

    def write(self, rel: str, data: bytes) -> None:
        path = posixpath.join(self.root, rel)
        folder = posixpath.dirname(path)
        if folder not in self._made:
            self.fs.create_dir(folder, recursive=True)
            self._made.add(folder)
        with self.fs.open_output_stream(path) as dest:
            dest.write(data)
        self.files += 1
        self.bytes += len(data)

    def document(self, key: str, body: Any) -> None:
        text = json.dumps(jsonable(body), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        self.write(f"data/{key}.js", f"Themis.receive({json.dumps(key)},{text});\n".encode())
