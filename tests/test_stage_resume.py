"""Resume after SIGKILL, counted as a user's bill is: by the requests the teacher's server received.

A stage killed mid-way and run again re-pays at most one batch per engine actor (the calls in
flight or finished but not yet saved when it died: never more than the engine's window, which
is its batch); a stage that finished re-pays nothing. On a local run root and on ``s3://`` (moto).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAIServer
from tests.test_stage_generation import http_engine, load, request_key, teacher_reply, write_config
from themis import runner
from themis.storage import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
WINDOW = 8  # the teacher's concurrency, which is also its batch size: one batch per actor
KILL_AFTER = 40  # requests the killed run makes before it dies
# Runs stages in one process (one Ray); at a "|" it says so and waits for a line on stdin, so the
# test can count the server's requests between two runs.
DRIVER = """
import sys
from themis import runner
from themis.config import load_config
cfg = load_config(sys.argv[1], [])
for stage in sys.argv[2:]:
    if stage == "|":
        print("pause", flush=True)
        sys.stdin.readline()
    else:
        runner.run_stage(stage, cfg)
"""


def staggered_reply(body: dict[str, Any]) -> str:
    """The teacher's reply after 20-200 ms (by request): calls finish one by one, not in lockstep,
    so a kill finds some finished and not yet saved."""
    answer = teacher_reply(body)
    time.sleep(0.02 * (1 + int(hashlib.sha256(answer.encode()).hexdigest(), 16) % 10))
    return answer


@pytest.fixture
def server():
    with FakeOpenAIServer(reply=staggered_reply, usage=(7, 3)) as s:
        yield s


def driver(config: Path, env: dict[str, str], *stages: str) -> subprocess.Popen:
    command = [sys.executable, "-c", DRIVER, str(config), *stages]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, start_new_session=True, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def requests_between(server: FakeOpenAIServer, proc: subprocess.Popen) -> tuple[list[str], list[str]]:
    """The server's requests before and after ``proc`` pauses, until it ends."""
    start = len(server.bodies)
    assert proc.stdout.readline().strip() == "pause", "the driver failed before its pause"
    middle = len(server.bodies)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=300) == 0
    keys = [request_key(b) for b in server.bodies]
    return keys[start:middle], keys[middle:]


def kill_mid_stage(server: FakeOpenAIServer, config: Path, env: dict[str, str]) -> list[str]:
    """Run judgments in a process of its own and SIGKILL it (its Ray too) after ``KILL_AFTER`` requests."""
    start = len(server.bodies)
    proc = driver(config, env, "judgments")
    deadline = time.monotonic() + 240
    while len(server.bodies) - start < KILL_AFTER:
        assert proc.poll() is None, "judgments ended before it could be killed"
        assert time.monotonic() < deadline, f"judgments made {len(server.bodies) - start} requests in 240 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # nothing it started may still be talking to the server
    return [request_key(b) for b in server.bodies[start:]]


def check_resume(killed: list[str], resumed: list[str], calls: int) -> None:
    """What the two runs paid for: each of the stage's ``calls`` once, and at most one batch twice."""
    assert len(killed) >= KILL_AFTER and max(Counter(killed + resumed).values()) <= 2
    repaid = set(killed) & set(resumed)
    print(f"resume: {len(repaid)} of {len(killed)} calls made before the kill were paid again")
    assert len(repaid) <= WINDOW, f"{len(repaid)} calls paid twice ({len(killed)} before the kill)"
    assert calls == len(set(killed) | set(resumed))  # the stage needed each of them


def judgments(root: Path) -> list[str]:
    rows = pq.read_table(root / "judgments" / "data.parquet").to_pylist()
    return sorted(repr(sorted(r.items())) for r in rows)


def test_resume_one_batch_after_sigkill(server: FakeOpenAIServer, tmp_path: Path, ray_local) -> None:
    config = write_config(tmp_path, {"teacher": http_engine(server.base_url)}, tmp_path / "runs")
    cfg = load(config)
    for stage in ("instructions", "responses"):
        runner.run_stage(stage, cfg)
    # The killed driver joins this Ray (no start-up of its own); Ray ends a dead driver's actors.
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    killed = kill_mid_stage(server, config, env)
    assert RunStore(cfg.run.storage, cfg.run.name).stage_status("judgments") == "running"
    start = len(server.bodies)
    report = runner.run_stage("judgments", cfg)
    resumed = [request_key(b) for b in server.bodies[start:]]
    usage = report.details["usage"]["teacher"]
    check_resume(killed, resumed, usage["calls"])
    assert usage["reused"] == usage["calls"] - len(resumed)

    # The resumed stage wrote what an uninterrupted one writes (every call was reused here).
    clean = load(write_config(tmp_path, {"teacher": http_engine(server.base_url)}, tmp_path / "clean"))
    for stage in ("instructions", "responses", "judgments"):
        runner.run_stage(stage, clean)
    assert judgments(tmp_path / "runs" / "gen") == judgments(tmp_path / "clean" / "gen")


@pytest.fixture
def s3_endpoint():
    """moto's S3 server with a bucket; credentials for the drivers (and the Rays they start)."""
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    endpoint = "http://{}:{}".format(*moto.get_host_and_port())
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **_boto(creds)).create_bucket(Bucket="runs")
    yield endpoint, creds
    moto.stop()


def _boto(creds: dict[str, str]) -> dict[str, str]:
    return {
        "region_name": creds["AWS_DEFAULT_REGION"],
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
    }


def test_s3_resume_repays_nothing_finished_and_one_batch_killed(
    server: FakeOpenAIServer, s3_endpoint: tuple[str, dict[str, str]], tmp_path: Path, ray_local, monkeypatch
) -> None:
    endpoint, creds = s3_endpoint
    for name, value in creds.items():
        monkeypatch.setenv(name, value)  # for this process's own look at the run root
    config = write_config(tmp_path, {"teacher": http_engine(server.base_url)}, tmp_path / "unused")
    data = yaml.safe_load(config.read_text())
    data["run"]["storage"] = {"root": "s3://runs/themis", "s3_endpoint": endpoint}
    config.write_text(yaml.safe_dump(data))
    # Each driver joins this Ray as a job whose workers get the credentials (as `ray job submit` does).
    job = json.dumps({"runtime_env": {"env_vars": creds}})
    address = ray_local.get_runtime_context().gcs_address
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=address, RAY_JOB_CONFIG_JSON_ENV_VAR=job, **creds)

    first, again = requests_between(server, driver(config, env, "instructions", "responses", "|", "responses"))
    assert len(first) == 30 and again == []  # a finished stage re-pays nothing
    killed = kill_mid_stage(server, config, env)
    proc = driver(config, env, "judgments", "|", "judgments")
    resumed, again = requests_between(server, proc)
    assert again == []
    cfg = load(config)
    usage = RunStore(cfg.run.storage, cfg.run.name).manifest()["stages"]["judgments"]["details"]["usage"]["teacher"]
    assert usage["reused"] == usage["calls"]  # the rerun of the finished stage
    check_resume(killed, resumed, usage["calls"])
