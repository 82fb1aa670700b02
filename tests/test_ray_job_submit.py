"""`ray job submit`, for real: a private Ray head on loopback runs one pipeline stage.

The head is started with ``ray start --head --block`` in its own process group, its own temp dir
and its own ports, and only that group is stopped at the end (``ray stop`` would kill every Ray on
the machine, other tests' included). Both sides use token auth with a token made for this test,
passed in the environment, so nothing under ~/.ray is read or written.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ray_env() -> dict[str, str]:
    """The environment of the head and of the client: loopback, no usage stats, one auth token."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        # The job supervisor runs the entrypoint through a shell: `python` must be this venv's.
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
    )
    return env


def _head_command(temp_dir: str) -> tuple[list[str], str]:
    """``ray start --head --block`` with every port chosen here; returns it and the dashboard URL."""
    gcs, dash, agent_http, agent_grpc, env_agent, metrics, client, nm, om = _free_ports(9)
    workers = _free_ports(1)[0]
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
        f"--object-manager-port={om}", f"--min-worker-port={workers}",
        f"--max-worker-port={workers + 40}", f"--temp-dir={temp_dir}", "--num-cpus=2",
        f"--object-store-memory={400 * 1024**2}",
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{dash}"


def _wait_for_dashboard(url: str, token: str, head: subprocess.Popen, log: Path) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/version", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the Ray dashboard at {url} did not answer in {START_TIMEOUT_S}s")


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop this head's process group, then any process still using its temp dir (by pid)."""
    # `ray start --block` stops its processes on SIGTERM but takes its time; a test needs no grace.
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in _pids_using(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids_using(temp_dir: str) -> list[int]:
    """Processes whose command line names ``temp_dir``: the ones this head started, and no other."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str], Path]]:
    """A private Ray head; yields (dashboard URL, client environment, head temp dir)."""
    # Short path: Ray's unix sockets live under the temp dir and have a ~107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="themis-rj-", dir="/tmp")
    env = _ray_env()
    command, url = _head_command(temp_dir)
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(command, env=env, cwd=temp_dir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for_dashboard(url, env["RAY_AUTH_TOKEN"], head, log)
        yield url, env, Path(temp_dir)
    finally:
        _stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit_command(runs: Path, tiny_model_dir: Path) -> list[str]:
    """`make submit`'s command (ray_cluster/submit.sh) for the instructions stage on the tiny config."""
    env = dict(os.environ, DRY_RUN="1", RAY=str(VENV_BIN / "ray"), RAY_ADDRESS="http://127.0.0.1:1",
               JOB_CONFIG="jobs/configs/tiny.yaml", STORAGE_ROOT=str(runs))  # fmt: skip
    overrides = [f"engines.local.model={tiny_model_dir}", f"train.base_model={tiny_model_dir}", "run.name=submitted"]
    done = subprocess.run(["ray_cluster/submit.sh", "instructions", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return shlex.split(done.stdout)


def test_make_submit_runs_ray_job_submit_from_the_checkout(tmp_path: Path) -> None:
    command = _submit_command(tmp_path / "runs", tmp_path / "model")
    assert command[1:3] == ["job", "submit"] and command[command.index("--working-dir") + 1] == "."
    assert command[command.index("--runtime-env") + 1] == "ray_cluster/runtime_env.yaml"
    entrypoint = command[command.index("--") + 1 :]
    assert entrypoint[:5] == ["python", "-m", "jobs.instructions", "--config", "jobs/configs/tiny.yaml"]
    assert f"run.storage.root={tmp_path / 'runs'}" in entrypoint


@pytest.mark.slow
@pytest.mark.integration
def test_ray_job_submit_runs_the_instructions_stage(ray_head, tiny_model_dir, tmp_path):
    url, env, head_dir = ray_head
    runs = tmp_path / "runs"
    # Exactly what `make submit STAGE=instructions` runs, pointed at this head:
    #   ray job submit --address URL --working-dir . --runtime-env ray_cluster/runtime_env.yaml
    #     -- python -m jobs.instructions --config jobs/configs/tiny.yaml run.storage.root=... ...
    submit = _submit_command(runs, tiny_model_dir)
    submit[submit.index("--address") + 1] = url
    start = time.monotonic()
    done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    print(f"ray job submit: {time.monotonic() - start:.1f}s")

    _assert_small_working_dir(head_dir)
    manifest = json.loads((runs / "submitted" / "manifest.json").read_text())
    assert manifest["stages"]["instructions"]["status"] == "ok"
    assert pq.read_table(runs / "submitted" / "instructions" / "data.parquet").num_rows > 0
    # The job joined the head it was submitted to (a second local Ray would have its own session).
    assert "Connecting to existing Ray cluster" in output or "Connected to Ray cluster" in output


def _assert_small_working_dir(head_dir: Path) -> None:
    """The unpacked working dir holds the code but not the venv or runs/ (.gitignore, .rayignore)."""
    unpacked = [d for d in head_dir.glob("session_latest/runtime_resources/working_dir_files/*") if d.is_dir()]
    assert len(unpacked) == 1, unpacked
    root = unpacked[0]
    assert (root / "jobs" / "instructions.py").is_file() and (root / "themis").is_dir()
    assert not (root / ".venv").exists() and not (root / "runs").exists()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size < 5 * 1024**2, f"working_dir upload is {size / 1024**2:.1f} MiB"
