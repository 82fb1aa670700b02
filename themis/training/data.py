"""Training data on storage: a Ray Data step tokenises the splits into Parquet shards in the run,
and each Ray Train worker reads the rows it trains on from there.

Nothing large travels in ``train_loop_config``: the driver passes the shards' folder and the
run's storage settings; a worker opens the folder through the run's filesystem (a local path or
``s3://``), reads the small columns (id, length, reject reason) to plan its epoch, then reads only
the rows of its own micro-batches. Rows are ordered by ``example_id`` on read, so the plan is the
same on every worker and on every re-tokenisation of a resumed run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from themis.curation import sft
from themis.storage import RunStore

TOKENIZED = "train/tokenized"  # <run>/train/tokenized/{train,validation}/*.parquet
SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("kinds", pa.list_(pa.int8())),
        ("length", pa.int32()),
        ("reason", pa.string()),  # "" for a usable example, else why it was rejected
    ]
)


def tokenize_split(store: RunStore, source: str, split: str, model_dir: str, max_seq_len: int) -> str:
    """Tokenise ``source`` (a dataset split) with Ray Data into Parquet shards; return their folder."""
    import ray.data

    dest = store.write_path(f"{TOKENIZED}/{split}")
    source_path = store.read_path(source)
    # An empty split (no validation set) skips the Ray Data job: seconds of task start-up for nothing.
    if pads.dataset(source_path, filesystem=store.fs, format="parquet").count_rows():
        ds = ray.data.read_parquet(source_path, filesystem=store.fs, columns=["example_id", "messages"])
        ds = ds.map_batches(
            functools.partial(_tokenize_batch, model_dir=model_dir, max_seq_len=max_seq_len),
            batch_format="pyarrow",
            batch_size=256,
            num_cpus=0.5,  # two tokenisers side by side on a 2-core machine
        )
        ds.write_parquet(dest, filesystem=store.fs)
    if store.fs.get_file_info(dest).type == pafs.FileType.NotFound:
        # An empty split (no validation set) writes no file: leave an empty table, so readers see 0 rows.
        store.fs.create_dir(dest, recursive=True)
        pq.write_table(SCHEMA.empty_table(), f"{dest}/empty.parquet", filesystem=store.fs)
    return dest


def _tokenize_batch(batch: pa.Table, model_dir: str, max_seq_len: int) -> pa.Table:
    tokenizer = _tokenizer(model_dir)
    rows = []
    for row in batch.to_pylist():
        try:
            ex = sft.build_example(tokenizer, row["messages"], max_seq_len)
            rows.append({"example_id": row["example_id"], **ex, "length": len(ex["input_ids"]), "reason": ""})
        except ValueError as exc:
            empty = {"input_ids": [], "labels": [], "kinds": [], "length": 0}
            rows.append({"example_id": row["example_id"], **empty, "reason": str(exc)})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@functools.lru_cache(maxsize=2)
def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer  # once per Ray worker process, not per batch

    return AutoTokenizer.from_pretrained(model_dir)


@dataclass
class TokenizedSplit:
    """One split's usable examples on storage, indexable 0..n-1 in ``example_id`` order."""

    dataset: pads.Dataset
    positions: list[int]  # index -> row position in the dataset (files in path order)
    lengths: list[int]
    example_ids: list[str]
    rejects: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, indices: list[int]) -> dict[int, sft.Example]:
        """Read the examples at ``indices`` (only their row groups are fetched)."""
        wanted = sorted(set(indices))
        rows = self.dataset.take([self.positions[i] for i in wanted], columns=["input_ids", "labels", "kinds"])
        return dict(zip(wanted, rows.to_pylist()))


def open_split(fs: Any, path: str) -> TokenizedSplit:
    """Open a tokenised split's folder on ``fs`` and index its usable rows."""
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    meta = dataset.to_table(columns=["example_id", "length", "reason"])
    order = pc.sort_indices(meta, sort_keys=[("example_id", "ascending")]).to_pylist()
    ids, lengths, reasons = (meta.column(c).to_pylist() for c in ("example_id", "length", "reason"))
    usable = [i for i in order if not reasons[i]]
    return TokenizedSplit(
        dataset=dataset,
        positions=usable,
        lengths=[lengths[i] for i in usable],
        example_ids=[ids[i] for i in usable],
        rejects=[{"example_id": ids[i], "reason": reasons[i]} for i in order if reasons[i]],
    )
