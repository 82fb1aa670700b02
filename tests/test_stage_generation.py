"""The generation stages on the session's local Ray with an HTTP teacher (the fake OpenAI server):
what a user pays for is what the manifest says, one teacher pool per stage, reruns of finished and
failed stages reuse every call, and engine pools that cannot start together fail at once."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAIServer
from themis import runner
from themis.config import PipelineConfig
from themis.dataplane.ledger import EngineUnavailableError

pytestmark = pytest.mark.integration
PRICES = {"price_per_million_input_tokens": 2.0, "price_per_million_output_tokens": 8.0}
# Labelled, distinct instructions: the instructions stage makes no call, and every later call is
# distinct (so a server's request count is a bill). close_qa and math_qa without a reference make
# the judgments stage ask the teacher for a reference answer first.
INSTRUCTIONS = (
    [{"instruction": f"Question {i}: what is {i} + {i}?", "scenario": "math_qa"} for i in range(4)]
    + [{"instruction": f"Question {i}: which river flows through town {i}?", "scenario": "close_qa"} for i in range(3)]
    + [{"instruction": f"Question {i}: why do people like walk number {i}?", "scenario": "open_qa"} for i in range(3)]
)


def teacher_reply(body: dict[str, Any]) -> str:
    """A deterministic teacher whose every distinct request gets a distinct answer."""
    text = " ".join(str(m.get("content")) for m in body["messages"])
    digest = hashlib.sha256(f"{text}|{body.get('seed')}".encode()).hexdigest()
    if "Verdict: [[" in text:
        return f"Verdict: [[{'AB'[int(digest, 16) % 2]}]] The first is clearer."
    if "Overall rating: [[" in text:
        return f"Overall rating: [[{int(digest, 16) % 5 + 1}]] Strengths: on topic."
    return f"An answer numbered {digest[:12]}."


def request_key(body: dict[str, Any]) -> str:
    """What identifies a call (and its price) at the server."""
    return json.dumps(body, sort_keys=True)


def write_user_file(folder: Path) -> Path:
    path = folder / "instructions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in INSTRUCTIONS))
    return path


def write_config(folder: Path, engines: dict[str, Any], root: Path, pool: list[str] | None = None) -> Path:
    """Instructions from a user file, three answers each from ``pool``, judged by ``teacher``."""
    config = {
        "run": {"name": "gen", "storage": {"root": str(root)}},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 300, "profile": "small_machine"},
        "engines": engines,
        "stages": ["instructions", "responses", "judgments"],
        "instructions": {
            "engine": "teacher",
            "classifier_engine": "teacher",
            "user_file": str(write_user_file(folder)),
            "reference_based": {"per_scenario": 0},
            "role_play": {"per_scenario": 0},
        },
        "responses": {
            "per_instruction": 3,
            "pool": [{"name": name, "engine": name} for name in pool or ["teacher"]],
        },
        "judgments": {"engine": "teacher", "pairs_per_instruction": 2},
    }
    path = folder / f"config-{len(list(folder.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def http_engine(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": url, "model": "fake", "concurrency": 8, "max_retries": 0} | extra


def load(path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(yaml.safe_load(path.read_text()))


def engine_actor_ids(ray: Any) -> set[str]:
    """Every engine actor this Ray has started (alive or dead)."""
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # other Rays may run on this machine
    actors = list_actors(address=address, limit=10_000, detail=False, raise_on_missing_output=False)
    return {a.actor_id for a in actors if "EngineActor" in (a.class_name or "")}


@pytest.fixture(scope="module")
def teacher():
    with FakeOpenAIServer(reply=teacher_reply, delay_s=0.02, usage=(7, 3)) as server:
        yield server


@pytest.fixture(scope="module")
def finished(teacher: FakeOpenAIServer, ray_local, tmp_path_factory: pytest.TempPathFactory):
    """A run whose three generation stages finished, with how many engine actors each started."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, {"teacher": http_engine(teacher.base_url, **PRICES)}, folder / "runs")
    cfg = load(config)
    actors, reports = {}, {}
    for stage in cfg.stages:
        before = engine_actor_ids(ray_local)
        reports[stage] = runner.run_stage(stage, cfg)
        actors[stage] = len(engine_actor_ids(ray_local) - before)
    return {"folder": folder, "config": config, "cfg": cfg, "actors": actors, "reports": reports}


def rows(root: Path, *rels: str) -> list[dict[str, Any]]:
    return [row for rel in rels if (root / rel).exists() for row in pq.read_table(root / rel).to_pylist()]


# --- one teacher pool ------------------------------------------------------------------------------


def test_one_teacher_pool_writes_references_and_judgments(finished: dict[str, Any]) -> None:
    run_root = finished["folder"] / "runs" / "gen"
    references = rows(run_root, "judgments/references.parquet")
    # 7 reference-guided instructions without a reference: the teacher wrote one for each.
    assert len(references) == 7 and all(r["reference"] and r["reason"] is None for r in references)
    guided = [r for r in rows(run_root, "judgments/data.parquet") if r["kind"] == "reference"]
    assert len(guided) == 7 * 3 and {r["reference"] for r in guided} == {r["reference"] for r in references}
    # One pool of one actor served both the references and the judge calls that quote them.
    assert finished["actors"]["judgments"] == 1, finished["actors"]
    assert len(finished["reports"]["judgments"].details["rows_by_actor"]) == 1


# --- what the manifest says a stage cost --------------------------------------------------------------


@pytest.mark.parametrize("stage", ["responses", "judgments"])
def test_token_sums_and_cost_equal_the_rows_written(finished: dict[str, Any], stage: str) -> None:
    run_root = finished["folder"] / "runs" / "gen"
    written = rows(run_root, f"{stage}/data.parquet", f"rejects/{stage}.parquet", f"{stage}/references.parquet")
    prompt = sum(r["prompt_tokens"] for r in written)
    completion = sum(r["completion_tokens"] for r in written)
    calls = sum(r["prompt_tokens"] > 0 for r in written)  # every call is distinct: none reused
    usage = json.loads((run_root / "manifest.json").read_text())["stages"][stage]["details"]["usage"]["teacher"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion) == (7 * calls, 3 * calls)
    assert usage["calls"] == calls and usage["failed"] == 0
    assert usage["cost_usd"] == pytest.approx((prompt * 2.0 + completion * 8.0) / 1e6) == usage["paid_usd"]


# --- reruns of finished and failed stages ---------------------------------------------------------------


def test_rerun_finished_and_failed_stages_reuse_every_call(
    finished: dict[str, Any], teacher: FakeOpenAIServer, tmp_path: Path
) -> None:
    shutil.copytree(finished["folder"] / "runs", tmp_path / "runs")
    cfg = load(write_config(tmp_path, {"teacher": http_engine(teacher.base_url, **PRICES)}, tmp_path / "runs"))
    down = load(write_config(tmp_path, {"teacher": http_engine("http://127.0.0.1:9/v1", **PRICES)}, tmp_path / "runs"))
    store = runner.RunStore(cfg.run.storage, cfg.run.name)
    before = len(teacher.bodies)
    for stage in ("responses", "judgments"):
        first = finished["reports"][stage]
        again = runner.run_stage(stage, cfg)  # on a root where it finished
        assert again.counts["reused_calls"] == again.counts["calls"] == first.counts["calls"], stage
        assert again.counts["rows_out"] == first.counts["rows_out"], stage
        usage, paid = again.details["usage"]["teacher"], first.details["usage"]["teacher"]["cost_usd"]
        assert (usage["cost_usd"], usage["paid_usd"]) == (paid, 0), stage  # what the rows cost; paid now: nothing
        with pytest.raises(EngineUnavailableError):  # a teacher that is down: every call fails
            runner.run_stage(stage, down)
        assert store.stage_status(stage) == "failed"
        again = runner.run_stage(stage, cfg)  # on a root where it failed
        assert store.stage_status(stage) == "ok"
        assert again.counts["reused_calls"] == again.counts["calls"] == first.counts["calls"], stage
    assert len(teacher.bodies) == before  # nothing paid twice
    published = rows(tmp_path / "runs" / "gen", "judgments/data.parquet")
    assert sorted(map(repr, published)) == sorted(
        map(repr, rows(finished["folder"] / "runs" / "gen", "judgments/data.parquet"))
    )


# --- pools that cannot start together ---------------------------------------------------------------


def test_mixed_pool_that_cannot_start_fails_at_once(
    teacher: FakeOpenAIServer, tiny_model_dir: Path, ray_local, tmp_path: Path
) -> None:
    engines = {
        "teacher": http_engine(teacher.base_url),
        "local": {"kind": "transformers", "model": str(tiny_model_dir), "batch_size": 4},
    }
    cfg = load(write_config(tmp_path, engines, tmp_path / "runs", pool=["local", "teacher"]))
    runner.run_stage("instructions", cfg)
    outcome: dict[str, Any] = {}

    def responses() -> None:
        try:
            outcome["report"] = runner.run_stage("responses", cfg)
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            outcome["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=responses, daemon=True)
    worker.start()
    worker.join(timeout=90)  # a stage that waits for resources it can never get hangs forever
    assert not worker.is_alive(), "the responses stage hung: its two engine pools cannot start together"
    assert time.monotonic() - start < 30
    message = str(outcome.get("error"))
    assert isinstance(outcome.get("error"), ValueError), outcome
    for part in ("'local': 1 actor(s) x 1 CPU", "'teacher': 1 actor(s) x 0.25 CPU", "this Ray has 2 CPU"):
        assert part in message, message
