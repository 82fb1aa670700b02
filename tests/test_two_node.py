"""A real two-node Ray cluster on loopback: the judgments stage runs as `ray job submit` on it, and
its engine pool (one actor per node) generates rows on both nodes.

The cluster is Ray's own ``ray.cluster_utils.Cluster`` (a head with its dashboard, plus a second
node with its own resources), run by a small helper process so that pytest itself never becomes a
Ray driver. The helper prints the cluster's addresses and node ids, stays up until its stdin
closes, then shuts the cluster down; anything still running from the cluster's private temp dir
after that is killed by pid. A second ``ray start --address`` is not an option here: it refuses
("Multi-node Ray clusters are not supported"), or with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 binds
the machine's external address. ``ray stop`` would kill every Ray on the machine: never used.
Both sides use token auth with a token made for this test, passed in the environment.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = "jobs/configs/tiny.yaml"
USER_FILE = ROOT / "themis" / "data" / "user_instructions_example.jsonl"
START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 360
# One engine actor per node (two cannot share a node), and a whole CPU left beside it on each node
# for Ray Data's own tasks: some of them (repartition, shuffles) ask for 1 CPU whatever themis says.
NODE_CPUS = 3
ACTOR_CPUS = 2
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}

# Runs in its own process: starts the cluster, prints one JSON line, waits for stdin to close.
CLUSTER_SCRIPT = r"""
import json, signal, sys

import ray
from ray.cluster_utils import Cluster

spec = json.loads(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM also ends in cluster.shutdown()
common = {"node_ip_address": "127.0.0.1", "num_cpus": spec["num_cpus"],
          "object_store_memory": spec["object_store_memory"], "temp_dir": spec["temp_dir"]}
cluster = Cluster(initialize_head=True, head_node_args=common | {
    "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": spec["dashboard_port"],
    "dashboard_agent_listen_port": spec["agent_port"], "resources": {"head_node": 1}})
try:
    second = cluster.add_node(**common, resources={"second_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    nodes = [{"id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
              "resources": n["Resources"]} for n in ray.nodes()]
    ray.shutdown()
    print(json.dumps({
        "gcs": cluster.address, "dashboard": "http://" + cluster.webui_url, "nodes": nodes,
        "head": cluster.head_node.node_id, "second": second.node_id,
    }), flush=True)
    sys.stdin.read()
finally:
    cluster.shutdown()
    print("cluster down", file=sys.stderr, flush=True)
"""


@dataclass
class TwoNodeCluster:
    dashboard: str
    gcs: str
    head_id: str
    second_id: str
    nodes: list[dict]
    env: dict[str, str]
    temp_dir: str
    helper: subprocess.Popen


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


def _ray_env(base: str) -> dict[str, str]:
    """The environment of the cluster and of the client: loopback, no usage stats, one auth token,
    and Ray's default temp dir inside ``base``."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        # `Cluster` records its address in the *default* temp dir (/tmp/ray/ray_current_cluster),
        # but the job supervisor looks for it in the node's temp dir and, not finding it there,
        # hands the job's driver any GCS it finds on the machine (another test's Ray). With the
        # default temp dir being the cluster's own, both agree and /tmp/ray is left alone.
        RAY_TMPDIR=base,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        # The job supervisor runs the entrypoint through a shell: `python` must be this venv's.
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        # Ray Data 2.60 reads parquet footers with a pool of actors, 32 by default, on every
        # read_parquet: each its own worker process, seconds of CPU apiece. On a 2-core machine
        # that alone took minutes a stage (workers throttled: "Starting too many worker processes").
        RAY_DATA_PARQUET_FOOTER_NUM_ACTORS="2",
        # An engine pool otherwise takes rows as soon as its first actor is up: with the second
        # node's actor still importing torch, the first can finish every batch alone. Waiting for
        # the whole pool makes "rows on both nodes" deterministic, and a pool that cannot be
        # placed fails with Ray Data's "Timed out while starting actors" instead of hanging.
        RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=str(JOB_TIMEOUT_S - 120),
    )
    return env


def _read_line(proc: subprocess.Popen, timeout: float, log: Path, temp_dir: str) -> str:
    """The helper's first stdout line, or a failure with its log if it dies or takes too long."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            break
    why = f"exited with {proc.returncode}" if proc.poll() is not None else f"did not come up in {timeout}s"
    pytest.fail(f"the two-node cluster {why}:\n{log.read_text()[-3000:]}{_raylet_fatal(temp_dir)}")


def _raylet_fatal(temp_dir: str) -> str:
    """A raylet's fatal check, explained where it is the known one."""
    lines = [
        line[:400]
        for path in Path(temp_dir).glob("ray/session_*/logs/raylet*.out")
        for line in path.read_text(errors="replace").splitlines()
        if " C " in line[:40]
    ]
    text = "".join(f"\n{line}" for line in lines)
    if "Timed out waiting for file" in text:
        # Ray 2.60's raylet gives its dashboard agent a fixed 15 s (not configurable) to write its
        # port files; the agent imports every dashboard module first, about 3 s of CPU, which on a
        # 2-core box under a load average of 20+ takes longer than that.
        text += "\n(the dashboard agent was too slow to start: the machine is overloaded)"
    return text


def _pids_using(temp_dir: str) -> list[int]:
    """Processes whose command line names ``temp_dir``: the ones this cluster started, no other."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(temp_dir in part for part in proc.info["cmdline"] or ()):
            pids.append(proc.pid)
    return pids


def _cluster_processes(cluster: TwoNodeCluster) -> list[psutil.Process]:
    """The helper and everything it started (GCS, raylets, dashboard, agents, workers)."""
    procs = {}
    try:
        helper = psutil.Process(cluster.helper.pid)
        procs[helper.pid] = helper
        procs |= {p.pid: p for p in helper.children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    for pid in _pids_using(cluster.temp_dir):
        try:
            procs.setdefault(pid, psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return list(procs.values())


def _listeners(cluster: TwoNodeCluster) -> dict[str, list[str]]:
    """name(pid) -> the addresses its listening TCP sockets are bound to."""
    found = {}
    for proc in _cluster_processes(cluster):
        try:
            conns = proc.net_connections(kind="tcp")
            name = f"{proc.name()}({proc.pid})"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        bound = [f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.status == psutil.CONN_LISTEN]
        if bound:
            found[name] = bound
    return found


def _assert_loopback_only(cluster: TwoNodeCluster) -> int:
    listeners = _listeners(cluster)
    outside = {name: [a for a in addrs if a.rsplit(":", 1)[0] not in LOOPBACK] for name, addrs in listeners.items()}
    outside = {name: addrs for name, addrs in outside.items() if addrs}
    assert not outside, f"cluster processes listening beyond loopback: {outside}"
    return sum(len(a) for a in listeners.values())


def _stop(helper: subprocess.Popen, temp_dir: str, log: Path) -> list[int]:
    """Close the helper's stdin (it shuts the cluster down), then kill leftovers by pid; returns
    the pids that were still alive after the helper's own shutdown."""
    try:
        helper.stdin.close()
    except OSError:
        pass
    for sig, wait_s in ((None, 60), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if sig is not None:
            try:
                os.killpg(helper.pid, sig)
            except ProcessLookupError:
                break
        try:
            helper.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    leftovers = []
    deadline = time.monotonic() + 10  # workers exit on their own once their raylet is gone
    while (leftovers := _pids_using(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[TwoNodeCluster]:
    """A head (with dashboard) and a second node, both on 127.0.0.1, each with NODE_CPUS CPUs."""
    # Short path: Ray's unix sockets live under the temp dir and have a ~107-byte limit.
    base = tempfile.mkdtemp(prefix="themis-2n-", dir="/tmp")
    env = _ray_env(base)
    # Ports of our own: a head's agent otherwise takes Ray's default 52365, which another Ray on
    # the machine may hold (the agent then runs without HTTP and no job can be submitted).
    dashboard_port, agent_port = _free_ports(2)
    spec = {
        "num_cpus": NODE_CPUS,
        "object_store_memory": 300 * 1024**2,
        "temp_dir": f"{base}/ray",  # Ray's default under RAY_TMPDIR
        "dashboard_port": dashboard_port,
        "agent_port": agent_port,
    }
    log = tmp_path / "cluster.log"
    start = time.monotonic()
    with log.open("wb") as err:
        helper = subprocess.Popen(
            [sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(spec)],
            cwd=base,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    leftovers: list[int] = []
    try:
        info = json.loads(_read_line(helper, START_TIMEOUT_S, log, base))
        print(f"two-node cluster up: {time.monotonic() - start:.1f}s")
        yield TwoNodeCluster(
            dashboard=info["dashboard"],
            gcs=info["gcs"],
            head_id=info["head"],
            second_id=info["second"],
            nodes=info["nodes"],
            env=env,
            temp_dir=base,
            helper=helper,
        )
    finally:
        leftovers = _stop(helper, base, log)
        # The session's logs are kept in tmp_path for a failed run; the temp dir itself goes.
        if Path(f"{base}/ray/session_latest/logs").is_dir():
            shutil.copytree(f"{base}/ray/session_latest/logs", tmp_path / "ray-logs", dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
    assert helper.returncode == 0, f"cluster helper exited {helper.returncode}:\n{log.read_text()[-3000:]}"
    assert "cluster down" in log.read_text(), log.read_text()[-3000:]
    assert not leftovers, f"processes of the cluster outlived cluster.shutdown(): {leftovers}"


def _submit(cluster: TwoNodeCluster, stage: str, overrides: list[str], timeout: float = JOB_TIMEOUT_S) -> str:
    """`ray job submit` of ``python -m jobs.<stage>`` from this checkout, as `make submit` runs it."""
    command = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
        "--runtime-env", "ray_cluster/runtime_env.yaml", "--",
        "python", "-m", f"jobs.{stage}", "--config", TINY, *overrides,
    ]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "succeeded" in output, output[-6000:]
    # The job's driver joined this cluster, not another Ray on the machine.
    assert f"Connecting to existing Ray cluster at address: {cluster.gcs}" in output, output[-6000:]
    print(f"ray job submit {stage}: {time.monotonic() - start:.1f}s")
    return output


@pytest.mark.slow
@pytest.mark.integration
def test_two_node_ray_job_submit_runs_judgments_on_both_nodes(two_node_cluster, tiny_model_dir, tmp_path):
    cluster = two_node_cluster
    # Two live nodes, both on loopback: the head and the second node this test added.
    assert {n["id"] for n in cluster.nodes} == {cluster.head_id, cluster.second_id}
    assert cluster.head_id != cluster.second_id
    assert all(n["alive"] and n["address"] == "127.0.0.1" for n in cluster.nodes), cluster.nodes
    assert all(n["resources"]["CPU"] == NODE_CPUS for n in cluster.nodes), cluster.nodes
    assert cluster.dashboard.startswith("http://127.0.0.1:") and cluster.gcs.startswith("127.0.0.1:")
    listening = _assert_loopback_only(cluster)
    assert listening >= 4, listening  # GCS, two raylets, dashboard at least

    runs = tmp_path / "runs"
    common = [
        f"run.storage.root={runs}",
        "run.name=two-node",
        f"engines.local.model={tiny_model_dir}",
        f"train.base_model={tiny_model_dir}",
    ]
    # Instructions and responses first, as one job on the same cluster (pytest stays no Ray driver).
    # A random model writes empty text when greedy; sampling keeps every stage fed.
    _submit(
        cluster,
        "pipeline",
        [
            *common,
            "stages=[instructions, responses]",
            # Only the user's six instructions (three to classify): enough rows, fewer calls.
            f"instructions.user_file={USER_FILE}",
            "instructions.reference_based.per_scenario=0",
            "instructions.role_play.per_scenario=0",
            "responses.pool=[{name: a, engine: local, sampling: {max_tokens: 12, temperature: 1.0}}, "
            "{name: b, engine: local, sampling: {max_tokens: 12, temperature: 1.0}}]",
        ],
    )
    # The judgments stage, its engine pool two actors that fit one per node, small batches.
    _submit(
        cluster,
        "judgments",
        [
            *common,
            # Reference-guided grading stays on: the teacher writes references in the same pool
            # (one pool per stage), so the two actors are the only engine actors.
            "engines.local.batch_size=2",
            "engines.local.pool.min_actors=2",
            "engines.local.pool.max_actors=2",
            f"engines.local.pool.cpus_per_actor={ACTOR_CPUS}",
            "engines.local.pool.batch_size=2",
        ],
    )
    listening = _assert_loopback_only(cluster)  # now with the jobs' workers too

    manifest = json.loads((runs / "two-node" / "manifest.json").read_text())
    judgments = manifest["stages"]["judgments"]
    assert judgments["status"] == "ok", judgments
    rows_by_node = judgments["details"]["rows_by_node"]
    assert len(rows_by_node) == 2 and all(n > 0 for n in rows_by_node.values()), rows_by_node
    assert set(rows_by_node) == {cluster.head_id, cluster.second_id}, (rows_by_node, cluster.nodes)
    assert len(judgments["details"]["rows_by_actor"]) == 2, judgments["details"]
    print(f"rows by node: {rows_by_node}; listening sockets, all on loopback: {listening}")
