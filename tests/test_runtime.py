"""The local Ray that themis starts: the stage's workers run ahead of Ray's own daemons."""

from __future__ import annotations

import os
import sys

import psutil
import pytest

from themis.runtime import DAEMON_NICENESS

pytestmark = pytest.mark.integration


def _ray_processes(name: str) -> list[psutil.Process]:
    """Processes of the local Ray that this test process started, by executable or script name."""
    return [p for p in psutil.Process().children(recursive=True) if any(name in part for part in p.cmdline()[:3])]


def test_local_ray_runs_workers_at_normal_priority_and_its_daemons_below(ray_local) -> None:
    @ray_local.remote(num_cpus=0)
    def worker_niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray_local.get(worker_niceness.remote()) == 0  # Ray's own default is 15

    gcs = _ray_processes("gcs_server")
    assert gcs, "no GCS process found under this test process"
    assert {os.getpriority(os.PRIO_PROCESS, t.id) for t in gcs[0].threads()} == {DAEMON_NICENESS}
    raylet = _ray_processes("raylet")
    assert raylet and raylet[0].nice() == 0, "the raylet keeps its priority: the workers it forks inherit it"


def test_default_profile_leaves_rays_niceness_and_knobs(monkeypatch) -> None:
    """Without the small-machine profile nothing is tuned: Ray's raylet applies its own worker
    niceness, and neither OMP_NUM_THREADS nor Ray Data's footer readers are set for the workers."""
    from themis import runtime
    from themis.config import RayConfig

    monkeypatch.delenv(runtime.WORKER_NICENESS, raising=False)
    calls = []

    class FakeRay:  # only the call signature matters here: starting a second Ray costs seconds
        def init(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(runtime, "_lower_ray_daemons", lambda before: pytest.fail("daemons reniced"))
    runtime._start_local(FakeRay(), RayConfig(num_cpus=1))
    assert calls and runtime.WORKER_NICENESS not in os.environ
    assert not set(calls[0]["runtime_env"]["env_vars"]) & set(runtime.SMALL_MACHINE_ENV)
    tuned = runtime.local_env(RayConfig(profile="small_machine"))
    assert tuned["OMP_NUM_THREADS"] == "1" and tuned["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "2"


def test_small_machine_profile_was_checked_with_this_ray() -> None:
    """The profile leans on Ray's private knobs (RAY_worker_niceness, the footer readers) and its
    daemons' process names: on another Ray, check them again and update SMALL_MACHINE_RAY."""
    import ray

    from themis.runtime import SMALL_MACHINE_RAY

    assert ray.__version__ == SMALL_MACHINE_RAY, f"re-check ray.profile=small_machine against Ray {ray.__version__}"


# macOS sets priority per process, which lower_priority does there; only Linux has threads to check.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="priority per thread is Linux's")
def test_lower_priority_reaches_every_thread_and_never_raises_it() -> None:
    import subprocess
    import time

    from themis.runtime import lower_priority

    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        proc = psutil.Process(child.pid)
        while proc.num_threads() < 2:
            time.sleep(0.05)
        lower_priority(proc, 7)
        assert {os.getpriority(os.PRIO_PROCESS, t.id) for t in proc.threads()} == {7}
        lower_priority(proc, 3)  # a nicer thread keeps its niceness
        assert {os.getpriority(os.PRIO_PROCESS, t.id) for t in proc.threads()} == {7}
    finally:
        child.kill()
        child.wait()
