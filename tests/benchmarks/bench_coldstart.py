"""Seconds from deploying the judge to its first answer: `make bench-coldstart`.

The judge is SmolLM2-135M-Instruct exported as a run's ``model/`` folder (517 MB of fp32
safetensors, the size of the demo's export), served by the real serve path (``themis.serving.app.build_app``
on a local Ray Serve, one replica, the transformers engine in its own process), deployed from:

- a local run root (the replica reads the run's folder where it lies);
- an ``s3://`` run root on a local S3 server (moto on loopback, its own process:
  tests/benchmarks/s3_server.py), with a cold node model cache (an empty cache folder: the replica
  downloads the export) and then a warm one (the same folder: a second replica on the node).

Each deploy is timed from ``serve.run`` to the first 200 answer of ``POST /v1/judge``; the app is
deleted before the next. One untimed deploy first warms the OS file cache (torch's libraries), then
``BENCH_ROUNDS`` rounds (default 2) of the three; the median of each is kept. Ends with

    RESULT s3_over_local=<cold s3 / local> warm_s=<s3 with a warm cache, seconds>

(goals: cold within 1.3x of local, warm within 1.1x). Not a pytest test: figures are printed, not
asserted. Data lives in a Themis scratch folder, removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.benchmarks import s3_server  # noqa: E402
from themis.config import RayConfig, ServeConfig, StorageConfig  # noqa: E402
from themis.models import SMOLLM2, ModelSource, resolve_model  # noqa: E402
from themis.scratch import scoped_scratch_dir  # noqa: E402
from themis.storage import RunStore  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
RUN = "coldstart"
APP = "coldstart"
DEADLINE_S = 600.0


def serve_config() -> ServeConfig:
    return ServeConfig(
        model_name="bench",
        cpus_per_replica=1,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        sampling={"max_tokens": 8},
    )


def first_answer(url: str) -> None:
    """Call ``POST /v1/judge`` until it answers 200 (404/503 while the app comes up)."""
    import httpx

    from themis.stages.serve import SMOKE_JUDGE

    deadline, last = time.monotonic() + DEADLINE_S, "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.post(f"{url}/v1/judge", json=SMOKE_JUDGE, timeout=120)
            if reply.status_code == 200:
                return
            last = f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise TimeoutError(f"no answer from {url} within {DEADLINE_S:.0f} s (last: {last})")


def deploy_seconds(source: ModelSource, url: str) -> float:
    """Deploy the judge from ``source``, wait for its first answer, delete it; the seconds between."""
    from ray import serve

    from themis.serving.app import build_app

    start = time.perf_counter()
    serve.run(build_app(serve_config(), source), name=APP, route_prefix="/", blocking=False)
    first_answer(url)
    seconds = time.perf_counter() - start
    serve.delete(APP)
    return seconds


def main() -> None:
    from ray import serve

    from themis.runtime import init_ray
    from themis.serving.app import serve_start_options
    from themis.stages.serve import free_port

    model = resolve_model(SMOLLM2)
    mb = sum(p.stat().st_size for p in model.rglob("*") if p.is_file()) / 2**20
    print(f"machine: {os.cpu_count()} CPUs (shared with other jobs); model {model.name} {mb:.0f} MB; {ROUNDS} rounds")
    with scoped_scratch_dir("bench-coldstart-") as scratch:
        (scratch / "server").mkdir()
        endpoint, server = s3_server.start(scratch / "server")
        try:
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            local = StorageConfig(root=str(scratch / "runs"))
            RunStore(local, RUN).upload_dir(model, "model")
            s3 = StorageConfig(root="s3://bench/themis", s3_endpoint=endpoint)
            start = time.perf_counter()
            RunStore(s3, RUN).upload_dir(model, "model")
            print(f"uploaded to s3 in {time.perf_counter() - start:.1f} s", flush=True)

            init_ray(RayConfig(num_cpus=2, object_store_memory_mb=400))
            port = free_port("127.0.0.1")
            serve.start(**serve_start_options("127.0.0.1", port))
            url = f"http://127.0.0.1:{port}"
            times = measure(url, local, s3, scratch)
            serve.shutdown()
        finally:
            server.kill()
            server.wait()
    report(times)


def measure(url: str, local: StorageConfig, s3: StorageConfig, scratch: Path) -> dict[str, list[float]]:
    print(f"warm-up deploy (not counted): {deploy_seconds(ModelSource(storage=local, run_name=RUN), url):.1f} s")
    times: dict[str, list[float]] = {"local": [], "s3_cold": [], "s3_warm": []}
    for rnd in range(ROUNDS):
        cache = scratch / f"node-cache-{rnd}"  # empty: cold; the second deploy finds the model there
        s3_here = s3.model_copy(update={"model_cache_dir": str(cache)})
        runs = [("local", local), ("s3_cold", s3_here), ("s3_warm", s3_here)]
        if rnd % 2:
            runs = runs[1:] + runs[:1]  # local last every other round
        for name, storage in runs:
            times[name].append(deploy_seconds(ModelSource(storage=storage, run_name=RUN), url))
            print(f"  round {rnd + 1}: {name:8s} {times[name][-1]:6.1f} s to the first answer", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    return times


def report(times: dict[str, list[float]]) -> None:
    median = {name: statistics.median(values) for name, values in times.items()}
    print()
    for name, values in times.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:8s} median {median[name]:6.1f} s  ({each}); over local {median[name] / median['local']:.2f}x")
    print(f"RESULT s3_over_local={median['s3_cold'] / median['local']:.2f} warm_s={median['s3_warm']:.1f}")


if __name__ == "__main__":
    main()
