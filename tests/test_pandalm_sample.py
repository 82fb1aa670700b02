"""The demo's human-labelled sample: it loads as a pairwise benchmark, and redrawing it from the
pinned PandaLM test set gives the shipped file byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import SHARED_DATA, needs_shared
from themis.evaluation import sources
from themis.evaluation.benchmarks import PairwiseItem, load_file

FOLDER = Path(__file__).parents[1] / "themis" / "data" / "pandalm_sample"
SAMPLE = FOLDER / "sample.jsonl"


def load_draw():
    spec = importlib.util.spec_from_file_location("draw_pandalm_sample", FOLDER / "draw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_loads_as_three_annotator_pairs():
    loaded = load_file(SAMPLE, "pairwise")
    assert len(loaded.items) == 60 and not loaded.rejects
    assert all(isinstance(i, PairwiseItem) and len(i.human) == 3 for i in loaded.items)
    assert len({i.item_id for i in loaded.items}) == 60


@needs_shared
def test_redrawing_gives_the_shipped_sample():
    draw = load_draw()
    rows = json.loads(sources.fetch("pandalm", "testset-v1.json", SHARED_DATA).read_text())
    assert draw.render(draw.draw(rows)) == SAMPLE.read_text()
    source = {r["idx"]: r for r in rows}
    for item in map(json.loads, SAMPLE.read_text().splitlines()):
        row = source[item["source"]["idx"]]
        assert (item["response_a"], item["response_b"]) == (row["response1"], row["response2"])
        assert item["instruction"].startswith(row["instruction"])


@needs_shared
def test_evaluate_reports_the_sample_with_n_and_intervals(tmp_path, monkeypatch, capsys):
    # PandaLM's recorded gpt-3.5-turbo verdicts join to the sample by id: the stage runs without Ray.
    from themis import cli

    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"run: {{name: sample, storage: {{root: {tmp_path}}}}}\n"
        "evaluate:\n"
        f"  benchmark: {{name: file, id: pandalm_sample, path: {SAMPLE}, kind: pairwise}}\n"
        "  unparsable: tie\n"
        "  plots: false\n"
        "  bootstrap: {resamples: 50}\n"
        "  judges:\n"
        "    - {kind: recorded, name: gpt35, path: 'shipped:pandalm/gpt-3.5-turbo-testset-v1.json',\n"
        "       id_field: idx, verdict_field: gpt_result, values: {'1': A, '2': B, Tie: tie}}\n"
    )
    assert cli.main(["evaluate", str(config)]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("[themis] evaluate: gpt35 on"))
    assert line.startswith("[themis] evaluate: gpt35 on 60 items: ")
    assert "[" in line.split("items: ", 1)[1]  # each headline metric with its interval
    report = json.loads((tmp_path / "sample/reports/evaluation/gpt35/report.json").read_text())
    assert report["pairwise"]["counts"]["used"] == 60
