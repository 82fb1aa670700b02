"""A local Ray started by Themis listens on loopback alone, on a host that has a public address.

The check runs in a network namespace the test makes (a veth address and a default route, so Ray
has an external address to choose), where every listening socket is the check's own; where no
namespace can be made, on this host, if it has a non-loopback address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from themis.loopback import is_loopback

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

# Imports Ray Serve before Themis starts Ray: the import order that put Ray on every interface.
PROBE = textwrap.dedent(
    """
    import json, sys, time
    from ray import serve
    import psutil
    from themis.config import RayConfig
    from themis.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=100))
    import ray

    @serve.deployment
    class Echo:
        def __call__(self, request):
            return "ok"

    serve.start(http_options={"host": "127.0.0.1", "port": 0}, grpc_options={"grpc_servicer_functions": []})
    serve.run(Echo.bind(), name="echo", route_prefix="/", blocking=False)
    ray.get(ray.remote(lambda: 1).remote())
    time.sleep(2)  # agents and replica servers that start late
    tree = {p.pid for p in [psutil.Process(), *psutil.Process().children(recursive=True)]}
    listening = [
        {"ip": c.laddr.ip, "port": c.laddr.port, "pid": c.pid, "ours": c.pid in tree}
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    print("SOCKETS " + json.dumps({"node_ip": ray.util.get_node_ip_address(), "listening": listening}))
    serve.shutdown()
    """
)

NETNS_SETUP = (
    "ip link set lo up && ip link add th0 type veth peer name th1 && "
    "ip addr add 198.51.100.7/24 dev th0 && ip link set th0 up && ip link set th1 up && "
    "ip route add default via 198.51.100.1 dev th0"
)


def _can_make_netns() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "--net", "sh", "-c", NETNS_SETUP], capture_output=True).returncode == 0


def _host_has_public_address() -> bool:
    return any(
        not is_loopback(a.address)
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family.name == "AF_INET"
    )


def _run_probe(tmp_path: Path) -> tuple[dict, bool]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as a user's shell would be
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, str(script)]
    in_netns = _can_make_netns()
    if in_netns:
        command = ["unshare", "--net", "sh", "-c", f"{NETNS_SETUP} && exec {sys.executable} {script}"]
    elif not _host_has_public_address():
        pytest.skip("no network namespace can be made here and the host has no public address to avoid")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SOCKETS ")]
    assert proc.returncode == 0 and lines, (
        f"probe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    import json

    return json.loads(lines[-1].removeprefix("SOCKETS ")), in_netns


def test_loopback_only_local_ray_and_serve_even_when_serve_is_imported_first(tmp_path: Path) -> None:
    found, in_netns = _run_probe(tmp_path)
    # In the namespace every socket is the probe's; on a shared host only the probe's process tree.
    mine = [s for s in found["listening"] if in_netns or s["ours"]]
    assert len(mine) >= 8, f"expected Ray's GCS, raylet, agents, workers and Serve to listen: {mine}"
    public = [s for s in mine if not is_loopback(s["ip"])]
    assert not public, f"listening beyond loopback: {public}"
    assert is_loopback(found["node_ip"]), found["node_ip"]


def test_is_loopback_knows_mapped_and_wildcard_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
