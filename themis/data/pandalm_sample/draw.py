"""Draw the demo's human-labelled sample from the PandaLM test set (see README.md beside this file).

    python themis/data/pandalm_sample/draw.py [--data-dir ../shared/data]

Reads the pinned, hash-checked ``testset-v1.json`` (``themis.evaluation.sources``), keeps the pairs
short enough for a 135M judge on a laptop CPU, draws ``SIZE`` of them with a fixed seed, and writes
them as a benchmark file (``evaluate.benchmarks[].name: file``, ``kind: pairwise``): the canonical
fields, each annotator's label as A/B/tie, and the source's own fields untouched for tracing.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from themis.evaluation import sources
from themis.evaluation.benchmarks import PANDALM_WINNERS

SIZE = 60
SEED = 0
MAX_CHARS = 400  # instruction + input + both responses: short prompts keep CPU scoring fast
TEXTS = ("instruction", "input", "response1", "response2")
HERE = Path(__file__).parent
OUT = HERE / "sample.jsonl"


def draw(rows: list[dict[str, Any]], size: int = SIZE, seed: int = SEED) -> list[dict[str, Any]]:
    """``size`` short pairs whose texts are all non-empty strings, drawn with ``seed``, in source
    order (a few PandaLM responses are the JSON value ``true``, not text: those pairs are skipped)."""
    short = [r for r in rows if _texts(r) and _chars(r) <= MAX_CHARS]
    picked = random.Random(seed).sample(short, size)
    return [to_item(r) for r in sorted(picked, key=lambda r: r["idx"])]


def to_item(row: dict[str, Any]) -> dict[str, Any]:
    """One PandaLM pair as a benchmark row; the instruction joins PandaLM's input as its loader does."""
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {
        "item_id": str(row["idx"]),  # PandaLM's own id: its recorded verdicts join to it
        "instruction": instruction,
        "response_a": row["response1"],
        "response_b": row["response2"],
        "scenario": "open_qa",
        "category": row["motivation_app"],
        "human": [PANDALM_WINNERS[row[f"annotator{i}"]] for i in (1, 2, 3)],
        "source": {k: row[k] for k in ("idx", "cmp_key", "annotator1", "annotator2", "annotator3")},
    }


def render(items: list[dict[str, Any]]) -> str:
    """The JSONL text of the sample (what ``sample.jsonl`` holds)."""
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _texts(row: dict[str, Any]) -> bool:
    return all(isinstance(row[k], str) for k in TEXTS) and all(row[k].strip() for k in ("response1", "response2"))


def _chars(row: dict[str, Any]) -> int:
    return sum(len(row[k]) for k in TEXTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="offline data folder (<dir>/pandalm/testset-v1.json)")
    args = parser.parse_args()
    path = sources.fetch("pandalm", "testset-v1.json", args.data_dir)
    OUT.write_text(render(draw(json.loads(path.read_text()))))
    print(f"wrote {SIZE} pairs to {OUT}")


if __name__ == "__main__":
    main()
