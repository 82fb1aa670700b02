"""The workbench's data layer (themis.view), without a browser, on a run root written with the stages'
own schemas and writers (tests/fakes/run_root.py): every section, the filters and their meaning,
the static chunks, stale detection, s3://, and the bad inputs a user will hit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from themis.config import StorageConfig
from themis.curation.filters import pair_consistency
from themis.view import data
from themis.view.data import SECTIONS, ViewError, open_run
from themis.view.events import read_scalars
from themis.view.tables import DETAIL_CHUNK, ROWS_CHUNK


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fakes.run_root import build_run_root

    return build_run_root(tmp_path_factory.mktemp("runs"), judgments=300)


@pytest.fixture
def copy(run_root: Path, tmp_path: Path) -> Path:
    """A copy of the run root that a test may break."""
    dest = tmp_path / "runs" / "view"
    shutil.copytree(run_root, dest)
    return dest


def edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["stages"])
    path.write_text(json.dumps(manifest))


def test_every_section_of_a_run_root(run_root: Path) -> None:
    view = open_run(str(run_root))
    for name in SECTIONS:
        section = view.section(name)
        assert section["status"] == "ok", (name, section.get("reason"))
        json.dumps(section, allow_nan=False)  # what the page receives is strict JSON
    stages = {s["name"]: s for s in view.section("run")["stages"]}
    assert stages["serve"]["status"] == "not run" and stages["judgments"]["status"] == "ok"
    assert stages["judgments"]["reused_calls"] == 300 // 4 and stages["judgments"]["cost_usd"] == 0.33
    assert view.section("run")["stale"] == []
    assert set(view.tables()) == {
        "judgments",
        "rejects-judgments",
        "rejects-dataset",
        "dataset-records",
        "eval-0",
        "eval-1",
    }


def test_judgments_table_and_its_filters(run_root: Path) -> None:
    view = open_run(str(run_root))
    table = view.table("judgments")
    parsed = pq.read_table(run_root / "judgments/data.parquet").to_pylist()
    rejected = pq.read_table(run_root / "rejects/judgments.parquet").to_pylist()
    assert len(table.rows) == len(parsed) + len(rejected) == 300
    assert table.page({"status": "unparsable"})["total"] == len(rejected) > 0
    pairs = [r for r in parsed if r["kind"] == "pairwise"]
    _, _, inconsistent = pair_consistency(pairs, keep_swapped=True)
    disagreeing = [r for r in inconsistent if r["reason"].startswith("pair orders disagree")]
    assert table.page({"orders": "orders disagree"})["total"] == len(disagreeing) > 0
    both = table.page({"orders": "orders disagree", "scenario": "close_qa"}, 0, 1000)
    assert 0 < both["total"] < len(disagreeing) and all(r["scenario"] == "close_qa" for r in both["rows"])
    assert table.page({"kind": "pairwise"}, 0, 1000)["total"] == sum(r["kind"] == "pairwise" for r in parsed + rejected)
    page = table.page({}, offset=50, limit=50)
    assert [r["_row"] for r in page["rows"]] == list(range(50, 100)) and page["total"] == 300
    with pytest.raises(ValueError, match="no filter 'colour'"):
        table.page({"colour": "red"})
    row = next(r for r in page["rows"] if r["kind"] == "pairwise")
    record = table.record(row["_row"])
    assert record["messages"] and record["responses"] and record["other_order"]["row"] != row["_row"]
    assert table.record(record["other_order"]["row"])["pair_id"] == record["pair_id"]


def test_score_distribution_per_scenario(run_root: Path) -> None:
    section = open_run(str(run_root)).section("judgments")
    parsed = pq.read_table(run_root / "judgments/data.parquet").to_pylist()
    expected = Counter((r["scenario"], str(r["score"])) for r in parsed if r["kind"] != "pairwise")
    got = Counter({(s, v): n for s, scores in section["scores"].items() for v, n in scores.items()})
    assert got == expected
    winners = Counter((r["scenario"], r["order"], r["winner"]) for r in parsed if r["kind"] == "pairwise")
    got = Counter(
        {(s, o, w): n for s, orders in section["winners"].items() for o, c in orders.items() for w, n in c.items()}
    )
    assert got == winners


def test_dataset_section(run_root: Path) -> None:
    view = open_run(str(run_root))
    section = view.section("dataset")
    rejects = pq.read_table(run_root / "rejects/dataset.parquet").column("reason").to_pylist()
    assert {r["value"]: r["count"] for r in section["rejected_by_reason"]} == dict(Counter(rejects))
    for step in section["steps"]:
        assert step["rows_in"] + step.get("rows_added", 0) == step["rows_out"] + step["rows_rejected"]
    ifd_rows = pq.read_table(run_root / "dataset/ifd.parquet").num_rows
    hist = section["ifd"]["scenarios"]
    assert sum(sum(h["kept"]) + sum(h["dropped"]) for h in hist.values()) == ifd_rows
    augmented = {r["value"]: r["count"] for r in section["records_by_augmentation"]}
    assert augmented["scale:1-10"] == section["augmentation"]["rows_added"] > 0
    records = view.table("dataset-records")
    assert records.page({"augmentation": "scale:1-10", "split": "validation"})["total"] == 0
    assert view.table("rejects-dataset").page({"reason": "pair orders disagree (position bias)"})["total"] > 0


def test_training_from_events_and_from_the_summary(run_root: Path, copy: Path) -> None:
    summary = json.loads((run_root / "train/summary.json").read_text())
    charts = open_run(str(run_root)).section("training")["charts"]
    total = [v for _, v in charts["loss"]["loss/total"]]
    assert total == pytest.approx(summary["train_loss"], rel=1e-6)  # float32 in the events
    assert {"loss/score_ce", "loss/rationale", "loss/validation_ce"} <= set(charts["loss"])
    assert charts["learning rate"]["lr"][0][0] == 1 and "throughput/tokens_per_s" in charts["throughput"]
    shutil.rmtree(copy / "train/tensorboard")
    section = open_run(str(copy)).section("training")
    assert section["source"].startswith("train/summary.json")
    assert [v for _, v in section["charts"]["loss"]["loss/total"]] == summary["train_loss"]
    assert "learning rate" not in section["charts"]


def test_events_of_a_resumed_run_and_a_cut_file(tmp_path: Path) -> None:
    """A resumed run's purge marker hides what the dead attempt logged past its checkpoint; a file
    cut mid-record is read up to the cut and said so."""
    from themis.storage import RunStore
    from themis.training.metrics import TensorBoardLog

    store = RunStore(StorageConfig(root=str(tmp_path)), "run")
    first = TensorBoardLog(True, store, 0)
    for step in range(1, 11):
        first.scalars(step, {"loss/total": float(step)})
    first.close()
    second = TensorBoardLog(True, store, 6)  # resumed from the checkpoint at step 6
    for step in range(6, 9):
        second.scalars(step, {"loss/total": 100.0 + step})
    second.close()
    files = sorted((tmp_path / "run/train/tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    scalars = read_scalars([(p.name, p.read_bytes()) for p in files])
    assert scalars.series["loss/total"] == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]
    assert scalars.notes == []
    cut = read_scalars([("cut", files[0].read_bytes()[:-7])])
    assert cut.series["loss/total"] == [(s, float(s)) for s in range(1, 10)] and "cut short" in cut.notes[0]


def test_evaluation_items_agree_with_the_report(run_root: Path) -> None:
    view = open_run(str(run_root))
    reports = {r["id"]: r for r in view.section("evaluation")["reports"]}
    for name in ("trained", "baseline"):
        report = json.loads((run_root / f"reports/evaluation/{name}/report.json").read_text())
        table = view.table(reports[name]["table"])
        assert "checked against the report's benchmark.sha256" in table.note
        count = {
            a: table.page({"family": "pairwise", "agreement": a})["total"] for a in ("agree", "disagree", "unparsed")
        }
        assert count["agree"] / sum(count.values()) == pytest.approx(report["pairwise"]["metrics"]["accuracy"]["value"])
        point = {a: table.page({"family": "pointwise", "agreement": a})["total"] for a in ("agree", "disagree")}
        assert point["agree"] / sum(point.values()) == pytest.approx(report["pointwise"]["metrics"]["exact"]["value"])
        assert reports[name]["images"] and all(i.endswith(".png") for i in reports[name]["images"])
    baseline = view.table(reports["baseline"]["table"])  # always "A": the other order names the other response
    assert set(baseline.attrs["position"]) - {"—"} <= {"flips with order", "unparsed order"}
    ab = baseline.page({"family": "pairwise", "order": "ab"})["total"]
    assert 0 < ab < baseline.page({"family": "pairwise"})["total"]


def test_items_hash_is_the_evaluate_stages(run_root: Path) -> None:
    from themis.evaluation import benchmarks
    from themis.stages.evaluate import items_hash
    from themis.view.evaluation import items_hash as view_hash

    items = benchmarks.from_validation(pq.read_table(run_root / "dataset/validation.parquet").to_pylist())
    assert view_hash(items) == items_hash(items)


def test_items_changed_since_the_report(copy: Path) -> None:
    table = pq.read_table(copy / "dataset/validation.parquet")
    pq.write_table(table.slice(1), copy / "dataset/validation.parquet")
    items = open_run(str(copy)).table("eval-1")
    assert "no longer hash to the report's benchmark.sha256" in items.note
    assert set(items.attrs["agreement"]) == {"human labels unavailable"} and items.rows


def test_compare_is_evaluate_compare(run_root: Path) -> None:
    from themis.evaluation.compare import compare_text

    view = open_run(str(run_root))
    listed = {r["id"]: r["index"] for r in view.section("compare")["reports"]}
    result = view.compare(listed["trained"], listed["baseline"])
    expected = compare_text(
        str(run_root / "reports/evaluation/trained"), str(run_root / "reports/evaluation/baseline"), StorageConfig()
    )
    assert result["markdown"] == expected and result["same_items"]
    assert result["test"].startswith("paired bootstrap")
    accuracy = next(r for r in result["rows"] if r["metric"] == "pairwise/accuracy")
    assert accuracy["difference"] == pytest.approx(accuracy["a"]["value"] - accuracy["b"]["value"])
    with pytest.raises(ValueError, match="two different"):
        view.compare(0, 0)


def test_static_chunks_cover_every_row(run_root: Path) -> None:
    table = open_run(str(run_root)).table("judgments")
    index = table.index()
    n_rows, n_details = table.chunks()
    assert n_rows == -(-300 // ROWS_CHUNK) and n_details == -(-300 // DETAIL_CHUNK)
    rows = [r for k in range(n_rows) for r in table.rows_chunk(k)]
    assert [r["_row"] for r in rows] == list(range(300))
    codes = index["attrs"]["status"]
    unparsable = codes["values"].index("unparsable")
    assert [n for n, c in enumerate(codes["codes"]) if c == unparsable] == table.matching(
        {"status": "unparsable"}
    ).tolist()
    details = table.detail_chunk(n_details - 1)
    assert details[-1]["_row"] == 299 and details[-1]["messages"]


def test_stale_outputs(copy: Path) -> None:
    def rerun_judgments(stages):
        stages["judgments"]["finished_at"] = "2099-01-01T00:00:00+0000"

    edit_manifest(copy, rerun_judgments)
    view = open_run(str(copy))
    assert view.section("run")["stale"] == ["dataset", "evaluate", "train"]
    dataset = next(s for s in view.section("run")["stages"] if s["name"] == "dataset")
    assert "judgments ran again" in dataset["stale"][0]
    assert any(w.startswith("stale:") for w in view.section("dataset")["warnings"])

    def failed_rerun(stages):
        stages["judgments"] |= {"status": "failed", "error": "teacher down"}

    edit_manifest(copy, failed_rerun)
    view = open_run(str(copy))
    assert view.section("run")["stale"] == []  # a failed rerun published nothing
    assert "failed" in view.section("judgments")["warnings"][0]


def test_not_a_run_root(run_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ViewError, match="not found: .*nowhere"):
        open_run(str(tmp_path / "nowhere"))
    with pytest.raises(ViewError, match=r"not a run root: .* has no manifest.json; it holds run roots: .*/view"):
        open_run(str(run_root.parent))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewError, match=r"no manifest.json \(a run root is <run.storage.root>/<run.name>"):
        open_run(str(tmp_path / "empty"))
    assert not (tmp_path / "nowhere").exists()  # viewing never creates anything


def test_a_missing_stage_and_a_killed_attempt(copy: Path) -> None:
    shutil.rmtree(copy / "reports")
    edit_manifest(copy, lambda stages: stages.pop("evaluate"))
    (copy / "judgments/data.parquet").unlink()
    (copy / "rejects/judgments.parquet").unlink()
    attempt = copy / "_attempts/judgments-20990101T000000-abcdef/judgments"
    attempt.mkdir(parents=True)
    (attempt / "part-0.parquet").write_bytes(b"PAR1 half written")

    def killed(stages):
        stages["judgments"] = {
            "status": "running",
            "attempt": str(attempt.parent),
            "finished_at": "2099-01-01T00:00:00+0000",
        }

    edit_manifest(copy, killed)
    view = open_run(str(copy))
    evaluation = view.section("evaluation")
    assert evaluation["status"] == "missing" and "evaluate stage has not run" in evaluation["reason"]
    judgments = view.section("judgments")
    assert judgments["status"] == "missing" and "killed while running" in judgments["reason"]
    stages = {s["name"]: s for s in view.section("run")["stages"]}
    assert stages["judgments"]["leftover_attempts"] == ["judgments-20990101T000000-abcdef"]
    assert "never published" in stages["judgments"]["notes"][0]
    assert view.section("dataset")["status"] == "ok"  # the rest still shows


def test_an_unreadable_file_is_a_missing_section(copy: Path) -> None:
    (copy / "dataset/filter_report.json").write_text('{"rows_in": 3,')
    view = open_run(str(copy))
    section = view.section("dataset")
    assert section["status"] == "missing" and section["reason"].startswith("cannot read this run's dataset")
    (copy / "judgments/data.parquet").write_bytes(b"not parquet")
    assert "cannot read" in open_run(str(copy)).section("judgments")["reason"]


def test_only_the_plots_are_served(run_root: Path) -> None:
    view = open_run(str(run_root))
    assert view.read_bytes("train/loss_curve.png").startswith(b"\x89PNG")
    for rel in ("manifest.json", "../view/manifest.json", "dataset/train.parquet"):
        with pytest.raises(ValueError, match="not a file the workbench shows"):
            view.read_bytes(rel)


def test_a_changed_manifest_is_read_again(copy: Path) -> None:
    view = open_run(str(copy))
    assert view.section("run")["stale"] == []
    edit_manifest(copy, lambda stages: stages["dataset"].update(finished_at="2099-01-01T00:00:00+0000"))
    view.refresh()
    assert view.section("run")["stale"] == ["evaluate", "train"]


def test_the_data_layer_is_pure() -> None:
    modules = [f"themis.view.{m}" for m in ("data", "tables", "run", "curation", "training", "evaluation", "events")]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += "print([h for h in ('ray', 'torch', 'deepspeed', 'vllm') if h in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_s3_run_root_is_read_without_writing(run_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="themis")
        fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", access_key="test", secret_key="test")
        pafs.copy_files(str(run_root), "themis/runs/view", destination_filesystem=fs)
        before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="themis")["Contents"])
        view = open_run("s3://themis/runs/view", s3_endpoint=endpoint)
        assert all(view.section(name)["status"] == "ok" for name in SECTIONS)
        assert view.table("judgments").record(0)["messages"]
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="themis")["Contents"]) == before
        from themis.view.export import export  # the static page beside the run, in the bucket

        written = export(view, "s3://themis/runs/view-page", s3_endpoint=endpoint)
        keys = {
            o["Key"] for o in s3.list_objects_v2(Bucket="themis", Prefix="runs/view-page/", MaxKeys=5000)["Contents"]
        }
        assert {"runs/view-page/index.html", "runs/view-page/data/section/run.js"} <= keys
        files = {k for k in keys if not k.endswith("/")}  # pyarrow's create_dir leaves folder markers
        assert len(files) == written["files"] and written["index"] == "s3://themis/runs/view-page/index.html"
        with pytest.raises(
            ViewError,
            # (the bucket is shared with other tests, whose run roots may be listed too)
            match=r"not a run root: s3://themis/runs has no manifest.json; it holds run roots: .*s3://themis/runs/view",
        ):
            open_run("s3://themis/runs", s3_endpoint=endpoint)
        with pytest.raises(ViewError, match="is a bucket, not a run root"):
            data.split_run_root("s3://themis")
    finally:
        server.stop()


def test_the_pipeline_ends_with_the_view_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from themis.config import load_config
    from themis.runner import view_command
    from themis.storage import RunStore

    cfg = load_config(Path(__file__).parents[1] / "jobs/configs/demo.yaml", [f"run.storage.root={tmp_path}"])
    store = RunStore(cfg.run.storage, cfg.run.name)
    monkeypatch.setattr(sys, "argv", [".venv/bin/themis", "pipeline", "jobs/configs/demo.yaml"])
    assert view_command(cfg, store) == f".venv/bin/themis view {tmp_path / 'demo'}"
    cfg = load_config(
        Path(__file__).parents[1] / "jobs/configs/demo.yaml",
        ["run.storage.root=s3://bucket/runs", "run.storage.s3_endpoint=http://127.0.0.1:9000"],
    )
    monkeypatch.setattr(sys, "argv", ["-m"])
    assert view_command(cfg, data.read_only_store(cfg.run.storage, "demo")) == (
        "themis view s3://bucket/runs/demo --s3-endpoint http://127.0.0.1:9000"
    )


def test_an_unreadable_table_is_exported_as_its_error(copy: Path, tmp_path: Path) -> None:
    from themis.view.export import export

    (copy / "judgments/data.parquet").write_bytes(b"not parquet")
    written = export(open_run(str(copy)), str(tmp_path / "page"))
    assert list(written["skipped"]) == ["judgments"]
    index = (tmp_path / "page/data/table/judgments/index.js").read_text()
    assert index.startswith('Themis.receive("table/judgments/index",{"error":"cannot read table judgments')
    section = (tmp_path / "page/data/section/judgments.js").read_text()
    assert '"status":"missing"' in section and (tmp_path / "page/data/table/rejects-judgments/index.js").exists()
