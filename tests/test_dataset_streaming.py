"""The dataset stage streams the judgments: its driver's peak memory does not grow with the
judgments' text. A stage that reads the table whole holds it at least once (and, turning it into
rows and then into SFT records, three or four times): here it grew 324 MiB for 8,000 judgments
and 1,345 MiB for 32,000, where the streaming stage grows about 40 and 85 MiB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.test_filters import single
from themis.config import StorageConfig
from themis.dataplane.tables import to_table
from themis.stages.judgments import SCHEMA as JUDGMENTS_SCHEMA
from themis.storage import RunStore

RATIONALE_CHARS = 12_000
MiB = 2**20

# Runs the stage in a fresh process and prints its peak RSS growth (bytes) over the stage alone.
DRIVER = """
import json, resource, sys
from themis.config import PipelineConfig, StorageConfig
from themis.storage import RunStore
from themis.stages import dataset
if len(sys.argv) > 2:  # another implementation of the stage, for comparison
    import importlib.util
    spec = importlib.util.spec_from_file_location("other", sys.argv[2])
    dataset = importlib.util.module_from_spec(spec); spec.loader.exec_module(dataset)
cfg = PipelineConfig.model_validate({
    "engines": {"teacher": {"kind": "openai", "base_url": "http://localhost:1/v1", "model": "m"}},
    "responses": {"pool": [{"name": "m", "engine": "teacher"}]},
})
store = RunStore(StorageConfig(root=sys.argv[1]), "r")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
report = dataset.run(cfg, store.begin_attempt("dataset"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": after - before, "counts": report.counts}))
"""


def write_judgments(root: Path, rows: int) -> None:
    """Graded judgments with long rationales, in row groups of 1,000 as a stage writes them."""
    store = RunStore(StorageConfig(root=str(root)), "r")
    path = Path(store.path("judgments/data.parquet")) / "part-0.parquet"
    path.parent.mkdir(parents=True)
    with pq.ParquetWriter(path, JUDGMENTS_SCHEMA) as writer:
        for start in range(0, rows, 1000):
            rows = [
                single(i, i % 5 + 1) | {"rationale": f"{i} " + "x" * RATIONALE_CHARS}
                for i in range(start, start + 1000)
            ]
            writer.write_table(to_table(rows, JUDGMENTS_SCHEMA))


def stage_growth(root: Path, *other: str) -> dict:
    out = subprocess.run([sys.executable, "-c", DRIVER, str(root), *other], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dataset_stage_streams_judgments_never_all_in_the_driver(tmp_path: Path) -> None:
    growth = {}
    for rows in (8_000, 32_000):  # 96 MB and 384 MB of rationales
        write_judgments(tmp_path / str(rows), rows)
        result = stage_growth(tmp_path / str(rows))
        counts = result["counts"]
        assert counts["rows_in"] == rows == counts["rows_out"] + counts["rows_rejected"]
        written = next((tmp_path / str(rows)).glob("r/_attempts/*/dataset/train.parquet"))
        assert pq.ParquetFile(written).metadata.num_rows == counts["train"]
        growth[rows] = result["growth"]
    extra_text = (32_000 - 8_000) * RATIONALE_CHARS
    shown = {rows: f"{g / MiB:.0f} MiB" for rows, g in growth.items()}
    # Only the key table grows with the rows (about 2 kB a judgment), never the text (12 kB a judgment).
    assert growth[32_000] - growth[8_000] < 0.25 * extra_text, f"driver growth by judgments: {shown}"
    assert growth[32_000] < 0.5 * 32_000 * RATIONALE_CHARS, f"driver growth by judgments: {shown}"
