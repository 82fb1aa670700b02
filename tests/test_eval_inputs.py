"""What meta-evaluation reads: benchmarks, recorded verdicts in one or both orders, and shipped data.

Every mistake in a user's files is either a clear error (a label outside the mapping, a join that
matches nothing, a duplicate id) or a rejected row with its reason; shipped sets come from a pinned
source, checked by hash. Downloads are tested against a local HTTP server, never the network.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import SHARED_DATA, needs_shared
from themis import cli
from themis.config import BenchmarkConfig, EngineJudge, PipelineConfig, RecordedJudge, StorageConfig, TrainedJudge
from themis.evaluation import benchmarks, judges, sources
from themis.evaluation.benchmarks import BenchmarkError, PairwiseItem
from themis.evaluation.report import Settings, build_report
from themis.stages.evaluate import load_benchmark
from themis.storage import RunStore

PAIR = {"instruction": "q", "response_a": "a", "response_b": "b", "scenario": "open_qa", "human": "A"}


def pairs(n: int, gold: str = "A") -> list[PairwiseItem]:
    return [PairwiseItem(str(k), "q", "a", "b", "open_qa", (gold,)) for k in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recorded(path: Path, **fields) -> RecordedJudge:
    return RecordedJudge(name="j", path=str(path), verdict_field="v", values={"1": "A", "2": "B", "0": "tie"}, **fields)


# --- recorded verdicts ------------------------------------------------------------------------------


def test_recorded_both_orders_from_a_swapped_column_give_consistency(tmp_path: Path) -> None:
    # Gold is A for every pair. The swapped run shows B first, so a consistent right judge says "2"
    # (the second shown) there. Pairs 0-5: consistent and right; 6-9: always picks the first shown.
    rows = [{"idx": k, "v": "1", "v_swapped": "2" if k < 6 else "1"} for k in range(10)]
    judge = recorded(write_jsonl(tmp_path / "v.jsonl", rows), swapped_verdict_field="v_swapped")
    result = judges.load_recorded(judge, pairs(10))
    assert [(p.item_id, p.order, p.winner) for p in result.predictions[:2]] == [("0", "ab", "A"), ("0", "ba", "B")]
    assert result.match_share == 1.0 and result.warnings == [] and result.unmatched_ids == []
    metrics = build_report(pairs(10), result.predictions, Settings(resamples=50))["pairwise"]["metrics"]
    assert metrics["dual_order_consistency"]["value"] == pytest.approx(0.6)
    assert metrics["correct_both_orders"]["value"] == pytest.approx(0.6)


def test_recorded_both_orders_from_an_order_column(tmp_path: Path) -> None:
    rows = [{"idx": k, "shown": "orig", "v": "1"} for k in range(4)]
    rows += [{"idx": k, "shown": "swap", "v": "1"} for k in range(3)]  # pair 3 has no swapped run
    judge = recorded(
        write_jsonl(tmp_path / "v.jsonl", rows), order_field="shown", order_values={"orig": "ab", "swap": "ba"}
    )
    result = judges.load_recorded(judge, pairs(4))
    assert [(p.order, p.winner, p.error) for p in result.predictions if p.item_id == "3"] == [
        ("ab", "A", None),
        ("ba", None, "no recorded prediction"),
    ]
    assert result.match_share == pytest.approx(7 / 8) and "87.5%" in result.warnings[0]
    position = build_report(pairs(4), result.predictions, Settings(resamples=20))["pairwise"]["position"]
    assert position["judge"]["prefer_first"] == 1.0


def test_recorded_join_matching_no_item_fails(tmp_path: Path) -> None:
    judge = recorded(write_jsonl(tmp_path / "v.jsonl", [{"idx": f"x{k}", "v": "1"} for k in range(3)]))
    with pytest.raises(BenchmarkError, match=r"v.jsonl: no recorded verdict matches .* by 'idx'.*x0.*'0'"):
        judges.load_recorded(judge, pairs(3))


def test_recorded_duplicate_ids_are_an_error_unless_told_which_to_keep(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [{"idx": 0, "v": "1"}, {"idx": 1, "v": "1"}, {"idx": 0, "v": "2"}])
    with pytest.raises(BenchmarkError, match=r"v.jsonl: line 3: id '0' recorded again \(first at line 1"):
        judges.load_recorded(recorded(path), pairs(2))
    first = judges.load_recorded(recorded(path, on_duplicate="first"), pairs(2))
    last = judges.load_recorded(recorded(path, on_duplicate="last"), pairs(2))
    assert (first.predictions[0].winner, last.predictions[0].winner) == ("A", "B")


def test_recorded_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="not both"):
        RecordedJudge(
            name="j",
            path="p",
            verdict_field="v",
            values={},
            swapped_verdict_field="w",
            order_field="o",
            order_values={},
        )
    with pytest.raises(ValidationError, match="go together"):
        RecordedJudge(name="j", path="p", verdict_field="v", values={}, order_field="o")
    with pytest.raises(ValidationError, match="must map to"):
        RecordedJudge(name="j", path="p", verdict_field="v", values={"1": "first"})


# --- a user's benchmark file -------------------------------------------------------------------------


def test_label_map_refuses_a_label_outside_it_and_maps_the_rest(tmp_path: Path) -> None:
    # 0 = first better, 1 = second better, 2 = tie: read by the default aliases this would be
    # tie / A / B, silently wrong. With `values` it is read right, and a stray label is refused.
    rows = [PAIR | {"human": 0}, PAIR | {"human": "1"}, PAIR | {"human": 2}]
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    values = {"0": "A", "1": "B", "2": "tie"}
    loaded = benchmarks.load_file(path, "pairwise", values=values)
    assert [i.human for i in loaded.items] == [("A",), ("B",), ("tie",)]
    write_jsonl(path, [*rows, PAIR | {"human": 3}])
    with pytest.raises(BenchmarkError, match=r"labels.jsonl: line 4: human label 3 is not in benchmark.values"):
        benchmarks.load_file(path, "pairwise", values=values)
    with pytest.raises(ValidationError, match="must map to A, B, tie"):
        BenchmarkConfig(name="file", path="x.jsonl", kind="pairwise", values={"0": "first"})
    # YAML writes `values: {0: A, 1: B, 2: tie}` with int keys: the same mapping.
    cfg = BenchmarkConfig(name="file", path=str(path), kind="pairwise", values={0: "A", 1: "B", 2: "tie"})
    assert cfg.values == values


def test_blank_row_goes_to_rejects_and_an_all_rejected_file_fails(tmp_path: Path) -> None:
    rows = [PAIR, PAIR | {"response_b": "  "}, PAIR | {"human": None}, PAIR]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    loaded = benchmarks.load_file(path, "pairwise")
    assert len(loaded.items) == 2 and loaded.source == str(path)
    assert [(r.source, r.reason) for r in loaded.rejects] == [
        ("pairs.jsonl:2", "response_b must be a non-empty string, got '  '"),
        ("pairs.jsonl:3", "no human label"),
    ]
    assert json.loads(loaded.rejects[0].record)["response_b"] == "  "
    # Recorded judges need no texts: the blank row is kept.
    assert len(benchmarks.load_file(path, "pairwise", needs_texts=False).items) == 3
    write_jsonl(path, [PAIR | {"response_a": ""}, PAIR | {"response_a": None}])
    with pytest.raises(BenchmarkError, match=r"every row was rejected \(2 of 2\), e.g. line 1: response_a must"):
        benchmarks.load_file(path, "pairwise")


def test_json_array_benchmark_and_its_errors_give_the_real_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([PAIR, PAIR | {"human": "B"}], indent=1))
    loaded = benchmarks.load_file(path, "pairwise")
    assert [i.human_winner for i in loaded.items] == ["A", "B"] and loaded.items[1].item_id == "pairs-2"
    path.write_text(json.dumps([PAIR | {"item_id": "x"}, PAIR, PAIR | {"item_id": "x"}]))
    with pytest.raises(BenchmarkError, match=r"pairs.json: record 3: item id 'x' repeats record 1"):
        benchmarks.load_file(path, "pairwise")
    path.write_text('[\n {"instruction": "q"},\n {"instruction": oops}\n]\n')
    with pytest.raises(BenchmarkError, match=r"pairs.json: line 3: not valid JSON"):
        benchmarks.load_file(path, "pairwise")


def test_const_scenario_and_texts_optional_for_recorded_judges(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ids.jsonl", [{"id": "p1", "label": "A"}, {"id": "p2", "label": "tie"}])
    columns = {"item_id": "id", "human": "label", "scenario": {"const": "close_qa"}, "category": {"const": "set1"}}
    loaded = benchmarks.load_file(path, "pairwise", columns, needs_texts=False)
    assert [(i.item_id, i.scenario, i.category, i.instruction, i.response_a) for i in loaded.items] == [
        ("p1", "close_qa", "set1", "", ""),
        ("p2", "close_qa", "set1", "", ""),
    ]
    # The same file for an engine judge: nothing to show it, so every row is rejected.
    with pytest.raises(BenchmarkError, match="missing column 'instruction'"):
        benchmarks.load_file(path, "pairwise", columns)
    with pytest.raises(ValidationError, match="cannot be a constant"):
        BenchmarkConfig(name="file", path="x.jsonl", columns={"item_id": {"const": "x"}})


def test_load_benchmark_returns_items_rejects_and_source(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [PAIR, PAIR | {"instruction": ""}, PAIR])
    cfg = BenchmarkConfig(name="file", path=str(path), kind="pairwise", limit=1)
    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    loaded = load_benchmark(cfg, store, needs_texts=True)
    assert (len(loaded.items), len(loaded.rejects), loaded.source) == (1, 1, str(path))
    assert len(load_benchmark(cfg.model_copy(update={"limit": None}), store, needs_texts=False).items) == 3


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", ".hidden", "", ".."])
def test_unsafe_judge_and_benchmark_names_are_refused(name: str) -> None:
    for make in (
        lambda: RecordedJudge(name=name, path="p", verdict_field="v", values={"1": "A"}),
        lambda: EngineJudge(name=name, engine="e"),
        lambda: TrainedJudge(name=name),
    ):
        with pytest.raises(ValidationError, match="judge name must be a plain folder name"):
            make()
    if name:  # an empty id means "the default"
        with pytest.raises(ValidationError, match="benchmark.id must be a plain folder name"):
            BenchmarkConfig(name="pandalm", id=name)


def test_benchmark_ids_subsets_and_the_renamed_data_dir() -> None:
    assert BenchmarkConfig(name="pandalm").report_id == "pandalm"
    assert BenchmarkConfig(name="file", path="data/my-set.jsonl").report_id == "my-set"
    assert BenchmarkConfig(name="hhh", id="hhh-all", subsets="category").report_id == "hhh-all"
    with pytest.raises(ValidationError):
        BenchmarkConfig(name="hhh", subsets="source")
    assert BenchmarkConfig().data_dir is None  # no default pointing into this workspace
    with pytest.raises(ValidationError, match="shared_data_dir is now benchmark.data_dir"):
        PipelineConfig.model_validate({"evaluate": {"benchmark": {"name": "hhh", "shared_data_dir": "x"}}})


# --- shipped benchmarks: pinned sources, the override folder and the download cache ----------------


@needs_shared
def test_shipped_files_match_their_pinned_hashes_in_the_override_folder(monkeypatch) -> None:
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    for name, source in sources.SOURCES.items():
        assert source.commit and len(source.commit) == 40
        for file in source.files:
            assert sources.fetch(name, file) == SHARED_DATA / name / file
    store = RunStore(StorageConfig(root="unused"), "r")
    loaded = load_benchmark(BenchmarkConfig(name="hhh"), store, needs_texts=True)
    assert len(loaded.items) == 221 and loaded.source.startswith("github.com/prometheus-eval/prometheus-eval@")
    assert (
        sources.resolve("shipped:pandalm/pandalm-7b-testset-v1.json")
        == SHARED_DATA / "pandalm/pandalm-7b-testset-v1.json"
    )


@needs_shared
def test_shipped_pandalm_config_runs_offline_from_the_override_folder(tmp_path: Path, monkeypatch) -> None:
    # The config as shipped (shipped: verdict files, no data path): only THEMIS_DATA_DIR points here.
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    config = Path(__file__).parents[1] / "jobs" / "configs" / "eval_pandalm.yaml"
    overrides = [f"run.storage.root={tmp_path}", "evaluate.bootstrap.resamples=20", "evaluate.plots=false"]
    assert cli.main(["evaluate", str(config), *overrides]) == 0
    report = json.loads((tmp_path / "eval-pandalm/reports/evaluation/gpt-3.5-turbo/report.json").read_text())
    assert round(report["pairwise"]["metrics"]["accuracy"]["value"] * 100, 2) == 71.07
    pinned = sources.SOURCES["pandalm"].files["gpt-3.5-turbo-testset-v1.json"][1]
    assert (
        report["predictions_file_sha256"] == pinned and "WeOpenML/PandaLM@3871806e72b4" in report["benchmark"]["source"]
    )


@needs_shared
def test_mt_bench_questions_from_the_shipped_source(monkeypatch) -> None:
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    assert sources.resolve("shipped:mt_bench") == SHARED_DATA / "mt_bench"
    assert len(benchmarks.mt_bench_instructions("shipped:mt_bench")) == 80


def test_override_folder_with_a_changed_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pandalm").mkdir()
    (tmp_path / "pandalm" / "testset-v1.json").write_text("[]")
    with pytest.raises(BenchmarkError, match="testset-v1.json is not the pinned file: SHA-256 expected cc154f"):
        sources.fetch("pandalm", "testset-v1.json", tmp_path)
    with pytest.raises(BenchmarkError, match="unknown shipped dataset"):
        sources.resolve("shipped:nope/x.json", tmp_path)


@pytest.fixture
def http_folder(tmp_path: Path):
    """A folder served over HTTP on 127.0.0.1, and the list of paths requested from it."""
    folder, requested = tmp_path / "served", []
    folder.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            requested.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}", requested
    server.shutdown()
    thread.join()


def test_download_once_into_the_cache_and_refuse_a_checksum_mismatch(tmp_path: Path, http_folder, monkeypatch) -> None:
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    folder, base_url, requested = http_folder
    (folder / "toy").mkdir()
    good, bad = b'[{"idx": 1}]\n', b"tampered\n"
    (folder / "toy" / "a.json").write_bytes(good)
    (folder / "toy" / "b.json").write_bytes(bad)
    pinned = hashlib.sha256(good).hexdigest()
    toy = sources.Source(
        "toy", "owner/toy", "0" * 40, "MIT", {"a.json": ("data/a.json", pinned), "b.json": ("b", pinned)}
    )
    registry, cache = {"toy": toy}, tmp_path / "cache"
    fetch = partial(sources.fetch, cache_dir=cache, base_url=base_url, sources=registry)
    path = fetch("toy", "a.json")
    assert path == cache / "toy" / "a.json" and path.read_bytes() == good and requested == ["/toy/a.json"]
    assert fetch("toy", "a.json") == path and requested == ["/toy/a.json"]  # the cache, not the network
    with pytest.raises(BenchmarkError) as exc:
        fetch("toy", "b.json")
    message = str(exc.value)
    assert "toy/b.json" in message and pinned in message and hashlib.sha256(bad).hexdigest() in message
    assert not (cache / "toy" / "b.json").exists()
    with pytest.raises(BenchmarkError, match="could not download toy/a.json .* set THEMIS_DATA_DIR"):
        sources.fetch("toy", "a.json", cache_dir=tmp_path / "empty", base_url=f"{base_url}/nowhere", sources=registry)
    assert toy.url("a.json") == f"https://raw.githubusercontent.com/owner/toy/{'0' * 40}/data/a.json"


# --- numeric pair labels need a mapping ----------------------------------------------------------------

AUTO_J = {0: "A", 1: "B", 2: "tie"}  # Auto-J's test set: 0 = the first response is better


def pandalm_as_user_file(tmp_path: Path, encode: dict[str, int]) -> Path:
    """PandaLM's real test set as a user's file, its three annotators' labels renumbered by ``encode``."""
    rows = json.loads((SHARED_DATA / "pandalm" / "testset-v1.json").read_text())[:60]
    out = []
    for row in rows:
        votes = [encode[benchmarks.PANDALM_WINNERS[row[f"annotator{k}"]]] for k in (1, 2, 3)]
        out.append({"idx": row["idx"], "q": row["instruction"], "r1": row["response1"], "r2": row["response2"]})
        out[-1] |= {"h1": votes[0], "h2": votes[1], "h3": votes[2]}
    return write_jsonl(tmp_path / "pairs.jsonl", out)


COLUMNS = {
    "item_id": "idx",
    "instruction": "q",
    "response_a": "r1",
    "response_b": "r2",
    "human": ["h1", "h2", "h3"],
    "scenario": {"const": "open_qa"},
}


@needs_shared
@pytest.mark.parametrize("convention", ["pandalm", "auto_j"])
def test_numeric_labels_without_values_are_refused_with_both_conventions(tmp_path: Path, convention: str) -> None:
    """Read as PandaLM's numbering, Auto-J-style labels were silently wrong (every A a tie, every
    tie a B). Any numeric pair label now needs ``values``; the mapping reads either numbering right."""
    values = {0: "tie", 1: "A", 2: "B"} if convention == "pandalm" else AUTO_J
    path = pandalm_as_user_file(tmp_path, {v: k for k, v in values.items()})
    with pytest.raises(BenchmarkError) as refused:
        benchmarks.load_file(path, "pairwise", COLUMNS)
    message = str(refused.value)
    assert message.startswith(f"{path}: line 1: human label ")
    assert "PandaLM-style 0 = tie, 1 = first response (A) better, 2 = second (B) better" in message
    assert "Auto-J-style 0 = first (A) better, 1 = second (B) better, 2 = tie" in message
    assert "`values: {0: tie, 1: A, 2: B}`" in message and "`values: {0: A, 1: B, 2: tie}`" in message
    cfg = BenchmarkConfig(name="file", path=str(path), kind="pairwise", columns=COLUMNS, values=values)
    loaded = benchmarks.load_file(path, "pairwise", cfg.columns, cfg.values)
    truth = {i.item_id: i.human for i in benchmarks.load_pandalm(SHARED_DATA)}
    assert [i.human for i in loaded.items] == [truth[i.item_id] for i in loaded.items]
    # Numbers as text or as JSON floats (pandas writes 1.0) are numbers too; words still need no map.
    for label in ("1", 2.0, " 0 "):
        with pytest.raises(ValueError, match="is a number"):
            benchmarks.parse_human_winner(label)
    assert [benchmarks.parse_human_winner(x) for x in ("a", "B ", "TIE")] == ["A", "B", "tie"]


@needs_shared
def test_numeric_labels_stop_themis_evaluate_with_exit_1(tmp_path: Path, capsys) -> None:
    """The user's case end to end: ``themis evaluate`` on Auto-J-style labels without ``values``
    used to exit 0 with a wrong accuracy; it now exits 1 with the mapping to write."""
    path = pandalm_as_user_file(tmp_path, {v: k for k, v in AUTO_J.items()})
    verdicts = write_jsonl(
        tmp_path / "verdicts.jsonl",
        [{"idx": r["idx"], "v": "A"} for r in map(json.loads, path.read_text().splitlines())],
    )
    config = tmp_path / "eval.yaml"
    config.write_text(
        json.dumps(
            {
                "run": {"name": "numeric", "storage": {"root": str(tmp_path / "runs")}},
                "evaluate": {
                    "benchmark": {"name": "file", "path": str(path), "kind": "pairwise", "columns": COLUMNS},
                    "bootstrap": {"resamples": 10},
                    "plots": False,
                    "judges": [
                        {
                            "kind": "recorded",
                            "name": "first",
                            "path": str(verdicts),
                            "id_field": "idx",
                            "verdict_field": "v",
                            "values": {"A": "A", "B": "B", "tie": "tie"},
                        }
                    ],
                },
            }
        )
    )
    assert cli.main(["evaluate", str(config)]) == 1
    err = capsys.readouterr().err
    assert "is a number" in err and "values: {0: A, 1: B, 2: tie}" in err
    assert not (tmp_path / "runs" / "numeric" / "reports").exists()


@needs_shared
def test_numeric_labels_shipped_benchmark_configs_still_load(monkeypatch) -> None:
    """Every benchmark of every shipped job config (but this run's validation split) loads from the
    real data in the shared folder, as ``themis evaluate`` would read it."""
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(SHARED_DATA))
    from themis.config import load_config

    seen = []
    for config in sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml")):
        cfg = load_config(str(config), [])
        if cfg.evaluate is None:
            continue
        for bench in cfg.evaluate.suite:
            if bench.name == "validation":
                continue
            loaded = load_benchmark(bench, RunStore(cfg.run.storage, cfg.run.name), needs_texts=False)
            assert loaded.items and not loaded.rejects, (config.name, bench.name)
            seen.append((config.name, bench.name, len(loaded.items)))
    assert ("eval_pandalm.yaml", "pandalm", 999) in seen and ("eval_hhh.yaml", "hhh", 221) in seen
