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


def test_workers_first_off_leaves_rays_default_niceness(monkeypatch) -> None:
    """With ray.workers_first false nothing is set, so Ray's raylet applies its own worker niceness."""
    from themis import runtime
    from themis.config import RayConfig

    monkeypatch.delenv(runtime.WORKER_NICENESS, raising=False)
    calls = []

    class FakeRay:  # only the call signature matters here: starting a second Ray costs seconds
        def init(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(runtime, "_lower_ray_daemons", lambda before: pytest.fail("daemons reniced"))
    runtime._start_local(FakeRay(), RayConfig(num_cpus=1, workers_first=False))
    assert calls and runtime.WORKER_NICENESS not in os.environ


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
