"""The summary a finished pipeline prints, rendered from a manifest dict."""

from __future__ import annotations

from themis.summary import main_output, render_counts, render_summary

ROOT = "/runs/demo"
MANIFEST = {
    "run_root": ROOT,
    "stages": {
        "instructions": {
            "status": "ok",
            "counts": {"rows_in": 7, "rows_out": 7, "rows_rejected": 0, "per_scenario": {"open_qa": 7}},
            "outputs": {"instructions/data.parquet": f"{ROOT}/instructions/data.parquet"},
        },
        "dataset": {
            "status": "ok",
            "counts": {"rows_in": 34, "rows_out": 20, "rows_rejected": 14, "train": 18, "validation": 2},
            "outputs": {"train": f"{ROOT}/dataset/train.parquet", "validation": f"{ROOT}/dataset/validation.parquet"},
        },
        "serve": {"status": "ok", "counts": {"smoke_requests": 3}, "outputs": {"url": "http://127.0.0.1:8000"}},
    },
}


def test_summary_says_what_each_stage_made_where_and_what_to_run_next():
    text = render_summary(
        MANIFEST, ["instructions", "dataset", "serve"], "themis serve demo.yaml", f"themis view {ROOT}"
    )
    assert text.splitlines() == [
        f"run {ROOT}:",
        "  instructions 7 kept, 0 rejected",
        "               -> instructions/data.parquet",
        "  dataset      18 train, 2 validation, 14 rejected",
        "               -> dataset/train.parquet",
        "  serve        3 smoke requests answered",
        "               -> http://127.0.0.1:8000",
        "next:",
        "  serve the judge:  themis serve demo.yaml",
        f"  inspect the run:  themis view {ROOT}",
    ]


def test_a_stage_that_did_not_finish_says_so():
    manifest = {"run_root": ROOT, "stages": {"train": {"status": "failed", "counts": {}}}}
    text = render_summary(manifest, ["train", "evaluate"], "s", "v")
    assert "  train        no counts [failed]" in text
    assert "  evaluate     not recorded" in text


def test_counts_of_an_unknown_stage_are_its_scalars():
    assert render_counts("ablation", {"runs": 2, "ok": True, "per": {"a": 1}}) == "2 runs"


def test_outputs_outside_the_run_root_stay_whole():
    assert main_output({"m": "s3://bucket/models/judge"}, ROOT) == "s3://bucket/models/judge"
    assert main_output({}, ROOT) == ""


def test_the_serve_command_repeats_the_pipeline_command_line(monkeypatch):
    from themis.runner import serve_command

    monkeypatch.setattr("sys.argv", [".venv/bin/themis", "pipeline", "jobs/configs/demo.yaml", "run.name=my run"])
    assert serve_command(None) == ".venv/bin/themis serve jobs/configs/demo.yaml 'run.name=my run'"
    assert serve_command(["c.yaml", "run.name=x y"]) == ".venv/bin/themis serve c.yaml 'run.name=x y'"
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert serve_command(None) == "themis serve CONFIG"


def test_a_count_of_one_names_one_thing():
    assert render_counts("evaluate", {"benchmarks": 2, "items": 62, "judges": 1}) == "2 benchmarks, 62 items, 1 judge"
    assert render_counts("train", {"steps": 1, "train_examples": 1, "validation_examples": 0}) == (
        "1 step, 1 train example, 0 validation examples"
    )
