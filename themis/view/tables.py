"""Row tables of the workbench: filtered and paged on the server, or pre-chunked for the static page.
Pure: no Ray or torch.

A ``Table`` holds, per row, a short summary (what a table row on the page shows), the values it can
be filtered on (``attrs``: one string per row and filter, e.g. scenario, kind, parse status), and a
way to fetch the whole record (``detail``). Only one page of summaries ever reaches the page's DOM.

The meaning of every filter (which pairs disagree, what counts as a parse failure) is computed here
in Python, once per row; filtering is then equality on those strings. That is what lets the static
export filter in the browser without a second implementation of the rules: it ships the same
``attrs`` (dictionary-coded) and the page matches codes, as ``Table.matching`` does here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAGE = 50  # rows per page, on the server and in the static page
ROWS_CHUNK = 1000  # summaries per static chunk file
DETAIL_CHUNK = 50  # whole records per static chunk file (they carry prompts and rationales)
SNIPPET = 140  # characters of a long text shown in a table cell


class Once:
    """A value read on first use, once, whichever thread asks first (a request, or a prefetch)."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._lock, self._value = load, threading.Lock(), None

    def __call__(self) -> Any:
        with self._lock:
            if self._value is None:
                self._value = self._load()
            return self._value


def snippet(text: str | None, most: int = SNIPPET) -> str:
    """A long text cut to one table cell: one line, at most ``most`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= most else flat[: most - 1] + "…"


class Rows(Sequence):
    """A table's summaries kept as columns (one list per key): a row's dict is made only when the
    row is shown, and the keys in ``shorten`` are cut to one table cell then (15,000 judgments:
    about 0.2 s less per table than a list of dicts)."""

    def __init__(self, columns: dict[str, Sequence[Any]], shorten: Iterable[str] = ()):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal lengths: { {k: len(v) for k, v in columns.items()} }")
        self.columns, self.shorten, self._n = columns, set(shorten), lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(self._n))]
        return {k: snippet(v[n]) if k in self.shorten else v[n] for k, v in self.columns.items()}


@dataclass
class Table:
    """Rows to page through: summaries for the table, attributes to filter on, records on demand."""

    id: str  # file-safe: it names the static chunk files
    title: str
    columns: list[tuple[str, str]]  # (key in a summary, column label)
    filters: list[tuple[str, str]]  # (attribute, label)
    rows: Sequence[dict[str, Any]]  # a list, or ``Rows``
    attrs: dict[str, Sequence[str]]
    detail: Callable[[int], dict[str, Any]]
    note: str = ""
    warm: Callable[[], Any] | None = None  # reads what ``detail`` needs, ahead of the first click
    _codes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _warming: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        for key, _ in self.filters:
            values = self.attrs[key]
            if len(values) != len(self.rows):
                raise ValueError(f"table {self.id}: {len(values)} values of {key!r} for {len(self.rows)} rows")
            self._codes[key] = np.asarray(values, dtype=object)

    def values(self, key: str) -> list[dict[str, Any]]:
        """A filter's values with their row counts, most common first (ties by name)."""
        counts = Counter(self.attrs[key])
        return [{"value": v, "count": n} for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def meta(self) -> dict[str, Any]:
        """What the page needs to draw the table and its filters."""
        return {
            "id": self.id,
            "title": self.title,
            "total": len(self.rows),
            "columns": [{"key": k, "label": label} for k, label in self.columns],
            "filters": [{"key": k, "label": label, "values": self.values(k)} for k, label in self.filters],
            "note": self.note,
            "page": PAGE,
        }

    def matching(self, filters: Mapping[str, str]) -> np.ndarray:
        """Row numbers whose attributes equal every given filter value (an empty value: any)."""
        known = {k for k, _ in self.filters}
        mask = np.ones(len(self.rows), dtype=bool)
        for key, value in filters.items():
            if key not in known:
                raise ValueError(f"table {self.id} has no filter {key!r}; filters: {', '.join(sorted(known))}")
            if value != "":
                mask &= self._codes[key] == value
        return np.flatnonzero(mask)

    def page(self, filters: Mapping[str, str], offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
        """One page of summaries (each with its row number ``_row``) and how many rows match."""
        if offset < 0 or not 0 < limit <= 1000:
            raise ValueError(f"offset must be >= 0 and limit 1-1000, got offset={offset} limit={limit}")
        hits = self.matching(filters)
        rows = [{"_row": int(n), **self.rows[n]} for n in hits[offset : offset + limit]]
        return {"total": int(len(hits)), "offset": offset, "limit": limit, "rows": rows}

    def prefetch(self) -> None:
        """Start reading the whole records in the background (once): the server calls it after the
        first page went out, so the first click on a row does not wait for the read."""
        if self.warm is not None and not self._warming:
            self._warming = True
            threading.Thread(target=self.warm, daemon=True, name=f"prefetch-{self.id}").start()

    def record(self, n: int) -> dict[str, Any]:
        """The whole record of row ``n``."""
        if not 0 <= n < len(self.rows):
            raise ValueError(f"table {self.id} has rows 0-{len(self.rows) - 1}, not {n}")
        return {"_row": n, **self.detail(n)}

    # --- the static export's documents: see themis.view.export ---------------------------------------

    def index(self) -> dict[str, Any]:
        """Every row's filter attributes, dictionary-coded (the page filters these in memory)."""
        coded = {}
        for key, _ in self.filters:
            names = sorted(set(self.attrs[key]))
            lookup = {v: i for i, v in enumerate(names)}
            coded[key] = {"values": names, "codes": [lookup[v] for v in self.attrs[key]]}
        return {"meta": self.meta(), "attrs": coded, "rows_chunk": ROWS_CHUNK, "detail_chunk": DETAIL_CHUNK}

    def rows_chunk(self, k: int) -> list[dict[str, Any]]:
        """Summaries of rows ``k * ROWS_CHUNK`` to the next chunk, each with its ``_row``."""
        start = k * ROWS_CHUNK
        return [{"_row": n, **r} for n, r in enumerate(self.rows[start : start + ROWS_CHUNK], start)]

    def detail_chunk(self, k: int) -> list[dict[str, Any]]:
        """Whole records of rows ``k * DETAIL_CHUNK`` to the next chunk."""
        start = k * DETAIL_CHUNK
        return [self.record(n) for n in range(start, min(start + DETAIL_CHUNK, len(self.rows)))]

    def chunks(self) -> tuple[int, int]:
        """How many summary and record chunks the static export writes."""
        n = len(self.rows)
        return -(-n // ROWS_CHUNK), -(-n // DETAIL_CHUNK)
