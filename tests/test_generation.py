"""The data plane on local Ray, with a real HTTP teacher (the fake OpenAI server in tests/fakes):
a pool of two actors, runs that cannot mislead (stale outputs refused, secrets kept out of the
run root, bad inputs caught before Ray starts). Resume after SIGKILL: tests/test_stage_resume.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAIServer
from themis import runner
from themis.config import PipelineConfig
from themis.dataplane.ledger import EngineUnavailableError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def teacher_reply(body: dict[str, Any]) -> str:
    """A deterministic teacher: a verdict for judge prompts, a letter for the classifier, else text."""
    text = " ".join(str(m.get("content")) for m in body["messages"])
    if "Verdict: [[" in text:
        return f"Verdict: [[{'AB'[len(text) % 2]}]] The first is clearer."
    if "Overall rating: [[" in text:
        return f"Overall rating: [[{len(text) % 5 + 1}]] Strengths: on topic [[4]]."
    if "Scenario: [[" in text:
        return "Scenario: [[A]]"
    return f"A generated text of some length number {len(text)}."


def write_config(tmp_path: Path, base_url: str, root: Path, **teacher: Any) -> Path:
    """A three-stage config whose every engine is the HTTP teacher."""
    config = {
        "run": {"name": "gen", "storage": {"root": str(root)}},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 300, "profile": "small_machine"},
        "engines": {
            "teacher": {"kind": "openai", "base_url": base_url, "model": "fake", "concurrency": 8, "max_retries": 0}
            | teacher
        },
        "stages": ["instructions", "responses", "judgments"],
        "instructions": {
            "engine": "teacher",
            "classifier_engine": "teacher",
            "scenarios": ["close_qa", "math_qa", "open_qa"],
            "reference_based": {"per_scenario": 4},
            "role_play": {"per_scenario": 4},
        },
        "responses": {"per_instruction": 3, "pool": [{"name": "a", "engine": "teacher"}]},
        "judgments": {"engine": "teacher", "pairs_per_instruction": 3},
    }
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load(path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(yaml.safe_load(path.read_text()))


def themis_command(stage: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "themis.cli", stage, str(config)]


@pytest.fixture
def server():
    with FakeOpenAIServer(reply=teacher_reply, delay_s=0.15) as s:
        yield s


def test_two_actor_pool_sends_rows_to_both_actors(tmp_path: Path, ray_local) -> None:
    # The gate holds replies for up to 240 s (the client waits 300): a second actor can be slow to
    # start on a loaded machine, and only a pool that never uses it should fail here.
    with FakeOpenAIServer(reply=teacher_reply, hang_s=240) as server:
        pool = {"min_actors": 2, "max_actors": 2}
        config = write_config(tmp_path, server.base_url, tmp_path / "runs", pool=pool, timeout_s=300)
        cfg = load(config)
        for stage in ("instructions", "responses"):
            runner.run_stage(stage, cfg)
        # One actor holds at most `concurrency` (8) calls: the teacher answers nothing until 9 are
        # in flight, so the stage moves only once both actors send, however slowly the second starts.
        # Ray Data hands an actor up to 8 batches at once; without waiting for the pool, the first
        # actor up could take every block there was while the second started (seen in CI).
        server.gate = 9
        context = ray_local.data.DataContext.get_current()
        waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 200
        try:
            report = runner.run_stage("judgments", cfg)
        finally:
            context.wait_for_min_actors_s = waited
    assert server.max_in_flight >= 9
    by_actor = report.details["rows_by_actor"]
    assert len(by_actor) == 2 and all(n > 0 for n in by_actor.values()), by_actor
    assert report.counts["parse_rate"] == {"pairwise": 1.0, "reference": 1.0, "single": 1.0}
    assert report.counts["rows_in"] == report.counts["rows_out"] + report.counts["rows_rejected"]


@pytest.mark.slow
def test_failed_rerun_leaves_no_stale_output_for_the_next_stage(
    server: FakeOpenAIServer, tmp_path: Path, ray_local
) -> None:
    config = write_config(tmp_path, server.base_url, tmp_path / "runs")
    cfg = load(config)
    for stage in ("instructions", "responses", "judgments"):
        runner.run_stage(stage, cfg)
    down = load(write_config(tmp_path, "http://127.0.0.1:9/v1", tmp_path / "runs"))  # nothing listens there
    with pytest.raises(EngineUnavailableError, match="all .* calls to engine 'teacher' failed"):
        runner.run_stage("judgments", down)
    store = runner.RunStore(cfg.run.storage, cfg.run.name)
    assert store.stage_status("judgments") == "failed"
    with pytest.raises(runner.StageOrderError, match=r"judgments .*'failed'.*themis judgments"):
        runner.run_stage("dataset", cfg)


def test_secrets_in_base_url_and_extra_body_never_reach_the_run_root(
    server: FakeOpenAIServer, tmp_path: Path, ray_local
) -> None:
    url = server.base_url.replace("http://", "http://user:URLSECRET42@")
    config = write_config(tmp_path, url, tmp_path / "runs", extra_body={"api_key": "BODYSECRET42", "top_k": 5})
    cfg = load(config)
    runner.run_stage("instructions", cfg)
    runner.run_stage("responses", cfg)
    bad = load(write_config(tmp_path, "http://user:URLSECRET42@127.0.0.1:9/v1", tmp_path / "runs"))
    with pytest.raises(EngineUnavailableError):  # failed calls: their errors name the URL, redacted
        runner.run_stage("judgments", bad)
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.suffix == ".parquet" for p in files)
    for path in files:
        data = path.read_bytes()
        assert b"URLSECRET42" not in data and b"BODYSECRET42" not in data, path
    assert '"top_k": 5' in (tmp_path / "runs" / "gen" / "manifest.json").read_text()


def test_bad_user_file_fails_before_ray_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", tmp_path / "runs")
    code = (
        "import ray, sys\n"
        "from themis import runner\n"
        "from themis.config import load_config\n"
        f"cfg = load_config({str(config)!r}, ['instructions.user_file={tmp_path}/absent.jsonl'])\n"
        "try:\n"
        "    runner.run_stage('instructions', cfg)\n"
        "except FileNotFoundError as exc:\n"
        "    print('error:', exc)\n"
        "print('ray started:', ray.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert f"error: instructions.user_file not found: {tmp_path}/absent.jsonl" in out.stdout, out.stderr
    assert "ray started: False" in out.stdout


def test_unreachable_s3_root_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", tmp_path / "runs")
    overrides = ["run.storage.root=s3://bucket/runs", "run.storage.s3_endpoint=http://127.0.0.1:9"]
    out = subprocess.run(
        [*themis_command("instructions", config), *overrides], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("themis: error: cannot use run root s3://bucket/runs/gen"), lines
