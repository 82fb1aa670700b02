"""The command line: overrides after flags, and a driver that stops its local Ray however it ends
(short of SIGKILL, which no process can catch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from themis import cli

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_after_flags_are_kept(monkeypatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(cli, "execute", lambda command, config, overrides: seen.update(overrides=overrides) or 0)
    assert cli.main(["serve", "job.yaml", "--force", "run.name=x", "serve.port=9"]) == 0
    assert seen["overrides"] == ["run.name=x", "serve.port=9", "serve.promotion.force=true"]


DRIVER = textwrap.dedent(
    """
    import time
    from themis.config import RayConfig
    from themis.runtime import init_ray

    init_ray(RayConfig(num_cpus=1, object_store_memory_mb=100))
    import ray

    ray.get(ray.remote(lambda: 1).remote())  # a worker process too
    print("READY", flush=True)
    time.sleep(600)
    """
)


def _default_signal_handling() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_driver_stops_its_local_ray_on_a_signal(tmp_path: Path, signum: int) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"PYTHONPATH": str(ROOT)}
    # Its own session: Ray's processes can only be found through the driver while it lives.
    driver = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_default_signal_handling,  # under nohup SIGHUP arrives ignored, and the driver keeps it so
    )
    try:
        deadline = time.monotonic() + 180
        while driver.stdout.readline().strip() != "READY":
            assert driver.poll() is None and time.monotonic() < deadline, "the driver did not start Ray"
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        assert len(ray_processes) >= 4, ray_processes  # GCS, raylet, agents, a worker
        driver.send_signal(signum)
        assert driver.wait(timeout=60) == 128 + signum  # SystemExit: atexit hooks ran (not an abort)
        _, alive = psutil.wait_procs(ray_processes, timeout=30)
        assert not alive, f"left behind after {signal.Signals(signum).name}: {[p.name() for p in alive]}"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
